"""Storage for vfsmount: backends, FileManager, plates and their metadata.

Layers, lowest first: the vocabulary at backends/ (errors, layout, naming, physics) <
guards/ < storage/ < ngff/ < plates/ (docs/architecture.md). This package hands on the
storage names of the reference design (``from backends import FileManager, Backend``).

Importing this package loads no zarr, ome-zarr or GPU library: backends that
need them are imported the first time they are asked for.
"""
from .storage.base import (STORAGE_BACKENDS, Backend, DataSink, FileTree, StorageBackend,
                           StorageBackendMeta, VirtualBackend, discover_all_backends,
                           get_backend_class)
from .errors import (CorruptDataError, MetadataError, NameCollisionError, PathEscapeError,
                     PlateFormatError, ReadOnlyError, RemoteStorageError, StorageError, StorageExistsError,
                     StorageNotFoundError, UnknownBackendError, UnsupportedFormatError)
from .storage.filemanager import FileManager
from .storage.memory import MemoryStorageBackend
from .storage.disk import DiskStorageBackend

__all__ = [
    "Backend", "DataSink", "StorageBackend", "VirtualBackend", "FileTree", "StorageBackendMeta",
    "STORAGE_BACKENDS", "discover_all_backends", "get_backend_class", "FileManager",
    "MemoryStorageBackend", "DiskStorageBackend",
    "StorageError", "StorageNotFoundError", "StorageExistsError", "UnknownBackendError",
    "UnsupportedFormatError", "PathEscapeError", "ReadOnlyError", "CorruptDataError",
    "MetadataError", "PlateFormatError", "NameCollisionError", "RemoteStorageError",
]
