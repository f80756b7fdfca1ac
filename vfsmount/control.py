"""Starting and stopping mounts from the command line (and from tests)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from backends.plates.metadata import cache_root
from backends.storage.mountinfo import mount_type


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
    check_not_nested(plate, mnt)
    if is_mounted(mnt) and not clear_dead_mount(mnt):   # a dead one (daemon killed) is cleared
        raise MountError(f"{mnt} is already a mount point (vfsmount umount {mnt} first)")
    _require_directory(mnt)
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
        record_mount(MountRecord(os.fspath(mnt), plate_location(plate), proc.pid,
                                 (["--allow-other"] if allow_other else []) +
                                 (["--subdir", subdir] if subdir else []) + (extra_args or []),
                                 str(log_path)))
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
    daemon = _daemon_pid(mnt)
    res = subprocess.run([fusermount, "-u", mnt], capture_output=True, text=True)
    if res.returncode == 0:
        _wait_unmounted(mnt, timeout)
        _wait_exited(daemon, timeout)
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


def _daemon_pid(mnt: str) -> int | None:
    """The pid of the daemon serving ``mnt``, if this user's registry knows it."""
    try:
        return int(json.loads(_record_path(mnt).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _wait_exited(pid: int | None, timeout: float) -> None:
    """Wait for the daemon to exit after its mount is gone: it writes what it batched (zarr
    metadata, openhcs_metadata.json) then, and umount returns once the plate is final."""
    deadline = time.monotonic() + timeout
    while pid is not None and not _exited(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _exited(pid: int) -> bool:
    """True once the daemon's main thread has returned (all it writes is written then):
    reaped if it is our own child (start_daemon), or "Z" while its last threads go."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except OSError:
        return True                                       # gone


# -- the command line's mount checks, umount, and registry of mounts -------------------------------

class NotMountedError(MountError):
    pass


class MountBusyError(MountError):
    pass


def _require_directory(mnt: Path) -> None:
    if not mnt.is_dir():
        what = "is not a directory" if os.path.lexists(mnt) else \
            f"does not exist (create it first: mkdir {mnt})"
        raise MountError(f"mount point {mnt} {what}")


def check_mountpoint(mountpoint: str | os.PathLike, *, nonempty: bool = False) -> None:
    """Refuse what fusermount refuses by default: mounting over files, which would hide them."""
    mnt = Path(mountpoint)
    _require_directory(mnt)
    if is_mounted(mnt):
        raise MountError(f"{mnt} is already a mount point (vfsmount umount {mnt} first)")
    if not nonempty:
        with os.scandir(mnt) as it:
            if next(it, None) is not None:
                raise MountError(f"mount point {mnt} is not empty: the mount would hide its files "
                                 "(use an empty folder, or --nonempty to mount over them)")


def check_not_nested(plate: str | os.PathLike, mountpoint: str | os.PathLike) -> None:
    """Refuse a mount point inside the plate, or the plate inside the mount point: serving
    the plate would then read through its own mount, and the daemon would wait on itself."""
    if not os.path.exists(plate):     # an s3:// plate (a missing one fails on its own)
        return
    p, m = os.path.realpath(plate), os.path.realpath(mountpoint)
    if os.path.commonpath([p, m]) in (p, m):
        where = "inside the plate" if os.path.commonpath([p, m]) == p else "holds the plate"
        raise MountError(f"mount point {m} {where} {p}: a plate cannot be mounted inside "
                         "itself (use a folder outside the plate)")


def unmount_checked(mountpoint: str | os.PathLike, *, lazy: bool = False) -> str:
    """`vfsmount umount`: a folder that is not mounted and a busy mount are errors; a dead mount
    ("Transport endpoint is not connected") is cleared; ``lazy`` detaches a busy one anyway."""
    mnt = os.fspath(mountpoint)
    kind = mount_type(mnt)
    if kind is None:
        forget_mount(mnt)
        raise NotMountedError(f"{mnt} is not mounted")
    if kind != "fuse" and not kind.startswith("fuse."):   # fusermount unmounts FUSE mounts only
        raise MountError(f"{mnt} is a {kind} mount, not a vfsmount one")
    daemon = _daemon_pid(mnt)
    res = _fusermount(mnt)
    if res.returncode == 0:
        _wait_unmounted(mnt, 20.0)
        _wait_exited(daemon, 20.0)
        forget_mount(mnt)
        return "unmounted"
    dead = _is_dead(mnt)
    if not (dead or lazy):
        err = res.stderr.strip()
        if "busy" in err.lower():
            raise MountBusyError(f"{mnt} is busy (a process has a file or its working directory "
                                 "in it); close it, or use --lazy to detach now")
        raise MountError(f"cannot unmount {mnt}: {err}")
    res = _fusermount(mnt, "-z")
    if res.returncode != 0:
        raise MountError(f"cannot unmount {mnt}: {res.stderr.strip()}")
    forget_mount(mnt)
    return "cleared a dead mount" if dead else "detached (it goes when its last file is closed)"


def _fusermount(mnt: str, *flags: str) -> subprocess.CompletedProcess:
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
    return subprocess.run([fusermount, "-u", *flags, mnt], capture_output=True, text=True)


def _is_dead(mnt: str) -> bool:
    try:
        os.stat(mnt)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


@dataclass
class MountRecord:
    """One mount started by this user's `vfsmount mount` (a small JSON file per mount)."""

    mountpoint: str
    plate: str
    pid: int
    options: list[str]
    log_file: str | None

    def state(self) -> dict | None:
        """What the daemon says of itself (data path and why, request counters), or None."""
        try:
            return json.loads(state_path(self.mountpoint).read_text())
        except (OSError, ValueError):
            return None

    @property
    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def plate_location(plate: str | os.PathLike) -> str:
    """The plate as `vfsmount list` shows it: an absolute path, or the URL as given."""
    text = os.fspath(plate)
    return text if "://" in text else os.path.abspath(text)


def registry_dir() -> Path:
    """Per-user: beside the logs, so a private XDG_CACHE_HOME (tests) has its own registry."""
    return cache_root() / "mounts"


def _record_path(mountpoint: str | os.PathLike) -> Path:
    real = os.path.realpath(mountpoint)
    return registry_dir() / f"{hashlib.sha256(real.encode()).hexdigest()[:16]}.json"


def state_path(mountpoint: str | os.PathLike) -> Path:
    """The daemon's own state file (written by the daemon, beside its mount's record)."""
    return _record_path(mountpoint).with_suffix(".state")


def write_state(mountpoint: str | os.PathLike, state: dict) -> None:
    """In place, one write (no rename: the daemon's renames are its commits, and the tests
    trace them); a reader that catches it half-written reads it again (``MountRecord.state``
    gives None then)."""
    path = state_path(mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, json.dumps(state).encode())
    finally:
        os.close(fd)


def record_mount(record: MountRecord) -> None:
    record.mountpoint = os.path.realpath(record.mountpoint)
    path = _record_path(record.mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def forget_mount(mountpoint: str | os.PathLike) -> None:
    _record_path(mountpoint).unlink(missing_ok=True)
    state_path(mountpoint).unlink(missing_ok=True)


def active_mounts() -> list[MountRecord]:
    """This user's vfsmount mounts that are still mounted (dead ones included); records of
    mounts that are gone are dropped."""
    found = []
    for path in sorted(registry_dir().glob("*.json")):
        try:
            record = MountRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)   # a torn or foreign file: not a mount we know
            continue
        if mount_type(record.mountpoint) == "fuse.vfsmount":
            found.append(record)
        else:
            path.unlink(missing_ok=True)
            path.with_suffix(".state").unlink(missing_ok=True)
    return sorted(found, key=lambda r: r.mountpoint)
