"""What the file system serves: directories, and files that have a size and a read().

A file node never says where its bytes come from beyond these capabilities:

- ``size`` and ``mtime_ns`` -- known without reading content;
- ``read(offset, length)`` -- blocking; the FUSE layer runs it in a worker
  thread unless ``cheap`` is true (bytes already in memory);
- ``read_nowait`` -- the same bytes if already in memory, so the FUSE layer can
  answer inline instead of in a worker thread;
- ``immutable`` -- the kernel may keep its page cache across opens;
- ``get_xattrs()`` -- extended attributes (name -> bytes), computed on demand.

Pass-through files read a real file in place; synthesized TIFFs are laid out
by ``tiff_layout`` and filled from a plane source (e.g. zarr chunks). A large
plate has 100,000s of file nodes, so they hold only their name and a reference
to one shared *source* object per directory, which knows how to resolve a name
(``PathSource``) or produce its plane (``PlaneSourceFactory``).

The node protocol -- the one seam between the FUSE layer (``fs.py``) and everything else.
``fs.py`` calls only these methods; a node that lacks a capability inherits a default that
answers the right errno (EROFS for writes, ENOTDIR/EISDIR for the wrong kind):

- attributes: ``size``, ``mtime_ns``, ``mode``, ``nlink``, ``get_xattrs()``;
- cache policy: ``entry_timeout`` (entries and attributes; the read-only tree keeps them an
  hour, outputs/ not at all; a folder with a timeout may also have its listing cached by the
  kernel) and, per open, ``OpenFile.keep_cache``/``direct_io``/``noflush``;
- data path: per open, ``OpenFile.backing_fd`` -- a descriptor of a real file holding exactly
  this file's bytes, so the kernel may serve reads (and writes) from it without the daemon
  (FUSE passthrough; ``fs.py`` decides, and falls back to ``read``/``write``); and
  ``passthrough_started(handle)``, told when it did. A read-only source's backing file may
  stay registered after the last close (``OpenFile.keep_backing``): the next
  ``open_file(flags, kept=True)`` then only checks that the source is unchanged and opens
  nothing. ``passes_through``: the kernel normally serves this file's bytes itself (its
  preferred I/O size is then a local disk's, see fs.py);
- directories: ``lookup(name)``, ``listing()`` (names by offset, and their nodes);
  ``needs_worker()``/``prepare()`` when the first listing must read the disk;
- threads: ``inline(op)`` says whether a call may run on the trio loop (cheap, no lock a
  worker may hold), else fs.py runs it in a worker;
- files: ``open_file(flags)`` -> ``OpenFile``; ``read``/``read_nowait``/``release`` with the
  handle it carries; ``blocking_handles`` when open/flush/fsync/release do I/O;
- optional write capabilities (outputs/ of a --writable mount only): directories ``create``,
  ``mkdir``, ``unlink``, ``rmdir``, ``rename``, ``make_special``; any node ``setxattr``; files ``write_nowait``/``write``, ``truncate``, ``flush``,
  ``fsync``, ``set_attrs`` (these return True when they committed, so the kernel's cached pages
  of the file are dropped).
"""
from __future__ import annotations

import errno
import functools
import itertools
import os
import stat as stat_mod
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

from .tiff_layout import TiffLayout

_inodes = itertools.count(2)   # 1 is the FUSE root
_populate_lock = threading.RLock()


ATTR_TIMEOUT = 3600.0          # seconds: the read-only tree does not change under the kernel
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND


#: Permission bits in the read-only tree. As on a read-only mount of a real file system, a
#: file shows its own mode (a vendor file its source's, a file made here 0644) and a folder
#: 0755, so that ``cp -r`` makes copies the user can edit; a write through the mount is still
#: refused by the node (EROFS), never by the mode.
SYNTHESIZED_MODE = 0o644
DIR_MODE = 0o755


def file_mode(st_mode: int) -> int:
    """A regular file's mode in the mount from its source's ``st_mode``: the permission bits."""
    return stat_mod.S_IFREG | (st_mode & 0o777)


def next_inode() -> int:
    return next(_inodes)


