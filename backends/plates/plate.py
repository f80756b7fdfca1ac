"""A plate: its handler, its metadata, and a backend for each image set.

A plate is a local directory (a vendor layout, or a folder holding an OME-Zarr plate), or
an OME-Zarr plate store given directly: a local ``plate.ome.zarr`` or ``s3://bucket/plate.zarr``,
both opened by :func:`open_store_plate`. A store's openhcs_metadata.json is derived from the
store's NGFF structure and kept in the per-user cache (``Plate.path`` is that folder), so
nothing is ever written into the store; ``Plate.location`` is what the user named.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..storage.base import DataSink
from ..errors import MetadataError, PlateFormatError
from .handlers import PlateScan, detect_handler, refuse_unsupported
from .handlers.ome_zarr import is_zarr_store, store_entry
from .image_set import ImageSet
from .metadata import (cache_root, main_subdirectory, metadata_path, primary_backend,
                       read_metadata, update_metadata)
from ..storage.remote import Location

log = logging.getLogger(__name__)


@dataclass
class Plate:
    path: Path
    metadata: dict
    metadata_file: Path
    scan: PlateScan | None = None       # set when this call (re)indexed the plate
    url: str | None = None              # a store given directly: its path or s3:// URL
    remote: bool = False                # url is in object storage (decided once, in open)
    opened: dict = field(default_factory=dict, repr=False)   # key -> backend opened already
    image_sets: dict = field(default_factory=dict, repr=False)   # key -> ImageSet made already

    @property
    def location(self) -> str:
        return self.url or str(self.path)

    @property
    def name(self) -> str:
        """The plate's name: a store's own (NGFF ``plate.name``: a converted plate keeps its
        folder's name wherever the store is copied), else its folder's."""
        own = self.subdirectories.get(self.main, {}).get("plate_name") if self.url else None
        return own or self.location.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def open(cls, path: str | os.PathLike, *, rescan: bool = False, lazy: bool = False) -> "Plate":
        """Open a plate, indexing it first if it has no metadata (or ``rescan``). ``lazy``: a
        store's wells are read when first used (a mount: ready at once, whatever its size)."""
        location = Location.of(path)    # decided here, once: Plate.remote says it from now on
        if location.remote:
            return open_store_plate(location.where, remote=True, lazy=lazy)
        if is_zarr_store(path):
            return open_store_plate(os.path.realpath(path), remote=False, lazy=lazy)
        plate = Path(path).absolute()
        if not plate.is_dir():
            refuse_unsupported(plate)   # an .nd2/.czi/... file named as the plate
            raise PlateFormatError("plate is not a directory", path=plate)
        doc = read_metadata(plate)
        if doc is not None and not rescan:
            return cls(plate, share_mapping_names(doc), metadata_path(plate))
        return index_plate(plate)

    # -- subdirectories -------------------------------------------------------
    @property
    def subdirectories(self) -> dict[str, dict]:
        return self.metadata["subdirectories"]

    @property
    def main(self) -> str:
        return main_subdirectory(self.metadata)[0]

    def entry(self, key: str | None = None) -> dict:
        key = self.main if key is None else key
        try:
            return self.subdirectories[key]
        except KeyError:
            raise MetadataError(f"plate has no subdirectory {key!r} (has: {list(self.subdirectories)})",
                                path=self.metadata_file) from None

    def choose_main(self, key: str) -> None:
        """Serve subdirectory ``key`` as the main one (``mount --subdir``), for this Plate only:
        nothing is written."""
        self.entry(key)   # raises with the list of subdirectories
        self.metadata = {**self.metadata, "subdirectories": {
            k: {**v, "main": k == key} for k, v in self.subdirectories.items()}}
        self.image_sets.clear()

    def image_set(self, key: str | None = None) -> ImageSet:
        """Subdirectory ``key`` (the main one by default) as an image set, made once: every
        view of the set shares its backend and caches."""
        key = self.main if key is None else key
        if key not in self.image_sets:
            self.image_sets[key] = ImageSet(self, key)
        return self.image_sets[key]

    def image_files(self, key: str | None = None) -> list[str]:
        entry = self.entry(key)
        if "image_files" not in entry and entry.get("inferred_from"):   # a store opened lazily
            return self.backend(key).list_files("")
        return list(entry.get("image_files", []))

    def primary_backend(self, key: str | None = None) -> str:
        return primary_backend(self.entry(key))

    def backend(self, key: str | None = None) -> DataSink:
        """A new backend serving one subdirectory's flat names (the mount shares
        ``image_set(key).backend`` instead)."""
        return self.image_set(key).open_backend()

    @property
    def handler_name(self) -> str:
        return self.entry().get("microscope_handler_name", "")


def share_mapping_names(doc: dict) -> dict:
    """Let each ``image_files`` list hold its ``workspace_mapping``'s own key strings: JSON
    gives every occurrence its own copy, and a million-image plate would hold its names twice
    (80 MB). Only when both list the same names in the same order (as vfsmount writes them)."""
    for entry in doc["subdirectories"].values():
        mapping, names = entry.get("workspace_mapping"), entry.get("image_files")
        if mapping and names is not None and len(names) == len(mapping):
            keys = list(mapping)
            if keys == names:
                entry["image_files"] = keys
    return doc


def store_plate_dir(location: str, remote: bool) -> Path:
    """The local folder that holds a store plate's metadata (and nothing else)."""
    digest = hashlib.sha256(location.encode()).hexdigest()[:16]
    return cache_root() / ("remote" if remote else "stores") / f"{location.rstrip('/').rsplit('/', 1)[-1]}-{digest}"


def open_store_plate(location: str, remote: bool, *, lazy: bool = False) -> Plate:
    """An OME-Zarr plate store (a real path, or a URL when ``remote``) as a plate. A remote
    one is checked first, so a wrong endpoint, credentials or bucket is one clear error here
    rather than EIO on every read later. ``lazy``: see handlers.ome_zarr.store_entry."""
    if remote:
        from ..storage.remote import check_access
        check_access(location, must_exist=True)
    from ..ngff.backend import ZarrStorageBackend
    store = ZarrStorageBackend(Location.known(location, remote), mode="r")   # indexed once
    local = store_plate_dir(location, remote)
    local.mkdir(parents=True, exist_ok=True)
    written = update_metadata(local, {"zarr": store_entry(location, store, complete=not lazy)},
                              main="zarr")
    return Plate(local, read_metadata(local), written, url=location, remote=remote,
                 opened={"zarr": store})


def index_plate(path: str | os.PathLike) -> Plate:
    """Detect the format, map every image, and write openhcs_metadata.json."""
    if is_zarr_store(path):             # never write metadata into a store
        return open_store_plate(os.path.realpath(path), remote=False)
    plate = Path(path).absolute()
    previous = read_metadata(plate)
    try:
        handler = detect_handler(plate)
    except PlateFormatError:
        if previous is not None:  # e.g. a zarr-only plate written by vfsmount
            return Plate(plate, previous, metadata_path(plate))
        raise
    scan = handler.scan(plate)
    entries = scan.metadata_entries()
    keep_main = None
    stale: list[str] = []
    if previous is not None:
        prev_main, _ = main_subdirectory(previous)
        for key, entry in previous["subdirectories"].items():
            derived = entry.get("available_backends", {}).get("zarr") or key.startswith("outputs")
            if entry.get("microscope_handler_name") == handler.name and key not in entries \
                    and not derived:
                stale.append(key)
        if prev_main in entries or (prev_main in previous["subdirectories"] and prev_main not in stale):
            keep_main = prev_main
    main = keep_main or next(iter(entries))
    written = update_metadata(plate, entries, main=main, remove=tuple(stale))
    return Plate(plate, share_mapping_names(read_metadata(plate)), written, scan)
