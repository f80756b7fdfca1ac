"""OME-NGFF plate, well and image metadata (0.4 and 0.5), written through ome-zarr's writers.

What a store says about its pixels comes from the plate's physics (see backends.physics),
handed over as the ``openhcs_metadata.json`` entry of the image set it was written from:
``pixel_size`` (um), ``z_spacing`` (um), ``time_interval`` (s) and ``channel_info``. An axis
whose spacing the instrument did not record keeps scale 1 *without a unit*: it counts
planes, and claims no micrometres or seconds. Images carry an ``omero`` block (channel
labels, colours, windows) so viewers show the instrument's names and contrast.

Pyramids (:func:`write_pyramid`) are written as bioformats2raw and ome-zarr-py write them:
level k halves level k-1 in y and x; by default until the plane fits 1024 px.
"""
from __future__ import annotations

import re

import numpy as np
from natsort import natsorted

from .config import ZarrConfig

AXIS_NAMES = ("t", "c", "z", "y", "x")
PYRAMID_FIT = 1024               # the default pyramid stops once a plane fits this many px
_IMAGE_ARRAY = re.compile(r"^[^/]+/[^/]+/[^/]+/0$")   # row/col/field/0: a field's level 0


PHYSICS_KEYS = ("pixel_size", "z_spacing", "time_interval", "channel_info")


def physics_of(entry: dict | None) -> dict:
    """The part of an openhcs_metadata.json entry that a store's metadata is made from."""
    return {k: entry[k] for k in PHYSICS_KEYS if (entry or {}).get(k) is not None}


def output_physics(entry: dict | None) -> dict:
    """What results computed from an image set inherit: its scale and channel names (not the
    instrument's display windows: a mask has its own range) and, as ``ngff_version``, the
    NGFF version of its store (0.4 for a plate read from TIFFs)."""
    physics = physics_of(entry)
    if "channel_info" in physics:
        physics["channel_info"] = {c: {k: v for k, v in i.items() if k != "window"}
                                   for c, i in physics["channel_info"].items()}
    physics["ngff_version"] = ((entry or {}).get("zarr_config") or {}).get("ngff_version", "0.4")
    return physics


def ngff_format(config: ZarrConfig):
    from ome_zarr.format import FormatV04, FormatV05
    return FormatV04() if config.ngff_version == "0.4" else FormatV05()


def axes_and_scale(physics: dict | None, names=AXIS_NAMES) -> tuple[list[dict], list[float]]:
    """NGFF axes (with a unit only where the spacing is known) and the level-0 scale."""
    physics = physics or {}
    known = {"t": (physics.get("time_interval"), "second"),
             "z": (physics.get("z_spacing"), "micrometer"),
             "y": (physics.get("pixel_size"), "micrometer"),
             "x": (physics.get("pixel_size"), "micrometer")}
    axes, scale = [], []
    for name in names:
        kind = "time" if name == "t" else "channel" if name == "c" else "space"
        axis = {"name": name, "type": kind}
        spacing, unit = known.get(name, (None, None))
        if spacing:
            axis["unit"] = unit
        axes.append(axis)
        scale.append(float(spacing) if spacing else 1.0)
    return axes, scale


def level_datasets(scale: list[float], levels: int) -> list[dict]:
    """One dataset per pyramid level, each halving y and x of the one before."""
    out = []
    for k in range(levels):
        s = scale[:-2] + [v * 2 ** k for v in scale[-2:]]
        out.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": s}]})
    return out


def omero_block(arr, channel_numbers: list[int], physics: dict | None,
                measured: dict[int, list[float]] | None = None) -> dict:
    """Channel labels, colours and display windows: the instrument's where it recorded them,
    else ``measured[c]`` (a window the writer took from the planes it wrote, c the index),
    else the 0.1-99.9 percentiles of the (lowest-resolution) pixels."""
    info = (physics or {}).get("channel_info") or {}
    dtype = np.dtype(arr.dtype)
    lo, hi = ((np.iinfo(dtype).min, np.iinfo(dtype).max) if dtype.kind in "ui"
              else (None, None))
    channels = []
    for i, number in enumerate(channel_numbers):
        ci = info.get(str(number)) or {}
        window = ci.get("window") or (measured or {}).get(i)
        if not window:
            plane = np.asarray(arr[:, i]) if arr.ndim == 5 else np.asarray(arr)
            window = display_window(plane)
        cmin = float(lo) if lo is not None else float(min(window[0], 0))
        cmax = float(hi) if hi is not None else float(max(window[1], 1))
        # only what differs from the defaults (linear, not inverted): every reader of the
        # plate parses this once per field
        channels.append({"label": ci.get("name") or f"Channel {number}", "active": True,
                         "color": ci.get("color") or "FFFFFF",
                         "window": {"min": cmin, "max": cmax, "start": float(window[0]),
                                    "end": float(window[1])}})
    return {"channels": channels, "rdefs": {"model": "color" if len(channels) > 1 else "greyscale"}}