def _read_only() -> OSError:
    # the one read-only refusal: every write a node cannot take (outputs/ of a mount without
    # --writable included: its nodes have no write capabilities)
    return OSError(errno.EROFS, "read-only (only outputs/ of a mount made with --writable "
                                "takes writes)")


@dataclass
class OpenFile:
    """What ``open_file`` returns: the per-open handle and how the kernel may cache it."""

    handle: object
    keep_cache: bool = False       # keep the page cache from earlier opens
    direct_io: bool = False        # bypass the page cache (the size may change while open)
    invalidate: bool = False       # the source changed: drop what the kernel cached
    noflush: bool = False          # close() needs no FLUSH request (nothing to commit)
    # A real file with exactly this open file's bytes (for writers: where writes belong),
    # open for as long as the handle is: the kernel may use it instead of read()/write().
    backing_fd: int | None = None
    # backing_fd holds the version of the source this node has seen, and stays this file's
    # bytes for as long as the source is unchanged: it may stay registered after the last
    # close and serve later opens (read-only sources only)
    keep_backing: bool = False
    # the answer to open_file(flags, kept=True): the source is unchanged, so this open uses
    # the backing file still registered from an earlier one (no handle, no descriptor)
    kept: bool = False
    # with keep_backing: the source's path, if one stat of it tells whether it is still the
    # version of backing_fd (a local file read as it is); later opens may then be answered
    # without the daemon's Python (passthrough.py, the fast lane)
    source_path: bytes | None = None


class Node:
    """Every node: attributes, and defaults that refuse what a node cannot do."""

    __slots__ = ("inode", "mode", "mtime_ns")
    entry_timeout = ATTR_TIMEOUT
    blocking_handles = False     # open/flush/fsync/release do I/O: run them in a worker
    passes_through = False       # opens normally pass through (FUSE passthrough; see fs.py)

    def __init__(self, mode: int, mtime_ns: int, inode: int | None = None) -> None:
        self.inode = inode if inode is not None else next_inode()
        self.mode = mode
        self.mtime_ns = mtime_ns

    @property
    def is_dir(self) -> bool:
        return stat_mod.S_ISDIR(self.mode)

    @property
    def nlink(self) -> int:
        return 2 if self.is_dir else 1

    def get_xattrs(self) -> dict[bytes, bytes]:
        return {}

    def size_known(self) -> bool:
        """False while ``size`` would wait (a file still being made): its attributes are
        then computed in a worker, and a listing names it without them."""
        return True

    def inline(self, op: str) -> bool:
        """True if the call ``op`` (a method name: "lookup", "create", "flush", ...) may run
        on the trio loop now, neither waiting for the disk nor for a lock a worker holds."""
        return not (self.needs_worker() or self.blocking_handles)

    # -- directory capabilities ---------------------------------------------------
    def needs_worker(self) -> bool:
        """True if ``lookup``/``listing`` would read the disk now (run them in a worker)."""
        return False

    def prepare(self) -> None:
        pass

    def lookup(self, name: bytes) -> "Node | None":
        raise NotADirectoryError(errno.ENOTDIR, "not a directory")

    def listing(self):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory")

    def create(self, name: bytes) -> "Node":
        raise _read_only()

    def mkdir(self, name: bytes) -> "Node":
        raise _read_only()

    def unlink(self, name: bytes) -> None:
        raise _read_only()

    def rmdir(self, name: bytes) -> None:
        raise _read_only()

    def rename(self, name: bytes, new_dir: "Node", new_name: bytes, flags: int = 0) -> None:
        raise _read_only()

    def make_special(self, kind: str, name: bytes) -> None:
        """link, symlink, mknod (``kind``) of ``name`` in this directory."""
        raise _read_only()

    def setxattr(self, name: bytes, value: bytes) -> None:
        raise _read_only()

    # -- file capabilities ----------------------------------------------------------
    def open_file(self, flags: int) -> OpenFile:
        raise IsADirectoryError(errno.EISDIR, "a directory")

    def write_nowait(self, handle: object, offset: int, data: bytes) -> int | None:
        raise _read_only()

    def write(self, handle: object, offset: int, data: bytes) -> int:
        raise _read_only()

    def truncate(self, size: int) -> bool:
        raise _read_only()

    def set_attrs(self, size: int | None, mtime_ns: int | None) -> bool:
        """setattr: a new size and/or mtime; True if that committed content."""
        raise _read_only()

    def flush(self, handle: object) -> bool:
        return False

    def fsync(self, handle: object) -> bool:
        return False

    def release(self, handle: object) -> bool:
        return False

    def passthrough_started(self, handle: object) -> None:
        """The kernel reads and writes this handle's ``backing_fd`` directly from now on:
        ``read``/``write`` will not see its bytes."""


