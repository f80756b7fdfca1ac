"""``outputs/``: where results are written back, served by the mount's outputs area
(``vfsmount/outputs.py``) when there is one; otherwise its image sets are flat folders."""
from __future__ import annotations

from backends.layout import OUTPUTS_DIR

from .base import Mount


def outputs_folder(mount: Mount):
    return [] if mount.outputs is None else [(OUTPUTS_DIR, mount.outputs.top)]
