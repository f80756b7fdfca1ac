"""The outputs area: ``MOUNT/outputs/``, where tools write results into the plate.

Committed state lives in the outputs root (``PLATE/outputs`` unless the mount names another):
- ``<root>/<path>``: every committed file, mirrored one to one (``--materialize disk``,
  and non-image files with ``--materialize zarr``);
- ``<root>/<sub>.zarr``: with ``--materialize zarr``, images written directly into a
  first-level folder ``outputs/<sub>/`` whose names parse as plate images (normalized, or an
  ImageXpress name) become planes of this OME-Zarr plate and are served back as
  synthesized TIFFs. Images elsewhere are stored as files.

Writable or not is decided once, when the area is opened (:class:`OutputsArea`): a read-only
area holds no write access to the disk (no staging folder, no :class:`_Disk`) and serves
``OutDir``/``OutFile`` nodes, which have no write capabilities, so every write-like call
gets the node protocol's default refusal (EROFS, ``nodes.Node``). A writable area serves
``WritableOutDir``/``WritableOutFile``, and only they reach ``area.disk``.

The file nodes are in ``outfile.py``. Every path below the root is reached through
``backends.guards.containment`` (openat2 beneath a descriptor held for the folder, no symlinks
followed): a symlink found there is listed as a refused entry (mode 000, EACCES on open).

Writes go to a staging file in the staging folder (``PLATE/.vfsmount-staging/``: the same
file system, so the commit is one rename); see ``outfile.py`` for when it is committed.

Not supported (answered with an errno): hard links and symlinks (EPERM), special files
(EPERM), rename flags such as RENAME_EXCHANGE (EINVAL), names with a backslash or control
characters, DEL included (EPERM), names ending in ``.zarr`` (EINVAL: that suffix marks a
zarr store), extended attributes (ENOTSUP).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import queue
import stat as stat_mod
import threading
import time
import uuid

from natsort import natsorted

from backends.guards import containment
from backends.errors import PathEscapeError, StorageError
from backends.plates.handlers.imagexpress import parse_name as parse_imagexpress_name
from backends.layout import OUTPUTS_DIR, ZARR_SUFFIX
from backends.plates.metadata import record_output_folder
from backends.storage.mountinfo import on_local_disk
from backends.naming import try_parse_virtual_name

from .errors import CommitError
from .nodes import Node, OpenFile
from .outfile import FileStorage, OutFile, PlaneStorage, WritableOutFile

log = logging.getLogger(__name__)

STORE_SEEN_SECONDS = 1.0     # how long has_store's answer is kept (see there)
_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = _libc.sync_file_range
_sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
SYNC_FILE_RANGE_WRITE = 2    # start writing the dirty pages back, wait for nothing
WRITE_BACK_QUEUE = 64        # committed files waiting for write_back (each holds a descriptor)


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
    if "\\" in text or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise OSError(errno.EPERM, f"name not allowed in outputs/: {text!r}")
    if text.endswith(ZARR_SUFFIX):
        raise OSError(errno.EINVAL, f"names ending in {ZARR_SUFFIX} are reserved for zarr stores")
    return text


def _open_folder(path: str, *, create: bool) -> int | None:
    """A descriptor of the folder ``path`` (created if ``create``), whose last component is
    never a symlink; None if it does not exist and may not be created."""
    parent, name = os.path.split(path)
    pfd = containment.open_root(parent)
    try:
        return containment.open_dir_beneath(pfd, name, create=create)
    except FileNotFoundError:
        if create:
            raise
        return None
    finally:
        os.close(pfd)


class _Disk:
    """Write access to the outputs root and the staging folder: every call that changes
    the disk. Only a writable area has one, so a read-only mount has no way to write."""

    def __init__(self, root_fd: int, staging_fd: int) -> None:
        self.root_fd, self.staging_fd = root_fd, staging_fd
        for leftover in os.listdir(staging_fd):     # a crashed writer's half-written files
            log.info("removing uncommitted staging file %s", leftover)
            os.unlink(leftover, dir_fd=staging_fd)
        self._written: queue.SimpleQueue | None = None     # see write_back

    def write_back(self, fd: int) -> None:
        """Start writing a committed file's data to disk now, in a thread of its own (the
        commit does not wait). Otherwise the kernel keeps it dirty for up to 30 s, so a
        copy's data would all be written at its end (`sync`) instead of while it runs; ext4
        does the same for a file renamed over another one."""
        if self._written is None:
            self._written = queue.SimpleQueue()
            threading.Thread(target=self._writing_back, name="vfsmount-writeback",
                             daemon=True).start()
        if self._written.qsize() < WRITE_BACK_QUEUE:   # else the kernel's flusher will
            self._written.put(os.dup(fd))

    def _writing_back(self) -> None:
        while True:
            fd = self._written.get()
            try:
                if _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
                    log.debug("writeback not started: %s", os.strerror(ctypes.get_errno()))
            finally:
                os.close(fd)

    def at_parent(self, rel: str, fn, *args, **kw):
        """``fn(name, *args, dir_fd=parent)`` for the *at() calls (mkdir, rmdir, unlink)."""
        pfd, name = containment.parent_beneath(self.root_fd, rel)
        try:
            return fn(name, *args, dir_fd=pfd, **kw)
        finally:
            os.close(pfd)

    def mkdir(self, rel: str) -> None:
        self.at_parent(rel, os.mkdir, 0o755)

    def rmdir(self, rel: str) -> None:
        self.at_parent(rel, os.rmdir)

    def unlink(self, rel: str) -> None:
        self.at_parent(rel, os.unlink)

    def sync_folder_of(self, rel: str) -> None:
        self.at_parent(rel, lambda name, dir_fd: os.fsync(dir_fd))

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


class OutputsArea:
    """``outputs/`` of one mount: committed files under ``root``, staged writes in
    ``staging`` (used only when ``writable``; nothing is created on a read-only mount)."""

    def __init__(self, plate, root: str | os.PathLike, staging: str | os.PathLike, *,
                 writable: bool, materialize: str = "disk", sync_on_close: bool = False) -> None:
        if materialize not in ("disk", "zarr"):
            raise ValueError(f"--materialize must be disk or zarr, not {materialize!r}")
        self.plate = plate
        self.writable, self.materialize, self.sync_on_close = writable, materialize, sync_on_close
        self.lock = threading.RLock()
        self._recording = threading.Lock()     # one metadata recorder at a time
        self._moves = 0            # odd while a rename moves disk and nodes (see settled)
        self._stores: dict[str, object] = {}
        self._stores_seen: dict[str, tuple[float, bool]] = {}   # sub -> (when, has a store)
        self.stores_dirty: set[str] = set()       # zarr stores whose metadata awaits a flush
        self._metadata_dirty = False
        parent, name = os.path.split(os.path.abspath(root))
        self.root_path = os.path.join(os.path.realpath(parent), name)
        self.disk: _Disk | None = None
        try:
            self._root_fd = _open_folder(self.root_path, create=writable)
            if writable:
                self.disk = _Disk(self._root_fd, _open_folder(
                    os.path.abspath(staging), create=True))
        except OSError as e:
            raise StorageError(f"cannot open the outputs area {self.root_path} (is the folder "
                               "writable? is it a symlink?)", path=plate.path, cause=e) from e
        # The one decision: a read-only area serves nodes without write capabilities.
        self.dir_node, self.file_node = ((WritableOutDir, WritableOutFile) if writable
                                         else (OutDir, OutFile))
        # On a local disk, lookups, creates and closes with nothing to commit cost a few
        # system calls: they run on the daemon's loop (see inline_ok) rather than pay a
        # worker thread's hand-off (as much again as the calls themselves).
        self.local = on_local_disk(self.root_path if self._root_fd is not None else parent)
        self.top = self.dir_node(self, None, "")

    @property
    def root_fd(self) -> int | None:
        """The root's descriptor; None while a read-only mount's root does not exist (outputs/
        is then an empty folder, until the root appears)."""
        if self._root_fd is None:
            fd = _open_folder(self.root_path, create=False)
            with self.lock:
                if self._root_fd is None:
                    self._root_fd, fd = fd, None
            if fd is not None:
                os.close(fd)
        return self._root_fd

    def inline_ok(self) -> bool:
        """True if a cheap call may run on the daemon's loop now: a local disk, and no worker
        holds the lock (a commit, the metadata recorder), which the loop must never wait for."""
        if not self.local or not self.lock.acquire(blocking=False):
            return False
        self.lock.release()
        return True

    # -- renames move the disk, then the nodes: readers see one or the other ----------
    @contextlib.contextmanager
    def moving(self):
        """Around a rename's disk call and the nodes' move (under the lock)."""
        with self.lock:
            self._moves += 1
            try:
                yield
            finally:
                self._moves += 1

    def settled(self, fn):
        """``fn()``, asked again while a rename runs: between the disk rename and the nodes'
        move a node's path names nothing, and a file being renamed would look gone (size 0).
        Lock-free (the loop's getattr calls it); an answer found (not None) is kept."""
        for _ in range(200):
            seq = self._moves
            try:
                result, error = fn(), None
            except FileNotFoundError as e:
                result, error = None, e
            if result is not None or (not seq & 1 and self._moves == seq):
                if error is not None:
                    raise error
                return result
            time.sleep(0)       # let the renaming thread finish
        with self.lock:
            return fn()

    # -- every path below the root goes through containment (reading) ----------------
    def stat(self, rel: str) -> os.stat_result | None:
        """lstat of ``rel`` (a symlink is reported as one, never followed); None if absent."""
        root = self.root_fd
        if root is None:
            return None
        if not rel:
            return os.fstat(root)
        try:
            pfd, name = containment.parent_beneath(root, rel)
        except (FileNotFoundError, NotADirectoryError, PathEscapeError):
            return None
        try:
            return os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        finally:
            os.close(pfd)

    def open(self, rel: str, flags: int = os.O_RDONLY) -> int:
        root = self.root_fd
        if root is None:
            raise FileNotFoundError(errno.ENOENT, "no outputs folder", rel)
        return containment.open_beneath(root, rel, flags)

    def scandir(self, rel: str) -> list[tuple[str, bool | None]]:
        """(name, is_dir) of a folder's entries; is_dir None for a symlink (refused).
        A new descriptor per listing: a dup would share one directory position between
        concurrent listings, and one of them would read nothing."""
        if self.root_fd is None:
            return []
        fd = self.open(rel, os.O_RDONLY | os.O_DIRECTORY)     # "": the root, reopened
        try:
            with os.scandir(fd) as it:
                return [(e.name, None if e.is_symlink() else e.is_dir(follow_symlinks=False))
                        for e in it]
        finally:
            os.close(fd)

    # -- where a file's committed content lives -----------------------------------------
    def storage(self, rel: str):
        """The storage of ``rel``: a zarr plane (with a plain file of that name, from before,
        in front of it) for a folder materialized as zarr, else a plain file."""
        target = self.zarr_target(rel)
        if target is None:
            return FileStorage(self, rel)
        return PlaneStorage(self, rel, *target)

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
        """Whether ``sub`` has a zarr store. Asked for every file of a first-level folder
        (where its content lives), so the answer is kept STORE_SEEN_SECONDS: this mount's
        own changes (a store made, a folder renamed) update it at once, one made outside
        the mount is seen within that time, as the kernel sees changed folder attributes."""
        now = time.monotonic()
        seen = self._stores_seen.get(sub)
        if seen is not None and now - seen[0] < STORE_SEEN_SECONDS:
            return seen[1]
        if len(os.fsencode(sub + ZARR_SUFFIX)) > containment.NAME_MAX:
            found = False         # a folder with a name that long cannot have a store
        else:
            st = self.stat(sub + ZARR_SUFFIX)
            found = st is not None and stat_mod.S_ISDIR(st.st_mode)
        self._stores_seen[sub] = (now, found)
        return found

    def stores_changed(self, *subs: str) -> None:
        """Folders whose store this mount made, moved or renamed: asked again."""
        for sub in subs:
            self._stores_seen.pop(sub, None)

    def store(self, sub: str, *, create: bool = False):
        """The zarr store of ``sub`` (None if it has none). Opened read-only on a read-only
        mount (opening for writing may rewrite an unflushed store's metadata)."""
        with self.lock:
            st = self._stores.get(sub)
            if st is None and (create or self.has_store(sub)):
                from backends.ngff.backend import ZarrStorageBackend, output_store
                from backends.ngff.documents import output_physics
                # the path is only used once containment says the store is a real folder
                path = os.path.join(self.root_path, sub + ZARR_SUFFIX)
                if self.disk is None:
                    st = ZarrStorageBackend(path, mode="r")
                else:     # FILE chunks (a committed plane rewrites only its own chunk)
                    st = output_store(path, output_physics(self.plate.entry()))
                    self.stores_changed(sub)
                self._stores[sub] = st
            return st

    def forget_stores(self) -> None:
        with self.lock:
            self.flush_stores(final=True)
            self._stores.clear()
            self._stores_seen.clear()

    def flush_stores(self, final: bool = False) -> None:
        """Write the batched metadata of the zarr stores committed into since the last flush
        (readers of the mount see new planes at once; this makes the next mount see them
        without rebuilding the index from the chunks). Display windows widened by later
        planes are rewritten only when ``final`` (unmount): each is one rewrite per field."""
        if self.disk is None:
            return
        with self.lock:
            stores = [self._stores.get(sub) for sub in self.stores_dirty]
            if final:
                stores += [st for st in self._stores.values() if st.windows_stale()]
            self.stores_dirty.clear()
        for st in stores:      # under each store's own lock: lookups and other folders go on
            if st is not None:
                st.flush(refresh_windows=final)

    def store_names(self, sub: str) -> list[str]:
        st = self.store(sub)
        return st.list_files() if st is not None else []

    # -- metadata -------------------------------------------------------------------
    def mark_dirty(self) -> None:
        self._metadata_dirty = True

    def write_metadata(self, force: bool = False) -> None:
        """Record every first-level output folder (and outputs/ itself) in the metadata,
        derived from what is committed, through ``record_output_folder``. A folder that
        cannot be recorded (removed meanwhile, unreadable) is logged and skipped. ``force``:
        at mount and unmount, whatever changed. Only a writable area records anything.
        What is committed is listed under the area's lock; the metadata file is written
        (fsynced) after it is released, so that commits never wait for that fsync."""
        if self.disk is None:
            return
        with self._recording:
            self.flush_stores(final=force)
            if not (self._metadata_dirty or force):
                return
            self._metadata_dirty = False
            listed = []
            with self.lock:
                folders = [n for n, is_dir in self.scandir("")
                           if is_dir and not n.endswith(ZARR_SUFFIX)]
                for sub in natsorted(folders) + [""]:
                    try:
                        files = [n for n, is_dir in self.scandir(sub) if is_dir is False]
                        listed.append((sub, files, self.store_names(sub) if sub else []))
                    except (OSError, StorageError) as e:
                        log.warning("outputs/%s not recorded in the metadata: %s", sub, e)
            recorded = {}
            for sub, files, zarr_names in listed:
                try:
                    entry = self._record(sub, files, zarr_names)
                except (OSError, StorageError) as e:
                    log.warning("outputs/%s not recorded in the metadata: %s", sub, e)
                    continue
                if entry:
                    recorded[f"{OUTPUTS_DIR}/{sub}" if sub else OUTPUTS_DIR] = entry
            self.plate.metadata["subdirectories"].update(recorded)

    def _record(self, sub: str, files: list[str], zarr_names: list[str]) -> dict:
        if not zarr_names:
            return record_output_folder(self.plate.path, sub, files, "disk")
        path = os.path.join(self.root_path, sub + ZARR_SUFFIX)
        return record_output_folder(self.plate.path, sub, zarr_names, "zarr",
                                    files=natsorted(files), path=path)


class RefusedEntry(Node):
    """A symlink (or other unusable entry) inside the outputs root: listed, never followed."""

    __slots__ = ("area", "rel")
    entry_timeout = 0.0
    visible = False          # (only staged files are "visible" beyond the disk)
    is_link = True

    def __init__(self, area: OutputsArea, rel: str) -> None:
        super().__init__(stat_mod.S_IFREG, 0)
        self.area, self.rel = area, rel

    @property
    def size(self) -> int:
        return 0

    def open_file(self, flags: int) -> OpenFile:
        raise PathEscapeError("a symlink inside outputs/ is never followed", path=self.rel)

    def remove(self) -> None:           # unlink(2) of the link itself (writable areas only)
        self.area.disk.unlink(self.rel)

    def move_to(self, new_dir, new_name: str) -> None:
        raise PathEscapeError("a symlink inside outputs/ cannot be renamed here", path=self.rel)

    def displace(self) -> None:
        pass


class OutDir(Node):
    """A folder of the outputs area, read-only: its entries come from disk and zarr (and,
    in a writable area, files being written). Write calls get the protocol's refusal."""

    __slots__ = ("area", "parent", "name", "_nodes")
    entry_timeout = 0.0     # outputs/ changes under the kernel
    visible = False
    is_link = False
    mode_bits = 0o555

    def same_file(self, key) -> bool:
        return True                # a folder keeps its node (its entries are looked up anew)

    def __init__(self, area: OutputsArea, parent: "OutDir | None", name: str) -> None:
        super().__init__(stat_mod.S_IFDIR | self.mode_bits, time.time_ns())
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

    def needs_worker(self) -> bool:
        return True           # lookups and listings read the disk

    def inline(self, op: str) -> bool:
        return op in ("lookup", "create") and self.area.inline_ok()    # a listing: a worker

    @property
    def nlink(self) -> int:
        st = self.area.settled(lambda: self.area.stat(self.rel))   # 2 + subfolders, as on disk
        return st.st_nlink if st is not None else 2

    def node(self, name: str, *, is_dir: bool, key: tuple | None = None) -> Node:
        """The node of entry ``name``; for a plain file, of the file ``key`` (device, inode)."""
        n = self._nodes.get(name)
        if n is None or n.is_dir != is_dir or n.is_link or not n.same_file(key):
            area = self.area
            n = area.dir_node(area, self, name) if is_dir else area.file_node(area, self, name)
            self._nodes[name] = n
        return n

    # -- reading the folder ------------------------------------------------------
    def lookup(self, name: bytes) -> Node | None:
        return self.find(os.fsdecode(name))

    def find(self, name: str) -> Node | None:
        rel = self.child_rel(name)
        containment.check_rel(rel)            # ENAMETOOLONG before any system call
        n = self._nodes.get(name)
        if n is not None and n.visible:       # being written: not on disk yet
            return n
        st = self.area.stat(rel)
        if st is not None:
            if stat_mod.S_ISLNK(st.st_mode):
                return self._refused(name, rel)
            if stat_mod.S_ISDIR(st.st_mode):
                return None if name.endswith(ZARR_SUFFIX) else self.node(name, is_dir=True)
            return self.node(name, is_dir=False, key=(st.st_dev, st.st_ino))
        target = self.area.zarr_target(rel)
        if target:
            store = self.area.store(target[0])
            if store is not None and store.exists(target[1]):
                return self.node(name, is_dir=False)
        return None

    def _refused(self, name: str, rel: str) -> RefusedEntry:
        n = self._nodes.get(name)
        if n is None or not n.is_link:
            log.warning("outputs/%s is a symlink: listed, never followed", rel)
            n = self._nodes[name] = RefusedEntry(self.area, rel)
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
        names.update(n for n, node in self._nodes.items() if node.visible)
        entries = [(name, self.find(name)) for name in natsorted(names)]
        return Snapshot([(os.fsencode(n), node) for n, node in entries if node is not None])

    def is_empty(self) -> bool:
        return not self.listing().names()


class WritableOutDir(OutDir):
    """A folder of a writable outputs area: the write capabilities (see fs.py); each checks
    the name and changes the folder's time."""

    __slots__ = ()
    mode_bits = 0o755

    def touch(self) -> None:
        self.mtime_ns = time.time_ns()

    def set_attrs(self, size: int | None, mtime_ns: int | None) -> bool:
        if mtime_ns:
            self.mtime_ns = mtime_ns
        return False               # modes and owners are fixed

    def setxattr(self, name: bytes, value: bytes) -> None:
        raise OSError(errno.ENOTSUP, "outputs/ stores no extended attributes")

    def make_special(self, kind: str, name: bytes) -> None:
        raise OSError(errno.EPERM, f"{kind}: hard links, symlinks and special files are not "
                                   "supported in outputs/")

    def adopt(self, name: str, node: Node) -> None:
        """Move ``node`` (a renamed file or folder) here under ``name``; same inode."""
        old_parent = node.parent
        if old_parent is not None and old_parent._nodes.get(node.name) is node:
            del old_parent._nodes[node.name]
        node.parent, node.name = self, name
        self._nodes[name] = node

    def create(self, name: bytes) -> Node:
        text = check_name(name)
        found = self.find(text)
        if found is not None and found.is_dir:
            raise IsADirectoryError(errno.EISDIR, "a folder has this name")
        node = self.node(text, is_dir=False)
        node.begin_write(truncate=True)
        self.touch()
        return node

    def mkdir(self, name: bytes) -> Node:
        text = check_name(name)
        self.area.disk.mkdir(self.child_rel(text))
        self.touch()
        return self.node(text, is_dir=True)

    def unlink(self, name: bytes) -> None:
        text = os.fsdecode(name)
        node = self.find(text)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file")
        if node.is_dir:
            raise IsADirectoryError(errno.EISDIR, "a folder")
        node.remove()
        self._nodes.pop(text, None)
        self.touch()
        self.area.mark_dirty()

    def rmdir(self, name: bytes) -> None:
        text = os.fsdecode(name)
        node = self.find(text)
        if node is None or not node.is_dir:
            raise NotADirectoryError(errno.ENOTDIR if node is not None else errno.ENOENT, text)
        if not node.is_empty():
            raise OSError(errno.ENOTEMPTY, "folder not empty")
        self.area.disk.rmdir(node.rel)
        self._nodes.pop(text, None)
        self.touch()

    def rename(self, name: bytes, new_dir: Node, new_name: bytes, flags: int = 0) -> None:
        if flags:
            raise OSError(errno.EINVAL, "rename flags (RENAME_NOREPLACE/EXCHANGE) not supported")
        if not isinstance(new_dir, WritableOutDir) or new_dir.area is not self.area:
            raise OSError(errno.EXDEV, "rename out of outputs/")
        text, new_text = os.fsdecode(name), check_name(new_name)
        node = self.find(text)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file")
        target = new_dir.find(new_text)
        if target is node:
            return
        if target is not None and target.is_dir and not node.is_dir:
            raise IsADirectoryError(errno.EISDIR, "a folder has the new name")
        with self.area.lock:
            node.move_to(new_dir, new_text)
        self.touch()
        new_dir.touch()
        self.area.mark_dirty()

    def displace(self) -> None:
        pass                        # (a folder renamed over: the disk refuses or replaces it)

    def move_to(self, new_dir: "WritableOutDir", new_name: str) -> None:
        area, old_rel, new_rel = self.area, self.rel, new_dir.child_rel(new_name)
        moved_store = "/" not in old_rel and area.has_store(old_rel)
        with area.moving():
            area.disk.rename(old_rel, new_rel)
            if moved_store:
                area.disk.rename(old_rel + ZARR_SUFFIX, new_rel + ZARR_SUFFIX)
            area.stores_changed(old_rel, new_rel)
            new_dir.adopt(new_name, self)
        if moved_store:
            area.forget_stores()


class Snapshot:
    """A directory listing frozen at opendir: names by offset, and their nodes."""

    __slots__ = ("_names", "_nodes")

    def __init__(self, entries: list[tuple[bytes, Node]]) -> None:
        self._names = [n for n, _ in entries]
        self._nodes = [node for _, node in entries]

    def names(self) -> list[bytes]:
        return self._names

    def child_at(self, index: int) -> Node:
        return self._nodes[index]


__all__ = ["OutputsArea", "OutDir", "WritableOutDir", "OutFile", "WritableOutFile",
           "RefusedEntry", "CommitError", "image_name", "check_name", "Snapshot"]
