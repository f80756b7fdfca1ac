"""Folders of pass-through images that cost a few dozen bytes per image.

A plate can hold 1,000,000 images, and a file manager lists them all. Instead of one
node object per image, an ``ImageDir`` keeps its images in columns: the names (shared
with the plate's mapping, not copied), and the source's size, mtime and inode number in
``array`` columns, filled in listing order by a thread of their own at the first listing
(readdir serves the rows stat-ed so far; see ``ListedImages.load``). A file node is made on
demand from a row (``child_at``/``get``) and dropped when the FUSE layer is done with it.

A store opened lazily (``ImageSet.streams_wells``) names its planes well by well as its
wells are read: a ``PlaneDir`` lists the wells read so far and reads the next ones as the
kernel asks for more rows (``ListedPlanes``), so the first entries of a million-plane store
come after one well is read, and a lookup reads only its own well.

Both folders are one class, ``ListedDir``, over a ``Listing`` (the rows, however they come);
``ImageDir`` and ``PlaneDir`` only name it for their callers.

Inode numbers are a contiguous range per image set (``LISTED_INODES`` and up, above every
node-counter inode), so the FUSE layer finds a node from its inode without a dictionary of
a million entries: ``find_listed(inode)``.
"""
from __future__ import annotations

import bisect
import ctypes
import itertools
import logging
import os
import stat as stat_mod
import threading
from array import array
from typing import NamedTuple, Protocol, Sequence

import numpy as np

from .nodes import (SYNTHESIZED_MODE, DirNode, Node, PassthroughFile, SynthesizedTiff,
                    _ReadAhead, file_mode, layout_for)

log = logging.getLogger(__name__)

LISTED_INODES = 1 << 40          # node-counter inodes stay far below this
_ranges_lock = threading.Lock()
_range_starts: list[int] = []
_range_spans: list[int] = []
_range_sets: list["ListedImages"] = []


def find_listed(inode: int) -> "ListedFile | None":
    """The file node behind an inode of a listed image set, or None."""
    if inode < LISTED_INODES:
        return None
    i = bisect.bisect_right(_range_starts, inode) - 1
    if i < 0:
        return None
    images = _range_sets[i]
    offset = inode - images.first_inode
    return images.node(offset) if offset < _range_spans[i] else None


def reserve_inodes(images, span: int | None = None) -> int:
    """The first of ``span`` inodes (default: one per name of ``images``); ``images.node(i)``
    is the node of inode first + i."""
    span = len(images.names) if span is None else span
    with _ranges_lock:
        first = _range_starts[-1] + _range_spans[-1] + 1 if _range_starts else LISTED_INODES
        _range_starts.append(first)
        _range_spans.append(span)
        _range_sets.append(images)
        return first


class Listing(Protocol):
    """What a ``ListedDir`` asks of the rows it lists (``ListedImages``, a view of them,
    ``ListedPlanes``): nothing is read before ``load``; after it, rows [0, ready) are final."""

    complete: bool                       # every row is known

    def load(self) -> None: ...          # cheap: what a listing needs first (may start a thread)

    def lookup(self, name: str) -> Node | None: ...       # the node named ``name``

    def row_node(self, row: int) -> Node: ...             # the node of row ``row`` (may wait)

    def columns(self) -> "Columns": ...                   # the rows known, for readdir

    def wait_rows(self, stop: int) -> None: ...           # blocks: more rows, up to ``stop``

    def entry_names(self) -> Sequence[bytes]: ...         # what readdir pages through

    def all_rows(self) -> int: ...                        # how many rows (blocks until known)


