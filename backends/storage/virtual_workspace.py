"""Read-only backend that serves a nested vendor plate under flat names.

A virtual name is looked up in the plate's ``workspace_mapping`` (a dict) and
the real nested file is read in place: no copy, no symlink.

Containment is checked once per *source directory*, not once per file: a plate of
1,000,000 images has a few hundred folders. A mapping entry is refused when the
backend is built if it is absolute, contains '..', an empty part or NUL; its folder
is resolved (``realpath``) once and must lie inside the plate; the file itself is
opened relative to that folder with ``O_NOFOLLOW``, so a symlinked source file is
never followed, wherever it points. Sizes for a listing come from one ``lstat`` per
source relative to its folder's descriptor, rows in order and batch by batch
(``stat_sources``), so a first listing can serve rows while later ones are stat-ed.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from natsort import natsorted

from .base import Backend, VirtualBackend
from ..guards.containment import open_beneath, open_dir_beneath
from ..errors import PathEscapeError, StorageNotFoundError
from .formats import read_file
from ..naming import ParsedName, virtual_name

log = logging.getLogger(__name__)

SCAN_THREADS = 8       # batches of rows stat-ed at once on a slow (network) file system
STAT_ROWS = 2048       # rows stat-ed per batch (a listing serves rows batch by batch)
# A stat slower than this per entry means a network file system, where scanning folders in
# parallel hides the latency. On a local disk, threads only fight over the GIL: two threads
# scan 100,000 entries in 0.34 s of wall time, one thread in 0.22 s.
SLOW_STAT_SECONDS = 20e-6


def check_mapping(mapping: Mapping[str, str]) -> None:
    """check_mapping_entry for every entry; a million entries in a few C-level scans of two
    joined strings, entry by entry only if one of them looks suspicious."""
    names, rels = "\n".join(mapping), "\n".join(mapping.values())
    suspicious = any(c in names for c in ("/", "\\", "\0")) or "." in mapping or ".." in mapping \
        or any(c in rels for c in ("\0", "//", "..", ":", "\n\n", "/\n", "\n/")) \
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
    # A backslash is an ordinary character of a Linux file name (vendor files have them)
    if not rel or "\0" in rel or rel.endswith("/"):
        raise PathEscapeError(f"mapping entry {name!r} -> {rel!r} is not a plate-relative file "
                              f"path (empty, NUL or trailing '/')", path=rel)
    parts = rel.split("/")
    if ".." in parts or "" in parts:
        raise PathEscapeError(f"mapping entry {name!r} -> {rel!r} contains '..' or '//'", path=rel)


class SourceDir:
    """One folder of source files, resolved once and checked to lie inside the plate."""

    __slots__ = ("root", "rel", "path", "parts")

    def __init__(self, root: Path, rel: str) -> None:
        self.root, self.rel = str(root), rel
        resolved = os.path.realpath(root / rel) if rel else self.root
        if resolved != self.root and not resolved.startswith(self.root + os.sep):
            raise PathEscapeError(f"source folder {rel!r} resolves outside {root}", path=rel)
        self.path = resolved
        self.parts = tuple(resolved[len(self.root):].split(os.sep)[1:])   # no links among them

    def open_dir(self) -> int:
        """A descriptor of this folder, opened beneath the plate root through no symlink
        (backends.guards.containment): a folder swapped for a link since it was checked is refused,
        race-free."""
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return open_dir_beneath(root, "/".join(self.parts))
        except PathEscapeError:
            raise PathEscapeError(f"source folder {self.rel!r} was replaced by a link since the "
                                  f"mount checked it", path=self.path) from None
        except NotADirectoryError:
            raise PathEscapeError(f"source folder {self.rel!r} was replaced by a file since the "
                                  f"mount checked it", path=self.path) from None
        finally:
            os.close(root)


def open_in_dir(folder: SourceDir, name: str) -> int:
    """Open one source file read-only, relative to its checked folder, without following a
    symlink. The one place pass-through opens a source (route other containment checks here)."""
    if not name or "/" in name or "\0" in name or name in (".", ".."):
        raise PathEscapeError(f"source name {name!r} is not a plain file name", path=name)
    dir_fd = folder.open_dir()
    try:
        return open_beneath(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK)
    except PathEscapeError:
        raise PathEscapeError(f"source {folder.rel}/{name} is a symbolic link; links are "
                              f"not followed (one could lead outside the plate)",
                              path=f"{folder.rel}/{name}") from None
    finally:
        os.close(dir_fd)


class VirtualWorkspaceBackend(VirtualBackend):
    _backend_type = Backend.VIRTUAL_WORKSPACE

    def __init__(self, plate_root: str | os.PathLike, mapping: Mapping[str, str], *,
                 strict: bool = True) -> None:
        """``strict=False`` (the mount): a bad entry does not refuse the whole mapping; its
        name is kept and opening it raises the PathEscapeError (EACCES in the mount)."""
        self.root = Path(os.path.realpath(plate_root))
        self._refused: dict[str, PathEscapeError] = {}
        if strict:
            check_mapping(mapping)
        else:
            mapping = self._refuse_bad_entries(mapping)
        # Not copied: it is read-only here and a large plate's mapping holds a million entries.
        self._mapping = mapping
        self._dirs: dict[str, SourceDir] = {}
        self._dirs_lock = threading.Lock()

    def _refuse_bad_entries(self, mapping: Mapping[str, str]) -> Mapping[str, str]:
        """The mapping without the entries check_mapping refuses; each refused source is kept
        in ``_refused`` so that only its own file fails (a name that is no plain file name
        cannot be listed at all and is dropped)."""
        try:
            check_mapping(mapping)
            return mapping
        except PathEscapeError:
            pass
        good = {}
        for name, rel in mapping.items():
            try:
                check_mapping_entry(name, rel)
                good[name] = rel
            except PathEscapeError as e:
                if name and "/" not in name and "\\" not in name and "\0" not in name \
                        and name not in (".", ".."):
                    self._refused[name] = e
        return good

    def _key(self, path: str | os.PathLike) -> str:
        # Accept "A01_....tif" or any path ending in it (e.g. "workspace/A01_....tif").
        return os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]

    def _rel(self, path: str | os.PathLike) -> str:
        key = self._key(path)
        if key in self._refused:
            raise self._refused[key]
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

    def stat_sources(self, names: Sequence[str], columns: tuple[array, array, array] | None = None,
                     on_progress: Callable[[int], None] | None = None
                     ) -> tuple[array, array, array]:
        """(sizes, mtimes in ns, inode numbers) of the sources of ``names``, in that order
        (filled into ``columns`` if given; permission bits too, into a fourth column if it has
        one); -1 for a source that is missing, not a regular file (a symlink is never followed)
        or in a folder that leaves the plate (logged). Each source folder is opened once and its
        files stat-ed relative to it.

        Rows are stat-ed in order, STAT_ROWS at a time, ``on_progress(rows done)`` after each
        batch, so a listing can serve the first rows while the rest are stat-ed. One thread
        while stat-ing is fast; batches in parallel once the first one shows network latency."""
        n = len(names)
        if columns is None:
            columns = array("q", [-1]) * n, array("q", [0]) * n, array("q", [0]) * n
        progress = on_progress or (lambda _done: None)
        folders: dict[str, int] = {}                # folder -> open descriptor, -1 if refused
        batches = [range(i, min(i + STAT_ROWS, n)) for i in range(0, n, STAT_ROWS)]
        try:
            for i, rows in enumerate(batches):
                started = time.perf_counter()
                self._stat_rows(names, rows, columns, folders)
                progress(rows.stop)
                if time.perf_counter() - started > SLOW_STAT_SECONDS * len(rows):
                    self._stat_in_parallel(names, batches[i + 1:], columns, folders, progress)
                    break
        finally:
            for fd in folders.values():
                if fd >= 0:
                    os.close(fd)
        return columns

    def _stat_in_parallel(self, names, batches: list[range], columns, folders, progress) -> None:
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            for rows, done in [(rows, pool.submit(self._stat_rows, names, rows, columns, folders))
                               for rows in batches]:
                done.result()                       # in order: progress counts a prefix
                progress(rows.stop)

    def _stat_rows(self, names: Sequence[str], rows: range, columns: tuple[array, array, array],
                   folders: dict[str, int]) -> None:
        # The inner loop of a first listing (100,000s of rows): locals only, one lstat a row.
        sizes, mtimes, inodes = columns[:3]
        modes = columns[3] if len(columns) > 3 else {}      # permission bits, where asked
        mapping, lstat, is_regular = self._mapping, os.lstat, stat_mod.S_ISREG
        for row in rows:
            rel = mapping.get(names[row])
            if rel is None:                 # a listed name without a source stays at -1
                continue
            folder, _, base = rel.rpartition("/")
            fd = folders.get(folder)
            if fd is None:
                fd = self._folder_fd(folder, folders)
            if fd < 0:
                continue
            try:
                st = lstat(base, dir_fd=fd)
            except FileNotFoundError:
                continue
            if is_regular(st.st_mode):
                sizes[row], mtimes[row], inodes[row] = st.st_size, st.st_mtime_ns, st.st_ino
                modes[row] = st.st_mode & 0o777

    def _folder_fd(self, folder: str, folders: dict[str, int]) -> int:
        try:
            fd = self.source_dir(folder).open_dir()
        except FileNotFoundError:
            fd = -1
        except (OSError, PathEscapeError) as e:     # its files are listed as missing
            log.warning("source folder %s/ refused: %s", folder, e)
            fd = -1
        with self._dirs_lock:               # two scanning threads may open the same folder
            kept = folders.setdefault(folder, fd)
        if kept != fd and fd >= 0:
            os.close(fd)
        return kept

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
