"""A file of the outputs area: committed content, a staging file while it is written, and
one version per reader. The rules of the area as a whole are in ``outputs.py``.

A writable file is a state machine; its states and every transition are here, in one
table (``TRANSITIONS``), and nowhere else: ``WritableOutFile._go(event)`` is the only
place ``state`` changes, and an event a state has no row for is a bug (AssertionError).

Where committed content lives is a *storage*: ``FileStorage`` (a plain file under the
outputs root) or ``PlaneStorage`` (a plane of the folder's zarr store; a plain file of that
name written before stays in front of it until the plane replaces it). Both answer the same
calls (``exists``, ``version``, ``size``, ``store``, ``remove``, ``sync``); the file never
asks which one it has.
"""
from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import stat as stat_mod
import time

from backends.errors import StorageError
from backends.layout import is_tiff_name

from .errors import CommitError
from .nodes import WRITE_FLAGS, FileNode, OpenFile, layout_for

log = logging.getLogger("vfsmount.outputs")

COPY_CHUNK = 8 << 20
REOPEN_TRIES = 20          # opens of a path swapped outside until it holds the looked-up file
NEAR_FULL = 4 << 20        # free bytes under which a passthrough write may have hit ENOSPC
INLINE_COMMIT_BYTES = 4 << 20   # a passthrough-written file up to this size commits on the loop


class State(enum.Enum):
    IDLE = "no staging file: the committed content (or none) is the file"
    CLEAN = "a staging file holds a copy of the committed content (or an empty new file)"
    DIRTY = "the staged content changed since it was staged or last committed"
    REFUSED = "the last commit refused the staged content: its writer's alone until rewritten"
    FAILED = "a write failed (ENOSPC, EIO): the staged content is incomplete, never committed"
    DISPLACED = "unlinked or renamed over while being written: dropped at the last close"


_S = State
_STAGED = (_S.CLEAN, _S.DIRTY, _S.REFUSED, _S.FAILED)

#: (state, event) -> next state. Events: stage (a staging file is made), change (write,
#: truncate), fail (a write failed), commit (published), refuse (an EINVAL commit kept for
#: its writer), drop (staging file discarded), displace (unlinked or renamed over).
TRANSITIONS: dict[tuple[State, str], State] = {
    (_S.IDLE, "stage"): _S.CLEAN,
    **{(s, "change"): _S.DIRTY for s in (_S.CLEAN, _S.DIRTY, _S.REFUSED)},
    (_S.FAILED, "change"): _S.FAILED,          # a lost write stays lost until reported
    (_S.DISPLACED, "change"): _S.DISPLACED,
    **{(s, "fail"): _S.FAILED for s in _STAGED},
    (_S.DISPLACED, "fail"): _S.DISPLACED,
    **{(s, "commit"): _S.IDLE for s in (_S.CLEAN, _S.DIRTY, _S.REFUSED)},
    **{(s, "refuse"): _S.REFUSED for s in (_S.CLEAN, _S.DIRTY, _S.REFUSED)},
    **{(s, "drop"): _S.IDLE for s in _STAGED + (_S.DISPLACED,)},
    **{(s, "displace"): _S.DISPLACED for s in _STAGED},
}


