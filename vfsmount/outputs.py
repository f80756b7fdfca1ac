"""The outputs area: ``MOUNT/outputs/``, where tools write results into the plate.

Committed state lives in the plate:
- ``PLATE/outputs/<path>``: every committed file, mirrored one to one (``--materialize disk``,
  and non-image files with ``--materialize zarr``);
- ``PLATE/outputs/<sub>.zarr``: with ``--materialize zarr``, images written directly into a
  first-level folder ``outputs/<sub>/`` whose names parse as plate images (normalized, or an
  ImageXpress name) become planes of this OME-Zarr plate and are served back as
  synthesized TIFFs. Images elsewhere are stored as files.

Every path below ``PLATE/outputs`` is reached through ``backends.containment`` (openat2
beneath a descriptor held for the folder, no symlinks followed): a symlink found there is
listed as a refused entry (mode 000, EACCES on open), never followed.

Writes go to a staging file in ``PLATE/.vfsmount-staging/`` (same file system, so the commit
is one rename). The staging file is committed when a writer's close() flushes it (content
complete: an image-named TIFF must hold every page's data) or on fsync, and at the last
close at the latest; a commit is a rename (or a decode into the zarr store), so a crash
leaves the old file or the new one. ``close()`` does not wait for the disk; ``fsync()``
does (staged file and folder), and ``--sync-on-close`` makes every commit durable.
A reader keeps the version it opened: its handle holds that version's descriptor (or, for
a zarr plane, its bytes) until it closes.

Not supported (answered with an errno): hard links and symlinks (EPERM), special files
(EPERM), rename flags such as RENAME_EXCHANGE (EINVAL), names with a backslash or control
characters (EPERM), names ending in ``.zarr`` (EINVAL: that suffix marks a zarr store).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
import threading
import time
import uuid

from natsort import natsorted

from backends import containment
from backends.errors import PathEscapeError, StorageError
from backends.handlers.imagexpress import parse_name as parse_imagexpress_name
from backends.layout import OUTPUTS_DIR, STAGING_DIR, ZARR_SUFFIX
from backends.metadata import record_output_folder
from backends.naming import try_parse_virtual_name

from .nodes import WRITE_FLAGS, FileNode, Node, OpenFile, layout_for

log = logging.getLogger(__name__)

COPY_CHUNK = 8 << 20


class CommitError(OSError):
    """A commit failed; ``errno`` is what the writer's close()/fsync() returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror


def image_name(name: str) -> str | None:
    """The normalized plate name for a file name that parses as a plate image, else None."""
    p = try_parse_virtual_name(name)
    if p is None:
        found = parse_imagexpress_name(name)
        if found is None or found[1]:
            return None
        p = found[0]
    return p.virtual_name()


def check_name(name: bytes) -> str:
    """A name a tool may create in outputs/; OSError otherwise."""
    text = os.fsdecode(name)
    if len(name) > containment.NAME_MAX:
        raise OSError(errno.ENAMETOOLONG, "name longer than NAME_MAX")
    if "\\" in text or any(ord(c) < 32 for c in text):
        raise OSError(errno.EPERM, f"name not allowed in outputs/: {text!r}")
    if text.endswith(ZARR_SUFFIX):
        raise OSError(errno.EINVAL, f"names ending in {ZARR_SUFFIX} are reserved for zarr stores")
    return text


