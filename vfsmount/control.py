"""Starting and stopping mounts from the command line (and from tests)."""
from __future__ import annotations

import errno
import hashlib
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from backends.metadata import cache_root
from backends.mountinfo import mount_type


class MountError(RuntimeError):
    pass


def default_log_file(mountpoint: str | os.PathLike) -> Path:
    real = os.path.realpath(mountpoint)
    digest = hashlib.sha256(real.encode()).hexdigest()[:12]
    return cache_root() / "logs" / f"{Path(real).name}-{digest}.log"


def is_mounted(mountpoint: str | os.PathLike) -> bool:
    return mount_type(mountpoint) is not None


def is_dead(mountpoint: str | os.PathLike) -> bool:
    """A mount whose daemon is gone: the kernel answers ENOTCONN ("Transport endpoint is not
    connected"). auto_unmount cannot always prevent it: its helper process is itself killed
    when a whole process group or cgroup is, and then nobody unmounts."""
    try:
        os.stat(mountpoint)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def clear_dead_mount(mountpoint: str | os.PathLike) -> bool:
    """Detach a dead mount at ``mountpoint`` so that a new one can take its place; True if
    there was one (a live mount is left alone)."""
    if not is_dead(mountpoint):
        return False
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    subprocess.run([fusermount, "-u", "-z", os.fspath(mountpoint)], capture_output=True)
    return not is_mounted(mountpoint)


def start_daemon(plate: str | os.PathLike, mountpoint: str | os.PathLike, *,
                 allow_other: bool = False, subdir: str | None = None, log_level: str = "INFO",
                 log_file: str | os.PathLike | None = None, timeout: float = 120.0,
                 extra_args: list[str] | None = None) -> tuple[int, Path]:
    """Start a background daemon; return (pid, log file) once the mount is live."""
    mnt = Path(mountpoint)
    if is_mounted(mnt) and not clear_dead_mount(mnt):   # a dead one (daemon killed) is cleared
        raise MountError(f"{mnt} is already a mount point (vfsmount umount {mnt} first)")
    if not mnt.is_dir():
        raise MountError(f"mount point {mnt} is not a directory")
    log_path = Path(log_file) if log_file else default_log_file(mnt)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "vfsmount.daemon", os.fspath(plate), os.fspath(mnt),
           "--ready-fd", str(w), "--log-level", log_level]
    if allow_other:
        cmd.append("--allow-other")
    if subdir:
        cmd += ["--subdir", subdir]
    cmd += extra_args or []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                pass_fds=(w,), start_new_session=True)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], timeout)
        line = os.read(r, 4096).decode(errors="replace").strip() if ready else ""
    finally:
        os.close(r)
    if line == "ok":
        return proc.pid, log_path
    if not line:
        proc.kill() if proc.poll() is None else None
        raise MountError(f"daemon did not come up within {timeout:.0f} s; see {log_path}")
    proc.wait(timeout=10)
    raise MountError(f"{line.removeprefix('error: ')} (log: {log_path})")


def unmount(mountpoint: str | os.PathLike, *, timeout: float = 20.0) -> str:
    """Unmount; clear a dead mount ("Transport endpoint is not connected") lazily."""
    mnt = os.fspath(mountpoint)
    if not is_mounted(mnt):   # a dead mount still appears in mountinfo
        return "not mounted"
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    res = subprocess.run([fusermount, "-u", mnt], capture_output=True, text=True)
    if res.returncode == 0:
        _wait_unmounted(mnt, timeout)
        return "unmounted"
    err = res.stderr.strip()
    # Dead daemon, or busy: detach lazily so the path is usable again at once.
    lazy = subprocess.run([fusermount, "-u", "-z", mnt], capture_output=True, text=True)
    if lazy.returncode == 0:
        return "detached (was: " + (err or "busy") + ")"
    raise MountError(f"cannot unmount {mnt}: {err}; {lazy.stderr.strip()}")


def _wait_unmounted(mnt: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.05)
