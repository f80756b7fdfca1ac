"""The pyfuse3 operations: one short method per file-system call.

Decisions made here, once:
- caching: entries and attributes are valid for ATTR_TIMEOUT (the tree is
  immutable); the kernel keeps a file's page cache across opens unless its
  source changed since it was last opened;
- threads: ``read`` of anything not already in memory, and first listing of a
  directory, run in worker threads behind one CapacityLimiter; lookups and
  attributes of populated directories stay on the trio loop;
- errors: a failed read is logged with the file's name and returns EIO; a
  write anywhere read-only returns EROFS. The daemon never dies of one file.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
from functools import partial

import pyfuse3
import trio

from backends.errors import PathEscapeError, StorageNotFoundError

from .listing import LISTED_INODES, find_listed
from .nodes import DirNode, FileNode, Node, PassthroughFile
from .outputs import CommitError, OutDir, OutFile, OutputsArea

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 3600.0          # seconds: the read-only tree does not change under the kernel
BLOCK_SIZE = 1 << 20           # st_blksize: cp/cat size their reads from it
DEFAULT_THREADS = 8
XATTR_PREFIX = b"user.vfsmount."
OUT_DIR_HANDLES = 1 << 40       # outputs/ directory handles live above every inode number


class VfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: DirNode, *, threads: int = DEFAULT_THREADS, xattrs: bool = False,
                 outputs: OutputsArea | None = None) -> None:
        super().__init__()
        self.outputs = outputs
        self._dir_handles: dict[int, list] = {}
        # Off by default: getxattr/listxattr answer ENOSYS once and the kernel stops asking,
        # so `ls -l` costs no round trip per file for its security.selinux/ACL probes (the
        # kernel caches no other answer). `vfsmount info FILE` gives the same facts.
        self.xattrs = xattrs
        self.root = root
        self.limiter = trio.CapacityLimiter(threads)
        self.uid, self.gid = os.getuid(), os.getgid()
        self._nodes: dict[int, Node] = {root.inode: root}
        self._labels: dict[int, bytes] = {root.inode: b"/"}
        self._handles: dict[int, tuple[FileNode, object]] = {}
        self._fh = itertools.count(1)
        self.nursery: trio.Nursery | None = None

    # -- helpers --------------------------------------------------------------
    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            node = find_listed(inode)        # listed images have no entry in _nodes
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _remember(self, parent: int, name: bytes, node: Node) -> None:
        if node.inode < LISTED_INODES and node.inode not in self._nodes:
            self._nodes[node.inode] = node
            self._labels[node.inode] = name    # for log lines; the key bytes are shared, not copied

    def _label(self, inode: int) -> str:
        listed = find_listed(inode)
        if listed is not None:
            return listed.name
        return os.fsdecode(self._labels.get(inode, str(inode).encode()))

    async def _ensure_listed(self, d: DirNode) -> None:
        if not d.populated:
            try:
                await trio.to_thread.run_sync(d._ensure, limiter=self.limiter)
            except Exception:
                log.exception("cannot list %s", self._label(d.inode))
                raise pyfuse3.FUSEError(errno.EIO) from None

    def _attr(self, node: Node, *, lookup: bool = False) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        # outputs/ changes under the kernel (a committed image changes size): no caching there
        e.entry_timeout = e.attr_timeout = 0 if isinstance(node, (OutDir, OutFile)) else ATTR_TIMEOUT
        e.st_mode = node.mode
        e.st_uid, e.st_gid = self.uid, self.gid
        e.st_blksize = BLOCK_SIZE
        if node.is_dir:
            e.st_nlink = 2
            e.st_size = 0
        else:
            e.st_nlink = 1
            try:
                e.st_size = node.size
            except FileNotFoundError:
                if isinstance(node, OutFile):
                    if lookup:
                        raise pyfuse3.FUSEError(errno.ENOENT) from None
                    # an inode the kernel still holds whose content is gone (unlinked, or
                    # refused on close): like an unlinked file on disk, it has no links
                    e.st_nlink = 0
                e.st_size = 0
            except Exception as exc:  # missing or unreadable source: still list it, reads fail
                log.warning("%s: size unavailable: %s", self._label(node.inode), exc)
                e.st_size = 0
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = node.mtime_ns
        return e

    # -- lookups and attributes ---------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
        if isinstance(parent, OutDir):
            node = parent.lookup(os.fsdecode(name))
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr = self._attr(node, lookup=True)
            self._remember(parent_inode, name, node)
            return attr
        if not isinstance(parent, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ensure_listed(parent)
        node = parent.get(name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self._remember(parent_inode, name, node)
        return self._attr(node)

    async def getattr(self, inode, ctx=None):
        return self._attr(self._node(inode))

    async def forget(self, inode_list):
        pass  # the tree is immutable; nodes live as long as the mount

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        if self.outputs is not None and self.outputs.writable:
            real = os.statvfs(self.outputs.root)   # what cp/df need to know: space for outputs
            scale = real.f_frsize / BLOCK_SIZE
            s.f_blocks = int(real.f_blocks * scale)
            s.f_bfree = int(real.f_bfree * scale)
            s.f_bavail = int(real.f_bavail * scale)
            s.f_ffree, s.f_favail = real.f_ffree, real.f_favail
        return s

    # -- directories ------------------------------------------------------------
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if isinstance(node, OutDir):
            # a snapshot of the changing folder, paged through by offset
            fh = OUT_DIR_HANDLES + next(self._fh)
            entries = [(os.fsencode(n), child) for n, child in node.entries()]
            self._dir_handles[fh] = [node, entries]
            return fh
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ensure_listed(node)
        return inode

    async def readdir(self, fh, start_id, token):
        # Offsets: 1 after ".", 2 after "..", then 3 + index into the directory's name list,
        # so a listing resumed at any offset continues exactly where the kernel stopped.
        if fh in self._dir_handles:
            d, entries = self._dir_handles[fh]
            names = [n for n, _ in entries]
            children = dict(entries)
        else:
            d = self._node(fh)
            names = d.names()
            children = None
        if start_id < 2:
            attr = self._attr(d)   # ".." reports this directory too; the kernel ignores its inode
            for i, dot in ((0, b"."), (1, b"..")):
                if i >= start_id and not pyfuse3.readdir_reply(token, dot, attr, i + 1):
                    return
        for i in range(max(start_id - 2, 0), len(names)):
            name = names[i]
            node = children[name] if children is not None else d.child_at(i)
            self._remember(d.inode, name, node)
            try:
                attr = self._attr(node)
            except pyfuse3.FUSEError:
                continue          # deleted since the snapshot
            if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                break

    async def releasedir(self, fh):
        self._dir_handles.pop(fh, None)

    # -- files --------------------------------------------------------------------
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
        if isinstance(node, OutFile):
            return await self._open_output(node, flags)
        if not isinstance(node, FileNode):
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        label = self._label(inode)
        changed = False
        try:
            if isinstance(node, PassthroughFile):
                changed = node.refresh()
                if changed:
                    log.info("%s: source changed since last opened; dropping cached pages", label)
                    self._invalidate_later(inode)
            handle = node.open()
        except (FileNotFoundError, StorageNotFoundError) as e:
            log.error("%s: source missing: %s", label, e)
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except PathEscapeError as e:
            log.error("%s: refused: %s", label, e)
            raise pyfuse3.FUSEError(errno.EACCES) from None
        except Exception:
            log.exception("%s: cannot open", label)
            raise pyfuse3.FUSEError(errno.EIO) from None
        fh = next(self._fh)
        self._handles[fh] = (node, handle)
        return pyfuse3.FileInfo(fh=fh, keep_cache=node.immutable and not changed)

    async def read(self, fh, off, size):
        node, handle = self._handles[fh]
        if isinstance(node, OutFile):
            return await self._read_output(node, handle, off, size)
        try:
            data = node.read_nowait(handle, off, size)
            if data is not None:
                return data
            return await trio.to_thread.run_sync(node.read, handle, off, size, limiter=self.limiter)
        except Exception as e:
            log.error("%s: read of %d bytes at %d failed: %s: %s",
                      self._label(node.inode), size, off, type(e).__name__, e)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def release(self, fh):
        node, handle = self._handles.pop(fh)
        if isinstance(node, OutFile):
            await self._release_output(node, handle)
            return
        try:
            node.release(handle)
        except OSError:
            log.exception("release failed")

    def _invalidate_later(self, inode: int) -> None:
        # Notifying the kernel from inside a request handler can deadlock; do it after.
        if self.nursery is not None:
            self.nursery.start_soon(self._invalidate, inode)

    async def _invalidate(self, inode: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, True)
        except OSError:
            pass

    # -- extended attributes ----------------------------------------------------------
    async def getxattr(self, inode, name, ctx):
        # `ls -l` asks every file for security.selinux and ACLs: answer those without
        # computing anything (this runs 100,000 times for a large directory).
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        if not name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(errno.ENODATA)
        value = self._node(inode).get_xattrs().get(name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    async def listxattr(self, inode, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return list(self._node(inode).get_xattrs())

    async def setxattr(self, inode, name, value, ctx):
        # outputs/ stores no extended attributes (cp -a, rsync -X then skip them quietly)
        node = self._node(inode)
        raise pyfuse3.FUSEError(errno.ENOTSUP if isinstance(node, (OutFile, OutDir)) and
                                node.area.writable else errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        await self.setxattr(inode, name, b"", ctx)

    # -- writes: only inside outputs/ (see outputs.py); EROFS everywhere else ----------------
    def _out_dir(self, inode: int) -> OutDir:
        node = self._node(inode)
        if not isinstance(node, OutDir) or not node.area.writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        return node

    def _out_name(self, name: bytes) -> str:
        try:
            return OutputsArea.check_name(name)
        except OSError as e:
            log.warning("refused name %r in outputs/: %s", name, e)
            raise pyfuse3.FUSEError(e.errno) from None

    def _new_handle(self, node: FileNode, handle) -> int:
        fh = next(self._fh)
        self._handles[fh] = (node, handle)
        return fh

    async def _open_output(self, node: OutFile, flags: int):
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND))
        if writing:
            if not node.area.writable:
                raise pyfuse3.FUSEError(errno.EROFS)
            await self._begin_write(node, bool(flags & os.O_TRUNC))
        elif not node.exists() and not node.visible:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return pyfuse3.FileInfo(fh=self._new_handle(node, "write" if writing else "read"),
                                keep_cache=False)

    async def _read_output(self, node: OutFile, handle: str, off: int, size: int) -> bytes:
        # the writer reads its own staged bytes; everyone else the committed content
        staged = node.staging_fd is not None and (handle == "write" or not node.exists())
        fn = node.read_staged if staged else node.read_committed
        return await self._run(fn, off, size, what=node.rel)

    async def _release_output(self, node: OutFile, handle: str) -> None:
        if handle != "write":
            return
        node.writers -= 1
        if node.writers == 0:
            if node.deleted:
                node.discard()
            elif node.pending:        # written after the last flush, or refused there
                try:
                    await self._commit(node, final=True, last_close=True)
                except pyfuse3.FUSEError:
                    pass              # already logged; nothing more to tell a closed file

    async def _begin_write(self, node: OutFile, truncate: bool) -> None:
        # counted before the worker runs: a RELEASE of an earlier writer that arrives meanwhile
        # must not commit (or drop) the staging file this writer is about to use
        node.writers += 1
        try:
            await self._run(node.begin_write, truncate, what=node.rel)
        except BaseException:
            node.writers -= 1
            raise

    async def _commit(self, node: OutFile, final: bool = False, last_close: bool = False) -> None:
        try:
            await trio.to_thread.run_sync(partial(node.commit, final, last_close=last_close),
                                          limiter=self.limiter)
        except CommitError as e:
            log.error("commit of outputs/%s failed: %s", node.rel, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            log.exception("commit of outputs/%s failed", node.rel)
            raise pyfuse3.FUSEError(errno.EIO) from None
        self._invalidate_later(node.inode)

    async def _run(self, fn, *args, what: str = ""):
        """Run blocking outputs work in a worker; OSErrors keep their errno."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except OSError as e:
            log.error("outputs/%s: %s", what, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("outputs/%s failed", what)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def write(self, fh, off, buf):
        node, handle = self._handles[fh]
        if not isinstance(node, OutFile) or handle != "write":
            raise pyfuse3.FUSEError(errno.EROFS if not isinstance(node, OutFile) else errno.EBADF)
        try:
            # a pwrite into the staging file's page cache, inline; while a commit holds the
            # outputs lock (it may close the staging file) the write waits in a worker instead
            written = node.write(off, buf, blocking=False)
            if written is None:
                written = await trio.to_thread.run_sync(node.write, off, buf, limiter=self.limiter)
            return written
        except OSError as e:
            node.failed = e.errno or errno.EIO
            log.error("write to outputs/%s failed: %s", node.rel, e)
            raise pyfuse3.FUSEError(node.failed) from None

    async def flush(self, fh):
        # close(2) waits for FLUSH (release comes later, asynchronously): committing here is
        # what makes "close() returned 0" mean "the file is complete in the plate". A flush
        # from closing a dup before anything was written (`cmd > file`) commits nothing.
        node, handle = self._handles[fh]
        if isinstance(node, OutFile) and handle == "write" and node.pending and \
                (node.dirty or node.failed):
            await self._commit(node)

    async def fsync(self, fh, datasync):
        node, handle = self._handles[fh]
        if isinstance(node, OutFile) and handle == "write" and node.pending:
            await self._commit(node)

    async def create(self, parent_inode, name, mode, flags, ctx):
        parent = self._out_dir(parent_inode)
        text = self._out_name(name)
        existing = parent.lookup(text)
        if isinstance(existing, OutDir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        node = parent.node(text, is_dir=False)
        await self._begin_write(node, True)
        self._remember(parent_inode, name, node)
        return (pyfuse3.FileInfo(fh=self._new_handle(node, "write"), keep_cache=False),
                self._attr(node))

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if isinstance(node, OutFile) and node.area.writable:
            if fields.update_size:
                await self._run(node.truncate, attr.st_size, what=node.rel)
                if node.writers == 0:          # truncate(2) on a path: commit at once
                    await self._commit(node)
            if fields.update_mtime or fields.update_atime:
                node.mtime_ns = attr.st_mtime_ns or node.mtime_ns
            return self._attr(node)            # modes and owners are fixed in outputs/
        if isinstance(node, OutDir) and node.area.writable:
            return self._attr(node)
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode, name, mode, ctx):
        parent = self._out_dir(parent_inode)
        text = self._out_name(name)
        await self._run(os.mkdir, parent.area.real(parent.child_rel(text)), what=parent.child_rel(text))
        node = parent.node(text, is_dir=True)
        self._remember(parent_inode, name, node)
        return self._attr(node)

    async def unlink(self, parent_inode, name, ctx):
        parent = self._out_dir(parent_inode)
        text = os.fsdecode(name)
        node = parent.lookup(text)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if isinstance(node, OutDir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._run(node.remove, what=node.rel)
        parent.forget(text)
        node.area.mark_dirty()

    async def rmdir(self, parent_inode, name, ctx):
        parent = self._out_dir(parent_inode)
        text = os.fsdecode(name)
        node = parent.lookup(text)
        if not isinstance(node, OutDir):
            raise pyfuse3.FUSEError(errno.ENOTDIR if node is not None else errno.ENOENT)
        if node.entries():
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        await self._run(os.rmdir, node.area.real(node.rel), what=node.rel)
        parent.forget(text)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)   # RENAME_NOREPLACE/EXCHANGE: not supported
        old_dir, new_dir = self._out_dir(parent_inode_old), self._out_dir(parent_inode_new)
        old_name, new_name = os.fsdecode(name_old), self._out_name(name_new)
        node = old_dir.lookup(old_name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        target = new_dir.lookup(new_name)
        if isinstance(target, OutDir) and not isinstance(node, OutDir):
            raise pyfuse3.FUSEError(errno.EISDIR)
        await self._run(self._move, node, old_dir, new_dir, new_name, what=new_dir.child_rel(new_name))
        node.area.mark_dirty()

    @staticmethod
    def _move(node, old_dir: OutDir, new_dir: OutDir, new_name: str) -> None:
        area = node.area
        old_rel, new_rel = node.rel, new_dir.child_rel(new_name)
        with area.lock:
            if isinstance(node, OutDir):
                os.rename(area.real(old_rel), area.real(new_rel))
                if "/" not in old_rel and (area.root / f"{old_rel}.zarr").exists():
                    os.rename(area.root / f"{old_rel}.zarr", area.root / f"{new_rel}.zarr")
                    area._stores.clear()
                new_dir.adopt(new_name, node)
                return
            committed_file = area.real(old_rel).is_file()
            plane = node.committed_plane()
            if committed_file or plane is not None:
                if area.zarr_target(new_rel) is not None or plane is not None:
                    # content changes representation: restage it and commit under the new name
                    node.begin_write(truncate=False)
                    node.remove_committed()
                    new_dir.adopt(new_name, node)
                    node.commit(final=True)
                    return
                os.replace(area.real(old_rel), area.real(new_rel))
            new_dir.adopt(new_name, node)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._out_dir(new_parent_inode)
        raise pyfuse3.FUSEError(errno.EPERM)     # hard links: not supported in outputs/

    async def symlink(self, parent_inode, name, target, ctx):
        self._out_dir(parent_inode)
        raise pyfuse3.FUSEError(errno.EPERM)     # symlinks could point anywhere: refused

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._out_dir(parent_inode)
        raise pyfuse3.FUSEError(errno.EPERM)