class NamedRows:
    """A listing whose names are all known at once (``names``): a row is found by name
    (``row_of``) and made a node by ``node(row)``; the rest of ``Listing`` follows."""

    names: Sequence[str]

    def row_of(self, name: str) -> int | None:
        raise NotImplementedError

    def node(self, row: int) -> Node:
        raise NotImplementedError

    def lookup(self, name: str) -> Node | None:
        row = self.row_of(name)
        return None if row is None else self.node(row)

    def row_node(self, row: int) -> Node:
        return self.node(row)

    def entry_names(self) -> "_EncodedNames":
        return _EncodedNames(self.names)

    def all_rows(self) -> int:
        return len(self.names)


class ListedImages(NamedRows):
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
    """A columnar listing: row i is ``names[i]``, inode ``first_inode + i`` (or ``inodes[i]``
    where given), ``sizes[i]`` (negative: the source is missing, listed as 0 bytes),
    ``mtimes[i]`` in ns and ``modes[i]`` (permission bits); rows [0, ready) are final
    (``wait_rows`` for more). The columns are sliced, never indexed; a slice may be any
    iterable (a lazy one costs only the rows a reply takes)."""

    first_inode: int
    names: Sequence[str]
    sizes: Sequence[int]
    mtimes: Sequence[int]
    ready: int
    modes: Sequence[int]
    inodes: Sequence[int] | None = None

    def inode_column(self) -> Sequence[int]:
        return range(self.first_inode, self.first_inode + self.ready) if self.inodes is None \
            else self.inodes


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


class ListedDir(DirNode):
    """A read-only folder of a ``Listing``'s rows (``listed``: ``listing()`` is the node
    protocol's): loads it on first use, and answers lookups, readdir pages and rows from it
    (no node per row kept)."""

    __slots__ = ("listed",)

    def __init__(self, mtime_ns: int, listed: Listing) -> None:
        super().__init__(mtime_ns)
        self.listed = listed
        self._populate = ListedDir._load

    def _load(self) -> None:
        self.listed.load()

    def add(self, name, node):
        raise TypeError(f"a {type(self).__name__} lists the rows of its listing only")

    def alias(self) -> "ListedDir":
        """Another folder (own inode) showing the same files (same inodes)."""
        return type(self)(self.mtime_ns, self.listed)

    def get(self, name: bytes):
        self._ensure()
        return self.listed.lookup(os.fsdecode(name))

    def child_at(self, index: int):
        self._ensure()
        return self.listed.row_node(index)

    def columns(self) -> Columns:
        """Rows for readdir without a node each (see ``nodes.DirNode.listing``)."""
        self._ensure()
        return self.listed.columns()

    def wait_rows(self, stop: int) -> None:
        self.listed.wait_rows(stop)

    def needs_worker(self) -> bool:
        # lookups and listings may wait for rows (stat-ed, or wells read) until all are known
        return self._populate is not None or not self.listed.complete

    def names(self) -> Sequence[bytes]:
        self._ensure()
        return self.listed.entry_names()

    def children(self):
        self._ensure()
        for row in range(self.listed.all_rows()):
            node = self.listed.row_node(row)
            yield node.name.encode("utf-8", "surrogateescape"), node   # os.fsencode's bytes

    def __len__(self) -> int:
        return self.listed.all_rows()


class ImageDir(ListedDir):
    """A folder of images stat-ed in bulk (``ListedImages``, or a view of them)."""

    __slots__ = ()

    @property
    def images(self):
        return self.listed


#: Inodes per well of a ListedPlanes: a well's planes are numbered within its own block.
WELL_INODES = 1 << 32
#: Wells read at once by a listing, at most (one concurrent pass over their documents: over
#: object storage, the round trips of a batch overlap); the first batch is one well.
MAX_WELL_BATCH = 64


