"""napari layer data for a field and for a whole plate, read through the plate's image sets.

A field is one image with ``channel_axis``: one layer per channel, named after the plate's
channels, coloured and windowed by the NGFF ``omero`` block, else the plate's channel facts,
else (contrast) the pixels; ``scale`` is (t, z, y, x) from the plate's physics and ``units``
say which of them are physical (an unknown one stays in pixels: nothing is invented).

A plate is every field of every well in one mosaic per channel: each field is read small (a
pyramid level, or a strided read of a file; see levels.py) into its slot, its well's cell on
the plate grid and its site's place in the well, so the whole plate is a few layers, not
thousands (napari adds layers in quadratic time: 768 small layers take minutes). The world
position of every slot is in the layers' metadata (``slots``): a field opened at full
resolution (``field_layers(..., translate=slot)``) lands on its thumbnail. Well names are a
Points layer with text.
"""
from __future__ import annotations

import math
import uuid
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.storage.cache import ArrayCache

from .levels import Reduced

MOSAIC_MAX = 8192          # mosaic pixels along the plate's long side (one GL texture)
GAP = 0.25                 # gap between wells, as a fraction of a field's tile

BLOCKS = ArrayCache(256 << 20)   # mosaic blocks (the plate, one channel at one t, z)
_fields: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_reduced: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_opened: dict[tuple[str, str], Any] = {}       # (plate location, key) -> image set shown


def fields_of(image_set) -> dict[tuple[str, int], Any]:
    """(well, site) -> Field, computed once per image set."""
    if image_set not in _fields:
        _fields[image_set] = {(f.well, f.site): f for f in image_set.fields()}
    return _fields[image_set]


def reduced(image_set) -> Reduced:
    if image_set not in _reduced:
        _reduced[image_set] = Reduced(image_set)
    return _reduced[image_set]


def opened(location: str, key: str):
    """An image set a plate layer shows (for the field widget)."""
    return _opened[(location, key)]


# -- channels ---------------------------------------------------------------------------------

def channel_display(image_set, channels) -> list[dict]:
    """Per channel: name, and colormap / contrast limits where the plate says them."""
    physics = image_set.physics
    omero = (reduced(image_set).omero.get("channels") or []) if image_set.serves_planes else []
    out = []
    for i, c in enumerate(channels):
        ngff = omero[c - 1] if 0 < c <= len(omero) and isinstance(omero[c - 1], dict) else {}
        info = physics.channel_info.get(c, {})
        window = ngff.get("window") or {}
        limits = [window["start"], window["end"]] if {"start", "end"} <= set(window) \
            else info.get("window")
        color = ngff.get("color") or info.get("color")
        out.append({"name": physics.label(c), "color": color,
                    "contrast_limits": [float(v) for v in limits] if limits else None})
    return out


