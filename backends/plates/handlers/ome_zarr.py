"""OME-Zarr HCS plates written by any tool (ome-zarr-py, ngff-zarr, bioformats2raw, Fractal …).

Detected from the store's own metadata: a store given directly (``plate.ome.zarr``, local
or ``s3://``), or a plate folder holding one. Either way one function, :func:`store_entry`,
indexes the store (backends.ngff.index: metadata documents only, never a chunk) and turns
it into a subdirectory entry of ``openhcs_metadata.json``.

A store is never written into: it may be read-only or shared. A store given directly keeps
its metadata in the per-user cache (backends.plates.plate.open_store_plate); a folder holding one
keeps it in the folder, beside the store, as any plate does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from natsort import natsorted

from ...naming import parse_virtual_name
from ...physics import PlatePhysics
from .base import (SKIP_DIRS, MicroscopeHandler, ScannedSet, PlateScan, scandir_sorted,
                   subdirectory_entry)

NAME = "ome_zarr"
# why a store's length is not known: its axes give no unit (or none that is a length)
NO_UNIT = "the store's axes give no length unit"
PARSER_NAME = "NgffPlateStructure"


def root_attributes(path: str | os.PathLike) -> dict | None:
    """A local zarr store's root attributes (v3 ``zarr.json`` or v2 ``.zattrs``), or None
    when ``path`` is not a zarr store at all."""
    path = Path(path)
    for name in ("zarr.json", ".zattrs", ".zgroup"):
        try:
            doc = json.loads((path / name).read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            return {}
        return doc.get("attributes", {}) if name == "zarr.json" else (
            doc if name == ".zattrs" else {})
    return None


def is_zarr_store(path: str | os.PathLike) -> bool:
    return root_attributes(path) is not None


def is_plate_store(path: str | os.PathLike) -> bool:
    attrs = root_attributes(path)
    if not attrs:
        return False
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs
    return isinstance(ome.get("plate"), dict)


def plate_stores(folder: Path) -> list[Path]:
    """OME-Zarr plates directly inside a plate folder (our own ``zarr/``, ``outputs/`` aside)."""
    try:
        dirs, _files = scandir_sorted(str(folder))
    except OSError:
        return []
    return [Path(d.path) for d in dirs if d.name not in SKIP_DIRS and is_plate_store(d.path)]


def store_entry(location: str | os.PathLike, store=None, *, complete: bool = True) -> dict:
    """The subdirectory entry of one OME-Zarr plate store, local path or ``s3://`` URL
    (``store``: its ZarrStorageBackend, when already open).

    ``complete=False`` (a mount getting ready): every well of the plate is named, but only
    the first readable well is read; sites, channels, z, t and physics are that well's, and
    the entry has no ``image_files`` (the names come from the store when first listed, each
    well read then: see ngff.index.PlaneIndex). ``inferred_from`` names that well."""
    if store is None:
        from ...ngff.backend import ZarrStorageBackend
        store = ZarrStorageBackend(location, mode="r")
    index = store.index
    sample = None if complete else _first_readable_well(index)
    if sample is None:
        names, arrays = store.list_files(), list(store.arrays().values())
    else:
        names = [n for n in index.loaded_names() if n.startswith(sample + "_")]
        arrays = list(index.loaded_arrays().values())
    first = next((a for a in arrays if a.pixel_size), None)
    images = ScannedSet("zarr", "zarr")
    for name in names:
        images.add(parse_virtual_name(name), name)
    scan = PlateScan(OmeZarrHandler(), [images], pixel_size=first.pixel_size if first else None,
                     channel_names=dict(store.channel_names),
                     physics=PlatePhysics(z_spacing=next((a.z_spacing for a in arrays
                                                          if a.z_spacing), None),
                                          unknown={"z_spacing": NO_UNIT}))
    entry = subdirectory_entry(scan, images)    # a single z-plane has no spacing, as a vendor's
    if scan.pixel_size is None:
        entry["physics_unknown"]["pixel_size"] = NO_UNIT
    if sample is not None:
        entry.pop("image_files")
        entry["wells"] = natsorted({*index.loaded_wells(), *index.pending_wells})
        entry["inferred_from"] = sample
    return {**entry, "path": os.fspath(location), "unit": first.unit if first else None,
            "plate_name": _plate_name(store),
            "problems": list(index.problems if sample is not None else store.problems)}


def _plate_name(store) -> str | None:
    """The NGFF plate's own ``name`` (vfsmount writes the vendor plate's folder name there)."""
    try:
        attrs = store.root_attributes()
    except Exception:        # no plate document: a single image, or unreadable (said elsewhere)
        return None
    name = (attrs.get("ome", attrs).get("plate") or {}).get("name")
    return name if isinstance(name, str) and name else None


SAMPLE_WELLS = 8       # wells tried for the one a lazy entry is inferred from


def _first_readable_well(index) -> str | None:
    """A well read already that has planes, else the first of the next SAMPLE_WELLS wells
    that has some (read now); None when nothing is pending (the store is read whole)."""
    pending = index.pending_wells
    if not pending:
        return None
    for well in [None] + pending[:SAMPLE_WELLS]:
        if well is not None:
            index.load_wells([well])
        names = index.loaded_names()
        if names:
            return names[0].split("_", 1)[0]
    return None


@dataclass
class StoreScan(PlateScan):
    """A folder's stores, each already a finished subdirectory entry."""

    entries: dict[str, dict] = field(default_factory=dict)

    def metadata_entries(self) -> dict[str, dict]:
        return dict(self.entries)


class OmeZarrHandler(MicroscopeHandler):
    name = NAME
    parser_name = PARSER_NAME

    @classmethod
    def detect(cls, plate: Path) -> bool:
        """A folder holding a plate store (a store given directly is opened by
        backends.plates.plate.open_store_plate, so that nothing is written into it)."""
        return bool(plate_stores(plate))

    def scan(self, plate: Path) -> PlateScan:
        """One subdirectory per store, keyed by its folder name (``plate.ome.zarr``)."""
        entries = {s.name: store_entry(s.absolute()) for s in plate_stores(Path(plate))}
        return StoreScan(self, [], entries=entries)
