"""Read-only backend that serves a nested vendor plate under flat names.

A virtual name is looked up in the plate's ``workspace_mapping`` (a dict) and
the real nested file is read in place: no copy, no symlink.

Containment is checked once per *source directory*, not once per file: a plate of
1,000,000 images has a few hundred folders. A mapping entry is refused when the
backend is built if it is absolute, contains '..', an empty part or NUL; its folder
is resolved (``realpath``) once and must lie inside the plate; the file itself is
opened relative to that folder with ``O_NOFOLLOW``, so a symlinked source file is
never followed, wherever it points. Sizes for a listing come from one ``scandir``
per source folder.
"""
from __future__ import annotations

import errno
import os
import threading
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from natsort import natsorted

from .base import Backend, VirtualBackend
from .errors import PathEscapeError, StorageNotFoundError
from .formats import read_file
from .naming import ParsedName, virtual_name

SCAN_THREADS = 8       # source folders scanned at once when a folder is first listed


def check_mapping(mapping: Mapping[str, str]) -> None:
    """check_mapping_entry for every entry; a million entries in a few C-level scans of two
    joined strings, entry by entry only if one of them looks suspicious."""
    names, rels = "\n".join(mapping), "\n".join(mapping.values())
    suspicious = any(c in names for c in ("/", "\\", "\0")) or "." in mapping or ".." in mapping \
        or any(c in rels for c in ("\0", "\\", "//", "..", ":", "\n\n", "/\n", "\n/")) \
        or rels.startswith(("/", "\n")) or rels.endswith(("/", "\n")) or not names \
        or names.count("\n") != len(mapping) - 1 or rels.count("\n") != len(mapping) - 1
    if mapping and suspicious:
        for name, rel in mapping.items():
            check_mapping_entry(name, rel)


def check_mapping_entry(name: str, rel: str) -> None:
    """Refuse a flat name with '/', '\\', NUL or '..', and a source path that is absolute
    or has a '..', empty or NUL part. String tests only: this runs once per image."""
    if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
        raise PathEscapeError(f"virtual name {name!r} is not a plain file name", path=name)
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise PathEscapeError(f"mapping entry {name!r} -> {rel!r} is absolute", path=rel)
    if not rel or "\0" in rel or "\\" in rel or rel.endswith("/"):
        raise PathEscapeError(f"mapping entry {name!r} -> {rel!r} is not a plate-relative file "
                              f"path (empty, NUL, backslash or trailing '/')", path=rel)
    parts = rel.split("/")
    if ".." in parts or "" in parts:
        raise PathEscapeError(f"mapping entry {name!r} -> {rel!r} contains '..' or '//'", path=rel)


class SourceDir:
    """One folder of source files, resolved and checked to lie inside the plate once."""

    __slots__ = ("rel", "path", "identity")

    def __init__(self, root: Path, rel: str) -> None:
        self.rel = rel
        resolved = os.path.realpath(root / rel) if rel else str(root)
        if resolved != str(root) and not resolved.startswith(str(root) + os.sep):
            raise PathEscapeError(f"source folder {rel!r} resolves outside {root}", path=rel)
        self.path = resolved
        self.identity: tuple[int, int] | None = None      # (st_dev, st_ino) when checked

    def open_dir(self) -> int:
        """A descriptor of this folder; refused if the folder was swapped since it was
        checked and now leads elsewhere (a symlink put in its place)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self.identity:
            if os.path.realpath(self.path) != self.path:
                os.close(fd)
                raise PathEscapeError(f"source folder {self.rel!r} was replaced by a link",
                                      path=self.path)
            self.identity = (st.st_dev, st.st_ino)
        return fd

    def scan(self) -> dict[str, os.stat_result]:
        """Regular files of this folder (symlinks left out: they are never followed)."""
        fd = self.open_dir()
        try:
            with os.scandir(fd) as it:
                return {e.name: e.stat(follow_symlinks=False) for e in it
                        if e.is_file(follow_symlinks=False)}
        finally:
            os.close(fd)


def open_in_dir(folder: SourceDir, name: str) -> int:
    """Open one source file read-only, relative to its checked folder, without following a
    symlink. The one place pass-through opens a source (route other containment checks here)."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise PathEscapeError(f"source name {name!r} is not a plain file name", path=name)
    dir_fd = folder.open_dir()
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                       dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PathEscapeError(f"source {folder.rel}/{name} is a symbolic link; links are "
                                  f"not followed (one could lead outside the plate)",
                                  path=f"{folder.rel}/{name}") from None
        raise
    finally:
        os.close(dir_fd)


