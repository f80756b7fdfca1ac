"""Opera Phenix / Operetta (Harmony) exports.

``Index.idx.xml`` (or ``Index.xml``/``Index.ref.xml``) beside the TIFFs or in
``Images/``; names ``r01c01f01p01-ch1sk1fk1fl1.tiff``: row, column, field
(site), plane (z), channel, and ``sk`` (the time point). Grid, pixel size and
channel names come from the XML where present.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

from ...errors import MetadataError, PlateFormatError
from ...naming import ParsedName, row_letters
from ...physics import ChannelInfo, PlatePhysics, median_step, to_micrometers
from ...layout import is_tiff_name
from .base import ScannedSet, MicroscopeHandler, PlateScan, scandir_sorted

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


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise MetadataError("malformed Harmony index XML", path=path, cause=e) from e


def _images(root: ET.Element) -> list[dict[str, ET.Element]]:
    """Every ``<Image>`` record of a Harmony index as {child tag: element}."""
    return [{_local(c.tag): c for c in image} for image in root.iter()
            if _local(image.tag) == "Image" and len(image)]


def _plate_facts(root: ET.Element) -> dict:
    """The first ``<Plate>``'s barcode (``PlateID``, what pe2loaddata writes as Metadata_Plate)
    and its format (``PlateRows``, ``PlateColumns``), where the index records them."""
    plate = next((e for e in root.iter() if _local(e.tag) == "Plate" and len(e)), None)
    if plate is None:
        return {}
    text = {_local(c.tag): (c.text or "").strip() for c in plate}
    facts: dict = {}
    if text.get("PlateID"):
        facts["plate_id"] = text["PlateID"]
    for tag, key in (("PlateRows", "plate_rows"), ("PlateColumns", "plate_columns")):
        if text.get(tag, "").isdigit() and int(text[tag]) > 0:
            facts[key] = int(text[tag])
    return facts


def _um(element: ET.Element) -> float | None:
    return to_micrometers(float(element.text), element.get("Unit", "m"))


def _series_step(records: list[dict], tag: str, along: str, convert) -> float | None:
    """Median step of ``tag`` along PlaneID or TimepointID within the first field and channel
    that has more than one position."""
    series: dict[tuple, dict[int, float]] = {}
    other = "TimepointID" if along == "PlaneID" else "PlaneID"
    for f in records:
        if tag in f and along in f:
            key = tuple(f[k].text for k in ("Row", "Col", "FieldID", "ChannelID", other) if k in f)
            series.setdefault(key, {})[int(f[along].text)] = convert(f[tag])
    for _key, values in sorted(series.items()):
        if len(values) > 1:
            return median_step([values[i] for i in sorted(values)])
    return None


def _channel(f: dict[str, ET.Element]) -> ChannelInfo:
    def nm(tag: str) -> float | None:
        return float(f[tag].text) if tag in f else None
    return ChannelInfo(name=f["ChannelName"].text if "ChannelName" in f else None,
                       emission_wavelength=nm("MainEmissionWavelength"),
                       excitation_wavelength=nm("MainExcitationWavelength"))


def parse_index(path: Path) -> dict:
    """Pixel size (um), channels, the field grid, and z spacing / time interval from the
    per-plane positions (PositionZ) and times (AbsTime) of a Harmony index file."""
    root = _parse(path)
    records = _images(root)
    out: dict = {"channels": {}, "pixel_size": None, "grid": None, "plate": _plate_facts(root)}
    physics = PlatePhysics()
    positions: set[tuple[float, float]] = set()
    for f in records:
        try:
            if "ChannelID" in f:
                physics.channels.setdefault(int(f["ChannelID"].text), _channel(f))
            if "ImageResolutionX" in f and out["pixel_size"] is None:
                out["pixel_size"] = round(_um(f["ImageResolutionX"]), 6)
            if "PositionX" in f and "PositionY" in f:
                positions.add((float(f["PositionX"].text), float(f["PositionY"].text)))
        except (TypeError, ValueError) as e:
            raise MetadataError(f"bad value in <Image> {f['id'].text if 'id' in f else ''}",
                                path=path, cause=e) from e
    out["channels"] = {c: i.name for c, i in physics.channels.items()}
    try:
        physics.z_spacing = _series_step(records, "PositionZ", "PlaneID", _um)
        physics.time_interval = _series_step(
            records, "AbsTime", "TimepointID",
            lambda e: datetime.fromisoformat(e.text.strip()).timestamp())
    except (TypeError, ValueError) as e:
        raise MetadataError("bad PositionZ or AbsTime in <Image>", path=path, cause=e) from e
    if physics.z_spacing is None:
        physics.unknown["z_spacing"] = "the Harmony index records no PositionZ steps"
    out["physics"] = physics
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
        images = ScannedSet("workspace", "virtual_workspace")
        scan = PlateScan(self, [images], grid_dimensions=info["grid"], pixel_size=info["pixel_size"],
                         channel_names=info["channels"], physics=info["physics"],
                         plate_facts=info["plate"])
        prefix = "" if images_dir == plate else images_dir.relative_to(plate).as_posix() + "/"
        try:
            _dirs, files = scandir_sorted(str(images_dir))
        except OSError as e:
            raise PlateFormatError("cannot read image directory", path=images_dir, cause=e) from e
        for f in files:
            if not is_tiff_name(f.name):
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
