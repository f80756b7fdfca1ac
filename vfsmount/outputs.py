"""The outputs area: ``MOUNT/outputs/``, where tools write results into the plate.

Committed state lives in the plate:
- ``PLATE/outputs/<path>``: every committed file, mirrored one to one (``--materialize disk``,
  and non-image files with ``--materialize zarr``);
- ``PLATE/outputs/<sub>.zarr``: with ``--materialize zarr``, images written directly into a
  first-level folder ``outputs/<sub>/`` whose names parse as plate images (normalized, or an
  ImageXpress name) become planes of this OME-Zarr plate and are served back as
  synthesized TIFFs. Images elsewhere are stored as files.

Writes go to a staging file in ``PLATE/.vfsmount-staging/`` (on disk, same file system as the
outputs, so gigabyte files are fine and the commit is a rename). On the last close (flush)
or an fsync the staging file is committed: fsync, then rename over the destination (or
decode into the zarr store, then drop the staging file). A crash at any moment leaves the
previous file or the complete new one; leftovers in the staging folder are removed at the
next mount. A reader that opened the file before the commit keeps seeing the old content.

Not supported (answered with an errno): hard links and symlinks (EPERM), special files
(EPERM), rename flags such as RENAME_EXCHANGE (EINVAL), names with a backslash or control
characters (EPERM).
"""
from __future__ import annotations

import errno
import logging
import os
import stat as stat_mod
import threading
import time
import uuid
from pathlib import Path

from natsort import natsorted

from backends.atomic import fsync_dir
from backends.errors import StorageError
from backends.handlers.imagexpress import parse_name as parse_imagexpress_name
from backends.metadata import image_set_entry, update_metadata
from backends.naming import try_parse_virtual_name

from .nodes import FileNode, Node, layout_for

log = logging.getLogger(__name__)

OUTPUTS = "outputs"
STAGING = ".vfsmount-staging"


