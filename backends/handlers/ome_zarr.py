"""OME-Zarr HCS plates written by any tool (ome-zarr-py, ngff-zarr, bioformats2raw, Fractal …).

Detected from the store's own metadata: a store given directly (``plate.ome.zarr``, local
or ``s3://``), or a plate folder holding one. Either way one function, :func:`store_entry`,
indexes the store (backends.ngff_index: metadata documents only, never a chunk) and turns
it into a subdirectory entry of ``openhcs_metadata.json``.

A store is never written into: it may be read-only or shared. A store given directly keeps
its metadata in the per-user cache (backends.plate.open_store_plate); a folder holding one
keeps it in the folder, beside the store, as any plate does.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..naming import parse_virtual_name
from .base import (SKIP_DIRS, ScannedSet, MicroscopeHandler, PlateScan, scandir_sorted,
                   subdirectory_entry)

NAME = "ome_zarr"
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


def store_entry(location: str | os.PathLike, store=None) -> dict:
    """The subdirectory entry of one OME-Zarr plate store, local path or ``s3://`` URL
    (``store``: its ZarrStorageBackend, when already open)."""
    if store is None:
        from ..zarr_backend import ZarrStorageBackend
        store = ZarrStorageBackend(location, mode="r")
    arrays = list(store.arrays().values())
    first = next((a for a in arrays if a.pixel_size), None)
    images = ScannedSet("zarr", "zarr")
    for name in store.list_files():
        images.add(parse_virtual_name(name), name)
    scan = PlateScan(OmeZarrHandler(), [images], pixel_size=first.pixel_size if first else None,
                     channel_names=dict(store.channel_names))
    return {**subdirectory_entry(scan, images), "path": os.fspath(location),
            "z_spacing": next((a.z_spacing for a in arrays if a.z_spacing), None),
            "unit": first.unit if first else None, "problems": list(store.problems)}


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
        backends.plate.open_store_plate, so that nothing is written into it)."""
        return bool(plate_stores(plate))

    def scan(self, plate: Path) -> PlateScan:
        """One subdirectory per store, keyed by its folder name (``plate.ome.zarr``)."""
        entries = {s.name: store_entry(s.absolute()) for s in plate_stores(Path(plate))}
        return StoreScan(self, [], entries=entries)
