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

import pyfuse3
import trio

from backends.errors import PathEscapeError, StorageNotFoundError

from .nodes import DirNode, FileNode, Node, PassthroughFile

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 3600.0          # seconds: the read-only tree does not change under the kernel
BLOCK_SIZE = 1 << 20           # st_blksize: cp/cat size their reads from it
DEFAULT_THREADS = 8
XATTR_PREFIX = b"user.vfsmount."


class VfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: DirNode, *, threads: int = DEFAULT_THREADS, xattrs: bool = True) -> None:
        super().__init__()
        # Without xattrs, getxattr answers ENOSYS once and the kernel stops asking: `ls -l`
        # then costs no round trip per file for security.selinux/ACL probes.
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
        try:
            return self._nodes[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _remember(self, parent: int, name: bytes, node: Node) -> None:
        if node.inode not in self._nodes:
            self._nodes[node.inode] = node
            self._labels[node.inode] = name    # for log lines; the key bytes are shared, not copied

    def _label(self, inode: int) -> str:
        return os.fsdecode(self._labels.get(inode, str(inode).encode()))

    async def _ensure_listed(self, d: DirNode) -> None:
        if not d.populated:
            try:
                await trio.to_thread.run_sync(d._ensure, limiter=self.limiter)
            except Exception:
                log.exception("cannot list %s", self._label(d.inode))
                raise pyfuse3.FUSEError(errno.EIO) from None

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        e.entry_timeout = e.attr_timeout = ATTR_TIMEOUT
        e.st_mode = node.mode
        e.st_uid, e.st_gid = self.uid, self.gid
        e.st_blksize = BLOCK_SIZE
        if isinstance(node, DirNode):
            e.st_nlink = 2
            e.st_size = 0
        else:
            e.st_nlink = 1
            try:
                e.st_size = node.size
            except Exception as exc:  # missing or unreadable source: still list it, reads fail
                log.warning("%s: size unavailable: %s", self._label(node.inode), exc)
                e.st_size = 0
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = node.mtime_ns
        return e

    # -- lookups and attributes ---------------------------------------------------
    async def lookup(self, parent_inode, name, ctx=None):
        parent = self._node(parent_inode)
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
        return s

    # -- directories ------------------------------------------------------------
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        if not isinstance(node, DirNode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        await self._ensure_listed(node)
        return inode

    async def readdir(self, fh, start_id, token):
        # Offsets: 1 after ".", 2 after "..", then 3 + index into the directory's name list,
        # so a listing resumed at any offset continues exactly where the kernel stopped.
        d = self._node(fh)
        if start_id < 2:
            attr = self._attr(d)   # ".." reports this directory too; the kernel ignores its inode
            for i, dot in ((0, b"."), (1, b"..")):
                if i >= start_id and not pyfuse3.readdir_reply(token, dot, attr, i + 1):
                    return
        names = d.names()
        for i in range(max(start_id - 2, 0), len(names)):
            name = names[i]
            node = d.get(name)
            self._remember(fh, name, node)
            if not pyfuse3.readdir_reply(token, name, self._attr(node), i + 3):
                break

    async def releasedir(self, fh):
        pass

    # -- files --------------------------------------------------------------------
    async def open(self, inode, flags, ctx):
        node = self._node(inode)
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
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    # -- everything that would modify the tree: read-only ------------------------------
    async def setattr(self, inode, attr, fields, fh, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, parent_inode, name, mode, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode, name, mode, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode, name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode, name, target, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh, off, buf):
        raise pyfuse3.FUSEError(errno.EROFS)
