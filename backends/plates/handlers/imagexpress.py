"""ImageXpress / MetaXpress plates.

Layouts: flat folders, and ``TimePoint_N/`` and ``ZStep_M/`` folders nested in
either order. Names: ``[Plate_]A01[_s1][_w1][_thumb][GUID].tif`` -- the plate
prefix is optional, the site and the channel may be missing (single-site or
single-channel plates), a GUID may be glued to the channel, and ``_thumb``
files are thumbnails, never images of the plate.

Projections: when a folder holds ``ZStep_N/`` subfolders, the images beside
them are the instrument's maximum projections. They go into their own image
set, ``projection``, with z = 1, so they can never collide with z-plane 1 of
the ``workspace`` set.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from ...errors import MetadataError, PlateFormatError
from ...naming import ParsedName, normalize_well
from ...physics import ChannelInfo, PlatePhysics, median_step, to_micrometers
from ...layout import is_tiff_name
from .base import (SKIP_DIRS, ScannedSet, MicroscopeHandler, PlateScan,
                   scandir_sorted)

log = logging.getLogger(__name__)

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
NAME = re.compile(
    r"^(?:(?P<plate>.*?)_)??(?P<well>[A-Za-z]{1,2}\d{1,3})"
    r"(?:_s(?P<site>\d+))?(?:_w(?P<channel>\d+))?(?P<thumb>_thumb)?(?:" + _GUID + r")?"
    r"(?:_z(?P<z>\d+))?(?:_t(?P<t>\d+))?(?P<ext>\.tiff?)$", re.IGNORECASE)
TIMEPOINT_DIR = re.compile(r"^TimePoint_(\d+)$", re.IGNORECASE)
ZSTEP_DIR = re.compile(r"^ZStep_(\d+)$", re.IGNORECASE)
# Wells of plates up to 1536 wells, A01..AF48: a letter-digit token outside that range (a filter's
# CH01 in a Yokogawa shading file ..._M01_CH01.tif) is not a well, so the name does not parse.
_PLATE_WELL = re.compile(r"^(?:A[A-F]|[A-Z])0*(?:[1-9]|[1-3]\d|4[0-8])$", re.IGNORECASE)
_WELL_TOKEN = re.compile(r"(?:^|_)[A-Za-z]{1,2}\d{1,3}_[sw]\d+", re.IGNORECASE)
_HTD_LINE = re.compile(r'^"([^"]+)"\s*(?:,\s*(.*))?$')


def parse_name(name: str, z: int | None = None, t: int | None = None
               ) -> tuple[ParsedName, bool] | None:
    """(coordinates, is_thumbnail) or None if the name is not an ImageXpress image name.

    ``z``/``t`` from ZStep_/TimePoint_ folders take precedence over the name's own.
    """
    m = NAME.match(name)
    if not m or not _PLATE_WELL.match(m["well"]):
        return None
    if m["plate"] and _WELL_TOKEN.search(m["plate"]):
        return None   # the "plate prefix" holds the real well and site: the match is spurious
    site, channel = m["site"], m["channel"]
    parsed = ParsedName(
        normalize_well(m["well"]), int(site) if site else 1, int(channel) if channel else 1,
        z if z is not None else int(m["z"] or 1), t if t is not None else int(m["t"] or 1),
        m["ext"].lower())
    return parsed, m["thumb"] is not None


def find_htd(plate: Path) -> Path | None:
    with os.scandir(plate) as it:
        for e in it:
            if e.is_file() and e.name.lower().endswith(".htd"):
                return Path(e.path)
    return None


def parse_htd(path: Path) -> dict[str, list[str]]:
    """The HTD's ``"Key", value, ...`` lines as a dict; refuses malformed lines."""
    try:
        text = path.read_text(errors="strict")
    except (OSError, UnicodeDecodeError) as e:
        raise MetadataError("cannot read HTD file", path=path, cause=e) from e
    out: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _HTD_LINE.match(line)
        if not m:
            raise MetadataError(f"malformed HTD line {lineno}: {line[:80]!r}", path=path)
        values = [v.strip().strip('"') for v in (m[2] or "").split(",")] if m[2] else []
        out[m[1]] = values
    if "HTSInfoFile" not in out and not any(k.lower().startswith(("xwells", "xsites")) for k in out):
        raise MetadataError("not an HTD file: no HTSInfoFile/XWells/XSites entry", path=path)
    return out


