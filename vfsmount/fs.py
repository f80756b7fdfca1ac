"""The pyfuse3 operations: one short method per file-system call, on the node protocol.

This module knows nodes only through the protocol of ``nodes.py`` (no node classes, no
paths) and errors only through ``errors.py``. Decisions made here, once:
- caching: entries and attributes live for the node's ``entry_timeout``; the kernel keeps a
  file's page cache across opens when ``open_file`` says so, and drops it after a commit; a
  folder with a timeout (it cannot change while mounted) has its listing cached too;
- the data path of each open (``passthrough.DataPath``): the kernel reads and writes the
  node's ``backing_fd`` itself where it may, else the daemon serves ``read``/``write``;
- threads: anything that may read the disk (first listing, ``read`` of bytes not in memory,
  outputs/ lookups, opens, commits) runs in one of the daemon's worker threads (workers.py);
  lookups and attributes of populated directories stay on the trio loop;
- errors: every operation goes through ``errors.fuse_operation``: logged once, answered
  with an errno; the daemon never dies of one file.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os

import pyfuse3
import trio

from backends import layout
from backends.guards.containment import NAME_MAX

from .config import DEFAULT_THREADS
from .errors import fuse_operation
from .listing import LISTED_INODES, find_listed
from .nodes import DirNode, Node, OpenFile
from .passthrough import PASSTHROUGH, DataPath
from .workers import WorkerPool

log = logging.getLogger(__name__)

BLOCK_SIZE = 1 << 20           # st_blksize: cp/cat size their reads from it
# st_blksize of a file whose bytes the kernel passes through: no request per read or write,
# so cp/cat use the buffer they use on a local disk (coreutils' IO_BUFSIZE). A larger one
# costs them a fresh buffer per file (glibc mmaps 1 MiB: 256 page faults per file).
PASSTHROUGH_BLOCK_SIZE = 128 << 10
XATTR_PREFIX = layout.XATTR_PREFIX.encode()
READDIR_CHUNK = 4096           # rows of a columnar folder sliced at once for one readdir reply
# Attributes the kernel may keep although the node changes (entry_timeout 0): a changing
# folder's (mode, owner; the kernel drops them itself after each change it makes there, and a
# change made outside the mount shows within this time), and a file's just created (the
# kernel drops size and times itself at its first write, and at the commit the daemon does).
# Each saves a GETATTR per path walk or fstat (permission checks need fresh attributes).
CHANGING_DIR_TIMEOUT = 1.0
NEW_FILE_ATTR_TIMEOUT = 1.0
DIR_HANDLES = 1 << 40          # snapshot directory handles live above every inode number
# pyfuse3 built with patches/pyfuse3-passthrough.patch takes a FileInfo from opendir
# (noflush, backing ids, and a FileInfo from opendir for cache_readdir); plain pyfuse3 has none
PATCHED = "backing_id" in dir(pyfuse3.FileInfo)
# ... and, from the patch of the fast lane on, readdir_reply(link=False): a listing entry with
# its name and type only, for a file whose attributes are still being made
NAME_ONLY_ENTRIES = hasattr(pyfuse3, "fastlane_allow")


class VfsOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, root: DirNode, *, threads: int = DEFAULT_THREADS, xattrs: bool = False,
                 outputs=None, data_path: DataPath | None = None) -> None:
        super().__init__()
        self.data_path = data_path or DataPath.for_mount(False)
        self.enable_passthrough = self.data_path.wanted     # asked of the kernel at init
        self.enable_fastlane = self.data_path.fast_lane_wanted   # pyfuse3's reader thread
        self.on_init = None               # called once the kernel's INIT is answered
        self.outputs = outputs            # the OutputsArea, for statfs and the metadata task
        # Without xattrs, getxattr answers ENOSYS once and the kernel stops asking: `ls -l`
        # then costs no round trip per file for security.selinux/ACL probes.
        self.xattrs = xattrs
        self.root = root
        self.workers = WorkerPool(threads)
        self.uid, self.gid = os.getuid(), os.getgid()
        self._nodes: dict[int, Node] = {root.inode: root}
        self._labels: dict[int, bytes] = {root.inode: b"/"}
        self._handles: dict[int, tuple[Node, object]] = {}
        self._paths: dict[int, tuple[int, int, bool]] = {}   # fh -> (inode, backing id, direct)
        self._listings: dict[int, object] = {}
        self._fh = itertools.count(1)
        self.nursery: trio.Nursery | None = None

    # -- helpers --------------------------------------------------------------
    def _node(self, inode: int) -> Node:
        node = self._nodes.get(inode)
        if node is None:
            node = find_listed(inode)      # an image of a listed folder: made from its row
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _handle(self, fh: int) -> tuple[Node, object]:
        try:
            return self._handles[fh]
        except KeyError:
            raise pyfuse3.FUSEError(errno.EBADF) from None

    def _remember(self, name: bytes, node: Node) -> None:
        # Images of listed folders are found from their inode (find_listed): a million-image
        # plate keeps no table of them.
        if node.inode < LISTED_INODES and node.inode not in self._nodes:
            self._nodes[node.inode] = node
            self._labels[node.inode] = name    # for log lines; the key bytes are shared, not copied

    def _label(self, inode: int) -> str:
        if inode >= LISTED_INODES:
            listed = find_listed(inode)
            if listed is not None:
                return listed.name
        return os.fsdecode(self._labels.get(inode, str(inode).encode()))

    def describe(self, op: str, args: tuple) -> str:
        """``FILE: op`` for the one log line of a failed operation (``FILE: read of N bytes
        at OFFSET`` for reads)."""
        first = args[0] if args else None
        if op in ("read", "write", "flush", "fsync", "release") and first in self._handles:
            first = self._handles[first][0].inode
        label = self._label(first) if isinstance(first, int) else "?"
        if len(args) > 1 and isinstance(args[1], bytes):       # an entry of a directory
            return f"{label}/{os.fsdecode(args[1])}: {op}"
        if op == "read" and len(args) == 3:
            return f"{label}: read of {args[2]} bytes at {args[1]}"
        return f"{label}: {op}"

    async def _work(self, node: Node, op: str, *args):
        """``node.op(*args)`` inline if the node says it is cheap now, else in a worker."""
        fn = getattr(node, op)
        if node.inline(op):
            return fn(*args)
        return await self.workers.run(fn, *args)

    async def _in_worker(self, fn, *args):
        return await self.workers.run(fn, *args)

    def _attr(self, node: Node, *, lookup: bool = False) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.inode
        e.generation = 0
        timeout = node.entry_timeout
        if not timeout and node.is_dir:
            timeout = CHANGING_DIR_TIMEOUT
        e.entry_timeout = e.attr_timeout = timeout
        e.st_mode = node.mode
        e.st_uid, e.st_gid = self.uid, self.gid
        e.st_blksize = (PASSTHROUGH_BLOCK_SIZE if node.passes_through
                        and self.data_path.mode == PASSTHROUGH else BLOCK_SIZE)
        e.st_nlink = node.nlink
        e.st_size = 0 if node.is_dir else self._size(node, lookup)
        if e.st_size < 0:                  # content gone (unlinked, refused): no links, as on disk
            e.st_nlink, e.st_size = 0, 0
        e.st_blocks = (e.st_size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = node.mtime_ns
        return e

    async def _attr_waiting(self, node: Node, *, lookup: bool = False) -> pyfuse3.EntryAttributes:
        """``_attr``, in a worker where the node's size is still being made (a large plate's
        load_data.csv): that request waits, the loop does not."""
        if node.size_known():
            return self._attr(node, lookup=lookup)
        return await self._in_worker(lambda: self._attr(node, lookup=lookup))

    def _size(self, node: Node, lookup: bool) -> int:
        try:
            return node.size
        except FileNotFoundError:
            if node.entry_timeout == 0:    # a changing node whose content is gone
                if lookup:
                    raise pyfuse3.FUSEError(errno.ENOENT) from None
                return -1
            return 0
        except Exception as exc:  # missing or unreadable source: still list it, reads fail
            log.warning("%s: size unavailable: %s", self._label(node.inode), exc)
            return 0

    def _invalidate_later(self, inode: int) -> None:
        # Notifying the kernel from inside a request handler can deadlock; do it after.
        if self.nursery is not None:
            self.nursery.start_soon(self._invalidate, inode)

    async def _invalidate(self, inode: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, True)
        except OSError:
            pass

    def _new_handle(self, node: Node, handle: object) -> int:
        fh = next(self._fh)
        self._handles[fh] = (node, handle)
        return fh

    def _file_info(self, node: Node, opened: OpenFile) -> pyfuse3.FileInfo | None:
        """The reply to open/create: the data path of this open, decided here once (passthrough
        where the node offers a backing file and the kernel takes it, else the daemon). None
        if a kept backing file the open counted on is gone (open the node again)."""
        inode = node.inode
        path = self.data_path.open(inode, opened, lambda: self._label(inode))
        if path is None:
            return None
        backing_id, direct_io = path
        fh = self._new_handle(node, opened.handle)
        self._paths[fh] = (inode, backing_id, direct_io)
        if backing_id:
            node.passthrough_started(opened.handle)
        # keep_cache on a passthrough open would make the kernel refuse it
        info = pyfuse3.FileInfo(fh=fh, keep_cache=opened.keep_cache and not backing_id,
                                direct_io=direct_io)
        if PATCHED:
            info.noflush, info.backing_id = opened.noflush, backing_id
        return info

    def _forget_handle(self, fh: int) -> None:
        inode, backing_id, direct_io = self._paths.pop(fh, (0, 0, True))
        self.data_path.release(inode, backing_id, direct_io)

    def init(self) -> None:
        # Called by pyfuse3 once the kernel's INIT is answered (on the loop: no I/O here).
        self.data_path.at_init()
        if self.on_init is not None:
            self.on_init()

    # -- lookups and attributes ---------------------------------------------------
    @fuse_operation
    async def lookup(self, parent_inode, name, ctx=None):
        self.data_path.counters.lookup_requests += 1
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        parent = self._node(parent_inode)
        node = await self._work(parent, "lookup", name)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr = await self._attr_waiting(node, lookup=True)
        self._remember(name, node)
        return attr

    @fuse_operation
    async def getattr(self, inode, ctx=None):
        self.data_path.counters.getattr_requests += 1
        return await self._attr_waiting(self._node(inode))

    async def forget(self, inode_list):
        pass  # nodes live as long as the mount (outputs/ keeps its own per folder)

    @fuse_operation
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = len(self._nodes)
        s.f_ffree = s.f_favail = 0
        s.f_namemax = NAME_MAX
        if self.outputs is not None and self.outputs.writable:
            real = os.fstatvfs(self.outputs.root_fd)   # what cp/df need: space for outputs
            scale = real.f_frsize / BLOCK_SIZE
            s.f_blocks = int(real.f_blocks * scale)
            s.f_bfree = int(real.f_bfree * scale)
            s.f_bavail = int(real.f_bavail * scale)
            s.f_ffree, s.f_favail = real.f_ffree, real.f_favail
        return s

    # -- directories ------------------------------------------------------------
    @fuse_operation
    async def opendir(self, inode, ctx):
        node = self._node(inode)
        listing = await self._work(node, "listing")
        fh = DIR_HANDLES + next(self._fh)
        self._listings[fh] = (node, listing)
        if not PATCHED or node.entry_timeout <= 0:
            return fh
        # cannot change while mounted: the kernel keeps the listing across opendirs
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)

    @fuse_operation
    async def readdir(self, fh, start_id, token):
        # Offsets: 1 after ".", 2 after "..", then 3 + index into the directory's name list,
        # so a listing resumed at any offset continues exactly where the kernel stopped.
        d, listing = self._listings[fh]
        names = listing.names()
        if start_id < 2:
            attr = self._attr(d)   # ".." reports this directory too; the kernel ignores its inode
            for i, dot in ((0, b"."), (1, b"..")):
                if i >= start_id and not pyfuse3.readdir_reply(token, dot, attr, i + 1):
                    return
        start = max(start_id - 2, 0)
        columns = getattr(listing, "columns", None)
        if columns is not None and start < len(names):
            rows = columns()
            if rows.ready <= start:      # a first listing: its rows are still being stat-ed
                await self.workers.run(listing.wait_rows, start + READDIR_CHUNK)
                rows = columns()
                if rows.ready <= start:  # a listing of a length not known before: it ends here
                    return
            self._reply_rows(token, rows, self._attr(listing.child_at(start)), start)
            return
        for i in range(start, len(names)):
            name = names[i]
            node = listing.child_at(i)
            self._remember(name, node)
            if not node.size_known() and NAME_ONLY_ENTRIES:
                # `ls` needs no more; a stat of it looks it up, and waits, by itself
                attr = pyfuse3.EntryAttributes()
                attr.st_ino, attr.st_mode = node.inode, node.mode
                if not pyfuse3.readdir_reply(token, name, attr, i + 3, link=False):
                    break
                continue
            try:
                attr = await self._attr_waiting(node)
            except pyfuse3.FUSEError:
                continue          # deleted since the snapshot
            if not pyfuse3.readdir_reply(token, name, attr, i + 3):
                break

    @staticmethod
    def _reply_rows(token, columns, attr: pyfuse3.EntryAttributes, start: int) -> None:
        """readdir of a columnar folder from row ``start``: one attribute template (its first
        row's, through ``_attr``), refilled per row; readdir_reply copies it. The inner loop
        of listing 100,000s of files: locals only, the columns sliced a reply's worth at a
        time (a reply holds a few thousand rows). A reply that stops at the last row stat-ed
        so far is short, not empty: the kernel asks again from there."""
        _first, names, sizes, mtimes, ready, modes, _inodes = columns
        inodes = columns.inode_column()
        reply = pyfuse3.readdir_reply
        file_type = attr.st_mode & ~0o7777
        for chunk in range(start, ready, READDIR_CHUNK):
            end = min(chunk + READDIR_CHUNK, ready)   # only rows already stat-ed
            rows = zip(range(chunk, end), inodes[chunk:end], names[chunk:end], sizes[chunk:end],
                       mtimes[chunk:end], modes[chunk:end])
            for row, inode, name, size, mtime_ns, mode in rows:
                if size < 0:
                    size = 0               # a missing source, listed as its node's size says
                attr.st_ino = inode
                attr.st_mode = file_type | mode
                attr.st_size = size
                attr.st_blocks = (size + 511) >> 9
                attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = mtime_ns
                if not reply(token, name.encode("utf-8", "surrogateescape"), attr, row + 3):
                    return

    async def releasedir(self, fh):
        self._listings.pop(fh, None)

    # -- files --------------------------------------------------------------------
    @fuse_operation
    async def open(self, inode, flags, ctx):
        self.data_path.counters.open_requests += 1
        node = self._node(inode)
        if self.data_path.kept(inode):   # its backing file is still registered: the node
            opened = await self._work(node, "open_file", flags, True)   # checks the source
        else:
            opened = await self._work(node, "open_file", flags)
        if opened.invalidate:
            log.info("%s: source changed since last opened; dropping cached pages",
                     self._label(inode))
            self._invalidate_later(inode)
        info = self._file_info(node, opened)
        if info is None:                 # the kept backing file was released meanwhile
            info = self._file_info(node, await self._work(node, "open_file", flags))
        return info

    @fuse_operation
    async def read(self, fh, off, size):
        self.data_path.counters.read_requests += 1
        node, handle = self._handle(fh)
        data = node.read_nowait(handle, off, size)
        if data is not None:
            return data
        return await self._in_worker(node.read, handle, off, size)

    @fuse_operation
    async def write(self, fh, off, buf):
        self.data_path.counters.write_requests += 1
        node, handle = self._handle(fh)
        written = node.write_nowait(handle, off, buf)
        if written is None:
            written = await self._in_worker(node.write, handle, off, buf)
        return written

    async def _committing(self, node: Node, op: str, *args) -> None:
        if await self._work(node, op, *args):
            self._invalidate_later(node.inode)   # the kernel's pages were of the old content

    @fuse_operation
    async def flush(self, fh):
        self.data_path.counters.flush_requests += 1
        node, handle = self._handle(fh)
        await self._committing(node, "flush", handle)

    @fuse_operation
    async def fsync(self, fh, datasync):
        node, handle = self._handle(fh)
        await self._committing(node, "fsync", handle)

    @fuse_operation
    async def release(self, fh):
        self.data_path.counters.release_requests += 1
        node, handle = self._handles.pop(fh)
        self._forget_handle(fh)
        await self._committing(node, "release", handle)

    # -- extended attributes ----------------------------------------------------------
    @fuse_operation
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

    @fuse_operation
    async def listxattr(self, inode, ctx):
        if not self.xattrs:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        return list(self._node(inode).get_xattrs())

    @fuse_operation
    async def setxattr(self, inode, name, value, ctx):
        self._node(inode).setxattr(name, value)   # outputs/ stores none; EROFS elsewhere

    async def removexattr(self, inode, name, ctx):
        await self.setxattr(inode, name, b"", ctx)

    # -- writes: nodes with write capabilities (outputs/); EROFS everywhere else ----------
    @fuse_operation
    async def create(self, parent_inode, name, mode, flags, ctx):
        self.data_path.counters.open_requests += 1
        parent = self._node(parent_inode)
        if parent.inline("create"):       # a new staging file: both cheap on a local disk
            node = parent.create(name)
            opened = node.open_file(flags | os.O_WRONLY | os.O_TRUNC)
        else:
            node = await self._in_worker(parent.create, name)
            opened = await self._in_worker(node.open_file, flags | os.O_WRONLY | os.O_TRUNC)
        self._remember(name, node)
        attr = self._attr(node)
        attr.attr_timeout = NEW_FILE_ATTR_TIMEOUT
        return self._file_info(node, opened), attr

    @fuse_operation
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        size = attr.st_size if fields.update_size else None
        mtime = (attr.st_mtime_ns or node.mtime_ns) if fields.update_mtime else None
        await self._committing(node, "set_attrs", size, mtime)   # EROFS outside outputs/
        return self._attr(node)            # modes and owners are fixed

    @fuse_operation
    async def mkdir(self, parent_inode, name, mode, ctx):
        node = await self._in_worker(self._node(parent_inode).mkdir, name)
        self._remember(name, node)
        return self._attr(node)

    @fuse_operation
    async def unlink(self, parent_inode, name, ctx):
        await self._in_worker(self._node(parent_inode).unlink, name)

    @fuse_operation
    async def rmdir(self, parent_inode, name, ctx):
        await self._in_worker(self._node(parent_inode).rmdir, name)

    @fuse_operation
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        old_dir, new_dir = self._node(parent_inode_old), self._node(parent_inode_new)
        await self._in_worker(old_dir.rename, name_old, new_dir, name_new, flags)

    # hard links, symlinks (they could point anywhere) and special files: the node refuses
    @fuse_operation
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self._node(new_parent_inode).make_special("link", new_name)

    @fuse_operation
    async def symlink(self, parent_inode, name, target, ctx):
        self._node(parent_inode).make_special("symlink", name)

    @fuse_operation
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self._node(parent_inode).make_special("mknod", name)
