"""Opera Phenix / Operetta (Harmony) exports.

``Index.idx.xml`` (or ``Index.xml``/``Index.ref.xml``) beside the TIFFs or in
``Images/``; names ``r01c01f01p01-ch1sk1fk1fl1.tiff``: row, column, field
(site), plane (z), channel, and ``sk`` (the time point). Grid, pixel size and
channel names come from the XML where present.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ..errors import MetadataError, PlateFormatError
from ..naming import ParsedName, row_letters
from .base import TIFF_SUFFIXES, ImageSet, MicroscopeHandler, PlateScan, scandir_sorted

NAME = re.compile(r"^r(?P<row>\d+)c(?P<col>\d+)f(?P<field>\d+)p(?P<plane>\d+)-ch(?P<channel>\d+)"
                  r"sk(?P<sk>\d+)fk\d+fl\d+(?P<ext>\.tiff?)$", re.IGNORECASE)
INDEX_NAMES = ("Index.idx.xml", "Index.xml", "Index.ref.xml")


def parse_name(name: str) -> ParsedName | None:
    m = NAME.match(name)
    if not m:
        return None
    return ParsedName(well=f"{row_letters(int(m['row']))}{int(m['col']):02d}", site=int(m["field"]),
                      channel=int(m["channel"]), z=int(m["plane"]), t=int(m["sk"]),
                      extension=m["ext"].lower())


def find_index(plate: Path) -> tuple[Path, Path] | None:
    """(index XML, image directory) or None."""
    for images in (plate / "Images", plate):
        for name in INDEX_NAMES:
            p = images / name
            if p.is_file():
                return p, images
        if images.is_dir():  # the name's case varies between Harmony versions
            for p in images.iterdir():
                if p.name.lower() in {n.lower() for n in INDEX_NAMES}:
                    return p, images
    return None


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_index(path: Path) -> dict:
    """Pixel size (um), channel names and the field grid from a Harmony index file."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise MetadataError("malformed Harmony index XML", path=path, cause=e) from e
    out: dict = {"channels": {}, "pixel_size": None, "grid": None}
    positions: set[tuple[float, float]] = set()
    for image in root.iter():
        if _local(image.tag) != "Image" or len(image) == 0:
            continue
        fields = {_local(c.tag): c for c in image}
        try:
            if "ChannelID" in fields and "ChannelName" in fields:
                out["channels"][int(fields["ChannelID"].text)] = fields["ChannelName"].text
            res = fields.get("ImageResolutionX")
            if res is not None and out["pixel_size"] is None:
                unit = res.get("Unit", "m")
                scale = {"m": 1e6, "mm": 1e3, "um": 1.0, "µm": 1.0}.get(unit, 1e6)
                out["pixel_size"] = round(float(res.text) * scale, 6)
            if "PositionX" in fields and "PositionY" in fields:
                positions.add((float(fields["PositionX"].text), float(fields["PositionY"].text)))
        except (TypeError, ValueError) as e:
            raise MetadataError(f"bad value in <Image> {fields.get('id').text if 'id' in fields else ''}",
                                path=path, cause=e) from e
    if positions:
        xs = {round(x, 9) for x, _ in positions}
        ys = {round(y, 9) for _, y in positions}
        out["grid"] = [len(xs), len(ys)]
    return out


class OperaPhenixHandler(MicroscopeHandler):
    name = "opera_phenix"
    parser_name = "OperaPhenixFilenameParser"

    @classmethod
    def detect(cls, plate: Path) -> bool:
        return find_index(plate) is not None

    def scan(self, plate: Path) -> PlateScan:
        plate = Path(plate)
        found = find_index(plate)
        if found is None:
            raise PlateFormatError("no Index.idx.xml / Index.xml found", path=plate)
        index, images_dir = found
        info = parse_index(index)
        images = ImageSet("workspace", "virtual_workspace")
        scan = PlateScan(self, [images], grid_dimensions=info["grid"], pixel_size=info["pixel_size"],
                         channel_names=info["channels"])
        prefix = "" if images_dir == plate else images_dir.relative_to(plate).as_posix() + "/"
        try:
            _dirs, files = scandir_sorted(str(images_dir))
        except OSError as e:
            raise PlateFormatError("cannot read image directory", path=images_dir, cause=e) from e
        for f in files:
            if not f.name.endswith(TIFF_SUFFIXES):
                continue
            parsed = parse_name(f.name)
            if parsed is None:
                scan.unparsed.append(prefix + f.name)
                continue
            images.add(parsed, prefix + f.name)
        if not images.images:
            raise PlateFormatError("no Opera Phenix images (rXXcXXfXXpXX-chXskX...) found",
                                   path=images_dir)
        return scan
