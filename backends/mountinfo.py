"""What is mounted where, from /proc/self/mountinfo (shared by the mount CLI and pipelines)."""
from __future__ import annotations

import os


def mount_type(path: str | os.PathLike) -> str | None:
    """The file-system type mounted exactly at ``path`` (e.g. "fuse.vfsmount"), or None."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == real:
                    return fields[fields.index("-") + 1]
    except OSError:
        return None
    return None
