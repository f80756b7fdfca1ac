"""Opening plate-relative paths so that nothing can lead outside the plate, not even a race.

There is one way in: :func:`open_beneath` (and :func:`parent_beneath` for the *at() calls that
create, rename or remove a name). Every component is resolved by the kernel relative to a
directory descriptor held open for the plate, never by path string:

- ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` (Linux >= 5.6, syscall 437, reached
  through ctypes): the kernel refuses ``..`` above the start and any symlink, atomically;
- where openat2 is missing (old kernels, seccomp filters), a walk one component at a time with
  ``openat(O_NOFOLLOW)``: a symlink swapped in at any moment makes the walk fail with ELOOP
  or ENOTDIR instead of being followed.

``follow_inside=True`` (pass-through reads of a vendor tree, whose own symlinks may point
elsewhere in the plate) lets the kernel follow symlinks that stay beneath the plate
(``RESOLVE_BENEATH`` alone; the fallback resolves once, checks, then walks the resolved path
with ``O_NOFOLLOW``, so a swap after the check still cannot escape).

Names are checked first, in time proportional to the path's length: a component over
NAME_MAX or a path over PATH_MAX is ENAMETOOLONG; ``..``, absolute paths and NUL are refused.
"""
from __future__ import annotations

import ctypes
import errno
import os

from ..errors import PathEscapeError

NAME_MAX = 255
PATH_MAX = 4096

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
SYS_OPENAT2 = 437          # the same number on every architecture (unified syscall table)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_have_openat2: bool | None = None     # decided by the first call


def check_rel(rel: str) -> list[str]:
    """The components of a plate-relative path; OSError for a name the plate cannot hold.

    ENAMETOOLONG for a component over NAME_MAX bytes or a path over PATH_MAX bytes (checked
    before anything is split, so a huge path costs one length check); EACCES for an absolute
    path, ``..``, an empty component or NUL.
    """
    raw = os.fsencode(rel)
    if len(raw) >= PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, "path longer than PATH_MAX", rel[:64] + "...")
    if raw.startswith(b"/") or b"\0" in raw:
        raise PathEscapeError("absolute path or NUL refused", path=rel)
    parts = raw.split(b"/") if raw else []
    for p in parts:
        if len(p) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "name longer than NAME_MAX", os.fsdecode(p[:64]) + "...")
        if p in (b"", b".", b".."):
            raise PathEscapeError(f"path component {os.fsdecode(p)!r} refused", path=rel)
    return [os.fsdecode(p) for p in parts]


