"""Where a pipeline's results go: ``outputs/<name>/`` (files) and ``outputs/<name>.zarr`` (images),
under a plate directory, a --writable mountpoint, or an object-storage prefix.

A sink is a small picklable value, so a Dask worker gets one and writes to the plate's storage
itself. Every write is whole and atomic: a disk file by temporary file + rename, an object by a
single PUT, a zarr plane by zarr's own chunk writes. Two wells never write the same file or the
same zarr array, so workers need no coordination; the zarr store's shared documents (root index,
plate/well metadata) are written once, by whoever calls :meth:`OutputSink.finish_zarr`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.ngff.documents import output_physics   # what outputs inherit from their source


@dataclass(frozen=True)
class OutputSink:
    root: str                       # the outputs/ folder: a local path or a URL
    name: str                       # this pipeline's folder inside it
    through_mount: bool = False     # a --writable mount decides itself what becomes zarr
    remote: bool = False            # root is a URL (the plate said so when it was opened)
    # the source plate's physics (backends.ngff.documents.physics_of): outputs keep its pixel size,
    # z spacing and channel names -- a result is measured in the same micrometres as its source
    physics: dict | None = field(default=None, compare=False)
    # for the measurement tables' leading columns: the plate's name, and ImageNumber of each
    # image set (well, site, t), 1-based in plate order (see image_numbers)
    plate_name: str = ""
    image_numbers: dict | None = field(default=None, compare=False, repr=False)
    stream: str | None = None       # a viewer's address: written results also go there (streaming.py)
    stream_steps: bool = False      # ... and every step's result, not only what is written

    @property
    def pixel_size(self) -> float | None:
        return (self.physics or {}).get("pixel_size")

    @property
    def folder(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}"

    @property
    def zarr_location(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}.zarr"

    def write_file(self, rel: str, data: bytes) -> None:
        if self.remote:
            from backends.storage.remote import put_bytes
            put_bytes(f"{self.folder}/{rel}", data)
            return
        from backends.storage.disk import DiskStorageBackend
        DiskStorageBackend(self.root).save_bytes(data, Path(self.name) / rel)

    def write_image_file(self, name: str, plane: np.ndarray) -> None:
        """A plane as a TIFF file in the folder (not zarr), with the ImageJ calibration."""
        from .materialization import calibrated_tiff
        self.write_file(name, calibrated_tiff(np.asarray(plane), self.pixel_size))

    def open_zarr(self) -> Any:
        """The image store, opened for adding planes (created empty if missing)."""
        from backends.ngff.backend import output_store
        where = self.zarr_location if self.remote else Path(self.zarr_location)
        return output_store(where, self.physics)

    def finish_zarr(self, store) -> None:
        """The store's shared documents, written once, last: index, plate/well metadata and
        each field's multiscales with the source's scale and channels."""
        store.flush()

    def materialize(self, value: Any, spec, group, zarr_store=None, output: str = "") -> list[str]:
        """A special output's files (CSV tables get micrometre columns); a label image also
        becomes NGFF ``labels/<output>`` of its field in the zarr store, when there is one."""
        from .materialization import ROIOptions, _select, materialize
        names = materialize(value, spec, group.stem, self.write_file, pixel_size=self.pixel_size,
                            image_columns=self.image_columns(group.components))
        for options in spec.options:
            labels = _select(value, options.source)
            if zarr_store is not None and isinstance(options, ROIOptions) \
                    and isinstance(labels, np.ndarray) and labels.dtype.kind in "ui":
                self.write_labels(zarr_store, group.coords[0], output or "labels", labels)
        return names

    def image_columns(self, components: dict) -> dict:
        """The columns CellProfiler and pycytominer join tables on, for one stack: plate,
        well, site (and channel, time point), and ImageNumber of its image set."""
        names = {"well": "Metadata_Well", "site": "Metadata_Site", "channel": "Metadata_Channel",
                 "t": "Metadata_Timepoint"}
        columns = {"Metadata_Plate": self.plate_name}
        columns.update({col: components[key] for key, col in names.items() if key in components})
        number = (self.image_numbers or {}).get(
            (components.get("well"), components.get("site"), components.get("t")))
        if number is not None:
            columns["ImageNumber"] = number
        return columns

    def write_labels(self, store, where, name: str, labels: np.ndarray) -> None:
        from backends.naming import split_well
        from backends.ngff.documents import write_labels
        row, col = split_well(where.well)
        write_labels(store.root_group(), f"{row}/{col:02d}/{where.site - 1}", name, labels,
                     store.config, self.physics)

    def read_file(self, rel: str) -> bytes:
        if self.remote:
            from backends.storage.remote import get_bytes
            return get_bytes(f"{self.folder}/{rel}")
        return (Path(self.folder) / rel).read_bytes()

    def list_files(self) -> list[str]:
        if self.remote:
            from backends.storage.remote import list_objects
            return list_objects(self.folder)
        base = Path(self.folder)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".vfsmount"))


def image_numbers(names) -> dict[tuple[str, int, int], int]:
    """(well, site, t) -> ImageNumber, 1-based in plate order (wells as natsort orders them,
    then sites, then time points): one number per image set, shared by its channels and
    z-planes, as in CellProfiler."""
    from natsort import natsorted
    from backends.naming import try_parse_virtual_name
    sets = {(p.well, p.site, p.t) for p in map(try_parse_virtual_name, names) if p is not None}
    ordered = natsorted(sets, key=lambda k: (k[0], k[1], k[2]))
    return {k: i for i, k in enumerate(ordered, start=1)}


def mount_physics(mountpoint: str | os.PathLike) -> dict:
    """The physics of the plate a vfsmount mount serves (its openhcs_metadata.json)."""
    from backends.plates.metadata import main_subdirectory, read_metadata
    doc = read_metadata(mountpoint)
    return output_physics(main_subdirectory(doc)[1]) if doc else {}


def remote_outputs_root(plate_url: str) -> str:
    """A remote plate ``s3://b/P1.zarr`` keeps its outputs beside the store, in
    ``s3://b/P1.outputs/`` -- never inside it, so the store stays a valid OME-Zarr plate."""
    base = plate_url.rstrip("/")
    stem = base[:-5] if base.endswith(".zarr") else base
    return f"{stem}.outputs"


def local_outputs_root(plate_dir: str | os.PathLike) -> str:
    return str(Path(plate_dir) / "outputs")
