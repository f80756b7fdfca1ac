"""``processed/<pipeline>/``: the TIFFs each pipeline given at mount computes on read
(``vfsmount/computed.py``)."""
from __future__ import annotations

import time

from backends.layout import LOADDATA_CSV, PROCESSED_DIR

from ..nodes import DirNode, SynthesizedTiff
from .base import Mount


def processed_folder(mount: Mount):
    if not mount.computed:
        return ()
    processed = DirNode(mount.mtime_ns)
    for factory in mount.computed:
        folder = processed.add(factory.pipeline.name, DirNode(time.time_ns(), _populate(factory)))
        if mount.documents is not None:
            folder.add(LOADDATA_CSV, mount.documents.computed_loaddata(factory))
    return [(PROCESSED_DIR, processed)]


def _populate(factory):
    def fill(directory: DirNode) -> None:
        for name in factory.names():
            directory.add(name, SynthesizedTiff(name, factory, directory.mtime_ns))
    return fill