class PathSource(Protocol):
    """Shared by the pass-through files of one directory."""

    def path(self, name: str) -> Path: ...          # the real file, checked to stay in the plate
    def xattrs(self, name: str) -> dict[bytes, bytes]: ...


class PlaneSourceFactory(Protocol):
    """Shared by the synthesized TIFFs of one directory."""

    def plane(self, name: str): ...                 # a backends.storage.planes.PlaneSource
    def xattrs(self, name: str) -> dict[bytes, bytes]: ...


class DirNode(Node):
    """A directory; ``populate`` (if given) fills it on first use, so mounting stays O(1)."""

    __slots__ = ("_children", "_names", "_populate")

    def __init__(self, mtime_ns: int, populate: Callable[["DirNode"], None] | None = None,
                 mode: int = DIR_MODE, inode: int | None = None) -> None:
        super().__init__(stat_mod.S_IFDIR | mode, mtime_ns, inode=inode)
        self._children: dict[bytes, Node] = {}
        self._names: list[bytes] | None = None
        self._populate = populate

    @property
    def populated(self) -> bool:
        return self._populate is None

    def needs_worker(self) -> bool:
        return self._populate is not None

    def prepare(self) -> None:
        self._ensure()

    def lookup(self, name: bytes) -> Node | None:
        return self.get(name)

    def listing(self) -> "DirNode":
        """Itself: ``names()`` (a list paged by offset) and ``child_at(index)``. A listing of
        files that differ only in inode, size and times may also offer ``columns()``
        (``listing.Columns``: names, first inode, sizes, mtimes), so readdir builds no node
        per file; ``child_at`` must agree with it. Populates first (opendir runs this in a
        worker when ``needs_worker``: the trio loop never stats a folder's sources)."""
        self._ensure()
        return self

    def _ensure(self) -> None:
        if self._populate is not None:
            with _populate_lock:
                populate = self._populate
                if populate is not None:
                    populate(self)
                    self._populate = None

    def add(self, name: str | bytes, node: Node) -> Node:
        key = name.encode() if isinstance(name, str) else name
        self._children[key] = node
        self._names = None
        return node

    def share_children(self, other: "DirNode") -> None:
        """Show ``other``'s entries here too (same nodes, like hard links)."""
        other._ensure()
        self._children = other._children
        self._names = None

    def get(self, name: bytes) -> Node | None:
        self._ensure()
        return self._children.get(name)

    def names(self) -> list[bytes]:
        """Entries in insertion order -- populators add them in natural order -- as a list
        that readdir pages through by offset."""
        self._ensure()
        if self._names is None or len(self._names) != len(self._children):
            self._names = list(self._children)
        return self._names

    def child_at(self, index: int) -> Node:
        """The entry at ``index`` of ``names()`` (readdir pages through a folder by index)."""
        return self._children[self.names()[index]]

    def children(self) -> Iterator[tuple[bytes, Node]]:
        self._ensure()
        return iter(self._children.items())

    def __len__(self) -> int:
        self._ensure()
        return len(self._children)


