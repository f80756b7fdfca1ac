"""Folders of pass-through images that cost a few dozen bytes per image.

A plate can hold 1,000,000 images, and a file manager lists them all. Instead of one
node object per image, an ``ImageDir`` keeps its images in columns: the names (shared
with the plate's mapping, not copied), and the source's size, mtime and inode number in
``array`` columns, filled in listing order by a thread of their own at the first listing
(readdir serves the rows stat-ed so far; see ``ListedImages.load``). A file node is made on
demand from a row (``child_at``/``get``) and dropped when the FUSE layer is done with it.

Inode numbers are a contiguous range per image set (``LISTED_INODES`` and up, above every
node-counter inode), so the FUSE layer finds a node from its inode without a dictionary of
a million entries: ``find_listed(inode)``.
"""
from __future__ import annotations

import bisect
import ctypes
import logging
import os
import stat as stat_mod
import threading
from array import array
from typing import NamedTuple, Sequence

import numpy as np

from .nodes import DirNode, PassthroughFile, _ReadAhead, file_mode

log = logging.getLogger(__name__)

LISTED_INODES = 1 << 40          # node-counter inodes stay far below this
_ranges_lock = threading.Lock()
_range_starts: list[int] = []
_range_sets: list["ListedImages"] = []


def find_listed(inode: int) -> "ListedFile | None":
    """The file node behind an inode of a listed image set, or None."""
    if inode < LISTED_INODES:
        return None
    i = bisect.bisect_right(_range_starts, inode) - 1
    if i < 0:
        return None
    images = _range_sets[i]
    row = inode - images.first_inode
    return images.node(row) if row < len(images.names) else None


def reserve_inodes(images: "ListedImages") -> int:
    with _ranges_lock:
        first = _range_starts[-1] + len(_range_sets[-1].names) + 1 if _range_starts \
            else LISTED_INODES
        _range_starts.append(first)
        _range_sets.append(images)
        return first


class ListedImages:
    """The images of one image set that stats its files in bulk (``ImageSet.stats_in_bulk``),
    served in place; shared by its folder and any view of it (``images/``), so the sources
    are stat-ed once."""

    def __init__(self, images, xattrs) -> None:
        self.images = images             # a backends.plates.image_set.ImageSet
        self.names: Sequence[str] = images.names
        self.xattrs = xattrs             # name -> {xattr: value}, asked only with --xattrs
        self.lock = threading.Lock()
        self._stat_progress = threading.Condition(self.lock)
        self.ready = 0                   # rows [0, ready) are stat-ed
        self.first_inode = 0
        self.sizes = self.mtimes = self.source_inodes = self.modes = None
        self._hashes: np.ndarray | None = None
        self._order: np.ndarray | None = None

    def load(self) -> None:
        """Start stat-ing every source, rows in order, in a thread of its own: a first
        listing serves each batch of rows as soon as it is stat-ed (``wait_rows``), so the
        daemon's stat calls overlap the kernel's and the client's work on earlier rows."""
        with self.lock:
            if self.sizes is not None:
                return
            n = len(self.names)
            self.mtimes, self.source_inodes = array("q", [0]) * n, array("q", [0]) * n
            self.modes = array("q", [0o644]) * n       # permission bits: the source's own
            self.first_inode = reserve_inodes(self)
            self.sizes = array("q", [-1]) * n          # set last: stat-ing has begun
        threading.Thread(target=self._stat_all, name="vfsmount-stat", daemon=True).start()

    def _stat_all(self) -> None:
        try:
            self.images.stat_sources(self.names, (self.sizes, self.mtimes, self.source_inodes,
                                                  self.modes), self._advance)
        except Exception:           # the rows not stat-ed stay "missing": listed, reads fail
            log.exception("stat-ing the sources of %d images failed", len(self.names))
        finally:
            self._advance(len(self.names))
            release_freed_memory()

    def _advance(self, done: int) -> None:
        with self._stat_progress:
            self.ready = max(self.ready, done)
            self._stat_progress.notify_all()

    @property
    def complete(self) -> bool:
        return self.ready >= len(self.names)

    def wait_rows(self, stop: int) -> None:
        """Return once rows [0, stop) are stat-ed (blocks: a worker thread's call)."""
        stop = min(stop, len(self.names))
        if self.ready < stop:
            with self._stat_progress:
                self._stat_progress.wait_for(lambda: self.ready >= stop)

    def _index(self) -> None:
        """Sort the names' hashes once, at the first lookup by name (a listing needs none)."""
        with self.lock:
            if self._hashes is None:
                hashes = np.fromiter(map(hash, self.names), dtype=np.int64, count=len(self.names))
                order = np.argsort(hashes, kind="stable")
                self._order, self._hashes = order.astype(np.int32), hashes[order]

    def row_of(self, name: str) -> int | None:
        """The row of ``name``: a binary search among the names' hashes."""
        if self._hashes is None:
            self._index()
        h = hash(name)
        i = int(np.searchsorted(self._hashes, h))
        while i < len(self._hashes) and self._hashes[i] == h:
            row = int(self._order[i])
            if self.names[row] == name:
                return row
            i += 1
        return None

    def node(self, row: int) -> "ListedFile":
        self.wait_rows(row + 1)
        return ListedFile(self, row)

    def columns(self) -> "Columns":
        """The rows as readdir sends them (see ``nodes.DirNode.listing``)."""
        return Columns(self.first_inode, self.names, self.sizes, self.mtimes, self.ready,
                       self.modes)