class VirtualWorkspaceBackend(VirtualBackend):
    _backend_type = Backend.VIRTUAL_WORKSPACE

    def __init__(self, plate_root: str | os.PathLike, mapping: Mapping[str, str]) -> None:
        self.root = Path(os.path.realpath(plate_root))
        check_mapping(mapping)
        # Not copied: it is read-only here and a large plate's mapping holds a million entries.
        self._mapping = mapping
        self._dirs: dict[str, SourceDir] = {}
        self._dirs_lock = threading.Lock()

    def _key(self, path: str | os.PathLike) -> str:
        # Accept "A01_....tif" or any path ending in it (e.g. "workspace/A01_....tif").
        return os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]

    def _rel(self, path: str | os.PathLike) -> str:
        key = self._key(path)
        try:
            return self._mapping[key]
        except KeyError:
            raise StorageNotFoundError("no such virtual file", backend=self.name, path=path) from None

    def source_dir(self, rel_dir: str) -> SourceDir:
        """The checked folder ``rel_dir`` (plate-relative), resolved once per backend."""
        folder = self._dirs.get(rel_dir)
        if folder is None:
            with self._dirs_lock:
                folder = self._dirs.get(rel_dir) or SourceDir(self.root, rel_dir)
                self._dirs[rel_dir] = folder
        return folder

    def source(self, path: str | os.PathLike) -> tuple[SourceDir, str]:
        """(checked folder, file name) of the source behind a virtual name."""
        rel_dir, _, base = self._rel(path).rpartition("/")
        return self.source_dir(rel_dir), base

    def source_rel(self, path: str | os.PathLike) -> str:
        return self._rel(path)

    def open_source(self, path: str | os.PathLike) -> int:
        """A read-only descriptor of the source behind a virtual name (no symlink followed)."""
        return open_in_dir(*self.source(path))

    def stat_sources(self, names: Sequence[str]) -> tuple[array, array, array]:
        """(sizes, mtimes in ns, inode numbers) of the sources of ``names``, in that order,
        from one scandir per source folder (folders scanned in parallel: the stat calls
        release the GIL); -1 for a source that is missing or not a regular file (a symlink).
        Raises PathEscapeError for a folder leaving the plate."""
        mapping = self._mapping
        folders = {rel.rpartition("/")[0] for rel in mapping.values()}
        with ThreadPoolExecutor(min(SCAN_THREADS, len(folders) or 1)) as pool:
            scans = dict(zip(folders, pool.map(self._scan, folders)))
        n = len(names)
        sizes, mtimes, inodes = array("q", [-1]) * n, array("q", [0]) * n, array("q", [0]) * n
        no_scan: dict = {}
        for i, name in enumerate(names):
            rel = mapping.get(name)
            if rel is None:            # a listed name without a source stays at -1
                continue
            folder, _, base = rel.rpartition("/")
            st = scans.get(folder, no_scan).get(base)
            if st is not None:
                sizes[i], mtimes[i], inodes[i] = st.st_size, st.st_mtime_ns, st.st_ino
        return sizes, mtimes, inodes

    def _scan(self, rel_dir: str) -> dict[str, os.stat_result]:
        try:
            return self.source_dir(rel_dir).scan()
        except FileNotFoundError:
            return {}

    def real_path(self, path: str | os.PathLike) -> Path:
        """The nested file behind a virtual name: its folder checked to lie inside the plate,
        the file itself not a symlink."""
        folder, base = self.source(path)
        real = Path(folder.path, base)
        if real.is_symlink():
            raise PathEscapeError(f"source {folder.rel}/{base} is a symbolic link; links are "
                                  f"not followed (one could lead outside the plate)", path=real)
        return real

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
