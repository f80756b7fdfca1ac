"""Backend kinds, the abstract backend types, and the self-registering registry.

The contract, as the reference design names it: every backend is a ``DataSink`` (save);
a ``StorageBackend`` also keeps the read contract (load, list, exists, is_file/is_dir) and
delete; a ``VirtualBackend`` generates its listing from metadata. Folders, copies and renames
are a capability, ``FileTree``, that a backend has or has not (disk and memory have it; a zarr
store is a flat set of planes and has not): callers ask ``backend.has_file_tree``, never call
a method that can only refuse. What the mount needs beyond this (real files, planes, stat in
bulk) it asks an image set (``backends/plates/image_set.py``), which knows its backend.

Backend classes register themselves when their class body runs (the
``StorageBackendMeta`` metaclass). Heavy backends (zarr pulls in zarr,
numcodecs and ome-zarr) live in modules that are imported only when a backend
of that kind is first asked for, so ``import backends`` stays light (the registry names
them by module: the zarr backend stands in the layer above, ``backends/ngff/``).
"""
from __future__ import annotations

import importlib
from abc import ABC, ABCMeta, abstractmethod
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import ReadOnlyError, UnknownBackendError


class Backend(str, Enum):
    """Where data lives. The value is the name used in metadata and on the command line."""

    MEMORY = "memory"
    DISK = "disk"
    ZARR = "zarr"
    VIRTUAL_WORKSPACE = "virtual_workspace"

    @classmethod
    def coerce(cls, value: "Backend | str") -> str:
        return value.value if isinstance(value, Backend) else str(value)


# name -> class, filled in by StorageBackendMeta as backend classes are defined.
STORAGE_BACKENDS: dict[str, type["DataSink"]] = {}

# name -> (module to import, what to install if that import fails).
# Like fsspec's registry: the class is imported on first use.
_KNOWN_BACKEND_MODULES: dict[str, tuple[str, str]] = {
    Backend.MEMORY.value: ("backends.storage.memory", ""),
    Backend.DISK.value: ("backends.storage.disk", "tifffile"),
    Backend.ZARR.value: ("backends.ngff.backend", "zarr>=3, numcodecs and ome-zarr"),
    Backend.VIRTUAL_WORKSPACE.value: ("backends.storage.virtual_workspace", ""),
}


class StorageBackendMeta(ABCMeta):
    """Registers every concrete class that sets ``_backend_type``."""

    def __new__(mcls, name, bases, namespace, **kw):
        cls = super().__new__(mcls, name, bases, namespace, **kw)
        backend_type = namespace.get("_backend_type")
        if backend_type is not None:
            STORAGE_BACKENDS[Backend.coerce(backend_type)] = cls
        return cls


class DataSink(ABC, metaclass=StorageBackendMeta):
    """Anything data can be sent to."""

    _backend_type: str | None = None

    @property
    def name(self) -> str:
        return Backend.coerce(self._backend_type or type(self).__name__)

    @abstractmethod
    def save(self, data: Any, path: str | Path, **kwargs) -> None:
        """Store one object under ``path``."""

    def save_batch(self, data_list: Sequence[Any], paths: Sequence[str | Path], **kwargs) -> None:
        if len(data_list) != len(paths):
            raise ValueError(f"save_batch: {len(data_list)} objects for {len(paths)} paths")
        for data, path in zip(data_list, paths):
            self.save(data, path, **kwargs)

    @property
    def has_file_tree(self) -> bool:
        """Whether the backend has folders, copies and renames (the ``FileTree`` capability)."""
        return isinstance(self, FileTree)

    def _refuse_write(self, path: str | Path) -> None:
        raise ReadOnlyError("backend is read-only", backend=self.name, path=path)


class StorageBackend(DataSink):
    """The read contract every storage backend keeps: data can be read back, listed, deleted."""

    @abstractmethod
    def load(self, path: str | Path, **kwargs) -> Any: ...

    def load_batch(self, paths: Sequence[str | Path], **kwargs) -> list[Any]:
        return [self.load(p, **kwargs) for p in paths]

    @abstractmethod
    def list_files(self, directory: str | Path, *, extensions: Iterable[str] | None = None,
                   recursive: bool = False) -> list[str]: ...

    @abstractmethod
    def list_dir(self, directory: str | Path) -> list[str]: ...

    @abstractmethod
    def exists(self, path: str | Path) -> bool: ...

    @abstractmethod
    def is_file(self, path: str | Path) -> bool: ...

    @abstractmethod
    def is_dir(self, path: str | Path) -> bool: ...

    @abstractmethod
    def delete(self, path: str | Path, *, recursive: bool = False) -> None: ...


class FileTree(ABC):
    """The file-manager capability: folders, copies and renames. A backend that has it lists
    ``FileTree`` among its bases (it holds no state of its own) and answers
    ``has_file_tree``."""

    @abstractmethod
    def ensure_directory(self, path: str | Path) -> None: ...

    @abstractmethod
    def copy(self, src: str | Path, dst: str | Path, *, overwrite: bool = False) -> None: ...

    @abstractmethod
    def move(self, src: str | Path, dst: str | Path, *, overwrite: bool = False) -> None: ...


class VirtualBackend(DataSink):
    """A backend whose listing is generated from metadata, not from a real file system."""

    @abstractmethod
    def list_files(self, directory: str | Path = "", **kwargs) -> list[str]: ...

    @abstractmethod
    def generate_filename(self, metadata: dict, **kwargs) -> str: ...

    def save(self, data: Any, path: str | Path, **kwargs) -> None:
        self._refuse_write(path)


def get_backend_class(name: Backend | str) -> type[DataSink]:
    """Return the class registered under ``name``, importing its module on first use."""
    key = Backend.coerce(name)
    if key not in STORAGE_BACKENDS and key in _KNOWN_BACKEND_MODULES:
        module, needs = _KNOWN_BACKEND_MODULES[key]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UnknownBackendError(
                f"backend {key!r} needs {needs or 'a missing module'}; install it", backend=key,
                cause=e) from e
    try:
        return STORAGE_BACKENDS[key]
    except KeyError:
        known = sorted(set(STORAGE_BACKENDS) | set(_KNOWN_BACKEND_MODULES))
        raise UnknownBackendError(f"unknown backend {key!r} (known: {', '.join(known)})",
                                  backend=key) from None


def discover_all_backends() -> None:
    """Import every known backend module so that each class registers itself."""
    for key in _KNOWN_BACKEND_MODULES:
        get_backend_class(key)