class Columns(NamedTuple):
    """A columnar listing: row i is ``names[i]``, inode ``first_inode + i``, ``sizes[i]``
    (negative: the source is missing, listed as 0 bytes), ``mtimes[i]`` in ns and
    ``modes[i]`` (permission bits); rows [0, ready) are final (``wait_rows`` for more). The
    columns are sliced, never indexed."""

    first_inode: int
    names: Sequence[str]
    sizes: Sequence[int]
    mtimes: Sequence[int]
    ready: int
    modes: Sequence[int]


class ListedFile(PassthroughFile):
    """One row of a ListedImages, as the file node the FUSE layer expects."""

    __slots__ = ("row",)

    def __init__(self, images: ListedImages, row: int) -> None:
        self._source = images
        self.row = row
        self.name = images.names[row]
        self.inode = images.first_inode + row
        self.mode = file_mode(images.modes[row])
        self.mtime_ns = images.mtimes[row]     # _seen stays unset: size/refresh use the columns

    @property
    def size(self) -> int:
        size = self._source.sizes[self.row]
        if size < 0:
            raise FileNotFoundError(f"source of {self.name} is missing or not a regular file")
        return size

    def path(self):
        return self._source.images.real_path(self.name)

    def get_xattrs(self) -> dict[bytes, bytes]:
        return self._source.xattrs(self.name)

    def _stat_once(self) -> None:
        pass                        # the columns hold its mode: no stat per attribute

    def refresh(self) -> bool:
        """Re-stat the source (the link itself if it is one: never followed); True if it
        changed since it was listed or last opened (replaced while mounted)."""
        images, row = self._source, self.row
        st = images.images.source_stat(self.name)
        seen = (st.st_size, st.st_mtime_ns, st.st_ino)
        changed = seen != (images.sizes[row], images.mtimes[row], images.source_inodes[row])
        images.sizes[row], images.mtimes[row], images.source_inodes[row] = seen
        self.mtime_ns = st.st_mtime_ns
        images.modes[row] = st.st_mode & 0o777
        self.mode = file_mode(st.st_mode)
        return changed

    def open(self) -> _ReadAhead:
        fd = self._source.images.open_fd(self.name)
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise FileNotFoundError(f"source of {self.name} is not a regular file")
        return _ReadAhead(fd)


class _EncodedNames:
    """The names as the bytes readdir sends, encoded when asked (no second copy of a
    million names)."""

    __slots__ = ("names",)

    def __init__(self, names: Sequence[str]) -> None:
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> bytes:
        return self.names[i].encode("utf-8", "surrogateescape")     # what os.fsencode does


class ImageDir(DirNode):
    """A read-only folder of ListedImages; stats its sources on first use."""

    __slots__ = ("images",)

    def __init__(self, mtime_ns: int, images: ListedImages) -> None:
        super().__init__(mtime_ns)
        self.images = images
        self._populate = ImageDir._load

    def _load(self) -> None:
        self.images.load()

    def add(self, name, node):
        raise TypeError("an ImageDir lists its images from the mapping only")

    def alias(self) -> "ImageDir":
        """Another folder (own inode) showing the same files (same inodes)."""
        return ImageDir(self.mtime_ns, self.images)

    def get(self, name: bytes):
        self._ensure()
        row = self.images.row_of(os.fsdecode(name))
        return None if row is None else self.images.node(row)

    def child_at(self, index: int):
        self._ensure()
        return self.images.node(index)

    def columns(self) -> Columns:
        """Rows for readdir without a node each (see ``nodes.DirNode.listing``)."""
        self._ensure()
        return self.images.columns()

    def wait_rows(self, stop: int) -> None:
        self.images.wait_rows(stop)

    def needs_worker(self) -> bool:
        return self._populate is not None or not self.images.complete   # lookups may wait

    def names(self) -> _EncodedNames:
        self._ensure()
        return _EncodedNames(self.images.names)

    def children(self):
        self._ensure()
        return ((os.fsencode(n), self.images.node(i)) for i, n in enumerate(self.images.names))

    def __len__(self) -> int:
        return len(self.images.names)


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim). Loading a large
    plate's metadata, or stat-ing its sources, frees as much as it keeps, in holes that
    otherwise stay resident: 300,000 images leave ~75 MB behind. A no-op without glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