class ListedPlanes:
    """The planes of an image set that names them well by well (``ImageSet.streams_wells``),
    shared by its folder and ``images/``. Rows are the planes of the wells read so far, in
    natural order (wells in natural order, each well's names in natural order, which is the
    set's natural order); ``wait_rows`` reads the next wells (one, then more at a time). A
    well keeps a record per field and names are made per row, so a listing keeps no object
    per plane; a node is made when a row is looked up, listed or opened. The inode of a
    plane is its well's block (``WELL_INODES`` each, wells in natural order) plus its row in
    the well: a lookup in a well no listing has reached reads that well only, and gets the
    inode a listing shows later."""

    def __init__(self, images, xattrs, mtime_ns: int) -> None:
        self.images = images              # a backends.plates.image_set.ImageSet (streams_wells)
        self.xattrs = xattrs              # name -> {xattr: value}, asked only with --xattrs
        self.mtime_ns = mtime_ns
        self.lock = threading.RLock()     # one reader of the next wells at a time
        self.wells: list[str] = []
        self.ordinal: dict[str, int] = {}
        self.read: list = []              # the wells read in order (backends WellPlanes)
        self.starts: list[int] = [0]      # first row of each read well, then the rows known
        self.sizes: list[list[tuple[int, int]]] = []   # per read well: (rows, file size) runs
        self.first_inode = 0
        self._batch = 1
        self._loaded = False

    def load(self) -> None:
        """Learn the wells (reads nothing: the plate document named them)."""
        with self.lock:
            if self._loaded:
                return
            self.wells = self.images.well_order()
            self.ordinal = {w: i for i, w in enumerate(self.wells)}
            self.first_inode = reserve_inodes(self, span=max(len(self.wells), 1) * WELL_INODES)
            self._loaded = True

    # -- rows ------------------------------------------------------------------------------
    @property
    def ready(self) -> int:
        return self.starts[-1]

    @property
    def complete(self) -> bool:
        return self._loaded and len(self.read) >= len(self.wells)

    def wait_rows(self, stop: int) -> None:
        """Read wells until rows [0, stop) are known, or at least one more row is (readdir
        answers with the rows known and the kernel asks again), or every well is read."""
        self._read_until(stop, some=True)

    def _read_until(self, stop: int, *, some: bool = False) -> None:
        self.load()
        if self.ready >= stop or self.complete:
            return
        with self.lock:
            before = self.ready          # (wells of no plane add no row: read on past them)
            while self.ready < stop and not self.complete and not (some and self.ready > before):
                batch = self.wells[len(self.read):len(self.read) + self._batch]
                self._batch = min(self._batch * 2, MAX_WELL_BATCH)
                for wp in self.images.read_wells(batch):
                    self.sizes.append([(rows, layout_for(tuple(shape), dtype, pixel_size,
                                                         z_spacing).size)
                                       for rows, shape, dtype, pixel_size, z_spacing
                                       in wp.formats()])
                    self.read.append(wp)
                    self.starts.append(self.starts[-1] + wp.count)   # last: the row is known

    def _well(self, k: int):
        """Well ``k``'s planes (read now, alone, if the listing has not reached it)."""
        self.load()
        if k < len(self.read):
            return self.read[k]
        return self.images.read_wells([self.wells[k]])[0]

    def columns(self) -> Columns:
        ready = self.ready
        return Columns(self.first_inode, _WellColumn(self, self._names, ready),
                       _WellColumn(self, self._sizes, ready), _Constant(self.mtime_ns, ready),
                       ready, _Constant(SYNTHESIZED_MODE, ready),
                       _WellColumn(self, self._inodes, ready))

    def _rows(self, part, lo: int, hi: int):
        """``part(k, well, a, b)`` for the rows [lo, hi), well by well (lazily)."""
        k = bisect.bisect_right(self.starts, lo) - 1
        while lo < hi:
            stop = min(hi, self.starts[k + 1])
            base = self.starts[k]
            yield from part(k, self.read[k], lo - base, stop - base)
            lo, k = stop, k + 1

    @staticmethod
    def _names(k: int, well, a: int, b: int):
        return well.names(a, b)

    def _sizes(self, k: int, well, a: int, b: int):
        pos = 0
        for rows, size in self.sizes[k]:
            lo, hi = max(a, pos), min(b, pos + rows)
            if lo < hi:
                yield from itertools.repeat(size, hi - lo)
            pos += rows

    def _inodes(self, k: int, well, a: int, b: int):
        base = self.first_inode + k * WELL_INODES
        return range(base + a, base + b)

    # -- nodes -----------------------------------------------------------------------------
    def _node(self, k: int, well, i: int, name: str | None = None) -> "ListedPlane":
        name = name if name is not None else well.names(i, i + 1)[0]
        return ListedPlane(self, name, self.first_inode + k * WELL_INODES + i)

    def row_node(self, row: int) -> "ListedPlane":
        self._read_until(row + 1)
        if row >= self.ready:
            raise IndexError(f"row {row} past the {self.ready} planes")
        k = bisect.bisect_right(self.starts, row) - 1
        return self._node(k, self.read[k], row - self.starts[k])

    def node(self, offset: int) -> "ListedPlane | None":
        """The node of inode ``first_inode + offset`` (see find_listed)."""
        k, i = divmod(offset, WELL_INODES)
        if k >= len(self.wells):
            return None
        well = self._well(k)
        return self._node(k, well, i) if i < well.count else None

    def lookup(self, name: str) -> "ListedPlane | None":
        k = self.ordinal.get(name.split("_", 1)[0])
        if k is None:
            return None
        well = self._well(k)
        i = well.offset(name)
        return None if i is None else self._node(k, well, i, name)

    def all_rows(self) -> int:
        self._read_until(1 << 62)
        return self.ready

    def entry_names(self) -> "_PlaneNames":
        return _PlaneNames(self)

    # -- what a SynthesizedTiff asks of its directory's source ------------------------------
    def plane(self, name: str):
        return self.images.plane(name)