class ImageXpressHandler(MicroscopeHandler):
    name = "imagexpress"
    parser_name = "ImageXpressFilenameParser"

    @classmethod
    def detect(cls, plate: Path) -> bool:
        if find_htd(plate):
            return True
        dirs, files = scandir_sorted(str(plate))
        if any(TIMEPOINT_DIR.match(d.name) or ZSTEP_DIR.match(d.name) for d in dirs):
            return True
        return any(is_tiff_name(f.name) and parse_name(f.name) is not None for f in files)

    def scan(self, plate: Path) -> PlateScan:
        plate = Path(plate)
        workspace = ScannedSet("workspace", "virtual_workspace")
        projection = ScannedSet("projection", "virtual_workspace")
        scan = PlateScan(self, [workspace, projection])
        htd = find_htd(plate)
        if htd is not None:
            info = parse_htd(htd)
            self._apply_htd(scan, info, htd)

        root = str(plate)
        cut = len(root) + 1
        # Iterative walk: (directory, t, z); cheap enough for 100k files in well under 1 s.
        stack: list[tuple[str, int | None, int | None]] = [(root, None, None)]
        while stack:
            path, t, z = stack.pop()
            try:
                dirs, files = scandir_sorted(path)
            except OSError as e:
                raise PlateFormatError("cannot read plate directory", path=path, cause=e) from e
            has_zsteps = False
            for d in dirs:
                if (m := TIMEPOINT_DIR.match(d.name)):
                    stack.append((d.path, int(m[1]), z))
                elif (m := ZSTEP_DIR.match(d.name)):
                    has_zsteps = True
                    stack.append((d.path, t, int(m[1])))
                elif d.name not in SKIP_DIRS and not d.name.endswith(".zarr"):
                    stack.append((d.path, t, z))
            target = projection if (has_zsteps and z is None) else workspace
            for f in files:
                name = f.name
                if not is_tiff_name(name):
                    continue
                if "_thumb" in name:      # thumbnails are never images of the plate
                    scan.ignored += 1
                    continue
                found = parse_name(name, z, t)
                if found is None:
                    scan.unparsed.append(f.path[cut:])
                    continue
                target.add(found[0], f.path[cut:])
        if not workspace.images and not projection.images:
            raise PlateFormatError(
                f"no ImageXpress images found ({len(scan.unparsed)} TIFF names did not parse)",
                path=plate)
        if not workspace.images:  # a projection-only plate: its images are the plate
            projection.key = "workspace"
            scan.image_sets = [projection]
        pixel_size, scan.physics = read_physics(plate, scan.image_sets)
        scan.pixel_size = scan.pixel_size or pixel_size
        for rel in scan.unparsed:
            log.warning("%s: TIFF name does not parse as ImageXpress; not mapped", plate / rel)
        return scan

    @staticmethod
    def _apply_htd(scan: PlateScan, info: dict[str, list[str]], htd: Path) -> None:
        try:
            if "XSites" in info and "YSites" in info:
                scan.grid_dimensions = [int(info["XSites"][0]), int(info["YSites"][0])]
            for key, values in info.items():
                m = re.match(r"^WaveName(\d+)$", key)
                if m and values:
                    scan.channel_names[int(m[1])] = values[0]
        except (ValueError, IndexError) as e:
            raise MetadataError("HTD has a non-integer site grid", path=htd, cause=e) from e


def _plane_info(path: Path) -> dict | None:
    """The MetaSeries ``PlaneInfo`` of one image, parsed by tifffile (only its first IFD is
    read); None when the file has none or cannot be read (its read fails later, by name)."""
    import tifffile
    try:
        with tifffile.TiffFile(path) as tif:
            meta = tif.metaseries_metadata
    except Exception:  # a damaged image must not stop indexing
        log.warning("%s: cannot read its MetaSeries metadata", path)
        return None
    return (meta or {}).get("PlaneInfo")


def _first_series(images: dict[str, ParsedName], along: str) -> list[str]:
    """The names of the first field/channel whose planes vary ``along`` "z" or "t", in order."""
    series: dict[tuple, dict[int, str]] = {}
    for name, p in images.items():
        key = (p.well, p.site, p.channel, p.t if along == "z" else p.z)
        series.setdefault(key, {})[getattr(p, along)] = name
    for _key, planes in sorted(series.items()):
        if len(planes) > 1:
            return [planes[i] for i in sorted(planes)]
    return []


def read_physics(plate: Path, image_sets: list[ScannedSet]) -> tuple[float | None, PlatePhysics]:
    """(pixel size in um, the rest of the physics) from the MetaSeries tags of a few images:
    one per channel, one z series (z spacing) and one time series (interval) of the first
    image set (the z-stacks when there are projections beside them)."""
    physics = PlatePhysics()
    pixel_size = None
    channels: dict[int, str] = {}
    for image_set in image_sets:
        for name, p in image_set.images.items():
            channels.setdefault(p.channel, image_set.sources[name])
    for channel, source in sorted(channels.items()):
        info = _plane_info(plate / source) or {}
        if pixel_size is None and info.get("spatial-calibration-state", True) \
                and "spatial-calibration-x" in info:
            pixel_size = to_micrometers(float(info["spatial-calibration-x"]),
                                        info.get("spatial-calibration-units"))
        window = [info["scale-min"], info["scale-max"]] if "scale-min" in info else None
        physics.channels[channel] = ChannelInfo(
            name=info.get("_IllumSetting_") or info.get("image-name"),
            emission_wavelength=info.get("wavelength"), window=window)
    physics.z_spacing = _series_step(plate, image_sets[0], "z", "z-position")
    physics.time_interval = _series_step(plate, image_sets[0], "t", "acquisition-time-local")
    if physics.z_spacing is None:
        physics.unknown["z_spacing"] = "the MetaSeries tags record no z-position steps"
    return pixel_size, physics


def _series_step(plate: Path, image_set: ScannedSet, along: str, tag: str) -> float | None:
    values = []
    for name in _first_series(image_set.images, along):
        value = (_plane_info(plate / image_set.sources[name]) or {}).get(tag)
        if value is None:
            return None
        values.append(value.timestamp() if hasattr(value, "timestamp") else float(value))
    return median_step(values)
