"""The outputs area: ``MOUNT/outputs/``, where tools write results into the plate.

Committed state lives in the plate:
- ``PLATE/outputs/<path>``: every committed file, mirrored one to one (``--materialize disk``,
  and non-image files with ``--materialize zarr``);
- ``PLATE/outputs/<sub>.zarr``: with ``--materialize zarr``, images written directly into a
  first-level folder ``outputs/<sub>/`` whose names parse as plate images (normalized, or an
  ImageXpress name) become planes of this OME-Zarr plate and are served back as
  synthesized TIFFs. Images elsewhere are stored as files.

The file node (``OutFile``) is in ``outfile.py``. Every path below ``PLATE/outputs`` is reached through ``backends.containment`` (openat2
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

import errno
import logging
import os
import stat as stat_mod
import threading
import time
import uuid

from natsort import natsorted

from backends import containment
from backends.mountinfo import on_local_disk
from backends.errors import PathEscapeError, StorageError
from backends.handlers.imagexpress import parse_name as parse_imagexpress_name
from backends.layout import OUTPUTS_DIR, ZARR_SUFFIX
from backends.metadata import record_output_folder
from backends.naming import try_parse_virtual_name

from .nodes import Node, OpenFile
from .outfile import CommitError, OutFile

log = logging.getLogger(__name__)



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


def _open_folder(path: str | os.PathLike, *, create: bool) -> int:
    parent, name = os.path.split(os.path.abspath(path))
    pfd = containment.open_root(parent)
    try:
        return containment.open_dir_beneath(pfd, name, create=create)
    finally:
        os.close(pfd)


class OutputsArea:
    def __init__(self, plate, root: str | os.PathLike, staging: str | os.PathLike, *,
                 writable: bool, materialize: str = "disk", sync_on_close: bool = False) -> None:
        """``root``/``staging``: the outputs and staging folders (``PLATE/outputs``,
        ``PLATE/.vfsmount-staging``; a hands-off plate's are outside it)."""
        if materialize not in ("disk", "zarr"):
            raise ValueError(f"--materialize must be disk or zarr, not {materialize!r}")
        self.plate = plate
        self.writable, self.materialize, self.sync_on_close = writable, materialize, sync_on_close
        self.lock = threading.RLock()
        self._stores: dict[str, object] = {}
        self.stores_dirty: set[str] = set()       # zarr stores whose metadata awaits a flush
        self._metadata_dirty = False
        self.root_path = os.path.realpath(root)
        try:    # each folder's last component is never a symlink
            self.root_fd = _open_folder(root, create=writable)
            self.staging_fd = _open_folder(staging, create=True) if writable else None
        except OSError as e:
            raise StorageError("cannot open the outputs area (is the folder writable? is it "
                               "a symlink?)", path=root, cause=e) from e
        # On a local disk, lookups, creates and closes with nothing to commit cost a few
        # system calls: they run on the daemon's loop (see inline_ok) rather than pay a
        # worker thread's hand-off (as much again as the calls themselves).
        self.local = on_local_disk(os.readlink(f"/proc/self/fd/{self.root_fd}"))
        if self.staging_fd is not None:
            for leftover in os.listdir(self.staging_fd):     # a crashed writer's half-written files
                log.info("removing uncommitted staging file %s", leftover)
                os.unlink(leftover, dir_fd=self.staging_fd)
        self.top = OutDir(self, None, "")

    def inline_ok(self) -> bool:
        """True if a cheap call may run on the daemon's loop now: a local disk, and no worker
        holds the lock (a commit, the metadata recorder), which the loop must never wait for."""
        if not self.local or not self.lock.acquire(blocking=False):
            return False
        self.lock.release()
        return True

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
                from backends.zarr_ngff import output_physics, output_store
                # the path is only used once containment says the store is a real folder
                path = os.path.join(self.root_path, sub + ZARR_SUFFIX)
                # FILE chunks (a committed plane rewrites only its own chunk), the plate's physics
                st = output_store(path, output_physics(self.plate.entry()))
                self._stores[sub] = st
            return st

    def forget_stores(self) -> None:
        with self.lock:
            self.flush_stores(final=True)
            self._stores.clear()

    def flush_stores(self, final: bool = False) -> None:
        """Write the batched metadata of the zarr stores committed into since the last flush
        (readers of the mount see new planes at once; this makes the next mount see them
        without rebuilding the index from the chunks). Display windows widened by later
        planes are rewritten only when ``final`` (unmount): each is one rewrite per field."""
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
        at mount and unmount, whatever changed."""
        self.flush_stores(final=force)
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
        path = os.path.join(self.root_path, sub + ZARR_SUFFIX)
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

    def inline(self, op: str) -> bool:
        return op in ("lookup", "create") and self.area.inline_ok()    # a listing: a worker

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
        self._nodes = [node for _, node in entries]

    def names(self) -> list[bytes]:
        return self._names

    def child_at(self, index: int) -> Node:
        return self._nodes[index]


__all__ = ["OutputsArea", "OutDir", "OutFile", "RefusedEntry", "CommitError", "image_name",
           "check_name", "Snapshot"]