class _WellColumn:
    """A column of a ListedPlanes up to ``ready`` rows; a slice is a lazy iterable."""

    __slots__ = ("planes", "part", "ready")

    def __init__(self, planes: ListedPlanes, part, ready: int) -> None:
        self.planes, self.part, self.ready = planes, part, ready

    def __len__(self) -> int:
        return self.ready

    def __getitem__(self, rows: slice):
        return self.planes._rows(self.part, rows.start or 0, min(rows.stop, self.ready))


class _Constant:
    """A column of one value."""

    __slots__ = ("value", "ready")

    def __init__(self, value: int, ready: int) -> None:
        self.value, self.ready = value, ready

    def __len__(self) -> int:
        return self.ready

    def __getitem__(self, rows: slice):
        return itertools.repeat(self.value, max(min(rows.stop, self.ready) - (rows.start or 0), 0))


class ListedPlane(SynthesizedTiff):
    """A plane of a ListedPlanes, as a synthesized TIFF with its listing's inode."""

    __slots__ = ()

    def __init__(self, planes: ListedPlanes, name: str, inode: int) -> None:
        super().__init__(name, planes, planes.mtime_ns)
        self.inode = inode


class _PlaneNames:
    """The names readdir pages through: the rows known, and one more while wells are left
    unread, so that readdir asks the folder for more (``wait_rows``) instead of ending."""

    __slots__ = ("planes",)

    def __init__(self, planes: ListedPlanes) -> None:
        self.planes = planes

    def __len__(self) -> int:
        return self.planes.ready + (0 if self.planes.complete else 1)

    def __getitem__(self, i: int) -> bytes:
        return self.planes.row_node(i).name.encode("utf-8", "surrogateescape")


class PlaneDir(ListedDir):
    """A folder of a ``ListedPlanes``: rows as the wells are read (see above)."""

    __slots__ = ()

    @property
    def planes(self) -> ListedPlanes:
        return self.listed


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim). Loading a large
    plate's metadata, or stat-ing its sources, frees as much as it keeps, in holes that
    otherwise stay resident: 300,000 images leave ~75 MB behind. A no-op without glibc."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