def _colormap(color: str | None, index: int, count: int):
    from napari.utils.colormaps import Colormap
    if not color:
        return "gray" if count == 1 else ("magenta", "green", "cyan", "yellow", "red",
                                          "blue")[index % 6]
    rgb = [int(color.lstrip("#")[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    return Colormap([[0, 0, 0, 1], [*rgb, 1]], name=f"#{color.lstrip('#').upper()}")


def _limits(given: list[float] | None, sample) -> list[float]:
    """The plate's window, else one measured on a sample of the pixels."""
    if given and given[1] > given[0]:
        return given
    from backends.ngff.documents import display_window
    return display_window(np.asarray(sample()))


def physical(image_set, factor: int = 1) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """(scale, units) of the (t, z, y, x) axes: physical where the plate knows it."""
    p = image_set.physics
    axes = [(p.time_interval, "second"), (p.z_spacing, "micrometer"),
            (p.pixel_size, "micrometer"), (p.pixel_size, "micrometer")]
    scale = tuple(float(v) if v else 1.0 for v, _ in axes)
    units = tuple(u if v else "pixel" for v, u in axes)
    return scale[:2] + (scale[2] * factor, scale[3] * factor), units


def _channel_kwargs(image_set, channels, samples, names: list[str]) -> dict:
    shown = channel_display(image_set, channels)
    return {"channel_axis": 0, "name": names,
            "colormap": [_colormap(d["color"], i, len(shown)) for i, d in enumerate(shown)],
            "contrast_limits": [_limits(d["contrast_limits"], s) for d, s in zip(shown, samples)]}


# -- a field ------------------------------------------------------------------------------------

def field_layers(image_set, well: str, site: int, *, t: int | None = None,
                 translate: tuple[float, float] = (0.0, 0.0), prefix: str = "") -> list[tuple]:
    """One field as an image with channel_axis: lazy (dask) planes of the image set."""
    import dask
    import dask.array as da
    try:
        f = fields_of(image_set)[(well, site)]
    except KeyError:
        raise ValueError(f"{image_set.plate.location}: no field {well} site {site} in "
                         f"{image_set.key}") from None
    ts = (t,) if t is not None else f.ts
    first = image_set.plane(next(iter(f.planes.values())))
    shape, dtype = tuple(first.shape), np.dtype(first.dtype)
    read = dask.delayed(image_set.read, pure=True)

    def plane(c, z, tt):
        name = f.name(c, z, tt)
        return da.from_delayed(read(name), shape, dtype) if name else da.zeros(shape, dtype)
    data = da.stack([da.stack([da.stack([plane(c, z, tt) for z in f.zs]) for tt in ts])
                     for c in f.channels])
    middle = f.zs[len(f.zs) // 2]
    samples = [lambda c=c: image_set.read(f.name(c, middle, ts[0]) or
                                          next(iter(f.planes.values()))) for c in f.channels]
    scale, units = physical(image_set)
    names = [prefix + d["name"] for d in channel_display(image_set, f.channels)]
    kwargs = {**_channel_kwargs(image_set, f.channels, samples, names), "scale": scale,
              "units": units, "translate": (0.0, 0.0, *translate),
              "metadata": {"vfsmount": {"kind": "field", "plate": image_set.plate.location,
                                        "image_set": image_set.key, "well": well, "site": site,
                                        "channels": list(f.channels), "zs": list(f.zs),
                                        "ts": list(ts), "planes": _plane_names(f, ts)}}}
    return [(data, kwargs, "image")]


def _plane_names(f, ts) -> dict[str, str]:
    return {f"c{c}_z{z}_t{t}": n for (c, z, t), n in f.planes.items() if t in ts}


# -- a plate ------------------------------------------------------------------------------------

@dataclass
class Grid:
    """Where each field of a plate goes in the mosaic (mosaic pixels)."""

    rows: int                  # plate rows shown (A .. the last row with a well)
    cols: int
    fr: int                    # fields per well: rows, columns
    fc: int
    sites: tuple[int, ...]
    tile: tuple[int, int]      # a field's size in the mosaic
    factor: int                # mosaic pixel = factor x factor plate pixels
    gap: int

    @property
    def cell(self) -> tuple[int, int]:
        return self.fr * self.tile[0] + self.gap, self.fc * self.tile[1] + self.gap

    def slot(self, well: str, site: int) -> tuple[int, int]:
        from backends.naming import row_index, split_well
        row, col = split_well(well)
        i = self.sites.index(site)
        return ((row_index(row) - 1) * self.cell[0] + (i // self.fc) * self.tile[0],
                (col - 1) * self.cell[1] + (i % self.fc) * self.tile[1])


def plate_grid(image_set, fields, shape: tuple[int, int], max_side: int = MOSAIC_MAX) -> Grid:
    from backends.naming import row_index, split_well
    sites = tuple(sorted({s for _w, s in fields}))
    grid = image_set.entry.get("grid_dimensions")          # [columns, rows] of the instrument
    if grid and len(sites) <= grid[0] * grid[1] and max(sites) <= grid[0] * grid[1]:
        fc, fr = int(grid[0]), int(grid[1])
        sites = tuple(range(1, fc * fr + 1))
    else:
        fc = math.ceil(math.sqrt(len(sites)))
        fr = math.ceil(len(sites) / fc)
    wells = {w for w, _s in fields}
    rows = max(row_index(split_well(w)[0]) for w in wells)
    cols = max(split_well(w)[1] for w in wells)
    side = max(rows * fr * shape[0], cols * fc * shape[1]) * (1 + GAP / max(fr, fc))
    factor = 1 << max(0, math.ceil(math.log2(side / max_side)))
    tile = (math.ceil(shape[0] / factor), math.ceil(shape[1] / factor))
    return Grid(rows, cols, fr, fc, sites, tile, factor, max(1, int(GAP * min(tile))))


def _mosaic(image_set, grid: Grid, slots: dict, channel: int, zs, ts, dtype):
    """(t, z, y, x) dask array of one channel: one block per (t, z), the whole plate's mosaic,
    read when shown. One block and one batch of reads for all fields: a block per well cost
    768 dask tasks and 3,456 separate reads for a 384-well x 9-field plate."""
    import dask.array as da
    small = reduced(image_set)
    token = (image_set.plate.location, image_set.key, grid.factor, channel)
    shape = (grid.rows * grid.cell[0], grid.cols * grid.cell[1])

    def block(block_id=None):       # napari slices a new layer two or three times: kept
        return BLOCKS.get_or_load(token + tuple(block_id[:2]), lambda: read_block(*block_id[:2]))

    def read_block(ti, zi):
        out = np.zeros((1, 1) + shape, dtype)
        shown = [(slot, f.name(channel, zs[zi], ts[ti])) for f, slot in slots.values()]
        shown = [(slot, name) for slot, name in shown if name is not None]
        for ((y, x), _n), tile in zip(shown, small.read_many([n for _s, n in shown], grid.factor)):
            tile = tile[:grid.tile[0], :grid.tile[1]]
            out[0, 0, y:y + tile.shape[0], x:x + tile.shape[1]] = tile
        return out
    chunks = ((1,) * len(ts), (1,) * len(zs), (shape[0],), (shape[1],))
    # named, not tokenized: dask would pickle ``block`` with every field of the plate (0.5 s)
    name = f"vfsmount-plate-c{channel}-{uuid.uuid4().hex}"
    return da.map_blocks(block, chunks=chunks, dtype=dtype, meta=np.empty((0,) * 4, dtype),
                         name=name)


def plate_layers(image_set, max_side: int = MOSAIC_MAX) -> list[tuple]:
    """Every field of every well, small, in its slot; one layer per channel, and well names."""
    import dask.array as da
    fields = fields_of(image_set)
    if not fields:
        raise ValueError(f"{image_set.plate.location}: {image_set.key} has no plate images")
    some = next(iter(fields.values()))
    first = image_set.plane(next(iter(some.planes.values())))
    grid = plate_grid(image_set, fields, tuple(first.shape), max_side)
    by_well: dict[str, list] = {}
    for f in fields.values():
        by_well.setdefault(f.well, []).append(f)
    dtype = np.dtype(first.dtype)
    slots = {key: (f, grid.slot(*key)) for key, f in fields.items()}
    data = da.stack([_mosaic(image_set, grid, slots, c, some.zs, some.ts, dtype)
                     for c in some.channels])
    small = reduced(image_set)
    samples = [lambda c=c: small.read(some.name(c, some.zs[len(some.zs) // 2], some.ts[0]) or
                                      next(iter(some.planes.values())), grid.factor)
               for c in some.channels]
    scale, units = physical(image_set, grid.factor)
    _opened[(image_set.plate.location, image_set.key)] = image_set
    meta = {"kind": "plate", "plate": image_set.plate.location, "image_set": image_set.key,
            "factor": grid.factor, "channels": list(some.channels),
            "slots": {f"{w}_s{s:03d}": [v * k for v, k in zip(slot, scale[2:])]
                      for (w, s), (_f, slot) in slots.items()}}
    names = [f"{d['name']} [plate]" for d in channel_display(image_set, some.channels)]
    kwargs = {**_channel_kwargs(image_set, some.channels, samples, names), "scale": scale,
              "units": units, "metadata": {"vfsmount": meta}}
    return [(data, kwargs, "image"), _well_labels(grid, sorted(by_well), scale[2:], units[2:])]


def _well_labels(grid: Grid, wells: list[str], scale, units) -> tuple:
    """A Points layer: each well's name at the top left of its cell (2D: shown at every t, z)."""
    origin = [grid.slot(w, grid.sites[0]) for w in wells]
    points = np.array([[y * scale[0], x * scale[1]] for y, x in origin], float).reshape(-1, 2)
    size = max(grid.tile) * scale[1] * 0.05
    return (points, {"name": "wells", "features": {"well": wells}, "size": size, "units": units,
                     "face_color": "transparent", "border_width": 0,
                     "text": {"string": "{well}", "color": "white", "anchor": "upper_left",
                              "size": 10}}, "points")
