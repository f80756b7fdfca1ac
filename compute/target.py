"""Where a pipeline's images come from and where its results go.

A target is a plate (a directory or an s3:// store), read through its primary backend
(zarr > virtual_workspace > disk), or the root of a --writable vfsmount mount, read through
``MNT/images/`` and written into ``MNT/outputs/`` exactly as another program would.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from natsort import natsorted

from backends.storage.disk import DiskStorageBackend
from backends.layout import FS_TYPE, MAIN_ALIAS, OUTPUTS_DIR, is_tiff_name
from backends.storage.mountinfo import mount_type, vfsmount_plate_name

from .errors import PipelineError
from .output_sink import (OutputSink, image_numbers, mount_physics, output_physics,
                          remote_outputs_root)


@dataclass(frozen=True)
class ReaderSpec:
    """How any process (a Dask worker too) opens the images: a plate location and subdirectory,
    or (``key`` None) the ``images/`` folder of a mount."""

    location: str
    key: str | None = None
    token: str = ""                 # changes when the plate's image set does (worker cache key)

    def open(self):
        if self.key is None:
            return DiskStorageBackend(self.location)
        from backends.plates.plate import Plate
        return Plate.open(self.location).backend(self.key)


_worker_readers: dict[ReaderSpec, Any] = {}
_worker_lock = threading.Lock()


def cached_reader(spec: ReaderSpec):
    """One reader per worker process and plate: opening a plate reads its metadata and index."""
    with _worker_lock:
        reader = _worker_readers.get(spec)
        if reader is None:
            reader = _worker_readers[spec] = spec.open()
        return reader


class Target:
    """A plate (directory or s3:// store) or a vfsmount mountpoint: image names, a reader, and
    the sink where results go."""

    def __init__(self, path: str | os.PathLike, output: str) -> None:
        self.output = output
        # a mount point is a local folder; anything else is a plate, and Plate.open decides
        # whether it is a URL (s3://...: no mount point either)
        self.through_mount = is_vfsmount(Path(path).absolute())
        self.path: Path | str = Path(path).absolute() if self.through_mount else os.fspath(path)
        self.plate = None
        if self.through_mount:
            self._open_mount()
        else:
            self._open_plate()
        # the plate is open already: its backend, not a second Plate.open through the spec
        self.reader = self.plate.backend() if self.plate else self.reader_spec.open()

    def _open_mount(self) -> None:
        self.names = natsorted(n for n in os.listdir(self.path / MAIN_ALIAS)
                               if is_tiff_name(n))
        self.reader_spec = ReaderSpec(str(self.path / MAIN_ALIAS))
        self.sink = OutputSink(str(self.path / OUTPUTS_DIR), self.output, through_mount=True,
                               physics=mount_physics(self.path),
                               plate_name=vfsmount_plate_name(self.path) or self.path.name,
                               image_numbers=image_numbers(self.names))
        if not os.access(self.path / OUTPUTS_DIR, os.W_OK):
            raise PipelineError(f"{self.path} is a read-only mount: mount it with --writable")

    def _open_plate(self) -> None:
        from backends.plates.plate import Plate
        self.plate = Plate.open(self.path)
        self.names = self.plate.image_files()
        digest = hashlib.sha256(json.dumps(self.plate.entry(), sort_keys=True).encode())
        self.reader_spec = ReaderSpec(self.plate.location, self.plate.main, digest.hexdigest()[:16])
        if self.plate.url:
            root = remote_outputs_root(self.plate.url)
        else:   # PLATE/outputs, or the folder named for a hands-off plate
            from backends.plates.metadata import hands_off, outputs_dir
            where, may_write = outputs_dir(self.plate.path)
            if not may_write:
                raise PipelineError(f"{self.plate.path} is hands-off ({hands_off(self.plate.path)}):"
                                    " name a folder for the results: --outputs-dir DIR")
            root = str(where)
        self.sink = OutputSink(root, self.output, remote=self.plate.remote,
                               physics=output_physics(self.plate.entry()),
                               plate_name=self.plate.name, image_numbers=image_numbers(self.names))

    def load(self, names: Sequence[str]) -> list[np.ndarray]:
        return self.reader.load_batch(list(names))

    def record(self, backend: str, images: Iterable[str], files: Iterable[str] = ()) -> None:
        """Add the output folder to the plate's metadata, by the rule every output folder
        follows (``record_output_folder``; a mount does this itself)."""
        if self.through_mount:
            return
        from backends.plates.metadata import record_output_folder
        extra = {}
        if backend == "zarr":
            extra = {"path": self.sink.zarr_location, "files": natsorted(set(files))}
        everything = set(images) if backend == "zarr" else set(images) | set(files)
        record_output_folder(self.plate.path, self.output, sorted(everything), backend, **extra)


def is_vfsmount(path: Path) -> bool:
    """True if ``path`` is the root of a vfsmount FUSE mount (without importing vfsmount)."""
    return mount_type(path) == FS_TYPE