WINDOW_SAMPLES = 1 << 14       # pixels a display window is measured on (a strided subsample)


def display_window(pixels: np.ndarray) -> list[float]:
    """[0.1th, 99.9th percentile] of ``pixels``, on an even subsample of at most
    WINDOW_SAMPLES of them (a full sort of a 1024x1024 plane costs 50 ms per plane written);
    never empty or flat."""
    if not pixels.size:
        return [0.0, 1.0]
    step = max(1, int(np.sqrt(pixels.size / WINDOW_SAMPLES)))
    sample = pixels[..., ::step, ::step] if pixels.ndim >= 2 else pixels[::step * step]
    start, end = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
    return [start, end] if end > start else [start, start + 1]    # a flat channel


def image_levels(group) -> int:
    """How many consecutive levels ``0, 1, ...`` the image group holds."""
    keys = set(group.array_keys())
    n = 0
    while str(n) in keys:
        n += 1
    return max(n, 1)


def write_image_metadata(root, path: str, info, config: ZarrConfig, physics: dict | None = None,
                         *, omero: dict | None = None,
                         measured: dict[int, list[float]] | None = None) -> dict:
    """Multiscales + omero metadata of one field image (its level-0 array at ``path``); channel
    n is c index n-1. ``omero`` (from an earlier field with as many channels) is reused rather
    than measured again, as are ``measured`` windows (``omero_block``); the block written is
    returned."""
    from ome_zarr.writer import write_multiscales_metadata
    row, col, field, _level = path.split("/")
    physics = {"pixel_size": getattr(info, "pixel_size", None), **(physics or {})}
    group = root[f"{row}/{col}/{field}"]
    axes, scale = axes_and_scale(physics)
    levels = image_levels(group)
    if omero is None or len(omero["channels"]) != info.shape[1]:
        omero = omero_block(group[str(levels - 1)], list(range(1, info.shape[1] + 1)), physics,
                            measured)
    write_multiscales_metadata(group, datasets=level_datasets(scale, levels),
                               fmt=ngff_format(config), axes=axes, name=f"{row}{col}_f{field}",
                               metadata={"omero": json_copy(omero)})
    return omero


def json_copy(doc: dict) -> dict:
    """ome-zarr's writer pops keys out of what it is given: hand it a copy."""
    import copy
    return copy.deepcopy(doc)


def write_plate_metadata(root, arrays, config: ZarrConfig, *, name: str) -> None:
    """Plate and well metadata (complete: acquisitions, field_count, version) for the fields
    whose level-0 arrays are at ``row/col/field/0`` (other arrays, e.g. labels, are not fields)."""
    from ome_zarr.writer import write_plate_metadata as _plate, write_well_metadata
    fmt = ngff_format(config)
    fields: dict[str, list[str]] = {}
    for path in arrays:
        if _IMAGE_ARRAY.match(path):
            row, col, field, _level = path.split("/")
            fields.setdefault(f"{row}/{col}", []).append(field)
    wells = natsorted(fields)
    rows = natsorted({w.split("/")[0] for w in wells}, key=lambda r: (len(r), r))
    columns = natsorted({w.split("/")[1] for w in wells})
    field_count = max(len(f) for f in fields.values())
    _plate(root, rows, columns, wells, fmt=fmt, field_count=field_count, name=name,
           acquisitions=[{"id": 0, "name": name, "maximumfieldcount": field_count}])
    for well, fs in fields.items():
        write_well_metadata(root[well], [{"path": f, "acquisition": 0} for f in natsorted(fs)],
                            fmt=fmt)


def pyramid_levels(shape: tuple[int, ...], config: ZarrConfig) -> int:
    """Levels below level 0: ``config.pyramid_levels``, or halve until the plane fits."""
    if config.pyramid_levels is not None:
        return int(config.pyramid_levels)
    n, size = 0, max(shape[-2:])
    while size > PYRAMID_FIT:
        size = (size + 1) // 2
        n += 1
    return n