# -- read handles -----------------------------------------------------------------------
class _Version:
    """What one read handle reads: the committed file's descriptor, or a zarr plane's bytes,
    taken at open, so a later commit, rename, unlink or swap never changes what it sees."""

    __slots__ = ("fd", "data")
    writes = False

    def __init__(self, fd: int | None = None, data: bytes | None = None) -> None:
        self.fd, self.data = fd, data

    def read(self, offset: int, length: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, length, offset)
        return self.data[offset:offset + length] if self.data is not None else b""

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        return self.read(offset, length) if self.data is not None else None

    @property
    def size(self) -> int:
        return os.fstat(self.fd).st_size if self.fd is not None else len(self.data or b"")

    def key(self) -> tuple | None:
        """(device, inode) of the file this version reads (None for a plane's bytes)."""
        if self.fd is None:
            return None
        st = os.fstat(self.fd)
        return (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Writer:
    """A handle opened for writing: it reads and writes its node's staging file."""

    __slots__ = ("node", "backing")
    writes = True

    def __init__(self, node: "WritableOutFile", backing: int | None = None) -> None:
        self.node = node
        self.backing = backing    # its own descriptor of the staging file, for passthrough

    def read(self, offset: int, length: int) -> bytes:
        return self.node.read_own(offset, length)

    def read_nowait(self, offset: int, length: int) -> bytes | None:
        return None


# -- where committed content lives ----------------------------------------------------------
class FileStorage:
    """A plain file ``rel`` under the outputs root."""

    __slots__ = ("area", "rel")
    plain = True

    def __init__(self, area, rel: str) -> None:
        self.area, self.rel = area, rel

    def _stat(self) -> os.stat_result | None:
        st = self.area.stat(self.rel)
        return st if st is not None and stat_mod.S_ISREG(st.st_mode) else None

    def exists(self) -> bool:
        return self._stat() is not None

    def version(self) -> _Version | None:
        return _Version(fd=self.area.open(self.rel)) if self.exists() else None

    def size(self) -> int | None:
        st = self._stat()
        return st.st_size if st is not None else None

    def remove(self) -> None:
        if self.exists():
            self.area.disk.unlink(self.rel)

    def store(self, fd: int, staging: str, durable: bool) -> None:
        if is_tiff_name(self.rel):
            _check_tiff(fd, self.rel)
        if durable:
            os.fsync(fd)
        try:
            self.area.disk.publish(staging, self.rel, durable=durable)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise CommitError(errno.ENOENT, f"folder of {self.rel} is gone") from e
        if not durable:
            self.area.disk.write_back(fd)

    def sync(self) -> None:
        """Make what is committed durable (committed at close without waiting)."""
        version = self.version()
        if version is not None:
            try:
                os.fsync(version.fd)
                self.area.disk.sync_folder_of(self.rel)
            finally:
                version.close()


class PlaneStorage:
    """Plane ``name`` of the zarr store of first-level folder ``sub``; a plain file of the
    same name (written before the folder became zarr-backed) is read first, and removed when
    a plane is committed."""

    __slots__ = ("area", "sub", "name", "beside")
    plain = False

    def __init__(self, area, rel: str, sub: str, name: str) -> None:
        self.area, self.sub, self.name = area, sub, name
        self.beside = FileStorage(area, rel)

    def _plane(self):
        st = self.area.store(self.sub)
        if st is None or not st.exists(self.name):
            return None
        return st.plane(self.name)

    def _layout(self):
        plane = self._plane()
        return None if plane is None else layout_for(tuple(plane.shape), plane.dtype,
                                                      plane.pixel_size)

    def exists(self) -> bool:
        return self.beside.exists() or self._plane() is not None

    def version(self) -> _Version | None:
        version = self.beside.version()
        if version is not None:
            return version
        plane = self._plane()
        if plane is None:
            return None
        layout = layout_for(tuple(plane.shape), plane.dtype, plane.pixel_size)
        return _Version(data=layout.read(0, layout.size, plane.read_rows))

    def size(self) -> int | None:
        size = self.beside.size()
        if size is not None:
            return size
        layout = self._layout()
        return layout.size if layout is not None else None

    def remove(self) -> None:
        self.beside.remove()
        if self._plane() is not None:
            store = self.area.store(self.sub)
            store.invalidate(self.name)
            store.delete(self.name)

    def store(self, fd: int, staging: str, durable: bool) -> None:
        area = self.area
        # the staged bytes are only decoded, never kept: no fsync. zarr writes each
        # chunk and metadata document atomically (temp file + rename), unfsynced.
        plane = _decode(fd, self.beside.rel)
        store = area.store(self.sub, create=True)
        # The plane's chunk is written now; the store's metadata (shapes, records, NGFF)
        # is batched (the daemon's recorder, once requests pause; unmount; fsync). The
        # store says it is unflushed meanwhile, and its next opening rebuilds the index
        # from the chunks on disk: a kill -9 right after close() loses nothing.
        try:
            store.save_batch([plane], [self.name], flush=durable)
            if not durable:
                area.stores_dirty.add(self.sub)
        except StorageError as e:
            raise CommitError(errno.EINVAL, f"{self.beside.rel}: {e}") from e
        finally:
            store.invalidate(self.name)     # decoded planes and chunks follow the commit
        self.beside.remove()                # it was a plain file: the plane replaces it
        area.disk.drop_staging(staging)

    def sync(self) -> None:
        self.area.flush_stores()      # committed at close: write the batched index now


# -- the nodes ----------------------------------------------------------------------------
class OutFile(FileNode):
    """A file of a read-only outputs area: its committed content, one version per reader.
    It has no write capabilities: the node protocol's defaults refuse them (EROFS)."""

    __slots__ = ("area", "parent", "name", "_shown", "_seen", "volatile")
    immutable = False
    entry_timeout = 0.0     # content changes under the kernel
    visible = False         # only files being written are listed beyond what is stored
    is_link = False
    mode_bits = 0o444

    def __init__(self, area, parent, name: str) -> None:
        super().__init__(stat_mod.S_IFREG | self.mode_bits, time.time_ns())
        self.area, self.parent, self.name = area, parent, name
        # open readers of the current content (all of one file: see same_file)
        self._shown: list[_Version] = []
        self._seen: tuple | None = None       # (device, inode) of the plain file served
        self.volatile = False   # changed while mounted: readers bypass the page cache

    @property
    def rel(self) -> str:
        return self.parent.child_rel(self.name)

    def storage(self):
        return self.area.storage(self.rel)

    def committed_size(self) -> int:
        size = self.storage().size()
        if size is None:
            raise FileNotFoundError(errno.ENOENT, "no committed content", self.rel)
        return size

    @property
    def size(self) -> int:
        shown = self._shown          # one read: a commit may replace the list
        if shown:                    # an open reader: the size of what it reads
            try:
                return shown[-1].size
            except (OSError, IndexError):   # (closed meanwhile)
                pass
        return self.area.settled(self.committed_size)

    def open_file(self, flags: int) -> OpenFile:
        if flags & WRITE_FLAGS:
            return super().open_file(flags)      # refused: read-only
        return self._open_reader(self.area.settled(lambda: self.storage().version()))

    def same_file(self, key: tuple | None) -> bool:
        """Whether this node still serves the file ``key`` (device, inode) found at its path.
        A file replaced outside the mount (a folder swapped, a file renamed over) is served
        by a new node: each open reads one version, and its size is that version's."""
        if key is None or self._seen is None or key == self._seen:
            self._seen = key or self._seen
            return True
        return False

    def _open_reader(self, version: _Version | None, *, check: bool = True) -> OpenFile:
        for _ in range(REOPEN_TRIES if check else 0):
            if version is None or self.same_file(version.key()):
                break
            version.close()     # another file than the kernel looked up (swapped outside
            version = self.storage().version()     # since): this node's may come back
        else:
            if check and version is not None:    # replaced for good: the kernel looks up again
                version.close()
                raise OSError(errno.ESTALE, "replaced outside the mount since looked up",
                              self.rel)
        if version is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self.rel)
        self._shown.append(version)
        return OpenFile(version, keep_cache=False, direct_io=self.volatile)

    def read(self, handle, offset: int, length: int) -> bytes:
        return handle.read(offset, length)

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        return handle.read_nowait(offset, length)

    def release(self, handle) -> bool:
        with contextlib.suppress(ValueError):
            self._shown.remove(handle)
        handle.close()
        return False