class CommitError(Exception):
    """A commit failed; ``errno`` is what the writer's close()/fsync() returns."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


def image_name(name: str) -> str | None:
    """The normalized plate name for a file name that parses as a plate image, else None."""
    p = try_parse_virtual_name(name)
    if p is None:
        found = parse_imagexpress_name(name)
        if found is None or found[1]:
            return None
        p = found[0]
    return p.virtual_name()


class OutputsArea:
    def __init__(self, plate, *, writable: bool, materialize: str = "disk") -> None:
        if materialize not in ("disk", "zarr"):
            raise ValueError(f"--materialize must be disk or zarr, not {materialize!r}")
        self.plate = plate
        self.writable = writable
        self.materialize = materialize
        self.root = Path(os.path.realpath(plate.path)) / OUTPUTS
        self.staging = Path(os.path.realpath(plate.path)) / STAGING
        self.lock = threading.RLock()
        self._stores: dict[str, object] = {}
        self._metadata_dirty = False
        if writable:
            try:
                self.root.mkdir(exist_ok=True)
                self.staging.mkdir(exist_ok=True)
            except OSError as e:
                raise StorageError("cannot create the outputs area; is the plate writable?",
                                   path=self.root, cause=e) from e
            for leftover in self.staging.iterdir():   # a crashed writer's half-written files
                log.info("removing uncommitted staging file %s", leftover)
                leftover.unlink(missing_ok=True)
        self.top = OutDir(self, None, "")

    # -- committed state -------------------------------------------------------
    def real(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def zarr_target(self, rel: str) -> tuple[str, str] | None:
        """(sub, plane name) if ``rel`` is materialized into a zarr store, else None.

        A folder whose store already exists stays zarr-backed whatever ``--materialize`` says
        (so a read-only remount serves what a zarr-materializing mount wrote)."""
        parts = rel.split("/")
        if len(parts) != 2:
            return None
        if self.materialize != "zarr" and not (self.root / f"{parts[0]}.zarr").is_dir():
            return None
        name = image_name(parts[1])
        return (parts[0], name) if name and name == parts[1] else None

    def store(self, sub: str, *, create: bool = False):
        path = self.root / f"{sub}.zarr"
        with self.lock:
            st = self._stores.get(sub)
            if st is None and (create or path.exists()):
                from backends.zarr_ngff import output_physics, output_store
                # FILE chunks (a committed plane rewrites only its own chunk), the plate's physics
                st = output_store(path, output_physics(self.plate.entry()))
                self._stores[sub] = st
            return st

    def store_names(self, sub: str) -> list[str]:
        st = self.store(sub)
        return st.list_files() if st is not None else []

    # -- metadata -------------------------------------------------------------------
    def mark_dirty(self) -> None:
        self._metadata_dirty = True

    def write_metadata(self, force: bool = False) -> None:
        """Record every output folder in openhcs_metadata.json (derived from what is on disk)."""
        if not (self._metadata_dirty or force) or not self.root.is_dir():
            return
        self._metadata_dirty = False
        entries: dict[str, dict] = {}
        with self.lock:
            for sub in natsorted(p.name for p in self.root.iterdir()
                                 if p.is_dir() and not p.name.endswith(".zarr")) + [""]:
                folder = self.real(sub)
                files = [f.name for f in folder.iterdir() if f.is_file()] if folder.is_dir() else []
                images = [f for f in files if try_parse_virtual_name(f)]
                key = f"{OUTPUTS}/{sub}" if sub else OUTPUTS
                zarr_names = self.store_names(sub) if sub else []
                if zarr_names:
                    entries[key] = image_set_entry(zarr_names, "zarr", path=str(self.root / f"{sub}.zarr"),
                                                   files=natsorted(files))
                elif images:
                    entries[key] = image_set_entry(images, "disk")
            if entries:
                update_metadata(self.plate.path, entries)
                self.plate.metadata["subdirectories"].update(entries)

    # -- names ---------------------------------------------------------------------
    @staticmethod
    def check_name(name: bytes) -> str:
        text = os.fsdecode(name)
        if "\\" in text or any(ord(c) < 32 for c in text):
            raise OSError(errno.EPERM, f"name not allowed in outputs/: {text!r}")
        if len(name) > 255:
            raise OSError(errno.ENAMETOOLONG, text)
        return text

    def new_staging(self) -> Path:
        return self.staging / f"{uuid.uuid4().hex}.part"


class OutDir(Node):
    """A directory of the outputs area; its entries come from disk, zarr and pending files."""

    __slots__ = ("area", "parent", "name", "_nodes")

    def __init__(self, area: OutputsArea, parent: "OutDir | None", name: str) -> None:
        super().__init__(stat_mod.S_IFDIR | (0o755 if area.writable else 0o555), time.time_ns())
        self.area, self.parent, self.name = area, parent, name
        self._nodes: dict[str, Node] = {}      # keeps inode numbers stable across lookups

    @property
    def rel(self) -> str:
        # computed, not stored: a renamed folder moves everything below it
        return self.parent.child_rel(self.name) if self.parent is not None else ""

    def child_rel(self, name: str) -> str:
        return f"{self.rel}/{name}" if self.rel else name

    def node(self, name: str, *, is_dir: bool) -> Node:
        n = self._nodes.get(name)
        if n is None or isinstance(n, OutDir) != is_dir:
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

    def lookup(self, name: str) -> Node | None:
        rel = self.child_rel(name)
        n = self._nodes.get(name)
        if isinstance(n, OutFile) and (n.visible or n.exists()):
            return n
        real = self.area.real(rel)
        if real.is_dir() and not name.endswith(".zarr"):
            return self.node(name, is_dir=True)
        if real.is_file():
            return self.node(name, is_dir=False)
        target = self.area.zarr_target(rel)
        if target:
            store = self.area.store(target[0])
            if store is not None and store.exists(target[1]):
                return self.node(name, is_dir=False)
        return None

    def entries(self) -> list[tuple[str, Node]]:
        names: set[str] = set()
        real = self.area.real(self.rel)
        if real.is_dir():
            for e in os.scandir(real):
                if e.is_dir() and e.name.endswith(".zarr"):
                    continue
                names.add(e.name)
        if self.rel and "/" not in self.rel:
            names.update(self.area.store_names(self.rel))
        names.update(n for n, node in self._nodes.items() if isinstance(node, OutFile) and node.visible)
        out = []
        for name in natsorted(names):
            node = self.lookup(name)
            if node is not None:
                out.append((name, node))
        return out

    def forget(self, name: str) -> None:
        self._nodes.pop(name, None)


class OutFile(FileNode):
    """A file of the outputs area: committed content plus, while written, a staging file."""

    __slots__ = ("area", "parent", "name", "staging", "staging_fd", "writers", "deleted", "dirty",
                 "failed", "refused")
    immutable = False

    def __init__(self, area: OutputsArea, parent: OutDir, name: str) -> None:
        super().__init__(stat_mod.S_IFREG | (0o644 if area.writable else 0o444), time.time_ns())
        self.area, self.parent, self.name = area, parent, name
        self.staging: Path | None = None
        self.staging_fd: int | None = None
        self.writers = 0
        self.deleted = False
        self.dirty = False      # staged content differs from what a commit would keep
        self.failed = 0         # errno of a failed write: the staged content is incomplete
        self.refused = False    # the last commit refused the staged content (kept for its writer)

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

    def exists(self) -> bool:
        return self.area.real(self.rel).is_file() or self.committed_plane() is not None

    def committed_size(self) -> int:
        real = self.area.real(self.rel)
        if real.is_file():
            return real.stat().st_size
        plane = self.committed_plane()
        if plane is not None:
            return layout_for(tuple(plane.shape), plane.dtype, plane.pixel_size).size
        raise FileNotFoundError(errno.ENOENT, "no committed content", self.rel)

    def read_committed(self, offset: int, length: int) -> bytes:
        real = self.area.real(self.rel)
        if real.is_file():
            with open(real, "rb") as f:
                f.seek(offset)
                return f.read(length)
        plane = self.committed_plane()
        if plane is None:
            raise FileNotFoundError(errno.ENOENT, "no committed content", self.rel)
        layout = layout_for(tuple(plane.shape), plane.dtype, plane.pixel_size)
        return layout.read(offset, length, plane.read_rows)

    @property
    def size(self) -> int:
        fd = self.staging_fd          # one read: a commit in a worker thread may close it
        if fd is not None and not self.refused:     # refused bytes are not the file's size
            try:
                return os.fstat(fd).st_size
            except OSError:
                pass
        return self.committed_size()

    # -- writing -------------------------------------------------------------------
    def begin_write(self, truncate: bool) -> None:
        """Make sure a staging file holds the content being written (copy-on-write)."""
        with self.area.lock:
            if self.staging_fd is not None:
                if truncate:
                    os.ftruncate(self.staging_fd, 0)
                    self.dirty, self.refused = True, False
                return
            existed = self.exists()
            self.dirty = truncate and existed      # O_TRUNC of a committed file changes it
            path = self.area.new_staging()
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                if not truncate and existed:
                    size = self.committed_size()
                    pos = 0
                    while pos < size:
                        chunk = self.read_committed(pos, 8 << 20)
                        if not chunk:
                            break
                        os.pwrite(fd, chunk, pos)
                        pos += len(chunk)
            except BaseException:
                os.close(fd)
                path.unlink(missing_ok=True)
                raise
            self.staging, self.staging_fd = path, fd
            self.deleted = self.refused = False

    def write(self, offset: int, data: bytes, *, blocking: bool = True) -> int | None:
        """Write staged bytes; without ``blocking``, None when the lock is busy (a commit)."""
        if not self.area.lock.acquire(blocking=blocking):
            return None
        try:
            if self.staging_fd is None:
                self.begin_write(truncate=False)
            self.dirty, self.refused = True, False
            return os.pwrite(self.staging_fd, data, offset)
        finally:
            self.area.lock.release()

    def truncate(self, size: int) -> None:
        with self.area.lock:
            if self.staging_fd is None:
                self.begin_write(truncate=size == 0)
            os.ftruncate(self.staging_fd, size)
            self.dirty, self.refused = True, False

    def read_staged(self, offset: int, length: int) -> bytes:
        return os.pread(self.staging_fd, length, offset)

    def remove_committed(self) -> None:
        with self.area.lock:
            real = self.area.real(self.rel)
            if real.is_file():
                real.unlink()
            target = self.area.zarr_target(self.rel)
            if target is not None and self.committed_plane() is not None:
                self.area.store(target[0]).delete(target[1])

    def remove(self) -> None:
        """unlink(2): the committed content goes now; staged content when its last writer closes.
        Under the lock, so a commit running in another worker cannot bring the file back."""
        with self.area.lock:
            self.remove_committed()
            if self.pending:
                self.deleted = True
                if self.writers == 0:
                    self.discard()

    def discard(self) -> None:
        with self.area.lock:
            if self.staging_fd is not None:
                os.close(self.staging_fd)
            if self.staging is not None:
                self.staging.unlink(missing_ok=True)
            self.staging = self.staging_fd = None
            self.refused = False

    def commit(self, final: bool = False, *, last_close: bool = False) -> None:
        """Make the staged content the committed one, atomically; raises CommitError.

        Content that is not acceptable (a TIFF name with bytes that are no TIFF, a plane
        that does not fit its zarr field) is refused with EINVAL but stays staged unless
        ``final``: programs close dup'ed descriptors half-way through writing a file
        (numpy's ``tofile`` under tifffile does), and the next close must still see
        everything written so far. ``last_close`` (the kernel's RELEASE, which comes
        asynchronously) does nothing if the file was opened for writing again meanwhile.
        """
        area = self.area
        with area.lock:
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
                target = area.zarr_target(self.rel)
                if target is not None:
                    # the staged bytes are only decoded, never kept: no fsync. zarr writes each
                    # chunk and metadata document atomically (temp file + rename), unfsynced.
                    plane = self._decode(staging)
                    try:
                        area.store(target[0], create=True).save(plane, target[1])
                    except StorageError as e:
                        raise CommitError(errno.EINVAL, f"{self.rel}: {e}") from e
                    real = area.real(self.rel)
                    if real.is_file():      # it was a plain file before: the plane replaces it
                        real.unlink()
                    staging.unlink(missing_ok=True)
                else:
                    if self.rel.lower().endswith((".tif", ".tiff")):
                        self._decode(staging, pixels=False)
                    os.fsync(fd)
                    dest = area.real(self.rel)
                    if not dest.parent.is_dir():
                        raise CommitError(errno.ENOENT, f"folder of {self.rel} is gone")
                    os.replace(staging, dest)
                    fsync_dir(dest.parent)
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
            area.mark_dirty()
            log.info("committed outputs/%s", self.rel)

    def _drop(self, fd: int, staging: Path) -> None:
        os.close(fd)
        staging.unlink(missing_ok=True)
        self.staging = self.staging_fd = None
        self.dirty = self.refused = False

    def _decode(self, staging: Path, pixels: bool = True):
        """The staged TIFF's single plane (or, without ``pixels``, just a check of its structure)."""
        import numpy as np
        import tifffile

        from backends.tiff_guard import read_tiff_checked
        try:
            with tifffile.TiffFile(staging) as tif:
                if len(tif.pages) == 0:
                    raise ValueError("no image directory")
                if not pixels:
                    return None
            data = read_tiff_checked(staging)     # strips checked first; no decoder crash
        except Exception as e:
            raise CommitError(errno.EINVAL, f"{self.rel}: not a valid TIFF ({e}); nothing stored") from e
        data = np.squeeze(data)
        if data.ndim != 2:
            raise CommitError(errno.EINVAL, f"{self.rel}: a plate image must be one 2D plane, got "
                                            f"shape {data.shape}")
        return data


__all__ = ["OutputsArea", "OutDir", "OutFile", "CommitError", "image_name"]