def downsample(data: np.ndarray) -> np.ndarray:
    """Half the y and x resolution by the mean of each 2x2 block (edges padded by repeat)."""
    y, x = data.shape[-2:]
    pad = [(0, 0)] * (data.ndim - 2) + [(0, y % 2), (0, x % 2)]
    d = np.pad(data, pad, mode="edge") if (y % 2 or x % 2) else data
    blocks = d.reshape(*d.shape[:-2], d.shape[-2] // 2, 2, d.shape[-1] // 2, 2)
    mean = blocks.mean(axis=(-3, -1))
    if data.dtype.kind in "ui":
        mean = np.rint(mean)
    return mean.astype(data.dtype)


def write_pyramid(group, config: ZarrConfig, levels: int) -> None:
    """Arrays ``1..levels`` in an image group, each half of the one before (chunked like
    level 0: one chunk per field, or one per plane)."""
    source = group["0"]
    whole = tuple(source.chunks) == tuple(source.shape)
    for k in range(1, levels + 1):
        data = downsample(np.asarray(group[str(k - 1)][...]))
        chunks = data.shape if whole else (1,) * (data.ndim - 2) + data.shape[-2:]
        dims = {"dimension_names": list(AXIS_NAMES[-data.ndim:])} if config.zarr_format == 3 else {}
        arr = group.create_array(
            str(k), shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0,
            compressors=config.compressors(), overwrite=True,
            chunk_key_encoding=({"name": "v2", "separator": "/"} if config.zarr_format == 2
                                else None), **dims)
        arr[...] = data


def write_labels(root, image_path: str, name: str, labels: np.ndarray, config: ZarrConfig,
                 physics: dict | None = None) -> str:
    """A label image (z, y, x or y, x) as NGFF ``labels/<name>`` of the field image at
    ``image_path`` (``row/col/field``), with the image's axes and scale; returns its path."""
    from ome_zarr.writer import add_metadata, write_label_metadata, write_multiscales_metadata
    data = np.asarray(labels)
    data = data.reshape((1, 1) + (1,) * (3 - data.ndim) + data.shape)   # (t, c, z, y, x)
    if data.dtype.kind not in "ui":
        data = data.astype(np.uint32)
    fmt = ngff_format(config)
    labels_group = root.require_group(f"{image_path}/labels")
    group = labels_group.require_group(name)
    dims = {"dimension_names": list(AXIS_NAMES)} if config.zarr_format == 3 else {}
    group.create_array("0", shape=data.shape, chunks=data.shape, dtype=data.dtype, fill_value=0,
                       compressors=config.compressors(), overwrite=True,
                       chunk_key_encoding=({"name": "v2", "separator": "/"}
                                           if config.zarr_format == 2 else None), **dims)[...] = data
    axes, scale = axes_and_scale(physics)
    write_multiscales_metadata(group, datasets=level_datasets(scale, 1), fmt=fmt, axes=axes,
                               name=name)
    present = [n for n in (_ome_attrs(labels_group).get("labels") or []) if n != name]
    version = {"version": fmt.version} if config.zarr_format == 3 else {}   # 0.5: every group
    add_metadata(labels_group, {"labels": present, **version}, fmt=fmt)   # the next call appends
    write_label_metadata(labels_group, name, fmt=fmt, source={"image": "../../"})
    return f"{image_path}/labels/{name}"


def _ome_attrs(group) -> dict:
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


# -- vfsmount's own per-array record (array attrs["vfsmount"]) ------------------------------
# Plane names are derived from the NGFF structure: site = the field's position in its well
# (or the recorded "site"), channel/z/t = index + 1 along c/z/t. A field written plane by plane
# may have holes (a channel never written): "present" is then a bitmap of the planes that
# exist, over the (t, c, z) positions in C order, packed (numpy.packbits) and base64-encoded.
# Its size is one bit per plane slot of one field: it never grows with the store.
PLANES_FORMAT = 2


def encode_present(mask: np.ndarray) -> str | None:
    """The bitmap of present planes, or None when every plane is present."""
    import base64
    if mask.all():
        return None
    return base64.b64encode(np.packbits(mask.ravel())).decode()


def decode_present(record: dict | None, lead_shape: tuple[int, ...]) -> np.ndarray:
    """The present-planes mask (shape ``lead_shape``) from an array's record."""
    import base64
    n = int(np.prod(lead_shape))
    bits = (record or {}).get("present")
    if not bits:
        return np.ones(lead_shape, dtype=bool)
    flat = np.unpackbits(np.frombuffer(base64.b64decode(bits), dtype=np.uint8))[:n]
    if flat.size != n:
        raise ValueError(f"present-planes bitmap has {flat.size} bits for {n} planes")
    return flat.astype(bool).reshape(lead_shape)
