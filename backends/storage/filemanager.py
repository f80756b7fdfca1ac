"""FileManager: one API over every backend, with the backend named on every call.

Naming the backend explicitly (rather than guessing from the path) is what
lets the same pipeline code read a plate from zarr, stage in memory and write
to disk without any branch of its own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from natsort import natsorted

from .base import Backend, DataSink, FileTree, StorageBackend, get_backend_class
from ..errors import StorageError, StorageExistsError, UnknownBackendError
from .formats import IMAGE_EXTENSIONS


class FileManager:
    def __init__(self, registry: dict[str, DataSink] | None = None) -> None:
        self._backends: dict[str, DataSink] = {}
        for name, backend in (registry or {}).items():
            self.register(name, backend)

    # -- backends -----------------------------------------------------------
    def register(self, name: Backend | str, backend: DataSink) -> None:
        """Use ``backend`` for ``name`` (for example a zarr backend bound to one store)."""
        self._backends[Backend.coerce(name)] = backend

    def backend(self, name: Backend | str) -> DataSink:
        key = Backend.coerce(name)
        if key in self._backends:
            return self._backends[key]
        cls = get_backend_class(key)  # raises UnknownBackendError for unknown names
        try:
            instance = cls()
        except TypeError as e:
            raise UnknownBackendError(
                f"backend {key!r} needs configuration; create it and call FileManager.register()",
                backend=key, cause=e) from e
        self._backends[key] = instance
        return instance

    def _storage(self, name: Backend | str, op: str) -> StorageBackend:
        b = self.backend(name)
        if not hasattr(b, op):
            raise StorageError(f"backend does not support {op}", backend=Backend.coerce(name))
        return b  # type: ignore[return-value]

    def _file_tree(self, name: Backend | str, op: str) -> FileTree:
        """The backend, if it has the file-tree capability (folders, copies, renames)."""
        b = self.backend(name)
        if not b.has_file_tree:
            raise StorageError(f"backend has no folders, copies or renames (cannot {op}): "
                               "its names are a flat set", backend=Backend.coerce(name))
        return b  # type: ignore[return-value]

    # -- data ---------------------------------------------------------------
    def save(self, data: Any, path: str | Path, backend: Backend | str, **kw) -> None:
        self.backend(backend).save(data, path, **kw)

    def load(self, path: str | Path, backend: Backend | str, **kw) -> Any:
        return self._storage(backend, "load").load(path, **kw)

    def save_batch(self, data_list: Sequence[Any], paths: Sequence[str | Path],
                   backend: Backend | str, **kw) -> None:
        self.backend(backend).save_batch(data_list, paths, **kw)

    def load_batch(self, paths: Sequence[str | Path], backend: Backend | str, **kw) -> list[Any]:
        return self._storage(backend, "load_batch").load_batch(paths, **kw)

    # -- listing --------------------------------------------------------------
    def list_files(self, directory: str | Path, backend: Backend | str, *,
                   extensions: Iterable[str] | None = None, recursive: bool = False) -> list[str]:
        files = self._storage(backend, "list_files").list_files(
            directory, extensions=extensions, recursive=recursive)
        return natsorted(files)

    def list_image_files(self, directory: str | Path, backend: Backend | str, *,
                         extensions: Iterable[str] = IMAGE_EXTENSIONS,
                         recursive: bool = False) -> list[str]:
        """Image files in natural order: ``img_2`` before ``img_10``."""
        return self.list_files(directory, backend, extensions=extensions, recursive=recursive)

    def list_dir(self, directory: str | Path, backend: Backend | str) -> list[str]:
        return natsorted(self._storage(backend, "list_dir").list_dir(directory))

    def exists(self, path: str | Path, backend: Backend | str) -> bool:
        return self._storage(backend, "exists").exists(path)

    def is_file(self, path: str | Path, backend: Backend | str) -> bool:
        return self._storage(backend, "is_file").is_file(path)

    def is_dir(self, path: str | Path, backend: Backend | str) -> bool:
        return self._storage(backend, "is_dir").is_dir(path)

    # -- tree -----------------------------------------------------------------
    def ensure_directory(self, path: str | Path, backend: Backend | str) -> None:
        self._file_tree(backend, "ensure_directory").ensure_directory(path)

    def delete(self, path: str | Path, backend: Backend | str, *, recursive: bool = False) -> None:
        self._storage(backend, "delete").delete(path, recursive=recursive)

    def copy(self, src: str | Path, dst: str | Path, backend: Backend | str, *,
             overwrite: bool = False) -> None:
        b = self.backend(backend)
        if b.has_file_tree:
            b.copy(src, dst, overwrite=overwrite)
            return
        # a flat store (zarr) copies a plane by value: load it, save it under the new name
        store = b
        if not isinstance(store, StorageBackend):
            raise StorageError("backend does not support copy", backend=Backend.coerce(backend))
        if store.exists(dst) and not overwrite:
            raise StorageExistsError("destination exists", backend=Backend.coerce(backend), path=dst)
        store.save(store.load(src), dst)

    def move(self, src: str | Path, dst: str | Path, backend: Backend | str, *,
             overwrite: bool = False, **kw) -> None:
        self._file_tree(backend, "move").move(src, dst, overwrite=overwrite, **kw)

    def mirror_directory(self, src: str | Path, dst: str | Path, backend: Backend | str, *,
                         overwrite_symlinks_only: bool = False) -> int:
        return self._storage(backend, "mirror_directory").mirror_directory(
            src, dst, overwrite_symlinks_only=overwrite_symlinks_only)
