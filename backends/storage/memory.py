"""In-memory backend: any Python object under a normalized path key.

Intermediate pipeline results and special outputs are staged here. Objects are
stored as given (no copy); saving over an existing key fails unless
``overwrite=True`` so two steps cannot silently clobber each other.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterable

from natsort import natsorted

from .base import Backend, FileTree, StorageBackend
from ..errors import StorageError, StorageExistsError, StorageNotFoundError
from .paths import normalize_key


class MemoryStorageBackend(FileTree, StorageBackend):
    _backend_type = Backend.MEMORY

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}
        self._dirs: set[str] = {"/"}
        self._lock = threading.RLock()

    # -- helpers ---------------------------------------------------------
    def _parent(self, key: str) -> str:
        return key.rsplit("/", 1)[0] or "/"

    def _add_parents(self, key: str) -> None:
        parent = self._parent(key)
        while parent not in self._dirs:
            if parent in self._files:
                raise StorageExistsError("a parent of this path is a file", backend=self.name, path=key)
            self._dirs.add(parent)
            parent = self._parent(parent)

    def _children(self, key: str) -> Iterable[str]:
        prefix = key.rstrip("/") + "/"
        for k in list(self._files) + list(self._dirs):
            if k != key and k.startswith(prefix):
                yield k

    # -- StorageBackend ----------------------------------------------------
    def save(self, data: Any, path: str | Path, *, overwrite: bool = False, **_) -> None:
        key = normalize_key(path)
        with self._lock:
            if key in self._dirs:
                raise StorageExistsError("path is a directory", backend=self.name, path=key)
            if key in self._files and not overwrite:
                raise StorageExistsError("path exists (pass overwrite=True to replace it)",
                                         backend=self.name, path=key)
            self._add_parents(key)
            self._files[key] = data

    def load(self, path: str | Path, **_) -> Any:
        key = normalize_key(path)
        try:
            return self._files[key]
        except KeyError:
            raise StorageNotFoundError("no such file", backend=self.name, path=key) from None

    def list_files(self, directory: str | Path = "/", *, extensions: Iterable[str] | None = None,
                   recursive: bool = False) -> list[str]:
        key = normalize_key(directory)
        if key not in self._dirs:
            raise StorageNotFoundError("no such directory", backend=self.name, path=key)
        exts = None if extensions is None else {e.lower() for e in extensions}
        prefix = key.rstrip("/") + "/"
        out = []
        with self._lock:
            for k in self._files:
                if not k.startswith(prefix):
                    continue
                if not recursive and "/" in k[len(prefix):]:
                    continue
                if exts is not None and Path(k).suffix.lower() not in exts:
                    continue
                out.append(k)
        return natsorted(out)

    def list_dir(self, directory: str | Path = "/") -> list[str]:
        key = normalize_key(directory)
        if key not in self._dirs:
            raise StorageNotFoundError("no such directory", backend=self.name, path=key)
        prefix = key.rstrip("/") + "/"
        with self._lock:
            names = {k[len(prefix):].split("/", 1)[0] for k in self._children(key)}
        return natsorted(names)

    def exists(self, path: str | Path) -> bool:
        key = normalize_key(path)
        return key in self._files or key in self._dirs

    def is_file(self, path: str | Path) -> bool:
        return normalize_key(path) in self._files

    def is_dir(self, path: str | Path) -> bool:
        return normalize_key(path) in self._dirs

    def delete(self, path: str | Path, *, recursive: bool = False) -> None:
        key = normalize_key(path)
        with self._lock:
            if key in self._files:
                del self._files[key]
                return
            if key not in self._dirs:
                raise StorageNotFoundError("no such file or directory", backend=self.name, path=key)
            children = list(self._children(key))
            if children and not recursive:
                raise StorageError("directory not empty (pass recursive=True)", backend=self.name, path=key)
            for k in children:
                self._files.pop(k, None)
                self._dirs.discard(k)
            if key != "/":
                self._dirs.discard(key)

    def ensure_directory(self, path: str | Path) -> None:
        key = normalize_key(path)
        with self._lock:
            if key in self._files:
                raise StorageExistsError("path is a file", backend=self.name, path=key)
            self._add_parents(key + "/x")

    def copy(self, src: str | Path, dst: str | Path, *, overwrite: bool = False) -> None:
        self.save(self.load(src), dst, overwrite=overwrite)

    def move(self, src: str | Path, dst: str | Path, *, overwrite: bool = False) -> None:
        with self._lock:
            self.save(self.load(src), dst, overwrite=overwrite)
            del self._files[normalize_key(src)]
