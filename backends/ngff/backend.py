"""Zarr backend: a plate as an OME-Zarr HCS store (zarr 3 + ome-zarr).

Layout: ``row/column/field`` groups; each field is an NGFF image whose level-0
array has axes (t, c, z, y, x). NGFF allows no "field" axis and at most five
dimensions, so fields are separate images (the reference design's single 5D
(field, c, z, y, x) array would not be a valid OME-Zarr plate). Chunking:
WELL = one chunk per field image (every plane of that field of the well in one
chunk), FILE = one chunk per (1, 1, 1, Y, X) plane.

The backend is a thin front over parts that each own their state:

- ``store``: opening a store, local or ``s3://`` (the one place a store is opened);
- ``index``: the plane index value (:class:`PlaneIndex`: names -> array + position,
  shapes, dtypes), read from any store's NGFF metadata documents, ours or another tool's;
- ``read``: :class:`ZarrReader` (decoded-plane cache, row ranges, read-ahead, batches);
- ``write``: :class:`FieldWriter` (planes, NGFF metadata, present-planes records);
- ``documents``: NGFF documents alone (it imports none of the above);
- ``levels`` (beside them, not used here): a store's coarser pyramid levels, read small and
  many at once, for an overview of a plate (napari's plate view).

Every array we write carries ``attrs["vfsmount"]``: its t/c/z values and file names; the
root may carry an index of every name (``attrs["vfsmount"]["files"]``), used when present.

The root may be a local directory or an object-storage URL (``s3://bucket/plate.zarr``,
see backends.storage.remote). A store still being written remotely carries
``attrs["vfsmount"] = {"incomplete": true}`` until its index is written last, because object
storage has no rename to publish a finished store in one step.
"""
from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
from natsort import natsorted

from ..storage.base import Backend, StorageBackend
from ..storage.cache import ArrayCache
from ..errors import MetadataError
from .index import AXES, INDEX_KEY, ArrayInfo, PlaneIndex, PlaneRef, _ome, read_own_index, \
    read_plate
from ..naming import natural_key, try_parse_virtual_name
from ..storage.remote import Location, S3Options
from .config import ZarrConfig
from .documents import pyramid_levels, write_pyramid
from .read import ZarrPlane, ZarrReader
from .store import open_root_group, open_store, root_document, store_exists
from .write import FieldWriter, compact_json

if TYPE_CHECKING:
    import zarr

__all__ = ["ZarrStorageBackend", "ZarrPlane", "ArrayInfo", "PlaneRef", "AXES", "INDEX_KEY",
           "output_store", "load_writer", "write_pyramids"]