class OutputsArea:
    def __init__(self, plate, *, writable: bool, materialize: str = "disk",
                 sync_on_close: bool = False) -> None:
        if materialize not in ("disk", "zarr"):
            raise ValueError(f"--materialize must be disk or zarr, not {materialize!r}")
        self.plate = plate
        self.writable, self.materialize, self.sync_on_close = writable, materialize, sync_on_close
        self.lock = threading.RLock()
        self._stores: dict[str, object] = {}
        self.stores_dirty: set[str] = set()       # zarr stores whose metadata awaits a flush
        self._metadata_dirty = False
        plate_fd = containment.open_root(plate.path)
        try:
            self.root_fd = containment.open_dir_beneath(plate_fd, OUTPUTS_DIR, create=writable)
            self.staging_fd = (containment.open_dir_beneath(plate_fd, STAGING_DIR, create=True)
                               if writable else None)
        except OSError as e:
            raise StorageError("cannot open the outputs area (is the plate writable? is "
                               f"{OUTPUTS_DIR}/ a symlink?)", path=plate.path, cause=e) from e
        finally:
            os.close(plate_fd)
        if self.staging_fd is not None:
            for leftover in os.listdir(self.staging_fd):     # a crashed writer's half-written files
                log.info("removing uncommitted staging file %s", leftover)
                os.unlink(leftover, dir_fd=self.staging_fd)
        self.top = OutDir(self, None, "")

    # -- every path below PLATE/outputs goes through containment ----------------
    def stat(self, rel: str) -> os.stat_result | None:
        """lstat of ``rel`` (a symlink is reported as one, never followed); None if absent."""
        if not rel:
            return os.fstat(self.root_fd)
        try:
            pfd, name = containment.parent_beneath(self.root_fd, rel)
        except (FileNotFoundError, NotADirectoryError, PathEscapeError):
            return None
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(pfd)

    def open(self, rel: str, flags: int = os.O_RDONLY) -> int:
        return containment.open_beneath(self.root_fd, rel, flags)

    def at_parent(self, rel: str, fn, *args, **kw):
        """``fn(name, *args, dir_fd=parent)`` for the *at() calls (mkdir, rmdir, unlink)."""
        pfd, name = containment.parent_beneath(self.root_fd, rel)
        try:
            return fn(name, *args, dir_fd=pfd, **kw)
        finally:
            os.close(pfd)

    def rename(self, old: str, new: str) -> None:
        ofd, oname = containment.parent_beneath(self.root_fd, old)
        try:
            nfd, nname = containment.parent_beneath(self.root_fd, new)
            try:
                os.rename(oname, nname, src_dir_fd=ofd, dst_dir_fd=nfd)
            finally:
                os.close(nfd)
        finally:
            os.close(ofd)

    def publish(self, staging_name: str, rel: str, *, durable: bool) -> None:
        """Rename a staging file onto ``rel`` (fsyncing the folder first if ``durable``)."""
        pfd, name = containment.parent_beneath(self.root_fd, rel)
        try:
            os.rename(staging_name, name, src_dir_fd=self.staging_fd, dst_dir_fd=pfd)
            if durable:
                os.fsync(pfd)
        finally:
            os.close(pfd)

    def scandir(self, rel: str) -> list[tuple[str, bool | None]]:
        """(name, is_dir) of a folder's entries; is_dir None for a symlink (refused)."""
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY) if rel else os.dup(self.root_fd)
        try:
            with os.scandir(fd) as it:
                return [(e.name, None if e.is_symlink() else e.is_dir(follow_symlinks=False))
                        for e in it]
        finally:
            os.close(fd)

    def new_staging(self) -> tuple[str, int]:
        name = f"{uuid.uuid4().hex}.part"
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                     dir_fd=self.staging_fd)
        return name, fd

    def drop_staging(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.staging_fd)
        except FileNotFoundError:
            pass

    # -- zarr materialization ----------------------------------------------------
    def zarr_target(self, rel: str) -> tuple[str, str] | None:
        """(sub, plane name) if ``rel`` is materialized into a zarr store, else None.

        A folder whose store already exists stays zarr-backed whatever ``--materialize`` says
        (so a read-only remount serves what a zarr-materializing mount wrote)."""
        parts = rel.split("/")
        if len(parts) != 2:
            return None
        if self.materialize != "zarr" and not self.has_store(parts[0]):
            return None
        name = image_name(parts[1])
        return (parts[0], name) if name and name == parts[1] else None

    def has_store(self, sub: str) -> bool:
        if len(os.fsencode(sub + ZARR_SUFFIX)) > containment.NAME_MAX:
            return False          # a folder with a name that long cannot have a store
        st = self.stat(sub + ZARR_SUFFIX)
        return st is not None and stat_mod.S_ISDIR(st.st_mode)

    def store(self, sub: str, *, create: bool = False):
        with self.lock:
            st = self._stores.get(sub)
            if st is None and (create or self.has_store(sub)):
                from backends.zarr_backend import ZarrStorageBackend
                from backends.zarr_config import ZarrConfig
                # the path is only used once containment says the store is a real folder
                path = os.path.join(os.path.realpath(self.plate.path), OUTPUTS_DIR, sub + ZARR_SUFFIX)
                # FILE chunks: a committed plane rewrites only its own chunk
                st = ZarrStorageBackend(path, mode="a", config=ZarrConfig(chunk_strategy="file"))
                self._stores[sub] = st
            return st

    def forget_stores(self) -> None:
        with self.lock:
            self.flush_stores()
            self._stores.clear()

    def flush_stores(self) -> None:
        """Write the batched metadata of the zarr stores committed into since the last flush
        (readers of the mount see new planes at once; this makes the next mount see them)."""
        with self.lock:
            while self.stores_dirty:
                sub = self.stores_dirty.pop()
                st = self._stores.get(sub)
                if st is not None:
                    st.flush()

    def store_names(self, sub: str) -> list[str]:
        st = self.store(sub)
        return st.list_files() if st is not None else []

    # -- metadata -------------------------------------------------------------------
    def mark_dirty(self) -> None:
        self._metadata_dirty = True

    def write_metadata(self, force: bool = False) -> None:
        """Record every first-level output folder (and outputs/ itself) in the metadata,
        derived from what is committed, through ``record_output_folder``. A folder that
        cannot be recorded (removed meanwhile, unreadable) is logged and skipped."""
        self.flush_stores()
        if not (self._metadata_dirty or force):
            return
        self._metadata_dirty = False
        recorded = {}
        with self.lock:
            folders = [n for n, is_dir in self.scandir("") if is_dir and not n.endswith(ZARR_SUFFIX)]
            for sub in natsorted(folders) + [""]:
                try:
                    entry = self._record(sub)
                except (OSError, StorageError) as e:
                    log.warning("outputs/%s not recorded in the metadata: %s", sub, e)
                    continue
                if entry:
                    recorded[f"{OUTPUTS_DIR}/{sub}" if sub else OUTPUTS_DIR] = entry
        self.plate.metadata["subdirectories"].update(recorded)

    def _record(self, sub: str) -> dict:
        files = [n for n, is_dir in self.scandir(sub) if is_dir is False]
        zarr_names = self.store_names(sub) if sub else []
        if not zarr_names:
            return record_output_folder(self.plate.path, sub, files, "disk")
        path = os.path.join(os.path.realpath(self.plate.path), OUTPUTS_DIR, sub + ZARR_SUFFIX)
        return record_output_folder(self.plate.path, sub, zarr_names, "zarr",
                                    files=natsorted(files), path=path)


