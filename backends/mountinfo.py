"""What is mounted where, from /proc/self/mountinfo (shared by the mount CLI and pipelines)."""
from __future__ import annotations

import os
import re

# mountinfo writes space, tab, newline and backslash in paths as \ooo octal escapes
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)), field)


def mount_type(path: str | os.PathLike) -> str | None:
    """The file-system type mounted exactly at ``path`` (e.g. "fuse.vfsmount"), or None."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and unescape(fields[4]) == real:
                    return fields[fields.index("-") + 1]
    except OSError:
        return None
    return None
