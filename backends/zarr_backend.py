"""Zarr backend: a plate as an OME-Zarr HCS store (zarr 3 + ome-zarr).

Layout: ``row/column/field`` groups; each field is an NGFF image whose level-0
array has axes (t, c, z, y, x). NGFF allows no "field" axis and at most five
dimensions, so fields are separate images (the reference design's single 5D
(field, c, z, y, x) array would not be a valid OME-Zarr plate). Chunking:
WELL = one chunk per field image (every plane of that field of the well in one
chunk), FILE = one chunk per (1, 1, 1, Y, X) plane.

Every array carries ``attrs["vfsmount"]["files"]``: normalized file name ->
[t, c, z]. The root carries the same index for the whole store, so opening a
store of 100,000 planes reads one JSON document. Stores written by other tools
have neither; their names are derived from the plate/well/field structure.

The root may be a local directory or an object-storage URL (``s3://bucket/plate.zarr``,
see backends.remote). A store still being written remotely carries
``attrs["vfsmount"] = {"incomplete": true}`` until its index is written last, because object
storage has no rename to publish a finished store in one step.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import zarr
from natsort import natsorted

from .base import Backend, StorageBackend
from .cache import ArrayCache
from .errors import (CorruptDataError, MetadataError, ReadOnlyError, RemoteStorageError,
                     StorageError, StorageNotFoundError)
from .naming import ParsedName, normalize_well, parse_virtual_name, split_well
from .remote import S3Options, describe_error, is_url
from .zarr_config import ZarrChunkStrategy, ZarrConfig

log = logging.getLogger(__name__)

INDEX_KEY = "vfsmount"
AXES = ("t", "c", "z", "y", "x")


@dataclass
class ArrayInfo:
    path: str                       # store-relative array path, e.g. "A/01/0/0"
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    axes: tuple[str, ...]           # e.g. ("t", "c", "z", "y", "x") or ("c", "y", "x")
    pixel_size: float | None = None


@dataclass
class PlaneRef:
    array: str
    index: tuple[int, ...]          # one integer per non-(y, x) axis


@dataclass
class ZarrPlane:
    """One plane of a zarr array as a PlaneSource (see backends.planes)."""

    backend: "ZarrStorageBackend"
    name: str
    ref: PlaneRef
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None = None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.backend.read_rows(self.ref, self.name, y0, y1)

    def is_decoded(self) -> bool:
        return self.backend.is_decoded(self.ref)

    @property
    def source(self) -> str:
        return f"{self.backend.root}/{self.ref.array}[{','.join(map(str, self.ref.index))}]"


def _ome(attrs: dict) -> dict:
    """NGFF 0.5 nests everything under "ome"; 0.4 keeps it at the top."""
    return attrs.get("ome", attrs)


class ZarrStorageBackend(StorageBackend):
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
        self._order: list[str] | None = None              # read-ahead state (remote stores)
        self._position: dict[str, int] = {}
        self._last_started: int | None = None
        self._prefetcher = None
        self._store = self._make_store(chunk_cache_bytes)
        if mode == "r" or (mode == "a" and self._store_exists()):
            self._load_index()

    @property
    def store_name(self) -> str:
        return os.fspath(self.root).rstrip("/").rsplit("/", 1)[-1]

    def _where(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else str(self.root)

    def _make_store(self, chunk_cache_bytes: int | None):
        if self.remote:
            from .remote import zarr_store
            try:
                return zarr_store(self.root, read_only=self.mode == "r", options=self.options,
                                  cache_bytes=chunk_cache_bytes)
            except StorageError:
                raise
            except Exception as e:
                raise RemoteStorageError(describe_error(e), backend=self.name, path=self.root) from e
        from zarr.storage import LocalStore
        if self.mode == "r" and not self.root.is_dir():
            raise StorageNotFoundError("no zarr store", backend=self.name, path=self.root)
        return LocalStore(self.root, read_only=self.mode == "r")

    def _store_exists(self) -> bool:
        if self.remote:
            from .remote import store_exists
            return store_exists(self.root, self.options)
        return (self.root / "zarr.json").exists() or (self.root / ".zgroup").exists()

    def _failure(self, what: str, rel: str, e: BaseException) -> StorageError:
        """Remote I/O failures (server down, timeouts) are not corrupt data: say which it is."""
        if self.remote and _is_io_failure(e):
            return RemoteStorageError(f"cannot fetch {what}: {describe_error(e)}",
                                      backend=self.name, path=self._where(rel))
        return CorruptDataError(f"cannot decode {what}", backend=self.name, path=self._where(rel),
                                cause=e)

    # -- opening --------------------------------------------------------------
    def _root_group(self) -> zarr.Group:
        if self._group is None:
            try:
                self._group = zarr.open_group(store=self._store,
                                              mode="r" if self.mode == "r" else "a",
                                              zarr_format=None if self.mode == "r" else
                                              self.config.zarr_format)
            except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
                raise StorageNotFoundError("no zarr store", backend=self.name, path=self.root,
                                           cause=e) from e
            except Exception as e:
                if self.remote and _is_io_failure(e):
                    raise RemoteStorageError(describe_error(e), backend=self.name,
                                             path=self.root) from e
                raise MetadataError("cannot open zarr store", backend=self.name,
                                    path=self.root, cause=e) from e
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
        if own is not None:
            self._load_own_index(own)
        elif self.mode == "r" or "plate" in _ome(attrs):
            self._load_foreign_index(root, attrs)
        # else: an empty store opened for writing

    def _load_own_index(self, own: dict) -> None:
        try:
            for path, a in own["arrays"].items():
                self._arrays[path] = ArrayInfo(path, tuple(a["shape"]), np.dtype(a["dtype"]),
                                               tuple(a["chunks"]), tuple(a["axes"]),
                                               a.get("pixel_size"))
            for name, (path, *index) in own["files"].items():
                info = self._arrays[path]
                if len(index) != len(info.shape) - 2 or any(
                        not 0 <= i < n for i, n in zip(index, info.shape)):
                    raise ValueError(f"{name}: index {index} outside array {path} {info.shape}")
                self._files[name] = PlaneRef(path, tuple(index))
        except (KeyError, TypeError, ValueError) as e:
            raise MetadataError("inconsistent vfsmount index in zarr store attributes",
                                backend=self.name, path=self.root, cause=e) from e

    def _load_foreign_index(self, root: zarr.Group, attrs: dict) -> None:
        plate = _ome(attrs).get("plate")
        if not isinstance(plate, dict) or not isinstance(plate.get("wells"), list):
            raise MetadataError("not an OME-Zarr HCS plate: root attributes have no 'plate' with 'wells'",
                                backend=self.name, path=self.root)
        for well in plate["wells"]:
            well_path = str(well.get("path", "")) if isinstance(well, dict) else ""
            parts = well_path.split("/")
            if len(parts) != 2:
                raise MetadataError(f"plate well path {well_path!r} is not 'row/column'",
                                    backend=self.name, path=self.root)
            well_name = normalize_well(parts[0] + parts[1].zfill(2))
            try:
                wg = root[well_path]
            except KeyError:
                raise MetadataError(f"plate lists well {well_path!r} but the store has no such group",
                                    backend=self.name, path=self.root) from None
            images = _ome(dict(wg.attrs)).get("well", {}).get("images", [])
            for site, image in enumerate(images, 1):
                image_path = f"{well_path}/{image['path']}"   # "path" may be an integer
                self._index_foreign_image(root, image_path, well_name, site)
        if not self._files:
            raise MetadataError("OME-Zarr plate has no images", backend=self.name, path=self.root)

    def _index_foreign_image(self, root: zarr.Group, image_path: str, well: str, site: int) -> None:
        try:
            ms = _ome(dict(root[image_path].attrs))["multiscales"][0]
        except (KeyError, IndexError, TypeError):
            raise MetadataError(f"image {image_path!r} has no multiscales metadata",
                                backend=self.name, path=self.root) from None
        axes = tuple((a["name"] if isinstance(a, dict) else a).lower() for a in ms.get("axes", []))
        ds = ms["datasets"][0]
        array_path = f"{image_path}/{ds['path']}"
        try:
            arr = root[array_path]
        except KeyError:
            raise MetadataError(f"dataset {array_path!r} listed in multiscales is missing",
                                backend=self.name, path=self.root) from None
        if not axes:
            axes = AXES[-arr.ndim:]
        if len(axes) != arr.ndim or axes[-2:] != ("y", "x"):
            raise MetadataError(f"array {array_path!r}: axes {axes} do not match its shape {arr.shape}"
                                " (need ... y, x last)", backend=self.name, path=self.root)
        pixel = None
        for t in ds.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                pixel = float(t["scale"][-1])
        info = ArrayInfo(array_path, tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks),
                         axes, pixel)
        self._arrays[array_path] = info
        lead = axes[:-2]
        for index in np.ndindex(*arr.shape[:-2]):
            coords = dict(zip(lead, index))
            name = ParsedName(well, site, coords.get("c", 0) + 1, coords.get("z", 0) + 1,
                              coords.get("t", 0) + 1).virtual_name()
            self._files[name] = PlaneRef(array_path, tuple(index))

    # -- reading --------------------------------------------------------------
    def _array(self, path: str) -> zarr.Array:
        arr = self._open.get(path)
        if arr is None:
            with self._lock:
                arr = self._open.get(path)
                if arr is None:
                    arr = zarr.open_array(store=self._store, path=path,
                                          mode="r" if self.mode == "r" else "a")
                    self._open[path] = arr
        return arr

    def _ref(self, path: str | os.PathLike) -> tuple[str, PlaneRef]:
        name = os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]
        try:
            return name, self._files[name]
        except KeyError:
            raise StorageNotFoundError("no such plane in zarr store", backend=self.name,
                                       path=self._where(name)) from None

    def _cache_key(self, ref: PlaneRef):
        info = self._arrays[ref.array]
        if tuple(info.chunks) == tuple(info.shape) and \
                math.prod(info.shape) * info.dtype.itemsize <= self.cache.max_bytes // 4:
            return ref.array            # a single-chunk field: decode it once, serve every plane
        return (ref.array, ref.index)

    def read_rows(self, ref: PlaneRef, name: str, y0: int, y1: int) -> np.ndarray:
        """Rows of one plane through the decoded cache (whole field if it is one chunk)."""
        if y0 == 0 and self.remote:
            self._read_ahead(name)
        key = self._cache_key(ref)
        if isinstance(key, str):
            whole = self.cache.get_or_load(key, lambda: self._read_whole(ref.array))
            return whole[ref.index][y0:y1]
        plane = self.cache.get_or_load(key, lambda: self._read(ref, name))
        return plane[y0:y1]

    def _read_ahead(self, name: str) -> None:
        """A reader going through the planes in order (cp, rsync, cat *) is about to want the
        next one: fetch it in the background so the network wait overlaps this plane's reads."""
        with self._lock:
            if self._order is None:
                self._order = natsorted(self._files)
                self._position = {n: i for i, n in enumerate(self._order)}
            i = self._position.get(name)
            sequential = i is not None and self._last_started == i - 1
            self._last_started = i
            if not sequential or i + 1 >= len(self._order):
                return
            nxt = self._order[i + 1]
            if self._prefetcher is None:
                from concurrent.futures import ThreadPoolExecutor
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="zarr-read-ahead")
        ref = self._files[nxt]
        if self._cache_key(ref) not in self.cache:
            self._prefetcher.submit(self._prefetch, ref, nxt)

    def _prefetch(self, ref: PlaneRef, name: str) -> None:
        try:
            self.read_rows(ref, name, 1, 1)     # y0 != 0: no read-ahead of the read-ahead
        except StorageError as e:               # the real read will report it
            log.debug("read-ahead of %s failed: %s", name, e)

    def invalidate(self, path: str | os.PathLike) -> None:
        """Forget what is cached of one plane (its field's decoded array included): called
        after the plane is rewritten, so the next read decodes the new pixels."""
        name = os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]
        ref = self._files.get(name)
        if ref is None:
            return
        self.cache.discard(ref.array)
        self.cache.discard((ref.array, ref.index))

    def is_decoded(self, ref: PlaneRef) -> bool:
        """True when rows of this plane can be served from memory without decoding."""
        return self._cache_key(ref) in self.cache

    def _read_whole(self, array_path: str) -> np.ndarray:
        try:
            return self._array(array_path)[...]
        except Exception as e:
            raise self._failure(f"array {array_path!r}", array_path, e) from e

    def _read(self, ref: PlaneRef, name: str, rows: slice = slice(None)) -> np.ndarray:
        try:
            arr = self._array(ref.array)
            out = arr[ref.index + (rows, slice(None))]
        except Exception as e:  # codec errors have no common type; name the chunk
            info = self._arrays[ref.array]
            y0 = rows.start or 0
            chunk = [i // c for i, c in zip(ref.index + (y0, 0), info.chunks)]
            sep = "/"
            raise self._failure(f"chunk {sep.join(map(str, chunk))} of array {ref.array!r} "
                                f"(plane {name})", ref.array, e) from e
        return np.ascontiguousarray(out)

    def load(self, path: str | os.PathLike, **_) -> np.ndarray:
        name, ref = self._ref(path)
        return self._read(ref, name)

    def load_batch(self, paths: Sequence[str | os.PathLike], **_) -> list[np.ndarray]:
        """Planes in the order asked; each array needed is read once, as a whole."""
        refs = [self._ref(p) for p in paths]
        by_array: dict[str, list[int]] = {}
        for i, (_name, ref) in enumerate(refs):
            by_array.setdefault(ref.array, []).append(i)
        out: list[Any] = [None] * len(refs)
        for array_path, positions in by_array.items():
            if len(positions) == 1:
                name, ref = refs[positions[0]]
                out[positions[0]] = self._read(ref, name)
                continue
            whole = self._read_whole(array_path)
            for i in positions:
                out[i] = np.ascontiguousarray(whole[refs[i][1].index])
            del whole
        return out

    def plane(self, path: str | os.PathLike) -> ZarrPlane:
        name, ref = self._ref(path)
        info = self._arrays[ref.array]
        return ZarrPlane(self, name, ref, info.shape[-2:], info.dtype, info.pixel_size)

    # -- listing --------------------------------------------------------------
    def list_files(self, directory: str | os.PathLike = "", *, extensions: Iterable[str] | None = None,
                   recursive: bool = False) -> list[str]:
        names: Iterable[str] = self._files
        if extensions is not None:
            exts = tuple(e.lower() for e in extensions)
            names = [n for n in names if n.lower().endswith(exts)]
        return natsorted(names)

    def list_dir(self, directory: str | os.PathLike = "") -> list[str]:
        return self.list_files(directory)

    def exists(self, path) -> bool:
        return os.fspath(path).rsplit("/", 1)[-1] in self._files

    is_file = exists

    def is_dir(self, path) -> bool:
        return os.fspath(path).strip("/") in ("", ".")

    def arrays(self) -> dict[str, ArrayInfo]:
        return dict(self._arrays)

    # -- writing --------------------------------------------------------------
    def _writable(self, path) -> None:
        if self.mode == "r":
            raise ReadOnlyError("zarr store opened read-only", backend=self.name, path=path)

    def save(self, data: Any, path: str | os.PathLike, **_) -> None:
        self.save_batch([data], [path])

    def save_batch(self, data_list: Sequence[Any], paths: Sequence[str | os.PathLike], *,
                   flush: bool = True, **_) -> None:
        """Write planes by normalized name, a field (well + site) at a time.

        A field's array is created on first write with the planes given; later
        planes of the same field grow its t/c/z axes as needed.
        """
        self._writable(self.root)
        if len(data_list) != len(paths):
            raise ValueError(f"save_batch: {len(data_list)} arrays for {len(paths)} names")
        fields: dict[tuple[str, int], list[tuple[ParsedName, str, np.ndarray]]] = {}
        for data, path in zip(data_list, paths):
            name = os.fspath(path).rsplit("/", 1)[-1]
            parsed = parse_virtual_name(name)
            arr = np.asarray(data)
            if arr.ndim != 2:
                raise StorageError(f"a plane must be 2D, got shape {arr.shape}", backend=self.name,
                                   path=name)
            fields.setdefault((parsed.well, parsed.site), []).append((parsed, name, arr))
        with self._lock:
            for (well, site), planes in fields.items():
                self._write_field(well, site, planes)
            if flush:
                self.flush()

    def _write_field(self, well: str, site: int, planes: list) -> None:
        row, col = split_well(well)
        array_path = f"{row}/{col:02d}/{site - 1}/0"
        first = planes[0][2]
        for _p, name, arr in planes:
            if arr.shape != first.shape or arr.dtype != first.dtype:
                raise StorageError(f"plane {arr.shape} {arr.dtype} differs from the field's "
                                   f"{first.shape} {first.dtype}", backend=self.name, path=name)
        info = self._arrays.get(array_path)
        existing = {n: r for n, r in self._files.items() if r.array == array_path}
        axes_values = _axis_values(existing, info) if info else ([], [], [])
        for p, _name, _arr in planes:
            for axis, value in zip(axes_values, (p.t, p.channel, p.z)):
                if value not in axis:
                    axis.append(value)
        if info is None:
            axes_values = tuple(sorted(v) for v in axes_values)
        shape = tuple(len(v) for v in axes_values) + first.shape
        root = self._root_group()
        if info is None:
            chunks = (shape if self.config.chunk_strategy is ZarrChunkStrategy.WELL
                      else (1, 1, 1) + first.shape)
            try:
                group = root.require_group(row).require_group(f"{col:02d}").require_group(str(site - 1))
                self._open[array_path] = group.create_array(
                    "0", shape=shape, chunks=chunks, dtype=first.dtype, fill_value=0,
                    compressors=self.config.compressors(),
                    chunk_key_encoding=({"name": "v2", "separator": "/"}
                                        if self.config.zarr_format == 2 else None),
                    overwrite=True)
            except Exception as e:
                raise StorageError("cannot create zarr array", backend=self.name,
                                   path=self._where(array_path), cause=e) from e
            info = ArrayInfo(array_path, shape, first.dtype, chunks, AXES)
            self._arrays[array_path] = info
        else:
            if info.shape[-2:] != first.shape or info.dtype != first.dtype:
                raise StorageError(f"planes {first.shape} {first.dtype} do not match the existing "
                                   f"field array {info.shape[-2:]} {info.dtype}", backend=self.name,
                                   path=self._where(array_path))
            if shape != info.shape:
                self._array(array_path).resize(shape)
                info.shape = shape
        arr = self._array(array_path)
        t_vals, c_vals, z_vals = axes_values
        index_of = {}
        for p, name, data in planes:
            idx = (t_vals.index(p.t), c_vals.index(p.channel), z_vals.index(p.z))
            index_of[name] = idx
        if tuple(info.chunks) == tuple(shape):
            # The field is one chunk: assemble it and write it once, rather than
            # re-encoding the whole chunk for every plane.
            whole = arr[...] if existing else np.zeros(shape, dtype=first.dtype)
            for _p, name, data in planes:
                whole[index_of[name]] = data
            arr[...] = whole
        else:
            for _p, name, data in planes:
                arr[index_of[name]] = data
        for name, idx in index_of.items():
            self._files[name] = PlaneRef(array_path, idx)
        self._written.add(array_path)
        arr.attrs[INDEX_KEY] = {"files": {n: list(r.index) for n, r in self._files.items()
                                          if r.array == array_path},
                                "t": t_vals, "c": c_vals, "z": z_vals}

    def flush(self, *, plate_name: str | None = None, pixel_size: float | None = None) -> None:
        """Write OME-Zarr plate/well/image metadata and the root index for what is stored.

        Incremental: image metadata is written once per new field and plate metadata when
        the set of fields changes, so saving planes one by one stays cheap.
        """
        from .zarr_ngff import write_image_metadata, write_plate_metadata
        with self._lock:
            root = self._root_group()
            if pixel_size is not None:
                for info in self._arrays.values():
                    info.pixel_size = pixel_size
                self._described.clear()
            for path, info in self._arrays.items():
                if path not in self._described:
                    write_image_metadata(root, path, info, self.config)
                    self._described.add(path)
            fields = frozenset(self._arrays)
            if fields != self._plate_described:
                write_plate_metadata(root, self._arrays, self.config,
                                     name=plate_name or self.store_name)
                self._plate_described = fields
            self._root_group().attrs[INDEX_KEY] = self.index_document()

    def index_document(self, arrays: Iterable[str] | None = None) -> dict:
        """The root index (or the part of it for ``arrays``): what :meth:`adopt` takes."""
        keep = set(self._arrays) if arrays is None else set(arrays)
        return {
            "format": 1,
            "arrays": {p: {"shape": list(a.shape), "dtype": a.dtype.str, "chunks": list(a.chunks),
                           "axes": list(a.axes), "pixel_size": a.pixel_size}
                       for p, a in self._arrays.items() if p in keep},
            "files": {n: [r.array, *r.index] for n, r in natsorted(self._files.items())
                      if r.array in keep},
        }

    def written_arrays(self) -> set[str]:
        return set(self._written)

    def adopt(self, index: dict) -> None:
        """Take in field arrays another process wrote into this store (a Dask worker: each
        writes its own wells' arrays and no shared document; the client calls flush())."""
        with self._lock:
            paths = set(index.get("arrays", {}))
            self._files = {n: r for n, r in self._files.items() if r.array not in paths}
            for path in paths:
                self._open.pop(path, None)
                self._described.discard(path)
            self.cache.clear()
            self._load_own_index(index)

    def mark_incomplete(self) -> None:
        """Flag a store being written remotely, until flush() writes the index over the flag."""
        self._writable(self.root)
        self._root_group().attrs[INDEX_KEY] = {"incomplete": True}

    # -- tree operations (a store is one flat directory of planes) --------------
    def delete(self, path, *, recursive: bool = False) -> None:
        """Forget a plane: it leaves the index (its chunk stays until the field is rewritten)."""
        self._writable(path)
        name, ref = self._ref(path)
        with self._lock:
            del self._files[name]
            arr = self._array(ref.array)
            files = {n: list(r.index) for n, r in self._files.items() if r.array == ref.array}
            arr.attrs[INDEX_KEY] = {**dict(arr.attrs).get(INDEX_KEY, {}), "files": files}
            self.flush()

    def ensure_directory(self, path) -> None:
        self._writable(path)
        self._root_group()

    def copy(self, src, dst, *, overwrite: bool = False) -> None:
        if self.exists(dst) and not overwrite:
            from .errors import StorageExistsError
            raise StorageExistsError("destination plane exists", backend=self.name, path=dst)
        self.save(self.load(src), dst)

    def move(self, src, dst, *, overwrite: bool = False) -> None:
        raise ReadOnlyError("planes cannot be renamed inside a zarr store", backend=self.name,
                            path=src)


def _axis_values(existing: dict[str, PlaneRef], info: ArrayInfo) -> tuple[list, list, list]:
    """Recover the (t, c, z) values each index position stands for from an array's file names."""
    n_t, n_c, n_z = info.shape[:3]
    t_vals: list = [None] * n_t
    c_vals: list = [None] * n_c
    z_vals: list = [None] * n_z
    for name, ref in existing.items():
        p = parse_virtual_name(name)
        t_vals[ref.index[0]], c_vals[ref.index[1]], z_vals[ref.index[2]] = p.t, p.channel, p.z
    for vals in (t_vals, c_vals, z_vals):  # unused slots (never written) get placeholder values
        for i, v in enumerate(vals):
            if v is None:
                vals[i] = -(i + 1)
    return t_vals, c_vals, z_vals


def _is_io_failure(e: BaseException) -> bool:
    """Network and server failures somewhere in an exception chain (not a codec error)."""
    seen = 0
    while e is not None and seen < 10:
        mod = type(e).__module__.split(".", 1)[0]
        if mod in ("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3") \
                or isinstance(e, (OSError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False
