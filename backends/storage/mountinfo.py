"""What is mounted where, from /proc/self/mountinfo (shared by the mount CLI and pipelines)."""
from __future__ import annotations

import os
import re

# mountinfo writes space, tab, newline and backslash in paths as \ooo octal escapes
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def _mounts() -> list[tuple[str, str]]:
    """(mount point, file-system type) of every mount, in the kernel's order."""
    try:
        with open("/proc/self/mountinfo") as f:
            rows = [line.split() for line in f]
    except OSError:
        return []
    return [(unescape(r[4]), r[r.index("-") + 1]) for r in rows if len(r) > 4 and "-" in r[5:]]


def mount_type(path: str | os.PathLike) -> str | None:
    """The file-system type mounted exactly at ``path`` (e.g. "fuse.vfsmount"), or None."""
    real = os.path.realpath(path)
    found = [fstype for point, fstype in _mounts() if point == real]
    return found[-1] if found else None


def mount_source(path: str | os.PathLike) -> str | None:
    """The source ("fsname") of the mount exactly at ``path``: ``vfsmount:<plate name,
    percent-encoded>`` for ours; None if nothing is mounted there."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            rows = [line.split() for line in f]
    except OSError:
        return None
    found = [unescape(r[r.index("-", 5) + 2]) for r in rows
             if len(r) > 4 and "-" in r[5:] and unescape(r[4]) == real]
    return found[-1] if found else None


def vfsmount_plate_name(path: str | os.PathLike) -> str | None:
    """The plate's folder name a vfsmount mount at ``path`` serves (from its fsname)."""
    from urllib.parse import unquote
    source = mount_source(path) or ""
    return unquote(source.partition(":")[2]) if source.startswith("vfsmount:") else None


#: File systems where a metadata call (stat, open, rename) may wait on a network.
NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "lustre",
              "gpfs", "beegfs", "afs", "davfs", "fuse", "fuseblk")


def on_local_disk(path: str | os.PathLike) -> bool:
    """True unless ``path`` lies on a network (or FUSE) file system: the type of the
    innermost mount containing it (the longest mount point that is a prefix of it)."""
    real = os.path.realpath(path)
    inside = [(len(point), fstype) for point, fstype in _mounts()
              if real == point or real.startswith(point.rstrip("/") + "/")]
    return bool(inside) and max(inside)[1].split(".")[0] not in NETWORK_FS
