"""Read-only backend that serves a nested vendor plate under flat names.

A virtual name is looked up in the plate's ``workspace_mapping`` (a dict) and
the real nested file is read in place: no copy, no symlink. Mapping entries
that are absolute or contain '..' are refused when the backend is built; an
entry that resolves through a symlink to outside the plate is refused when it
is opened.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from natsort import natsorted

from .base import Backend, VirtualBackend
from .errors import PathEscapeError, StorageNotFoundError
from .formats import read_file
from .naming import ParsedName, virtual_name
from .paths import check_relative, contained_path


class VirtualWorkspaceBackend(VirtualBackend):
    _backend_type = Backend.VIRTUAL_WORKSPACE

    def __init__(self, plate_root: str | os.PathLike, mapping: Mapping[str, str], *,
                 strict: bool = True) -> None:
        """``strict=False`` (the mount): a bad entry does not refuse the whole mapping; its
        name is kept and opening it raises the PathEscapeError (EACCES in the mount)."""
        self.root = Path(os.path.realpath(plate_root))
        self._refused: dict[str, PathEscapeError] = {}
        self._mapping = dict(mapping)
        for name, rel in mapping.items():
            try:
                check_relative(name, what=f"virtual name {name!r}")
            except PathEscapeError:
                if strict:
                    raise
                del self._mapping[name]        # not a name a folder can list
                continue
            try:
                check_relative(rel, what=f"mapping entry {name!r} -> {rel!r}")
            except PathEscapeError as e:
                if strict:
                    raise
                self._refused[name] = e

    def _key(self, path: str | os.PathLike) -> str:
        # Accept "A01_....tif" or any path ending in it (e.g. "workspace/A01_....tif").
        return os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]

    def real_path(self, path: str | os.PathLike) -> Path:
        """The nested file behind a virtual name, checked to lie inside the plate."""
        key = self._key(path)
        if key in self._refused:
            raise self._refused[key]
        try:
            rel = self._mapping[key]
        except KeyError:
            raise StorageNotFoundError("no such virtual file", backend=self.name, path=path) from None
        return contained_path(self.root, rel, what=f"mapping entry {key!r}")

    def load(self, path: str | os.PathLike, **_) -> Any:
        real = self.real_path(path)
        if not real.is_file():
            raise StorageNotFoundError(f"source file of {self._key(path)!r} is missing",
                                       backend=self.name, path=real)
        return read_file(real, backend=self.name)

    def load_batch(self, paths: Iterable[str | os.PathLike], **kw) -> list[Any]:
        return [self.load(p, **kw) for p in paths]

    def list_files(self, directory: str | os.PathLike = "", *, extensions=None,
                   recursive: bool = False) -> list[str]:
        names: Iterable[str] = self._mapping
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            names = (n for n in names if n.lower().endswith(exts))
        return natsorted(names)

    def exists(self, path) -> bool:
        return self._key(path) in self._mapping

    is_file = exists

    def is_dir(self, path) -> bool:
        return False

    def generate_filename(self, metadata: dict, **_) -> str:
        return virtual_name(ParsedName(**metadata))

    def __len__(self) -> int:
        return len(self._mapping)
