"""Guards: checks on untrusted bytes and paths (chunks, TIFF strips, paths beneath a
root) and the isolated decoder. Imports only backends/{errors,layout,naming,physics}."""