class WritableOutFile(OutFile):
    """A file of a writable outputs area: committed content plus, while written, a staging
    file; ``state`` follows ``TRANSITIONS``."""

    __slots__ = ("staging", "staging_fd", "writers", "state", "failure", "passed_through",
                 "_backed", "_retired")
    mode_bits = 0o644
    blocking_handles = True   # open may copy content, flush/fsync/release commit: in a worker

    def __init__(self, area, parent, name: str) -> None:
        super().__init__(area, parent, name)
        self.staging: str | None = None       # name in the staging folder
        self.staging_fd: int | None = None
        self.writers = 0        # handles open for writing (changed under the area lock only)
        self.state = State.IDLE
        self.failure = 0        # errno of the write that failed (state FAILED)
        self.passed_through = False   # staged bytes written by the kernel (FUSE passthrough)
        self._backed: set = set()     # open handles the kernel passes through (any mode)
        self._retired = False         # later opens go to a new node (see open_file)

    def _go(self, event: str) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        assert nxt is not None, f"outputs/{self.rel}: no transition {event} from {self.state.name}"
        self.state = nxt
        if nxt is State.IDLE:          # no staging file left: nothing passed through it
            self.passed_through = False

    def same_file(self, key: tuple | None) -> bool:
        if self.stale_backing or self._retired:   # a new node (inode) serves later opens
            return False
        if self.writers or self.pending:      # being written here: a commit replaces the file
            self._seen = key or self._seen
            return True
        return super().same_file(key)

    @property
    def pending(self) -> bool:
        return self.state in _STAGED

    @property
    def visible(self) -> bool:
        """Staged content others can see: refused content is its writer's alone until
        rewritten, so a name whose close() failed is gone at once, not when the kernel's
        asynchronous RELEASE finally drops it."""
        return self.state in (State.CLEAN, State.DIRTY, State.FAILED)

    def _staged_size(self) -> int:
        fd = self.staging_fd          # one read: a commit in a worker thread may close it
        try:
            return os.fstat(fd).st_size if fd is not None else 0
        except OSError:
            return 0

    def _unsaved(self) -> bool:
        return self.state in (State.DIRTY, State.REFUSED, State.FAILED)

    @property
    def passes_through(self) -> bool:
        """The kernel writes the staged bytes itself (see nodes.Node.passes_through)."""
        return self.passed_through

    @property
    def size(self) -> int:
        fd = self.staging_fd          # one read: a commit in a worker thread may close it
        if fd is not None and self.state is not State.REFUSED:   # refused bytes: not the size
            try:
                return os.fstat(fd).st_size
            except OSError:
                pass
        return super().size

    # -- the node protocol (see nodes.py) -------------------------------------------
    def set_attrs(self, size: int | None, mtime_ns: int | None) -> bool:
        """truncate and utimes; modes and owners are fixed in outputs/ (ignored)."""
        committed = self.truncate(size) if size is not None else False
        if mtime_ns:
            self.mtime_ns = mtime_ns
        return committed

    def setxattr(self, name: bytes, value: bytes) -> None:
        raise OSError(errno.ENOTSUP, "outputs/ stores no extended attributes")

    def inline(self, op: str) -> bool:
        """A flush or the last release with nothing to commit (what follows a committed
        close) runs on the loop, and so does the flush that commits a small new plain file
        the kernel wrote itself (passthrough): a check of the TIFF's directories, just written
        and in the page cache, and a rename, no more than a create costs (a larger file may
        hold many directories to parse: a worker)."""
        if op == "flush":
            idle = not self._unsaved() or (
                self.passed_through and self.state is State.DIRTY
                and not self.area.sync_on_close and self._staged_size() <= INLINE_COMMIT_BYTES)
        elif op == "release":
            idle = not self.pending or self.writers > 1
        else:
            return False
        return idle and self.area.inline_ok()

    def open_file(self, flags: int) -> OpenFile:
        if self.stale_backing or self._retired:   # the kernel looks the name up again
            raise OSError(errno.ESTALE, "written since looked up", self.rel)
        if flags & WRITE_FLAGS and self._shown and not self.volatile and not self.pending:
            # Readers of content unchanged so far read through the kernel's page cache, and
            # the kernel sizes this inode by what the writer does (a truncate: their reads
            # end there): the writer gets a new node, they keep this one and their version.
            self._retired = True
            raise OSError(errno.ESTALE, "read through the page cache: a new node", self.rel)
        if not flags & WRITE_FLAGS:
            with self.area.lock:
                version = self.area.settled(lambda: self.storage().version())
                staged = version is None and self.visible
                if staged:                   # not committed yet: the staged bytes
                    version = _Version(fd=os.dup(self.staging_fd))
            return self._open_reader(version, check=not staged)
        with self.area.lock:
            self.writers += 1
            try:
                self.begin_write(bool(flags & os.O_TRUNC))
            except BaseException:
                self.writers -= 1
                raise
            # write-only: a read-write handle may mmap, and the kernel then loses passthrough
            # writes after a truncate (seen on 6.18): those stay with the daemon
            writer = _Writer(self, self._passthrough_fd()
                             if flags & os.O_ACCMODE == os.O_WRONLY else None)
        return OpenFile(writer, keep_cache=False, backing_fd=writer.backing)

    def _passthrough_fd(self) -> int | None:
        """The staging file of a new plain file, for the kernel to write into directly (FUSE
        passthrough). Not for a file with committed content (every open of an inode in
        passthrough reads the same backing file: its readers must keep the committed bytes
        until the commit), nor a zarr plane (decoded at commit)."""
        storage = self.storage()
        if not storage.plain or storage.exists() or self.staging_fd is None:
            return None
        return os.dup(self.staging_fd)      # a commit may close staging_fd meanwhile

    @property
    def stale_backing(self) -> bool:
        """Handles still pass through to a staging file that is no longer staged (committed:
        it is now the committed file; or dropped). The kernel gives every open of an inode in
        passthrough that same backing file, so a writer opening this inode would write into
        the committed file in place (and commit an empty staging file): new opens go to a new
        node instead (``same_file``), and an open of this inode is answered ESTALE, which
        makes the kernel look the name up again (``open_file``)."""
        return bool(self._backed) and not self.passed_through

    def passthrough_started(self, handle) -> None:
        self._backed.add(handle)
        # the writes will not pass through _pwrite: the staged content is what to commit
        if handle.writes:
            with self.area.lock:
                self.passed_through = True
                if self.state is not State.DISPLACED:
                    self._changed()

    def _passthrough_write_lost(self) -> bool:
        """Passthrough writes never pass _pwrite, so a failed one (ENOSPC) is not seen here: a
        staging file system left (nearly) full means one may have failed; never commit that."""
        if not self.passed_through or self.state is not State.DIRTY:
            return False
        st = os.fstatvfs(self.staging_fd)
        return st.f_bavail * st.f_frsize < NEAR_FULL

    def read_own(self, offset: int, length: int) -> bytes:
        """A writer reads its own staged bytes (or, between commits, what is committed)."""
        with self.area.lock:
            if self.staging_fd is not None:
                return os.pread(self.staging_fd, length, offset)
            version = self.storage().version()
        try:
            return version.read(offset, length) if version is not None else b""
        finally:
            if version is not None:
                version.close()

    def write_nowait(self, handle, offset: int, data: bytes) -> int | None:
        """A pwrite into the staging file's page cache, inline; None while a commit holds the
        lock (it may close the staging file) or the content must first be copied."""
        if not self.area.lock.acquire(blocking=False):
            return None
        try:
            if self.staging_fd is None:
                return None
            return self._pwrite(offset, data)
        finally:
            self.area.lock.release()

    def write(self, handle, offset: int, data: bytes) -> int:
        with self.area.lock:
            if self.staging_fd is None:
                self.begin_write(truncate=False)
            return self._pwrite(offset, data)

    def _pwrite(self, offset: int, data: bytes) -> int:
        try:
            n = os.pwrite(self.staging_fd, data, offset)
        except OSError as e:
            self._go("fail")
            self.failure = e.errno or errno.EIO
            raise
        self._changed()
        return n

    def _changed(self) -> None:
        self._go("change")
        self.volatile, self._shown = True, []

    def truncate(self, size: int) -> bool:
        """truncate(2)/ftruncate(2); a truncate by path (no writer) commits at once."""
        with self.area.lock:
            if self.staging_fd is None:
                self.begin_write(truncate=size == 0)
            os.ftruncate(self.staging_fd, size)
            self._changed()
            if self.writers == 0:
                self.commit(final=True)
                return True
        return False

    def flush(self, handle) -> bool:
        """close(2) waits for FLUSH (RELEASE comes later, asynchronously): committing here
        is what makes "close() returned 0" mean "the file is complete in the plate". A flush
        with nothing written since the last commit (`cmd > file` closing a dup before
        writing, a reader's close) commits nothing. True if the kernel must drop what it
        cached of the file (see ``commit``)."""
        if not handle.writes:
            return False
        with self.area.lock:
            if self._unsaved():
                return self.commit()
        return False

    def fsync(self, handle) -> bool:
        """fsync/fdatasync: commit, and return only once the bytes and the name are durable."""
        with self.area.lock:
            if handle.writes and self.pending:
                return self.commit(durable=True)
            storage = self.storage()
        storage.sync()
        return False

    def release(self, handle) -> bool:
        self._backed.discard(handle)
        if not handle.writes:
            return super().release(handle)
        if handle.backing is not None:
            os.close(handle.backing)
        with self.area.lock:
            self.writers -= 1
            if self.writers > 0:
                return False
            if self.state is State.DISPLACED:
                self.discard()
                return False
            if not self.pending:
                return False
            try:
                return self.commit(final=True, last_close=True)
            except CommitError as e:      # nothing more to tell a closed file: data lost
                log.error("outputs/%s: not stored at the last close: %s", self.rel, e)
            return True

    # -- writing -------------------------------------------------------------------
    def begin_write(self, truncate: bool) -> None:
        """Make sure a staging file holds the content being written (copy-on-write)."""
        with self.area.lock:
            if self.staging_fd is not None:
                if truncate:
                    # not an empty one (create's open): on ext4 a truncate to 0 makes the
                    # last close of the file start writing it back, inside the commit
                    if os.fstat(self.staging_fd).st_size:
                        os.ftruncate(self.staging_fd, 0)
                    self._changed()
                return
            storage = self.storage()
            version = None if truncate else storage.version()
            changes = truncate and storage.exists()     # O_TRUNC of a committed file changes it
            name, fd = self.area.disk.new_staging()
            try:
                if version is not None:
                    _copy(version, fd)
            except BaseException:
                os.close(fd)
                self.area.disk.drop_staging(name)
                raise
            finally:
                if version is not None:
                    version.close()
            self.staging, self.staging_fd = name, fd
            self._go("stage")
            if changes:
                self._changed()
            self.volatile = self.volatile or truncate

    def remove(self) -> None:
        """unlink(2): the committed content goes now (open readers keep theirs); staged
        content when its last writer closes. Under the lock, so a commit running in another
        worker cannot bring the file back."""
        with self.area.lock:
            self.storage().remove()
            self._shown = []
            self.displace()

    def displace(self) -> None:
        """Unlinked or renamed over: staged content is never committed."""
        with self.area.lock:
            if self.pending:
                self._go("displace")
                if self.writers == 0:
                    self.discard()

    def discard(self) -> None:
        with self.area.lock:
            if self.staging_fd is not None:
                os.close(self.staging_fd)
            if self.staging is not None:
                self.area.disk.drop_staging(self.staging)
            self.staging = self.staging_fd = None
            if self.state is not State.IDLE:
                self._go("drop")

    def move_to(self, new_dir, new_name: str) -> None:
        """rename(2) of a file (under the area lock)."""
        area, new_rel = self.area, new_dir.child_rel(new_name)
        target = new_dir._nodes.get(new_name)
        old, new = self.storage(), area.storage(new_rel)
        if old.exists() and not (old.plain and new.plain):
            # content changes representation: restage it and commit under the new name
            self.begin_write(truncate=False)
            old.remove()
            _displace(target, self)
            with area.moving():
                new_dir.adopt(new_name, self)
            self._changed()
            self.commit(final=True)
            return
        with area.moving():
            if old.exists():
                area.disk.rename(self.rel, new_rel)
            _displace(target, self)
            new_dir.adopt(new_name, self)

    def commit(self, final: bool = False, *, last_close: bool = False,
               durable: bool = False) -> bool:
        """Make the staged content the committed one, atomically; raises CommitError.
        True if the kernel must drop what it cached of the file (attributes, pages of the old
        content): not after content the kernel wrote itself (passthrough), which it has
        neither pages of nor attributes it has not already dropped at its writes.

        Content that is not acceptable (a TIFF name with bytes that are no complete TIFF, a
        plane that does not fit its zarr field) is refused with EINVAL but stays staged unless
        ``final``: programs close dup'ed descriptors half-way through writing a file
        (numpy's ``tofile`` under tifffile does), and the next close must still see
        everything written so far. ``last_close`` (the kernel's RELEASE, which comes
        asynchronously) does nothing if the file was opened for writing again meanwhile.
        """
        with self.area.lock:
            if not self.pending or (last_close and self.writers > 0):
                return False
            fd, staging, through = self.staging_fd, self.staging, self.passed_through
            storage = self.storage()
            if self._passthrough_write_lost():
                self._go("fail")
                self.failure = errno.ENOSPC
            if last_close and self.state is State.CLEAN and storage.exists():
                self._drop(fd, staging)        # opened for writing, nothing changed: keep as is
                return False
            if self.state is State.FAILED:     # a write was lost (e.g. ENOSPC): never commit the rest
                self._drop(fd, staging)
                err = self.failure or errno.EIO
                raise CommitError(err, f"{self.rel}: a write failed ({os.strerror(err)}); "
                                       "nothing stored")
            try:
                storage.store(fd, staging, durable or self.area.sync_on_close)
            except CommitError as e:
                if final or e.errno != errno.EINVAL:
                    self._drop(fd, staging)
                else:
                    self._go("refuse")
                    e.kept = True              # still staged: the writer may complete it
                raise
            except OSError as e:
                self._drop(fd, staging)
                raise CommitError(e.errno or errno.EIO, f"{self.rel}: {e}") from e
            self._seen = None           # a new file (its own key), still this node's
            self.staging = self.staging_fd = None
            os.close(fd)
            self._go("commit")
            self.volatile, self._shown = True, []
            self.mtime_ns = time.time_ns()
            self.area.mark_dirty()
            log.info("committed outputs/%s%s", self.rel, " (durable)" if durable else "")
            return not through

    def _drop(self, fd: int, staging: str) -> None:
        self.staging = self.staging_fd = None
        os.close(fd)
        self.area.disk.drop_staging(staging)
        self._go("drop")


