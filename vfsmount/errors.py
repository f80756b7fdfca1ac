"""The one error map: any exception from a node or backend -> the errno the caller sees.

Every file-system operation in ``fs.py`` goes through :func:`fuse_operation`, so no
exception can escape into pyfuse3 (which would take the mount down): an expected error is
logged in one line with the file's name, an unexpected one with its traceback, and both are
answered with an errno.
"""
from __future__ import annotations

import errno
import functools
import logging

import pyfuse3

from backends.errors import (PathEscapeError, ReadOnlyError, StorageError, StorageNotFoundError,
                             UnsupportedFormatError)

log = logging.getLogger("vfsmount.fs")

# checked in order: the first class an exception is an instance of decides
_BY_TYPE: tuple[tuple[type[BaseException], int], ...] = (
    (PathEscapeError, errno.EACCES),          # a path leading outside the plate, a symlink
    (ReadOnlyError, errno.EROFS),
    (StorageNotFoundError, errno.ENOENT),
    (FileNotFoundError, errno.ENOENT),
    (UnsupportedFormatError, errno.EIO),
)

# An ERROR line means data was refused or lost: it names the file (``what``) and says what the
# user can do -- this, for the refusals whose own message does not.
_HINTS: dict[int, str] = {
    errno.EROFS: "only outputs/ takes writes, on a mount made with --writable",
    errno.EACCES: "vfsmount never follows a link or path leading outside the plate (or a "
                  "symlink in outputs/): read the file on the plate itself",
    errno.ENOSPC: "the disk holding the outputs is full: free space and write the file again",
    errno.EIO: "the plate's file cannot be read: check it on the plate (`vfsmount info FILE` "
               "names its source)",
}
_SOURCE_MISSING = "the plate changed since it was mounted: remount it to see it as it is now"


def _hint(err: int) -> str:
    return f" ({_HINTS[err]})" if err in _HINTS else ""


class CommitError(OSError):
    """A commit of a file written into outputs/ failed; ``errno`` is what the writer's
    close()/fsync() returns. ``kept``: the content stays staged (a file still being written,
    e.g. a TIFF whose image data is not all there yet): nothing is lost, so it is no ERROR."""

    kept = False

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror


def errno_for(exc: BaseException) -> int:
    """The errno for an exception: FUSEError and OSError keep theirs, backend errors map by
    type (a path escape is EACCES, a missing source ENOENT), anything else is EIO."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    for cls, err in _BY_TYPE:
        if isinstance(exc, cls):
            return err
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def expected(exc: BaseException) -> bool:
    """Errors that are answers (one log line), not bugs (logged with a traceback)."""
    return isinstance(exc, (OSError, StorageError, pyfuse3.FUSEError))


def fuse_operation(fn):
    """Wrap an async pyfuse3 operation: every exception becomes a FUSEError with its errno."""
    @functools.wraps(fn)
    async def op(self, *args):
        try:
            return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            err = errno_for(exc)
            what = self.describe(fn.__name__, args)
            if not expected(exc):
                log.exception("%s failed", what)
            elif err == errno.ENOENT and fn.__name__ in ("open", "read"):
                # listed, but its file is gone
                log.error("%s: source missing: %s (%s)", what, exc, _SOURCE_MISSING)
            elif err in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY, errno.ENAMETOOLONG,
                         errno.ESTALE):     # (ESTALE: the kernel looks the name up again)
                log.debug("%s: %s", what, exc)
            elif getattr(exc, "kept", False):     # not stored yet, nothing lost
                log.info("%s: not committed yet (kept staged): %s", what, exc)
            else:
                log.error("%s: %s: %s%s", what, type(exc).__name__, exc, _hint(err))
            raise pyfuse3.FUSEError(err) from None
    return op
