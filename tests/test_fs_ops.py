"""The FUSE operations in process, without a kernel: the error map and readdir offsets."""
from __future__ import annotations

import errno
import logging

import pyfuse3
import pytest
import trio

from backends.errors import PathEscapeError, ReadOnlyError, StorageNotFoundError
from vfsmount.errors import errno_for
from vfsmount.fs import VfsOperations
from vfsmount.nodes import BytesFile, DirNode, FileNode
from vfsmount.outputs import CommitError


class Exploding(FileNode):
    """A file whose open raises what it is given."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        super().__init__(0o100444, 0)
        self.exc = exc

    @property
    def size(self) -> int:
        return 1

    def open(self):
        raise self.exc


def _tree(n: int = 10) -> tuple[VfsOperations, DirNode]:
    root = DirNode(0, inode=1)
    d = root.add("d", DirNode(0))
    for i in range(n):
        d.add(f"f{i:02d}", BytesFile(b"x" * i, 0))
    for name, exc in (("escape", PathEscapeError("outside", path="x")),
                      ("missing", StorageNotFoundError("gone", path="y")),
                      ("bug", ZeroDivisionError("oops")),
                      ("commit", CommitError(errno.EINVAL, "not a TIFF"))):
        root.add(name, Exploding(exc))
    return VfsOperations(root), d


@pytest.mark.parametrize("exc, err", [
    (PathEscapeError("x"), errno.EACCES), (StorageNotFoundError("x"), errno.ENOENT),
    (FileNotFoundError(errno.ENOENT, "x"), errno.ENOENT), (ReadOnlyError("x"), errno.EROFS),
    (CommitError(errno.EINVAL, "x"), errno.EINVAL), (OSError(errno.ENAMETOOLONG, "x"), errno.ENAMETOOLONG),
    (pyfuse3.FUSEError(errno.EBADF), errno.EBADF), (ValueError("x"), errno.EIO), (KeyError("x"), errno.EIO)])
def test_errno_for(exc, err):
    assert errno_for(exc) == err


def _errno_of(coro_fn, *args) -> int:
    async def run():
        try:
            await coro_fn(*args)
        except pyfuse3.FUSEError as e:
            return e.errno
        return 0
    return trio.run(run)


def test_every_operation_answers_an_errno(caplog):
    ops, _d = _tree()
    inode = {n.decode(): trio.run(ops.lookup, 1, n, None).st_ino for n, _ in ops.root.children()}
    caplog.set_level(logging.DEBUG)
    assert _errno_of(ops.open, inode["escape"], 0, None) == errno.EACCES
    assert _errno_of(ops.open, inode["missing"], 0, None) == errno.ENOENT
    assert _errno_of(ops.open, inode["commit"], 0, None) == errno.EINVAL
    assert _errno_of(ops.open, inode["bug"], 0, None) == errno.EIO
    assert "ZeroDivisionError" in caplog.text and "Traceback" in caplog.text   # a bug: traceback
    assert "source missing" in caplog.text
    # read-only nodes refuse writes with EROFS, wrong kinds with ENOTDIR/EISDIR
    assert _errno_of(ops.mkdir, 1, b"new", 0o755, None) == errno.EROFS
    assert _errno_of(ops.unlink, 1, b"escape", None) == errno.EROFS
    assert _errno_of(ops.rename, 1, b"escape", 1, b"x", 0, None) == errno.EROFS
    assert _errno_of(ops.lookup, inode["escape"], b"x", None) == errno.ENOTDIR
    assert _errno_of(ops.open, 1, 0, None) == errno.EISDIR
    assert _errno_of(ops.lookup, 1, b"n" * 256, None) == errno.ENAMETOOLONG
    assert _errno_of(ops.getattr, 999999, None) == errno.ENOENT
    assert _errno_of(ops.read, 12345, 0, 10) == errno.EBADF


def test_readdir_offsets_resume_exactly(monkeypatch):
    ops, d = _tree(25)
    replies: list[tuple[bytes, int]] = []
    budget = {"left": 0}

    def reply(token, name, attr, next_id):
        if budget["left"] == 0:
            return False                      # the kernel's buffer is full
        budget["left"] -= 1
        replies.append((name, next_id))
        return True

    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)

    async def listing(page: int) -> list[bytes]:
        fh = await ops.opendir(d.inode, None)
        fh = getattr(fh, "fh", fh)      # a FileInfo where listings are cached (cache_readdir)
        names, offset = [], 0
        while True:
            replies.clear()
            budget["left"] = page
            await ops.readdir(fh, offset, None)
            if not replies:
                break
            names += [n for n, _ in replies]
            offset = replies[-1][1]
        await ops.releasedir(fh)
        return names

    expected = [b".", b".."] + [f"f{i:02d}".encode() for i in range(25)]
    trio.run(ops.lookup, 1, b"d", None)
    for page in (1, 2, 3, 7, 100):
        assert trio.run(listing, page) == expected


def test_mount_config_crosses_to_the_daemon():
    """MountConfig -> the daemon's command line -> the same MountConfig; defaults stated once."""
    import argparse

    from vfsmount.cli import build_parser
    from vfsmount.config import MountConfig, parse_daemon_argv
    cfg = MountConfig("/p", "/m", allow_other=True, subdir="zarr", xattrs=False, writable=True,
                      materialize="zarr", sync_on_close=True, chunk_cache_mb=7, threads=3)
    back, args = parse_daemon_argv(cfg.to_argv() + ["--ready-fd", "5"])
    assert back == cfg and args.ready_fd == 5
    assert parse_daemon_argv(["/p", "/m"])[0] == MountConfig("/p", "/m")
    parsed = build_parser().parse_args(["mount", "/p", "/m", "--writable", "--no-xattrs",
                                        "--sync-on-close"])
    built = MountConfig.from_args(parsed)
    assert built.writable and not built.xattrs and built.sync_on_close
    assert built.chunk_cache_mb == MountConfig.chunk_cache_mb       # the CLI takes these defaults
    assert isinstance(parsed, argparse.Namespace)


# -- issue 20: the worker pool and where cheap calls run -------------------------------------

def test_worker_pool_returns_results_raises_errors_and_limits_threads():
    import threading
    import time
    from vfsmount.workers import WorkerPool
    pool = WorkerPool(3)
    running, peak, lock = [0], [0], threading.Lock()

    def job(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if i == 4:
            raise KeyError(i)
        return i * i

    async def main():
        results = {}

        async def one(i):
            try:
                results[i] = await pool.run(job, i)
            except KeyError as e:
                results[i] = e
        async with trio.open_nursery() as nursery:
            for i in range(9):
                nursery.start_soon(one, i)
        return results

    results = trio.run(main)
    pool.close()
    assert {i: r for i, r in results.items() if i != 4} == {i: i * i for i in range(9) if i != 4}
    assert isinstance(results[4], KeyError)
    assert peak[0] == 3                      # the thread count is the concurrency limit


def test_local_disk_and_fuse_mounts_are_told_apart(tmp_path, mounts):
    from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
    from backends.storage.mountinfo import on_local_disk
    plate = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1,
                                                               z=1, shape=(8, 8)),
                                   thumbnails=False, projections=False)
    assert on_local_disk(str(tmp_path))
    mnt = mounts.mount(plate)
    assert not on_local_disk(str(mnt / "images"))      # fuse.vfsmount: calls may wait