class FileNode(Node):
    __slots__ = ()
    cheap = False
    immutable = True

    @property
    def size(self) -> int:
        raise NotImplementedError

    def read_nowait(self, handle: object, offset: int, length: int) -> bytes | None:
        """The bytes if they are already in memory (no I/O, no decoding), else None.

        The FUSE layer serves such reads inline and sends only the rest to worker threads.
        """
        return self.read(handle, offset, length) if self.cheap else None

    def open_file(self, flags: int, kept: bool = False) -> OpenFile:
        """``kept``: the kernel still holds a backing file this node gave with
        ``keep_backing``; if the source is unchanged since, that open needs no descriptor."""
        if flags & WRITE_FLAGS:
            raise _read_only()
        changed = self.source_changed()
        if kept and not changed:
            return OpenFile(None, noflush=True, kept=True)
        handle = self.open()
        backing_fd = self.backing_fd(handle)
        keep = backing_fd is not None and self.is_seen_version(backing_fd)
        # read-only: a flush has nothing to do
        return OpenFile(handle, keep_cache=self.immutable and not changed, invalidate=changed,
                        noflush=True, backing_fd=backing_fd, keep_backing=keep,
                        source_path=self.source_path() if keep else None)

    def source_path(self) -> bytes | None:
        """The real file whose stat tells whether the source changed (see OpenFile)."""
        return None

    def is_seen_version(self, fd: int) -> bool:
        """True if ``fd`` holds the version of the source that ``source_changed`` last saw
        (not one swapped in between its stat and the open), so it may serve later opens for
        as long as the source stays unchanged."""
        return False

    def backing_fd(self, handle: object) -> int | None:
        """A descriptor of a real file whose bytes are exactly this file's (see OpenFile)."""
        return None

    def source_changed(self) -> bool:
        """True if the bytes behind this file changed since it was last opened."""
        return False

    def open(self) -> object:
        """Per-open state handed back to ``read``/``release`` (e.g. a file descriptor)."""
        return None

    def read(self, handle: object, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def release(self, handle: object) -> bool:
        return False


class BytesFile(FileNode):
    """A small file held in memory (the metadata snapshot)."""

    __slots__ = ("data",)
    cheap = True

    def __init__(self, data: bytes, mtime_ns: int, mode: int = SYNTHESIZED_MODE) -> None:
        super().__init__(stat_mod.S_IFREG | mode, mtime_ns)
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, handle, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


_NODE_MODE = Node.__dict__["mode"]      # the slot, under PassthroughFile's ``mode`` property


class PassthroughFile(FileNode):
    """A real file read in place, found through the directory's shared PathSource; its mode is
    its source's (stat-ed once, with its size)."""

    __slots__ = ("name", "_source", "_seen")

    def __init__(self, name: str, source: PathSource, mode: int = SYNTHESIZED_MODE) -> None:
        super().__init__(stat_mod.S_IFREG | mode, 0)
        self.name = name
        self._source = source
        self._seen: tuple[int, int, int] | None = None     # (size, mtime_ns, inode) of the source

    @property
    def mode(self) -> int:
        self._stat_once()
        return _NODE_MODE.__get__(self, type(self))

    @mode.setter
    def mode(self, value: int) -> None:
        _NODE_MODE.__set__(self, value)

    def _stat_once(self) -> None:
        if self._seen is None:
            try:
                self.refresh()
            except Exception:       # a missing or refused source: its size and open say so
                pass

    def path(self) -> Path:
        return self._source.path(self.name)

    def get_xattrs(self) -> dict[bytes, bytes]:
        return self._source.xattrs(self.name)

    def refresh(self) -> bool:
        """Re-stat the source; True if it changed since last seen (replaced while mounted)."""
        st = os.stat(self.path())
        seen = (st.st_size, st.st_mtime_ns, st.st_ino)
        changed = self._seen is not None and seen != self._seen
        self._seen = seen
        self.mtime_ns = st.st_mtime_ns
        self.mode = file_mode(st.st_mode)
        return changed

    def source_changed(self) -> bool:
        return self.refresh()      # (a method, so subclasses' refresh is the one called)

    @property
    def size(self) -> int:
        if self._seen is None:
            self.refresh()
        return self._seen[0]

    def open(self) -> "_ReadAhead":
        # through the source's race-free containment (backends.guards.containment) when it has one
        opener = getattr(self._source, "open_fd", None)
        fd = opener(self.name) if opener else os.open(self.path(), os.O_RDONLY | os.O_CLOEXEC)
        return _ReadAhead(fd)

    def bytes_are_source(self) -> bool:
        """True if this file serves its source's bytes unchanged (views that patch a header
        say no)."""
        return True

    def backing_fd(self, handle: "_ReadAhead") -> int | None:
        return handle.fd if self.bytes_are_source() else None

    def source_path(self) -> bytes | None:
        return os.fsencode(self.path())

    @property
    def passes_through(self) -> bool:
        return self.bytes_are_source()

    def is_seen_version(self, fd: int) -> bool:
        # size and mtime as seen by the stat before the open (the inode number, which
        # source_changed compares too, is not part of every node's attributes)
        st = os.fstat(fd)
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns

    def read(self, handle: "_ReadAhead", offset: int, length: int) -> bytes:
        # A worker reads READ_AHEAD bytes at once, so the kernel's next 128 KiB requests
        # are answered inline from memory instead of each hopping to a thread.
        want = max(length, READ_AHEAD)
        data = os.pread(handle.fd, want, offset)
        handle.buffer = (offset, data, len(data) < want)
        return data[:length]

    def read_nowait(self, handle: "_ReadAhead", offset: int, length: int) -> bytes | None:
        start, data, at_eof = handle.buffer
        end = start + len(data)
        if start <= offset and (offset + length <= end or (at_eof and offset <= end)):
            return data[offset - start:offset - start + length]
        # RWF_NOWAIT: served from the page cache or refused with EAGAIN, never blocking on disk.
        buf = bytearray(length)
        try:
            n = os.preadv(handle.fd, [buf], offset, os.RWF_NOWAIT)
        except OSError:
            return None
        if n < length and offset + n < os.fstat(handle.fd).st_size:
            return None   # partly cached: let a worker read the rest
        return bytes(memoryview(buf)[:n])

    def release(self, handle: "_ReadAhead | None") -> bool:
        if handle is not None:         # (None: an open served by a kept backing file)
            os.close(handle.fd)
        return False


READ_AHEAD = 1 << 20


class _ReadAhead:
    """An open source file and the last block a worker read from it."""

    __slots__ = ("fd", "buffer")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer: tuple[int, bytes, bool] = (0, b"", False)   # (offset, bytes, reached EOF)


class SynthesizedTiff(FileNode):
    """A TIFF laid out from a plane's shape and dtype; pixels come from ``plane.read_rows``."""

    __slots__ = ("name", "_source", "_plane", "_layout")

    def __init__(self, name: str, source: PlaneSourceFactory, mtime_ns: int) -> None:
        super().__init__(stat_mod.S_IFREG | SYNTHESIZED_MODE, mtime_ns)
        self.name = name
        self._source = source
        self._plane = None
        self._layout: TiffLayout | None = None

    def get_xattrs(self) -> dict[bytes, bytes]:
        return self._source.xattrs(self.name)

    @property
    def layout(self) -> TiffLayout:
        if self._layout is None:
            plane = self._plane = self._source.plane(self.name)
            self._layout = layout_for(tuple(plane.shape), plane.dtype, plane.pixel_size,
                                      getattr(plane, "z_spacing", None))
        return self._layout

    @property
    def size(self) -> int:
        return self.layout.size

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        # Once the plane is decoded, serving the kernel's 128 KiB requests is a memcpy:
        # cheaper inline than a hop to a worker thread.
        plane = self._plane
        if plane is not None and getattr(plane, "is_decoded", lambda: False)():
            return self.read(handle, offset, length)
        return None

    def read(self, handle, offset: int, length: int) -> bytes:
        layout = self.layout
        return layout.read(offset, length, self._plane.read_rows)


@functools.lru_cache(maxsize=256)
def layout_for(shape: tuple[int, int], dtype, pixel_size: float | None,
               z_spacing: float | None = None) -> TiffLayout:
    # Every plane of a store usually shares one layout; build its header once.
    return TiffLayout.for_plane(shape, dtype, pixel_size, z_spacing=z_spacing)
