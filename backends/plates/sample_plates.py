"""Synthetic plates in real vendor layouts, for the demo, the tests and the benchmarks.

Images are deterministic: bright round "cells" on a noisy background, so a
segmentation pipeline has something to find, and every plane differs.
"""
from __future__ import annotations

import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..naming import ParsedName, row_index, split_well


@dataclass(frozen=True)
class PlateSpec:
    wells: tuple[str, ...] = ("A01", "A02", "B01")
    sites: int = 2
    channels: int = 2
    z: int = 3
    t: int = 1
    shape: tuple[int, int] = (128, 160)
    dtype: str = "uint16"

    def coordinates(self):
        for well in self.wells:
            for site in range(1, self.sites + 1):
                for c in range(1, self.channels + 1):
                    for z in range(1, self.z + 1):
                        for t in range(1, self.t + 1):
                            yield ParsedName(well, site, c, z, t)

    @property
    def n_images(self) -> int:
        return len(self.wells) * self.sites * self.channels * self.z * self.t


def synthetic_image(p: ParsedName, shape=(128, 160), dtype="uint16") -> np.ndarray:
    seed = zlib.crc32(f"{p.well}/{p.site}/{p.channel}/{p.z}/{p.t}".encode())
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    h, w = shape
    img = rng.normal(100.0, 10.0, size=shape)
    for _ in range(max(3, (h * w) // 2500)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(3, 8)
        # draw each cell only in its own window: cost grows with the cell count, not the image area
        y0, y1 = max(0, int(cy - 4 * r)), min(h, int(cy + 4 * r) + 1)
        x0, x1 = max(0, int(cx - 4 * r)), min(w, int(cx + 4 * r) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += 1500.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) \
            * (1 + 0.2 * p.channel)
    if dtype.kind == "f":
        return (img / 4096.0).astype(dtype)
    info = np.iinfo(dtype)
    scale = 1.0 if info.max >= 4096 else info.max / 4096.0
    return np.clip(img * scale, info.min, info.max).astype(dtype)


def _imwrite(path: Path, data: np.ndarray, description: str | None = None) -> None:
    import tifffile
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, photometric="minisblack", description=description,
                     software="MetaSeries" if description else None, metadata=None)


def metaseries_description(p: ParsedName, pixel_size: float, z_step: float) -> str:
    """A MetaSeries description as MetaXpress writes it (what tifffile's parser reads)."""
    props = [("spatial-calibration-state", "bool", "on"),
             ("spatial-calibration-x", "float", pixel_size),
             ("spatial-calibration-y", "float", pixel_size),
             ("spatial-calibration-units", "string", "um"),
             ("z-position", "float", round(1000.0 + (p.z - 1) * z_step, 3)),
             ("acquisition-time-local", "time", f"20240101 10:{p.t:02d}:00.000"),
             ("_IllumSetting_", "string", f"Wave{p.channel}"),
             ("wavelength", "float", 450 + 50 * p.channel),
             ("scale-min", "int", 10), ("scale-max", "int", 3000)]
    body = "".join(f'<prop id="{i}" type="{t}" value="{v}"/>' for i, t, v in props)
    return f"<MetaData><PlaneInfo>{body}</PlaneInfo></MetaData>"


def make_imagexpress_plate(root: str | os.PathLike, spec: PlateSpec = PlateSpec(), *,
                           plate_name: str = "SynthPlate", nested: bool = True,
                           thumbnails: bool = True, projections: bool = True,
                           guid: bool = True, pixel_size: float = 0.65, z_step: float = 2.5,
                           write_pixels: bool = True) -> Path:
    """An ImageXpress export: TimePoint_N/ZStep_M/ folders (when nested), GUID suffixes,
    _thumb files and top-level maximum projections beside the ZStep folders."""
    if not nested and (spec.z > 1 or spec.t > 1):
        raise ValueError("ImageXpress keeps z and t in ZStep_/TimePoint_ folders: use nested=True")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stacks: dict[tuple, list[np.ndarray]] = {}
    for p in spec.coordinates():
        folder = root
        if nested and spec.t > 1:
            folder = folder / f"TimePoint_{p.t}"
        if nested and spec.z > 1:
            folder = folder / f"ZStep_{p.z}"
        suffix = uuid.uuid4().hex.upper() if guid else ""
        if guid:
            suffix = f"{suffix[:8]}-{suffix[8:12]}-{suffix[12:16]}-{suffix[16:20]}-{suffix[20:]}"
        stem = f"{plate_name}_{p.well}_s{p.site}_w{p.channel}"
        img = synthetic_image(p, spec.shape, spec.dtype) if write_pixels else np.zeros(
            spec.shape, spec.dtype)
        desc = metaseries_description(p, pixel_size, z_step)
        _imwrite(folder / f"{stem}{suffix}.tif", img, desc)
        if thumbnails:
            _imwrite(folder / f"{stem}_thumb{suffix}.tif", img[::4, ::4], desc)
        if projections and nested and spec.z > 1:
            stacks.setdefault((p.well, p.site, p.channel, p.t), []).append(img)
    for (well, site, channel, t), planes in stacks.items():
        folder = root / f"TimePoint_{t}" if spec.t > 1 else root
        _imwrite(folder / f"{plate_name}_{well}_s{site}_w{channel}.tif", np.max(planes, axis=0),
                 metaseries_description(ParsedName(well, site, channel, 1, t), pixel_size, z_step))
    return root


def make_opera_plate(root: str | os.PathLike, spec: PlateSpec = PlateSpec(), *,
                     pixel_size_m: float = 5.98e-07, z_step_m: float = 2e-06,
                     images_dir: bool = True) -> Path:
    """A Harmony export: Images/ with Index.idx.xml and rXXcXXfXXpXX-chXskXfk1fl1.tiff files."""
    root = Path(root)
    images = root / "Images" if images_dir else root
    images.mkdir(parents=True, exist_ok=True)
    entries = []
    for p in spec.coordinates():
        row_letter, col = split_well(p.well)
        row = row_index(row_letter)
        name = f"r{row:02d}c{col:02d}f{p.site:02d}p{p.z:02d}-ch{p.channel}sk{p.t}fk1fl1.tiff"
        _imwrite(images / name, synthetic_image(p, spec.shape, spec.dtype))
        entries.append(
            f"<Image Version=\"1\"><id>{row:02d}{col:02d}K{p.t}F{p.site}P{p.z}R{p.channel}</id>"
            f"<URL>{name}</URL><Row>{row}</Row><Col>{col}</Col><FieldID>{p.site}</FieldID>"
            f"<PlaneID>{p.z}</PlaneID><TimepointID>{p.t - 1}</TimepointID>"
            f"<ChannelID>{p.channel}</ChannelID><ChannelName>Channel {p.channel}</ChannelName>"
            f"<ImageResolutionX Unit=\"m\">{pixel_size_m}</ImageResolutionX>"
            f"<PositionX Unit=\"m\">{(p.site - 1) % 2 * 1e-4}</PositionX>"
            f"<PositionY Unit=\"m\">{(p.site - 1) // 2 * 1e-4}</PositionY>"
            f"<PositionZ Unit=\"m\">{(p.z - 1) * z_step_m:.3e}</PositionZ>"
            f"<MainEmissionWavelength Unit=\"nm\">{400 + 60 * p.channel}</MainEmissionWavelength>"
            "</Image>")
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n<EvaluationInputData Version="1" '
           'xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5"><Images>'
           + "".join(entries) + "</Images></EvaluationInputData>")
    (images / "Index.idx.xml").write_text(xml)
    return root
