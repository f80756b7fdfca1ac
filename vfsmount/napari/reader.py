"""The napari reader: what a path is (mount, plate, OME-Zarr plate, field), decided quickly.

Everything else is declined (None) after a few ``stat`` calls and at most one small JSON read,
so napari's other readers get it at once. A mount is read through the plate it serves (its
``vfsmount mount`` record: same image sets, same files, no FUSE round trip per plane); a mount
of another user, with no record here, through its own ``images/`` files.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: A hyperstack of a mount: one field (``A01_s001.tif``), or one time point of it.
HYPERSTACK = re.compile(r"^(?P<well>[A-Z]{1,2}\d{2})_s(?P<site>\d+)(?:_t(?P<t>\d+))?\.tiff?$")


@dataclass
class Source:
    plate: object                    # backends.plates.plate.Plate
    key: str                         # the image set
    field: tuple[str, int] | None = None   # (well, site) when one field was named
    t: int | None = None             # a hyperstack split by time point


def get_reader(path):
    """npe2 reader hook: a function that reads ``path``, or None when it is not ours."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        source = resolve(path)
    except Exception as e:          # a path we took for a plate that is not one: decline
        log.info("vfsmount reader declines %s: %s", path, e)
        return None
    if source is None:
        return None

    def read(_path=None):
        from .layers import field_layers, plate_layers
        if source.field is not None:
            return field_layers(source.plate.image_set(source.key), *source.field, t=source.t)
        return plate_layers(source.plate.image_set(source.key))
    return read


def resolve(path: str | os.PathLike) -> Source | None:
    """What ``path`` is, or None when it is nothing the plugin opens."""
    from backends.plates.handlers.ome_zarr import is_plate_store, root_attributes
    path = Path(os.fspath(path))
    if path.is_file():
        return _hyperstack(path)
    if not path.is_dir():
        return None
    if _is_mount(path):
        return _mount(path)
    attrs = root_attributes(path)
    if attrs is not None:           # a zarr store: only an HCS plate is ours
        return _plate(path) if is_plate_store(path) else None
    return _plate(path) if _looks_like_plate(path) else None


def _is_mount(path: Path) -> bool:
    from backends.layout import FS_TYPE
    from backends.storage.mountinfo import mount_type
    return mount_type(path) == FS_TYPE


def _looks_like_plate(path: Path) -> bool:
    """A plate folder: it has metadata, or a handler recognizes it (a few listings)."""
    from backends.errors import PlateFormatError
    from backends.plates.handlers import detect_handler
    from backends.plates.metadata import metadata_path
    if metadata_path(path).is_file():
        return True
    try:
        detect_handler(path)
    except (PlateFormatError, OSError):
        return False
    return True


def _plate(path: Path) -> Source:
    from backends.plates.plate import Plate
    plate = Plate.open(path)
    return Source(plate, plate.main)


def _hyperstack(path: Path) -> Source | None:
    m = HYPERSTACK.match(path.name)
    if not m or path.parent.name != "hyperstacks" or not _is_mount(path.parent.parent):
        return None
    source = _mount(path.parent.parent)
    source.field = (m["well"], int(m["site"]))
    source.t = int(m["t"]) if m["t"] else None
    return source


def _mount(mnt: Path) -> Source:
    """The plate a mount serves (its record), with the image set its ``images/`` shows."""
    from backends.plates.plate import Plate
    from vfsmount.control import active_mounts
    real = os.path.realpath(mnt)
    record = next((r for r in active_mounts() if r.mountpoint == real), None)
    if record is None:
        return _mount_files(mnt)
    plate = Plate.open(record.plate)
    opts = record.options
    key = opts[opts.index("--subdir") + 1] if "--subdir" in opts else plate.main
    return Source(plate, key)


def _mount_files(mnt: Path) -> Source:
    """A mount with no record here (another user's): its ``images/`` as a folder of files,
    with the physics of the metadata it serves."""
    from backends.layout import MAIN_ALIAS, METADATA_FILE, is_tiff_name
    from backends.plates.metadata import image_set_entry, main_subdirectory, read_metadata
    from backends.plates.plate import Plate
    doc = read_metadata(mnt)
    if doc is None:
        raise ValueError(f"{mnt}: a vfsmount mount without openhcs_metadata.json")
    _key, served = main_subdirectory(doc)
    names = [n for n in os.listdir(mnt / MAIN_ALIAS) if is_tiff_name(n)]
    keep = {k: served[k] for k in ("pixel_size", "z_spacing", "time_interval", "channel_names",
                                   "channel_info", "grid_dimensions") if served.get(k)}
    entry = {**image_set_entry(names, "disk", **keep), "main": True}
    return Source(Plate(mnt, {"subdirectories": {MAIN_ALIAS: entry}}, mnt / METADATA_FILE),
                  MAIN_ALIAS)
