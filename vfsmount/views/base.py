"""What every view is given: the plate being mounted, its image sets, and the parts that
views share (``Mount``); and the per-file facts served as extended attributes."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from backends.plates.image_set import ImageSet
from backends.layout import OUTPUTS_DIR, XATTR_PREFIX, display_name
from backends.naming import try_parse_virtual_name
from backends.plates.plate import Plate


@dataclass
class Mount:
    """One mount being built: the plate, the optional outputs area and computed pipelines, and
    the folders views share (``images/`` shows the main set's folder, same inodes)."""

    plate: Plate
    outputs: object = None               # an outputs.OutputsArea, or None
    computed: tuple = ()                 # computed.ComputedPlanes, one per pipeline
    documents: object = None             # documents.PlateViews: LoadData CSVs, OME companion
    folders: dict = field(default_factory=dict)     # key -> the set's folder, made once

    def __post_init__(self) -> None:
        self.mtime_ns = mtime_ns(self.plate.metadata_file)

    def shown(self) -> list[ImageSet]:
        """The image sets with a folder of their own (outputs/ is the outputs area's, when
        there is one)."""
        own = self.outputs is not None
        return [self.plate.image_set(k) for k in self.plate.subdirectories
                if not (own and (k == OUTPUTS_DIR or k.startswith(OUTPUTS_DIR + "/")))]

    def main(self) -> ImageSet | None:
        """The main image set, where it has a folder."""
        main = self.plate.main
        return next((s for s in self.shown() if s.key == main), None)

    def taken(self, name: str) -> bool:
        """True if a subdirectory is shown under ``name`` already."""
        return any(display_name(k) == name for k in self.plate.subdirectories)


def mtime_ns(path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return time.time_ns()


def coordinate_xattrs(name: str, source: str) -> dict[bytes, bytes]:
    """``user.vfsmount.{well,site,channel,z,t,source}`` of a flat name."""
    out: dict[bytes, bytes] = {}
    p = try_parse_virtual_name(name)
    if p is not None:
        for key, value in (("well", p.well), ("site", p.site), ("channel", p.channel),
                           ("z", p.z), ("t", p.t)):
            out[f"{XATTR_PREFIX}{key}".encode()] = str(value).encode()
    out[f"{XATTR_PREFIX}source".encode()] = source.encode()
    return out


def source_xattrs(name: str, source_of) -> dict[bytes, bytes]:
    """coordinate_xattrs with ``source_of(name)``; a refused or missing source still lists
    its coordinates."""
    try:
        source = source_of(name)
    except Exception as e:
        source = f"unavailable: {e}"
    return coordinate_xattrs(name, source)
