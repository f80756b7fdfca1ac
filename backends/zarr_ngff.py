"""OME-NGFF plate, well and image metadata, written through ome-zarr's writers."""
from __future__ import annotations

from natsort import natsorted

from .zarr_config import ZarrConfig

_AXES = [
    {"name": "t", "type": "time"},
    {"name": "c", "type": "channel"},
    {"name": "z", "type": "space", "unit": "micrometer"},
    {"name": "y", "type": "space", "unit": "micrometer"},
    {"name": "x", "type": "space", "unit": "micrometer"},
]


def ngff_format(config: ZarrConfig):
    from ome_zarr.format import FormatV04, FormatV05
    return FormatV04() if config.ngff_version == "0.4" else FormatV05()


def write_image_metadata(root, path: str, info, config: ZarrConfig) -> None:
    """Multiscales metadata of one field image (its level-0 array at ``path``)."""
    from ome_zarr.writer import write_multiscales_metadata
    row, col, field, _level = path.split("/")
    scale = [1.0, 1.0, 1.0] + [float(info.pixel_size or 1.0)] * 2
    write_multiscales_metadata(
        root[f"{row}/{col}/{field}"],
        datasets=[{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        fmt=ngff_format(config), axes=_AXES, name=f"{row}{col}_f{field}")


def write_plate_metadata(root, arrays: dict, config: ZarrConfig, *, name: str) -> None:
    """Plate and well metadata for the fields at ``row/col/field/0``."""
    from ome_zarr.writer import write_plate_metadata as _plate, write_well_metadata
    fmt = ngff_format(config)
    fields: dict[str, list[str]] = {}
    for path in arrays:
        row, col, field, _level = path.split("/")
        fields.setdefault(f"{row}/{col}", []).append(field)
    wells = natsorted(fields)
    rows = natsorted({w.split("/")[0] for w in wells}, key=lambda r: (len(r), r))
    columns = natsorted({w.split("/")[1] for w in wells})
    _plate(root, rows, columns, wells, fmt=fmt, field_count=max(len(f) for f in fields.values()),
           name=name)
    for well, fs in fields.items():
        write_well_metadata(root[well], [{"path": f} for f in natsorted(fs)], fmt=fmt)
