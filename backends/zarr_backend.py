"""Zarr backend: a plate as an OME-Zarr HCS store (zarr 3 + ome-zarr).

Layout: ``row/column/field`` groups; each field is an NGFF image whose level-0
array has axes (t, c, z, y, x). NGFF allows no "field" axis and at most five
dimensions, so fields are separate images (the reference design's single 5D
(field, c, z, y, x) array would not be a valid OME-Zarr plate). Chunking:
WELL = one chunk per field image (every plane of that field of the well in one
chunk), FILE = one chunk per (1, 1, 1, Y, X) plane.

One concern per module:

- ``zarr_store``: opening a store, local or ``s3://`` (the one place a store is opened);
- ``ngff_index``: reading the NGFF structure of any store, ours or another tool's, into
  the plane index (names -> array + position), from metadata documents only;
- ``zarr_read``: reading planes (decoded-plane cache, row ranges, read-ahead, batches);
- ``zarr_writer``: writing planes, NGFF metadata and the root index.

Every array we write carries ``attrs["vfsmount"]``: its t/c/z values and file names; the
root may carry an index of every name (``attrs["vfsmount"]["files"]``), used when present.

The root may be a local directory or an object-storage URL (``s3://bucket/plate.zarr``,
see backends.remote). A store still being written remotely carries
``attrs["vfsmount"] = {"incomplete": true}`` until its index is written last, because object
storage has no rename to publish a finished store in one step.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterable

import zarr
from natsort import natsorted

from .base import Backend, StorageBackend
from .cache import ArrayCache
from .errors import MetadataError, StorageError
from .ngff_index import AXES, INDEX_KEY, ArrayInfo, NgffIndexMixin, PlaneRef, _ome
from .naming import natural_key, try_parse_virtual_name
from .remote import S3Options, is_url
from .zarr_config import ZarrConfig
from .zarr_read import ZarrPlane, ZarrReadMixin
from .zarr_store import failure, open_root_group, open_store, store_exists
from .zarr_writer import ZarrWriterMixin, compact_json

__all__ = ["ZarrStorageBackend", "ZarrPlane", "ArrayInfo", "PlaneRef", "AXES", "INDEX_KEY"]


class ZarrStorageBackend(NgffIndexMixin, ZarrReadMixin, ZarrWriterMixin, StorageBackend):
    _backend_type = Backend.ZARR

    def __init__(self, root: str | os.PathLike, mode: str = "r",
                 config: ZarrConfig | None = None, cache_bytes: int = 256 << 20, *,
                 chunk_cache_bytes: int | None = None, options: S3Options | None = None) -> None:
        if mode not in ("r", "w", "a"):
            raise ValueError(f"mode must be 'r', 'w' or 'a', got {mode!r}")
        self.remote = is_url(root)
        self.root: Path | str = os.fspath(root).rstrip("/") if self.remote else Path(root)
        self.options = options
        # Decoded planes (and whole single-chunk field arrays) for row-range reads:
        # a FUSE read asks for 128 KiB at a time, and decoding a chunk per request
        # would decode each chunk dozens of times.
        self.cache = ArrayCache(cache_bytes)
        self.mode = mode
        self.config = config or ZarrConfig()
        self._lock = threading.RLock()
        self._arrays: dict[str, ArrayInfo] = {}
        self._files: dict[str, PlaneRef] = {}
        self._open: dict[str, zarr.Array] = {}
        self._group: zarr.Group | None = None
        self._described: set[str] = set()                 # arrays whose NGFF metadata is written
        self._plate_described: frozenset[str] = frozenset()
        self._written: set[str] = set()                   # arrays this instance wrote to
        self._unrecorded: dict[str, int] = {}             # array -> site: record not yet written
        self._windows: dict[str, dict[int, list[float]]] = {}   # display windows of written planes
        self._windows_stale: set[str] = set()             # fields whose windows widened since
        self._unflushed = False                           # metadata writes wait for flush()
        self._unsaved_shapes: set[str] = set()            # arrays grown in memory only
        self._order: list[str] | None = None              # read-ahead state (remote stores)
        self._position: dict[str, int] = {}
        self._last_started: int | None = None
        self._prefetcher = None
        self.problems: list[str] = []                     # malformed parts of a foreign plate
        self.channel_names: dict[int, str] = {}           # from omero.channels[].label
        self._store = self._make_store(chunk_cache_bytes)
        if mode == "r" or (mode == "a" and self._store_exists()):
            self._load_index()

    @property
    def store_name(self) -> str:
        return os.fspath(self.root).rstrip("/").rsplit("/", 1)[-1]

    def _where(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else str(self.root)

    def _make_store(self, chunk_cache_bytes: int | None):
        return open_store(self.root, remote=self.remote, read_only=self.mode == "r",
                          options=self.options, chunk_cache_bytes=chunk_cache_bytes)

    def _store_exists(self) -> bool:
        return store_exists(self.root, remote=self.remote, options=self.options)

    def _failure(self, what: str, rel: str, e: BaseException) -> StorageError:
        return failure(what, self._where(rel), e, remote=self.remote)

    # -- opening --------------------------------------------------------------
    def _root_group(self) -> zarr.Group:
        if self._group is None:
            self._group = open_root_group(self._store, self.root, remote=self.remote,
                                          read_only=self.mode == "r",
                                          zarr_format=self.config.zarr_format)
        return self._group

    def _load_index(self) -> None:
        root = self._root_group()
        attrs = dict(root.attrs)
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
            self._load_own_index(own)
        elif self.mode == "r" or "plate" in _ome(attrs):
            self._load_foreign_index(root, attrs)
        # else: an empty store opened for writing
        self._described.update(self._arrays)              # what is on disk is described
        self._plate_described = frozenset(self._arrays)
        if recovered and self.mode != "r":                # describe it all again, then mark whole
            self._described.clear()
            self._plate_described = frozenset()
            self._unflushed = True
            with compact_json():
                self.flush()

    # -- listing --------------------------------------------------------------
    def list_files(self, directory: str | os.PathLike = "", *, extensions: Iterable[str] | None = None,
                   recursive: bool = False) -> list[str]:
        names: Iterable[str] = self._files
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            names = [n for n in names if n.lower().endswith(exts)]
        return natural_order(names)

    def list_dir(self, directory: str | os.PathLike = "") -> list[str]:
        return self.list_files(directory)

    def exists(self, path) -> bool:
        return os.fspath(path).rsplit("/", 1)[-1] in self._files

    is_file = exists

    def is_dir(self, path) -> bool:
        return os.fspath(path).strip("/") in ("", ".")

    def arrays(self) -> dict[str, ArrayInfo]:
        return dict(self._arrays)


def natural_order(names: Iterable[str]) -> list[str]:
    """Plane names in natural order, by their coordinates: natsort's string keys cost
    seconds on a 20,000-plane plate, parsed coordinates a tenth of that."""
    names = list(names)
    parsed = [try_parse_virtual_name(n) for n in names]
    if None in parsed:
        return natsorted(names)
    return [n for _key, n in sorted(zip(map(natural_key, parsed), names))]
