"""A file of the outputs area (``OutFile``): committed content, a staging file while it is
written, and one version per reader. The rules of the area as a whole are in ``outputs.py``.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
import time

from backends.errors import StorageError

from .nodes import WRITE_FLAGS, FileNode, OpenFile, layout_for

log = logging.getLogger("vfsmount.outputs")

COPY_CHUNK = 8 << 20
NEAR_FULL = 4 << 20     # free bytes under which a passthrough write may have hit ENOSPC


class CommitError(OSError):
    """A commit failed; ``errno`` is what the writer's close()/fsync() returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror


class _Version:
    """What one read handle reads: the committed file's descriptor, or a zarr plane's bytes,
    taken at open, so a later commit or unlink never changes what this handle sees."""

    __slots__ = ("fd", "data")

    def __init__(self, fd: int | None = None, data: bytes | None = None) -> None:
        self.fd, self.data = fd, data

    def read(self, offset: int, length: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, length, offset)
        return self.data[offset:offset + length] if self.data is not None else b""

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Writer:
    """A handle opened for writing: it reads and writes the node's staging file."""

    __slots__ = ("backing",)

    def __init__(self, backing: int | None = None) -> None:
        self.backing = backing    # its own descriptor of the staging file, for passthrough


class OutFile(FileNode):
    """A file of the outputs area: committed content plus, while written, a staging file."""

    __slots__ = ("area", "parent", "name", "staging", "staging_fd", "writers", "deleted", "dirty",
                 "failed", "refused", "written", "passthrough")
    immutable = False
    entry_timeout = 0.0     # a commit changes the size under the kernel

    def __init__(self, area, parent, name: str) -> None:
        super().__init__(stat_mod.S_IFREG | (0o644 if area.writable else 0o444), time.time_ns())
        self.area, self.parent, self.name = area, parent, name
        self.staging: str | None = None       # name in the staging folder
        self.staging_fd: int | None = None
        self.writers = 0        # handles open for writing (changed under the area lock only)
        self.deleted = False    # unlinked (or renamed over) while staged: never commit
        self.dirty = False      # staged content differs from what a commit would keep
        self.failed = 0         # errno of a failed write: the staged content is incomplete
        self.refused = False    # the last commit refused the staged content (kept for its writer)
        self.written = False    # written through this mount: readers bypass the page cache
        self.passthrough = False  # staged content written by the kernel (FUSE passthrough)

    @property
    def rel(self) -> str:
        return self.parent.child_rel(self.name)

    @property
    def pending(self) -> bool:
        return self.staging is not None and not self.deleted

    @property
    def visible(self) -> bool:
        """Staged content others can see: refused content is its writer's alone until
        rewritten, so a name whose close() failed is gone at once, not when the kernel's
        asynchronous RELEASE finally drops it."""
        return self.pending and not self.refused

    # -- committed content ------------------------------------------------------
    def committed_plane(self):
        target = self.area.zarr_target(self.rel)
        if target is None:
            return None
        st = self.area.store(target[0])
        if st is None or not st.exists(target[1]):
            return None
        return st.plane(target[1])

    def _committed_file(self) -> os.stat_result | None:
        st = self.area.stat(self.rel)
        return st if st is not None and stat_mod.S_ISREG(st.st_mode) else None

    def exists(self) -> bool:
        return self._committed_file() is not None or self.committed_plane() is not None

    def committed_version(self) -> _Version | None:
        """The committed content as it is now, for one reader (None if there is none)."""
        if self._committed_file() is not None:
            return _Version(fd=self.area.open(self.rel))
        plane = self.committed_plane()
        if plane is None:
            return None
        layout = layout_for(tuple(plane.shape), plane.dtype, plane.pixel_size)
        return _Version(data=layout.read(0, layout.size, plane.read_rows))

    def committed_size(self) -> int:
        st = self._committed_file()
        if st is not None:
            return st.st_size
        plane = self.committed_plane()
        if plane is not None:
            return layout_for(tuple(plane.shape), plane.dtype, plane.pixel_size).size
        raise FileNotFoundError(errno.ENOENT, "no committed content", self.rel)

    @property
    def size(self) -> int:
        fd = self.staging_fd          # one read: a commit in a worker thread may close it
        if fd is not None and not self.refused:     # refused bytes are not the file's size
            try:
                return os.fstat(fd).st_size
            except OSError:
                pass
        return self.committed_size()

    # -- the node protocol (see nodes.py) -------------------------------------------
    @property
    def writable(self) -> bool:
        return self.area.writable

    def set_attrs(self, size: int | None, mtime_ns: int | None) -> bool:
        """truncate and utimes; modes and owners are fixed in outputs/ (ignored)."""
        if not self.area.writable:
            raise OSError(errno.EROFS, "outputs/ is read-only on this mount")
        committed = self.truncate(size) if size is not None else False
        if mtime_ns:
            self.mtime_ns = mtime_ns
        return committed

    blocking_handles = True   # open may copy content, flush/fsync/release commit: in a worker

    def inline(self, op: str) -> bool:
        """A flush or the last release with nothing to commit (what follows a committed
        close) runs on the loop."""
        if op == "flush":
            idle = not (self.pending and (self.dirty or self.failed))
        elif op == "release":
            idle = not self.pending or self.writers > 1
        else:
            return False
        return idle and self.area.inline_ok()

    def open_file(self, flags: int) -> OpenFile:
        if flags & WRITE_FLAGS:
            if not self.area.writable:
                raise OSError(errno.EROFS, "outputs/ is read-only on this mount")
            with self.area.lock:
                self.writers += 1
                try:
                    self.begin_write(bool(flags & os.O_TRUNC))
                except BaseException:
                    self.writers -= 1
                    raise
            # write-only: a read-write handle may mmap, and the kernel then loses passthrough
            # writes after a truncate (seen on 6.18): those stay with the daemon
            writer = _Writer(self.passthrough_fd() if flags & os.O_ACCMODE == os.O_WRONLY
                             else None)
            return OpenFile(writer, keep_cache=False, backing_fd=writer.backing)
        with self.area.lock:
            version = self.committed_version()
            if version is None and self.visible:     # not committed yet: the staged bytes
                version = _Version(fd=os.dup(self.staging_fd))
        if version is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self.rel)
        # written through this mount: the size may change under an open reader, and only
        # direct I/O keeps the kernel from cutting this reader's version to the new size
        return OpenFile(version, keep_cache=False, direct_io=self.written)

    def passthrough_fd(self) -> int | None:
        """The staging file of a new file, for the kernel to write into directly (FUSE
        passthrough); a zarr plane is decoded at commit: not that."""
        with self.area.lock:
            # a file with committed content: its readers must keep seeing that until the
            # commit, and every open of a file in passthrough reads the backing (staged) file
            if (self.area.zarr_target(self.rel) is not None or self.staging_fd is None
                    or self.exists()):
                return None
            return os.dup(self.staging_fd)      # a commit may close staging_fd meanwhile

    def passthrough_started(self, handle) -> None:
        # the writes will not pass through _pwrite: the staged content is what to commit
        if isinstance(handle, _Writer):
            with self.area.lock:
                self.dirty, self.refused, self.written, self.passthrough = True, False, True, True

    def _passthrough_write_lost(self) -> None:
        """Passthrough writes never pass _pwrite, so a failed one (ENOSPC) is not seen here: a
        staging file system left (nearly) full means one may have failed; never commit that."""
        if self.passthrough and self.staging_fd is not None and not self.failed:
            st = os.fstatvfs(self.staging_fd)
            if st.f_bfree * st.f_frsize < NEAR_FULL:
                self.failed = errno.ENOSPC

    def read(self, handle, offset: int, length: int) -> bytes:
        if isinstance(handle, _Version):
            return handle.read(offset, length)
        with self.area.lock:              # the writer: its own staged bytes
            if self.staging_fd is not None:
                return os.pread(self.staging_fd, length, offset)
            version = self.committed_version()
        try:
            return version.read(offset, length) if version is not None else b""
        finally:
            if version is not None:
                version.close()

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        if isinstance(handle, _Version) and handle.data is not None:
            return handle.read(offset, length)
        return None

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
        self.dirty, self.refused, self.written = True, False, True
        try:
            return os.pwrite(self.staging_fd, data, offset)
        except OSError as e:
            self.failed = e.errno or errno.EIO
            raise

    def truncate(self, size: int) -> bool:
        """truncate(2)/ftruncate(2); a truncate by path (no writer) commits at once."""
        with self.area.lock:
            if self.staging_fd is None:
                self.begin_write(truncate=size == 0)
            os.ftruncate(self.staging_fd, size)
            self.dirty, self.refused, self.written = True, False, True
            if self.writers == 0:
                self.commit(final=True)
                return True
        return False

    def flush(self, handle) -> bool:
        """close(2) waits for FLUSH (RELEASE comes later, asynchronously): committing here
        is what makes "close() returned 0" mean "the file is complete in the plate". A flush
        with nothing written since the last commit (`cmd > file` closing a dup before
        writing, a reader's close) commits nothing. True if something was committed."""
        if not isinstance(handle, _Writer):
            return False
        with self.area.lock:
            if self.pending and (self.dirty or self.failed):
                self.commit()
                return True
        return False

    def fsync(self, handle) -> bool:
        """fsync/fdatasync: commit, and return only once the bytes and the name are durable."""
        with self.area.lock:
            if isinstance(handle, _Writer) and self.pending:
                self.commit(durable=True)
                return True
            if self.area.zarr_target(self.rel) is not None:
                self.area.flush_stores()      # committed at close: write the batched index now
                return False
            version = self.committed_version() if self._committed_file() is not None else None
        if version is not None:           # committed at close without waiting: sync it now
            try:
                os.fsync(version.fd)
                self.area.at_parent(self.rel, lambda name, dir_fd: os.fsync(dir_fd))
            finally:
                version.close()
        return False

    def release(self, handle) -> bool:
        if isinstance(handle, _Version):
            handle.close()
            return False
        if handle.backing is not None:
            os.close(handle.backing)
        with self.area.lock:
            self.writers -= 1
            if self.writers > 0:
                return False
            if self.deleted:
                self.discard()
                return False
            if not self.pending:
                return False
            try:
                self.commit(final=True, last_close=True)
            except CommitError as e:      # nothing more to tell a closed file
                log.error("commit of outputs/%s at the last close failed: %s", self.rel, e)
            return True

    # -- writing -------------------------------------------------------------------
    def begin_write(self, truncate: bool) -> None:
        """Make sure a staging file holds the content being written (copy-on-write)."""
        with self.area.lock:
            if self.staging_fd is not None:
                if truncate:
                    os.ftruncate(self.staging_fd, 0)
                    self.dirty, self.refused, self.written = True, False, True
                return
            version = None if truncate else self.committed_version()
            self.dirty = truncate and self.exists()     # O_TRUNC of a committed file changes it
            self.written = self.written or truncate
            name, fd = self.area.new_staging()
            try:
                if version is not None:
                    _copy(version, fd)
            except BaseException:
                os.close(fd)
                self.area.drop_staging(name)
                raise
            finally:
                if version is not None:
                    version.close()
            self.staging, self.staging_fd = name, fd
            self.deleted = self.refused = False

    def remove_committed(self) -> None:
        with self.area.lock:
            if self._committed_file() is not None:
                self.area.at_parent(self.rel, os.unlink)
            target = self.area.zarr_target(self.rel)
            if target is not None and self.committed_plane() is not None:
                store = self.area.store(target[0])
                store.invalidate(target[1])
                store.delete(target[1])

    def remove(self) -> None:
        """unlink(2): the committed content goes now (open readers keep theirs); staged
        content when its last writer closes. Under the lock, so a commit running in another
        worker cannot bring the file back."""
        with self.area.lock:
            self.remove_committed()
            self.displace()

    def displace(self) -> None:
        """Unlinked or renamed over: staged content is never committed."""
        with self.area.lock:
            if self.pending:
                self.deleted = True
                if self.writers == 0:
                    self.discard()

    def discard(self) -> None:
        with self.area.lock:
            if self.staging_fd is not None:
                os.close(self.staging_fd)
            if self.staging is not None:
                self.area.drop_staging(self.staging)
            self.staging = self.staging_fd = None
            self.refused = False

    def move_to(self, new_dir, new_name: str) -> None:
        """rename(2) of a file (under the area lock)."""
        area, old_rel, new_rel = self.area, self.rel, new_dir.child_rel(new_name)
        target = new_dir._nodes.get(new_name)
        plane = self.committed_plane()
        if self._committed_file() is not None or plane is not None:
            if area.zarr_target(new_rel) is not None or plane is not None:
                # content changes representation: restage it and commit under the new name
                self.begin_write(truncate=False)
                self.remove_committed()
                self._displace_target(target)
                new_dir.adopt(new_name, self)
                self.dirty = True
                self.commit(final=True)
                return
            area.rename(old_rel, new_rel)
        self._displace_target(target)
        new_dir.adopt(new_name, self)

    def _displace_target(self, target) -> None:
        if isinstance(target, OutFile) and target is not self:
            target.displace()

    def commit(self, final: bool = False, *, last_close: bool = False, durable: bool = False) -> None:
        """Make the staged content the committed one, atomically; raises CommitError.

        Content that is not acceptable (a TIFF name with bytes that are no complete TIFF, a
        plane that does not fit its zarr field) is refused with EINVAL but stays staged unless
        ``final``: programs close dup'ed descriptors half-way through writing a file
        (numpy's ``tofile`` under tifffile does), and the next close must still see
        everything written so far. ``last_close`` (the kernel's RELEASE, which comes
        asynchronously) does nothing if the file was opened for writing again meanwhile.
        """
        with self.area.lock:
            if self.staging_fd is None or self.deleted or (last_close and self.writers > 0):
                return
            self._passthrough_write_lost()
            fd, staging = self.staging_fd, self.staging
            if last_close and not self.dirty and not self.failed and self.exists():
                self._drop(fd, staging)        # opened for writing, nothing changed: keep as is
                return
            if self.failed:        # a write was lost (e.g. ENOSPC): never commit the rest
                err, self.failed = self.failed, 0
                self._drop(fd, staging)
                raise CommitError(err, f"{self.rel}: a write failed ({os.strerror(err)}); "
                                       "nothing stored")
            try:
                self._store(fd, staging, durable or self.area.sync_on_close)
            except CommitError as e:
                if final or e.errno != errno.EINVAL:
                    self._drop(fd, staging)
                else:
                    self.refused = True
                raise
            except OSError as e:
                self._drop(fd, staging)
                raise CommitError(e.errno or errno.EIO, f"{self.rel}: {e}") from e
            os.close(fd)
            self.staging = self.staging_fd = None
            self.dirty = self.refused = self.passthrough = False
            self.mtime_ns = time.time_ns()
            self.area.mark_dirty()
            log.info("committed outputs/%s%s", self.rel, " (durable)" if durable else "")

    def _store(self, fd: int, staging: str, durable: bool) -> None:
        area = self.area
        target = area.zarr_target(self.rel)
        if target is not None:
            # the staged bytes are only decoded, never kept: no fsync. zarr writes each
            # chunk and metadata document atomically (temp file + rename), unfsynced.
            plane = _decode(fd, self.rel)
            store = area.store(target[0], create=True)
            # The plane's chunk is written now; the store's metadata (shapes, records, NGFF)
            # is batched (the daemon's recorder, once a second; unmount; fsync). The
            # store says it is unflushed meanwhile, and its next opening rebuilds the index
            # from the chunks on disk: a kill -9 right after close() loses nothing.
            try:
                store.save_batch([plane], [target[1]], flush=durable)
                if not durable:
                    area.stores_dirty.add(target[0])
            except StorageError as e:
                raise CommitError(errno.EINVAL, f"{self.rel}: {e}") from e
            finally:
                store.invalidate(target[1])     # decoded planes and chunks follow the commit
            if self._committed_file() is not None:   # it was a plain file: the plane replaces it
                area.at_parent(self.rel, os.unlink)
            area.drop_staging(staging)
            return
        if self.rel.lower().endswith((".tif", ".tiff")):
            _check_tiff(fd, self.rel)
        if durable:
            os.fsync(fd)
        try:
            area.publish(staging, self.rel, durable=durable)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise CommitError(errno.ENOENT, f"folder of {self.rel} is gone") from e
        self.written = True

    def _drop(self, fd: int, staging: str) -> None:
        os.close(fd)
        self.area.drop_staging(staging)
        self.staging = self.staging_fd = None
        self.dirty = self.refused = self.passthrough = False


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
    from backends.tiff_guard import decode_checked, read_tiff_checked
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


__all__ = ["OutFile", "CommitError"]
