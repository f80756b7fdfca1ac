"""Atomic, durable file replacement.

A write goes to a temporary file in the destination's directory, is fsynced,
then renamed over the destination, and the directory is fsynced. A crash at any
point leaves either the previous file or the complete new one; an exception
inside the writer removes the temporary file and leaves the old one untouched.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_PREFIX = ".vfsmount-tmp-"


def fsync_dir(directory: str | os.PathLike) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, overwrite: bool = True,
                mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly."""
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".part", dir=dest.parent)
    try:
        os.fchmod(fd, mode & ~_umask())
        os.close(fd)
        # Reopened by name: some writers (tifffile) want a file object with a real name.
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, dest)
        else:
            # link() fails if dest exists: no window in which a racing writer is overwritten.
            os.link(tmp, dest)
            os.unlink(tmp)
        fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview, **kw) -> None:
    with atomic_open(path, **kw) as f:
        f.write(data)


def _umask() -> int:
    # os.umask can only be read by setting it; done once per process.
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


_UMASK: int | None = None