class ZarrStorageBackend(StorageBackend):
    """One store's planes: the plane index, a reader and (unless read-only) a field writer."""

    _backend_type = Backend.ZARR

    def __init__(self, root: str | os.PathLike | Location, mode: str = "r",
                 config: ZarrConfig | None = None, cache_bytes: int = 256 << 20, *,
                 chunk_cache_bytes: int | None = None, options: S3Options | None = None) -> None:
        if mode not in ("r", "w", "a"):
            raise ValueError(f"mode must be 'r', 'w' or 'a', got {mode!r}")
        location = Location.of(root)         # a plate's store comes decided (Plate.open)
        self.remote = location.remote
        self.root: Path | str = location.where
        self.options = options
        self.mode = mode
        self.config = config or ZarrConfig()
        self._group: zarr.Group | None = None
        self._index = PlaneIndex()

        def opened():
            return open_store(self.root, remote=self.remote, read_only=mode == "r",
                              options=options, chunk_cache_bytes=chunk_cache_bytes)
        self._reader = ZarrReader(None if self._documents_only else opened(), self._index,
                                  where=str(self.root), remote=self.remote,
                                  writable=mode != "r", cache=ArrayCache(cache_bytes),
                                  owner=self, open_store=opened)
        self._writer = FieldWriter(self._index, self._reader, self.root_group,
                                   config=self.config, where=str(self.root),
                                   store_name=self.store_name, remote=self.remote,
                                   writable=mode != "r")
        if mode == "r" or (mode == "a" and store_exists(self.root, remote=self.remote,
                                                        options=options)):
            self._load_index()

    @property
    def store_name(self) -> str:
        return os.fspath(self.root).rstrip("/").rsplit("/", 1)[-1]

    @property
    def index(self) -> PlaneIndex:
        """The plane index: what planes exist where, shapes, dtypes (read it, do not change it)."""
        return self._index

    @property
    def cache(self) -> ArrayCache:
        return self._reader.cache

    @property
    def problems(self) -> list[str]:
        """Malformed parts of a foreign plate, one line each (the rest is served); reads
        every well not read yet."""
        self._index.load_wells()
        return self._index.problems

    @property
    def channel_names(self) -> dict[int, str]:
        """From the first image's omero.channels[].label."""
        return self._index.channel_names

    @property
    def physics(self) -> dict | None:
        """The source's physics (documents.physics_of) written into the NGFF metadata."""
        return self._writer.physics

    @physics.setter
    def physics(self, value: dict | None) -> None:
        self._writer.physics = value

    def root_group(self) -> zarr.Group:
        if self._group is None:
            self._group = open_root_group(self._reader.store, self.root, remote=self.remote,
                                          read_only=self.mode == "r",
                                          zarr_format=self.config.zarr_format)
        return self._group

    @property
    def _documents_only(self) -> bool:
        """A local store read-only: its index and root attributes are read from its JSON
        documents, and zarr opens it when a plane is first read (a mount is ready without
        importing zarr)."""
        return self.mode == "r" and not self.remote

    @cached_property
    def _local_root(self) -> tuple[dict, int]:
        return root_document(self.root)

    def root_attributes(self) -> dict:
        """The root group's attributes (the NGFF plate document)."""
        if self._documents_only:
            return self._local_root[0]
        return dict(self.root_group().attrs)

    # -- opening --------------------------------------------------------------
    def _load_index(self) -> None:
        if self._documents_only:
            attrs, zarr_format = self._local_root
        else:
            root = self.root_group()
            attrs, zarr_format = dict(root.attrs), root.metadata.zarr_format
        own = attrs.get(INDEX_KEY)
        if isinstance(own, dict) and own.get("incomplete"):
            if self.mode == "r":
                raise MetadataError("zarr store is incomplete: its conversion was interrupted "
                                    "(convert again with --overwrite)", backend=self.name,
                                    path=self.root)
            return
        recovered = isinstance(own, dict) and own.get("unflushed") and not self.remote
        if recovered:
            self.recover_unflushed()                      # a writer stopped before flush()
        elif isinstance(own, dict) and "files" in own:    # a root index (older vfsmount stores)
            self._index.update(read_own_index(own, str(self.root)))
        elif self.mode == "r" or "plate" in _ome(attrs):    # read-only: each well on first use
            local = None if self.remote else str(self.root)     # documents read from disk
            self._index.update(read_plate(None if local else self._reader.store, attrs,
                                          zarr_format, str(self.root), lazy=self.mode == "r",
                                          local_root=local))
        # else: an empty store opened for writing
        if self.mode != "r":
            self._writer.mark_described()                 # what is on disk is described
        if recovered and self.mode != "r":                # describe it all again, then mark whole
            self._writer.describe_again()
            with compact_json():
                self.flush()

    # -- reading (ZarrReader) -------------------------------------------------
    def plane(self, path: str | os.PathLike) -> ZarrPlane:
        return self._reader.plane(path)

    def load(self, path: str | os.PathLike, **_) -> np.ndarray:
        return self._reader.load(path)

    def load_batch(self, paths: Sequence[str | os.PathLike], **_) -> list[np.ndarray]:
        return self._reader.load_batch(paths)

    def read_rows(self, ref: PlaneRef, name: str, y0: int, y1: int) -> np.ndarray:
        return self._reader.read_rows(ref, name, y0, y1)

    def is_decoded(self, ref: PlaneRef) -> bool:
        return self._reader.is_decoded(ref)

    def invalidate(self, path: str | os.PathLike) -> None:
        self._reader.invalidate(path)

    # -- writing (FieldWriter) ------------------------------------------------
    def save(self, data: Any, path: str | os.PathLike, **_) -> None:
        self._writer.save_batch([data], [path])

    def save_batch(self, data_list: Sequence[Any], paths: Sequence[str | os.PathLike], *,
                   flush: bool = True, **_) -> None:
        self._writer.save_batch(data_list, paths, flush=flush)

    def flush(self, *, plate_name: str | None = None, pixel_size: float | None = None,
              refresh_windows: bool = True) -> None:
        self._writer.flush(plate_name=plate_name, pixel_size=pixel_size,
                           refresh_windows=refresh_windows)

    def windows_stale(self) -> bool:
        return self._writer.windows_stale()

    def index_document(self, arrays: Iterable[str] | None = None) -> dict:
        return self._writer.index_document(arrays)

    def written_arrays(self) -> set[str]:
        return self._writer.written_arrays()

    def adopt(self, index: dict) -> None:
        self._writer.adopt(index)

    def recover_unflushed(self) -> None:
        self._writer.recover_unflushed(os.fspath(self.root))

    def mark_incomplete(self) -> None:
        self._writer.mark_incomplete()

    # -- a store is one flat set of planes: delete, but no folders, copies or renames
    # (no FileTree capability: FileManager copies a plane by loading and saving it)
    def delete(self, path, *, recursive: bool = False) -> None:
        self._writer.delete(path)

    # -- listing --------------------------------------------------------------
    def list_files(self, directory: str | os.PathLike = "", *, extensions: Iterable[str] | None = None,
                   recursive: bool = False) -> list[str]:
        names: Iterable[str] = self._index.names()
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            names = [n for n in names if n.lower().endswith(exts)]
        return natural_order(names)

    def list_dir(self, directory: str | os.PathLike = "") -> list[str]:
        return self.list_files(directory)

    def exists(self, path) -> bool:
        return os.fspath(path).rsplit("/", 1)[-1] in self._index

    is_file = exists

    def is_dir(self, path) -> bool:
        return os.fspath(path).strip("/") in ("", ".")

    def arrays(self) -> dict[str, ArrayInfo]:
        return dict(self._index.arrays)