def _openat2(dir_fd: int, rel: str, flags: int, mode: int, resolve: int) -> int | None:
    """The descriptor, or None if this kernel has no openat2 (then the caller walks)."""
    global _have_openat2
    if _have_openat2 is False:
        return None
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    fd = _libc.syscall(SYS_OPENAT2, dir_fd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        _have_openat2 = True
        return fd
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and _have_openat2 is None:
        _have_openat2 = False     # not available (or filtered): fall back for good
        return None
    if err == errno.EXDEV:        # RESOLVE_BENEATH: the path would leave the plate
        raise PathEscapeError("path leads outside the plate", path=rel)
    if err == errno.ELOOP and resolve & RESOLVE_NO_SYMLINKS:
        raise PathEscapeError("path goes through a symlink", path=rel)
    raise OSError(err, os.strerror(err), rel)


def _walk(dir_fd: int, parts: list[str], flags: int, mode: int) -> int:
    """openat(O_NOFOLLOW) one component at a time: a symlink anywhere is refused."""
    fd = os.dup(dir_fd)
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise PathEscapeError("path goes through a symlink", path="/".join(parts)) from None
                raise
            os.close(fd)
            fd = nxt
        if not parts:
            return os.open(".", flags | os.O_CLOEXEC, dir_fd=fd)
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathEscapeError("path is a symlink", path="/".join(parts)) from None
            raise
    finally:
        os.close(fd)


def open_beneath(dir_fd: int, rel: str, flags: int = os.O_RDONLY, mode: int = 0o644, *,
                 follow_inside: bool = False) -> int:
    """Open ``rel`` relative to the directory ``dir_fd`` without ever leaving it.

    Raises PathEscapeError for a path through a symlink (or, with ``follow_inside``, one that
    leads outside), OSError with the kernel's errno otherwise (ENOENT, ENAMETOOLONG, ...).
    """
    parts = check_rel(rel)
    resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS | (0 if follow_inside else RESOLVE_NO_SYMLINKS)
    fd = _openat2(dir_fd, "/".join(parts) or ".", flags, mode, resolve)
    if fd is not None:
        return fd
    if follow_inside:
        parts = _resolve_inside(dir_fd, parts)
    return _walk(dir_fd, parts, flags, mode)


def _resolve_inside(dir_fd: int, parts: list[str]) -> list[str]:
    """Fallback for ``follow_inside``: resolve once, check, and return the resolved components
    (which the caller then walks with O_NOFOLLOW, so a later swap cannot escape)."""
    root = os.path.realpath(f"/proc/self/fd/{dir_fd}")
    resolved = os.path.realpath(os.path.join(root, *parts))
    rel = os.path.relpath(resolved, root)
    if rel == ".":
        return []
    if rel.startswith(".."):
        raise PathEscapeError("path leads outside the plate", path="/".join(parts))
    return rel.split("/")


def parent_beneath(dir_fd: int, rel: str) -> tuple[int, str]:
    """(descriptor of the folder holding ``rel``, its last component): for mkdirat,
    unlinkat, renameat, fstatat -- which never follow the last component themselves.
    The caller closes the descriptor."""
    parts = check_rel(rel)
    if not parts:
        raise PathEscapeError("the top folder has no parent here", path=rel)
    return open_beneath(dir_fd, "/".join(parts[:-1]), _DIR_FLAGS), parts[-1]


def open_root(path: str | os.PathLike) -> int:
    """A descriptor for a plate (or outputs) folder, the anchor of every open beneath it."""
    return os.open(os.path.realpath(path), _DIR_FLAGS)


def open_dir_beneath(dir_fd: int, rel: str, *, create: bool = False) -> int:
    """A folder beneath ``dir_fd`` (created if asked); never through a symlink."""
    if create and rel:
        pfd, name = parent_beneath(dir_fd, rel)
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)
        except FileExistsError:
            pass
        finally:
            os.close(pfd)
    return open_beneath(dir_fd, rel, _DIR_FLAGS)


class Anchor:
    """A folder (a plate) whose files are opened only beneath it; its descriptor is opened
    on first use and kept, so every open is relative to the same directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.realpath(root)
        self._fd: int | None = None

    def fd(self) -> int:
        if self._fd is None:
            self._fd = open_root(self.root)
        return self._fd

    def open_file(self, path: str | os.PathLike, *, follow_inside: bool = True) -> int:
        """Open a file for reading by plate-relative or absolute path, never leaving the plate."""
        text = os.fspath(path)
        rel = os.path.relpath(text, self.root) if os.path.isabs(text) else text
        if rel == ".." or rel.startswith("../"):
            raise PathEscapeError("path is outside the plate", path=text)
        return open_beneath(self.fd(), rel, os.O_RDONLY, follow_inside=follow_inside)


def openat2_available() -> bool:
    """Whether the kernel resolves for us (else the O_NOFOLLOW walk is used)."""
    if _have_openat2 is None:
        fd = open_root("/")
        try:
            os.close(open_beneath(fd, "", _DIR_FLAGS))
        finally:
            os.close(fd)
    return bool(_have_openat2)


def force_walk_fallback(on: bool) -> None:
    """Tests: exercise the O_NOFOLLOW walk as if openat2 were missing."""
    global _have_openat2
    _have_openat2 = False if on else None


__all__ = ["Anchor", "NAME_MAX", "PATH_MAX", "check_rel", "open_beneath", "parent_beneath", "open_root",
           "open_dir_beneath", "openat2_available", "force_walk_fallback"]
