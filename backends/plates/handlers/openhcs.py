"""vfsmount's own normalized format: flat ``A01_s001_w1_z001_t001.tif`` files.

A directory qualifies when every TIFF in its root has a normalized name (or
its metadata says it was written in this format). Images are read straight
from disk; there is no mapping.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import PlateFormatError
from ...naming import try_parse_virtual_name
from ...layout import is_tiff_name
from .base import ScannedSet, MicroscopeHandler, PlateScan, scandir_sorted


class OpenHCSHandler(MicroscopeHandler):
    name = "openhcs"
    parser_name = "OpenHCSFilenameParser"

    @classmethod
    def detect(cls, plate: Path) -> bool:
        _dirs, files = scandir_sorted(str(plate))
        tiffs = [f.name for f in files if is_tiff_name(f.name)]
        return bool(tiffs) and all(try_parse_virtual_name(n) for n in tiffs)

    def scan(self, plate: Path) -> PlateScan:
        images = ScannedSet(".", "disk")
        scan = PlateScan(self, [images])
        _dirs, files = scandir_sorted(str(plate))
        for f in files:
            if not is_tiff_name(f.name):
                continue
            parsed = try_parse_virtual_name(f.name)
            if parsed is None:
                scan.unparsed.append(f.name)
                continue
            images.add(parsed, f.name)
        if not images.images:
            raise PlateFormatError("no normalized image names (A01_s001_w1_z001_t001.tif) found",
                                   path=plate)
        return scan