class RefusedEntry(Node):
    """A symlink (or other unusable entry) inside PLATE/outputs: listed, never followed."""

    __slots__ = ("rel",)
    entry_timeout = 0.0

    def __init__(self, rel: str) -> None:
        super().__init__(stat_mod.S_IFREG, 0)
        self.rel = rel

    @property
    def size(self) -> int:
        return 0

    def open_file(self, flags: int) -> OpenFile:
        raise PathEscapeError("a symlink inside outputs/ is never followed", path=self.rel)


class OutDir(Node):
    """A directory of the outputs area; its entries come from disk, zarr and pending files."""

    __slots__ = ("area", "parent", "name", "_nodes")
    entry_timeout = 0.0     # outputs/ changes under the kernel

    def __init__(self, area: OutputsArea, parent: "OutDir | None", name: str) -> None:
        super().__init__(stat_mod.S_IFDIR | (0o755 if area.writable else 0o555), time.time_ns())
        self.area, self.parent, self.name = area, parent, name
        self._nodes: dict[str, Node] = {}      # keeps inode numbers stable across lookups

    @property
    def rel(self) -> str:
        # computed, not stored (a renamed folder moves everything below it), in O(depth)
        parts, d = [], self
        while d.parent is not None:
            parts.append(d.name)
            d = d.parent
        return "/".join(reversed(parts))

    def child_rel(self, name: str) -> str:
        rel = self.rel
        return f"{rel}/{name}" if rel else name

    @property
    def writable(self) -> bool:
        return self.area.writable

    def touch(self) -> None:
        self.mtime_ns = time.time_ns()

    def needs_worker(self) -> bool:
        return True           # lookups and listings read the disk

    @property
    def nlink(self) -> int:
        st = self.area.stat(self.rel)     # 2 + subfolders, as the disk counts them
        return st.st_nlink if st is not None else 2

    def set_attrs(self, size: int | None, mtime_ns: int | None) -> bool:
        if not self.writable:
            raise OSError(errno.EROFS, "outputs/ is read-only on this mount")
        if mtime_ns:
            self.mtime_ns = mtime_ns
        return False

    def node(self, name: str, *, is_dir: bool) -> Node:
        n = self._nodes.get(name)
        if n is None or isinstance(n, OutDir) != is_dir or isinstance(n, RefusedEntry):
            n = OutDir(self.area, self, name) if is_dir else OutFile(self.area, self, name)
            self._nodes[name] = n
        return n

    def adopt(self, name: str, node: Node) -> None:
        """Move ``node`` (a renamed file or folder) here under ``name``; same inode."""
        old_parent = node.parent
        if old_parent is not None and old_parent._nodes.get(node.name) is node:
            del old_parent._nodes[node.name]
        node.parent, node.name = self, name
        self._nodes[name] = node

    # -- reading the folder ------------------------------------------------------
    def lookup(self, name: bytes) -> Node | None:
        return self.find(os.fsdecode(name))

    def find(self, name: str) -> Node | None:
        rel = self.child_rel(name)
        containment.check_rel(rel)            # ENAMETOOLONG before any system call
        n = self._nodes.get(name)
        if isinstance(n, OutFile) and n.visible:
            return n
        st = self.area.stat(rel)
        if st is not None:
            if stat_mod.S_ISLNK(st.st_mode):
                return self._refused(name, rel)
            if stat_mod.S_ISDIR(st.st_mode):
                return None if name.endswith(ZARR_SUFFIX) else self.node(name, is_dir=True)
            return self.node(name, is_dir=False)
        target = self.area.zarr_target(rel)
        if target:
            store = self.area.store(target[0])
            if store is not None and store.exists(target[1]):
                return self.node(name, is_dir=False)
        return None

    def _refused(self, name: str, rel: str) -> RefusedEntry:
        n = self._nodes.get(name)
        if not isinstance(n, RefusedEntry):
            log.warning("outputs/%s is a symlink: listed, never followed", rel)
            n = self._nodes[name] = RefusedEntry(rel)
        return n

    def listing(self) -> "Snapshot":
        """A snapshot of the changing folder, paged through by offset."""
        rel = self.rel
        names: set[str] = set()
        for name, is_dir in self.area.scandir(rel):
            if not (is_dir and name.endswith(ZARR_SUFFIX)):
                names.add(name)
        if rel and "/" not in rel:
            names.update(self.area.store_names(rel))
        names.update(n for n, node in self._nodes.items() if isinstance(node, OutFile) and node.visible)
        entries = [(name, self.find(name)) for name in natsorted(names)]
        return Snapshot([(os.fsencode(n), node) for n, node in entries if node is not None])

    def is_empty(self) -> bool:
        return not self.listing().names()

    # -- write capabilities (see fs.py): each checks the name and changes the folder time --
    def create(self, name: bytes) -> "OutFile":
        text = check_name(name)
        if isinstance(self.find(text), OutDir):
            raise IsADirectoryError(errno.EISDIR, "a folder has this name")
        node = self.node(text, is_dir=False)
        node.begin_write(truncate=True)
        self.touch()
        return node

    def mkdir(self, name: bytes) -> "OutDir":
        text = check_name(name)
        self.area.at_parent(self.child_rel(text), os.mkdir, 0o755)
        self.touch()
        return self.node(text, is_dir=True)

    def unlink(self, name: bytes) -> None:
        text = os.fsdecode(name)
        node = self.find(text)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file")
        if isinstance(node, OutDir):
            raise IsADirectoryError(errno.EISDIR, "a folder")
        if isinstance(node, RefusedEntry):
            self.area.at_parent(node.rel, os.unlink)
        else:
            node.remove()
        self._nodes.pop(text, None)
        self.touch()
        self.area.mark_dirty()

    def rmdir(self, name: bytes) -> None:
        text = os.fsdecode(name)
        node = self.find(text)
        if not isinstance(node, OutDir):
            raise NotADirectoryError(errno.ENOTDIR if node is not None else errno.ENOENT, text)
        if not node.is_empty():
            raise OSError(errno.ENOTEMPTY, "folder not empty")
        self.area.at_parent(node.rel, os.rmdir)
        self._nodes.pop(text, None)
        self.touch()

    def rename(self, name: bytes, new_dir: Node, new_name: bytes) -> None:
        if not isinstance(new_dir, OutDir):
            raise OSError(errno.EXDEV, "rename out of outputs/")
        text, new_text = os.fsdecode(name), check_name(new_name)
        node = self.find(text)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file")
        target = new_dir.find(new_text)
        if target is node:
            return
        if isinstance(target, OutDir) and not isinstance(node, OutDir):
            raise IsADirectoryError(errno.EISDIR, "a folder has the new name")
        if isinstance(node, RefusedEntry):
            raise PathEscapeError("a symlink inside outputs/ cannot be renamed here", path=node.rel)
        with self.area.lock:
            node.move_to(new_dir, new_text)
        self.touch()
        new_dir.touch()
        self.area.mark_dirty()

    def move_to(self, new_dir: "OutDir", new_name: str) -> None:
        area, old_rel, new_rel = self.area, self.rel, new_dir.child_rel(new_name)
        area.rename(old_rel, new_rel)
        if "/" not in old_rel and area.has_store(old_rel):
            area.rename(old_rel + ZARR_SUFFIX, new_rel + ZARR_SUFFIX)
            area.forget_stores()
        new_dir.adopt(new_name, self)