def _displace(target, moved) -> None:
    if target is not None and target is not moved:
        target.displace()


def _copy(version: _Version, fd: int) -> None:
    pos = 0
    while True:
        chunk = version.read(pos, COPY_CHUNK)
        if not chunk:
            return
        os.pwrite(fd, chunk, pos)
        pos += len(chunk)


@contextlib.contextmanager
def _tiff(fd: int):
    """tifffile over the staged file (tifffile never closes a file it is given: we do)."""
    import tifffile
    # a new open file description: a dup would share (and move) the staging file offset
    with open(f"/proc/self/fd/{fd}", "rb") as f, tifffile.TiffFile(f, name="staged.tif") as tif:
        yield tif


def _check_tiff(fd: int, rel: str) -> None:
    """Refuse (EINVAL) a TIFF that tifffile cannot read whole (see ``_check_pages``)."""
    try:
        with _tiff(fd) as tif:
            _check_pages(tif)
    except Exception as e:
        raise CommitError(errno.EINVAL, f"{rel}: not a valid TIFF ({e}); nothing stored") from e


def _check_pages(tif) -> None:
    """Every page must have all its strips or tiles inside the file (a writer that closed a
    dup'ed descriptor half-way has zeros where the image directory will be)."""
    size = tif.filehandle.size
    pages = list(tif.pages)
    if not pages:
        raise ValueError("no image directory")
    for i, page in enumerate(pages):
        offsets, counts = page.dataoffsets, page.databytecounts
        if not offsets or not page.shape or any(
                o <= 0 or c <= 0 or o + c > size for o, c in zip(offsets, counts)):
            raise ValueError(f"page {i}: image data missing or outside the file")


def _decode(fd: int, rel: str):
    """The staged TIFF's single 2D plane: one parse for the checks and the data."""
    import numpy as np
    from backends.guards.tiff import decode_checked, read_tiff_checked
    try:
        with _tiff(fd) as tif:
            _check_pages(tif)
            data = decode_checked(tif)      # strips checked; no decoder crash
        if data is None:        # a compression decoded in a worker process: a path it can open
            data = read_tiff_checked(f"/proc/{os.getpid()}/fd/{fd}")
    except Exception as e:
        raise CommitError(errno.EINVAL, f"{rel}: not a valid TIFF ({e}); nothing stored") from e
    data = np.squeeze(data)
    if data.ndim != 2:
        raise CommitError(errno.EINVAL, f"{rel}: a plate image must be one 2D plane, got "
                                        f"shape {data.shape}")
    return data


__all__ = ["OutFile", "WritableOutFile", "FileStorage", "PlaneStorage", "State", "TRANSITIONS",
           "CommitError"]
