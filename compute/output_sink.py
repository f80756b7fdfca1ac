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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.remote import is_url


@dataclass(frozen=True)
class OutputSink:
    root: str                       # the outputs/ folder: a local path or a URL
    name: str                       # this pipeline's folder inside it
    through_mount: bool = False     # a --writable mount decides itself what becomes zarr

    @property
    def remote(self) -> bool:
        return is_url(self.root)

    @property
    def folder(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}"

    @property
    def zarr_location(self) -> str:
        return f"{self.root.rstrip('/')}/{self.name}.zarr"

    def write_file(self, rel: str, data: bytes) -> None:
        if self.remote:
            from backends.remote import put_bytes
            put_bytes(f"{self.folder}/{rel}", data)
            return
        from backends.disk import DiskStorageBackend
        DiskStorageBackend(self.root).save_bytes(data, Path(self.name) / rel)

    def write_image_file(self, name: str, plane: np.ndarray) -> None:
        """A plane as a TIFF file in the folder (not zarr)."""
        from backends.formats import encode_file
        if self.remote:
            self.write_file(name, encode_file(plane, name))
            return
        from backends.disk import DiskStorageBackend
        DiskStorageBackend(self.root).save(plane, Path(self.name) / name)

    def open_zarr(self) -> Any:
        """The image store, opened for adding planes (created empty if missing)."""
        from backends.zarr_backend import ZarrStorageBackend
        from backends.zarr_config import ZarrConfig
        where = self.zarr_location if self.remote else Path(self.zarr_location)
        return ZarrStorageBackend(where, mode="a", config=ZarrConfig(chunk_strategy="file"))

    def read_file(self, rel: str) -> bytes:
        if self.remote:
            from backends.remote import get_bytes
            return get_bytes(f"{self.folder}/{rel}")
        return (Path(self.folder) / rel).read_bytes()

    def list_files(self) -> list[str]:
        if self.remote:
            from backends.remote import list_objects
            return list_objects(self.folder)
        base = Path(self.folder)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(base)) for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith(".vfsmount"))


def remote_outputs_root(plate_url: str) -> str:
    """A remote plate ``s3://b/P1.zarr`` keeps its outputs beside the store, in
    ``s3://b/P1.outputs/`` -- never inside it, so the store stays a valid OME-Zarr plate."""
    base = plate_url.rstrip("/")
    stem = base[:-5] if base.endswith(".zarr") else base
    return f"{stem}.outputs"


def local_outputs_root(plate_dir: str | os.PathLike) -> str:
    return str(Path(plate_dir) / "outputs")