class Snapshot:
    """A directory listing frozen at opendir: names by offset, and their nodes."""

    __slots__ = ("_names", "_nodes")

    def __init__(self, entries: list[tuple[bytes, Node]]) -> None:
        self._names = [n for n, _ in entries]
        self._nodes = dict(entries)

    def names(self) -> list[bytes]:
        return self._names

    def child(self, name: bytes) -> Node | None:
        return self._nodes.get(name)


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

    __slots__ = ()


class OutFile(FileNode):
    """A file of the outputs area: committed content plus, while written, a staging file."""

    __slots__ = ("area", "parent", "name", "staging", "staging_fd", "writers", "deleted", "dirty",
                 "failed", "refused", "written")
    immutable = False
    entry_timeout = 0.0     # a commit changes the size under the kernel

    def __init__(self, area: OutputsArea, parent: OutDir, name: str) -> None:
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
            return OpenFile(_Writer(), keep_cache=False)
        with self.area.lock:
            version = self.committed_version()
            if version is None and self.visible:     # not committed yet: the staged bytes
                version = _Version(fd=os.dup(self.staging_fd))
        if version is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self.rel)
        # written through this mount: the size may change under an open reader, and only
        # direct I/O keeps the kernel from cutting this reader's version to the new size
        return OpenFile(version, keep_cache=False, direct_io=self.written)

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

    def move_to(self, new_dir: OutDir, new_name: str) -> None:
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
            self.dirty = self.refused = False
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
            # A plane that is new to the store changes its index: that is written at once,
            # so the next mount (even after kill -9) sees every plane whose close() returned.
            # Rewriting an existing plane leaves the index as it is: its metadata rewrite is
            # batched (the daemon's recorder, once a second; unmount; fsync).
            batch = not durable and store.exists(target[1])
            try:
                store.save_batch([plane], [target[1]], flush=not batch)
                if batch:
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
        self.dirty = self.refused = False


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
    """Refuse (EINVAL) a TIFF that tifffile cannot read whole: every page must have all its
    strips or tiles inside the file (a writer that closed a dup'ed descriptor half-way has
    zeros where the image directory will be)."""
    size = os.fstat(fd).st_size
    try:
        with _tiff(fd) as tif:
            pages = list(tif.pages)
            if not pages:
                raise ValueError("no image directory")
            for i, page in enumerate(pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                if not offsets or not page.shape or any(
                        o <= 0 or c <= 0 or o + c > size for o, c in zip(offsets, counts)):
                    raise ValueError(f"page {i}: image data missing or outside the file")
    except Exception as e:
        raise CommitError(errno.EINVAL, f"{rel}: not a valid TIFF ({e}); nothing stored") from e


def _decode(fd: int, rel: str):
    """The staged TIFF's single 2D plane."""
    import numpy as np
    _check_tiff(fd, rel)
    try:
        with _tiff(fd) as tif:
            data = tif.asarray()
    except Exception as e:
        raise CommitError(errno.EINVAL, f"{rel}: not a valid TIFF ({e}); nothing stored") from e
    data = np.squeeze(data)
    if data.ndim != 2:
        raise CommitError(errno.EINVAL, f"{rel}: a plate image must be one 2D plane, got "
                                        f"shape {data.shape}")
    return data


__all__ = ["OutputsArea", "OutDir", "OutFile", "RefusedEntry", "CommitError", "image_name",
           "check_name", "Snapshot"]
