"""Storage: the backend contract (base), its backends (disk, memory, virtual workspace),
FileManager, object storage (remote) and what they stand on. Imports guards and the
vocabulary (backends/{errors,layout,naming,physics})."""