def natural_order(names: Iterable[str]) -> list[str]:
    """Plane names in natural order, by their coordinates: natsort's string keys cost
    seconds on a 20,000-plane plate, parsed coordinates a tenth of that."""
    names = list(names)
    parsed = [try_parse_virtual_name(n) for n in names]
    if None in parsed:
        return natsorted(names)
    return [n for _key, n in sorted(zip(map(natural_key, parsed), names))]


def output_store(where, physics: dict | None) -> ZarrStorageBackend:
    """A store for results (pipeline outputs, TIFFs written into a mount): one chunk per plane,
    the version of the store already there (else ``physics["ngff_version"]``), the physics
    of its source."""
    physics = physics or {}
    version = physics.get("ngff_version", "0.4")
    if not isinstance(where, str) and Path(where, ".zgroup").is_file():
        version = "0.4"
    elif not isinstance(where, str) and Path(where, "zarr.json").is_file():
        version = "0.5"
    store = ZarrStorageBackend(where, mode="a",
                               config=ZarrConfig(chunk_strategy="file", ngff_version=version))
    store.physics = physics
    return store


def load_writer() -> None:
    """Import what writing an output store needs (zarr, ome-zarr, which pulls in dask: about
    0.9 s), so that the first plane committed through a mount does not stall for it."""
    import ome_zarr.format  # noqa: F401
    import ome_zarr.writer  # noqa: F401

    from ..guards import tiff as tiff_guard  # noqa: F401


def write_pyramids(store: ZarrStorageBackend) -> None:
    """Levels 1.. of every field of ``store``, as its config asks; the next flush() lists
    them in the multiscales metadata."""
    root = store.root_group()
    for path, info in store.arrays().items():
        levels = pyramid_levels(info.shape, store.config)
        if levels:
            write_pyramid(root[path.rsplit("/", 1)[0]], store.config, levels)
