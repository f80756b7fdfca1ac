"""vfsmount: a plate as a POSIX tree of flat TIFF files (FUSE daemon and command line)."""

__version__ = "0.1.0"
