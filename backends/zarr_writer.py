"""Writing planes into a zarr store as an OME-Zarr HCS plate, and its root index."""
from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np
from natsort import natsorted

from .errors import ReadOnlyError, StorageError
from .naming import ParsedName, parse_virtual_name, split_well
from .ngff_index import AXES, INDEX_KEY, ArrayInfo, PlaneRef
from .zarr_config import ZarrChunkStrategy
from .zarr_ngff import PLANES_FORMAT
from .zarr_read import writing_every_chunk

log = logging.getLogger(__name__)


class ZarrWriterMixin:
    """The write side of ZarrStorageBackend."""

    physics: dict | None = None     # the source's physics (zarr_ngff.physics_of), set by the creator

    def _writable(self, path) -> None:
        if self.mode == "r":
            raise ReadOnlyError("zarr store opened read-only", backend=self.name, path=path)

    def save(self, data: Any, path: str | os.PathLike, **_) -> None:
        self.save_batch([data], [path])

    def save_batch(self, data_list: Sequence[Any], paths: Sequence[str | os.PathLike], *,
                   flush: bool = True, **_) -> None:
        """Write planes by normalized name, a field (well + site) at a time.

        A field's array is created on first write with the planes given; later
        planes of the same field grow its t/c/z axes as needed. Each plane's chunk is
        written at once; the metadata (grown shapes, present-planes records, NGFF image and
        plate metadata) by ``flush()``. With ``flush=False`` that waits for a later
        ``flush()``: the store is marked unflushed meanwhile, and opening it rebuilds what
        the metadata would say from the arrays and chunks on disk (``recover_unflushed``),
        so a crash loses no plane that was written.
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
        with self._lock, compact_json():
            if not flush:
                self._mark_unflushed()
            for (well, site), planes in fields.items():
                self._write_field(well, site, planes)
            if flush:
                self.flush()

    def _write_field(self, well: str, site: int, planes: list) -> None:
        """Planes of one field into its array, at (t-1, channel-1, z-1): names are derived
        from positions, so the store needs no per-plane index (see zarr_ngff.PLANES_FORMAT)."""
        row, col = split_well(well)
        array_path = f"{row}/{col:02d}/{site - 1}/0"
        first = planes[0][2]
        for _p, name, arr in planes:
            if arr.shape != first.shape or arr.dtype != first.dtype:
                raise StorageError(f"plane {arr.shape} {arr.dtype} differs from the field's "
                                   f"{first.shape} {first.dtype}", backend=self.name, path=name)
        need = tuple(max(getattr(p, axis) for p, _n, _a in planes) for axis in ("t", "channel", "z"))
        info = self._arrays.get(array_path)
        if info is None:
            info = self._create_field_array(array_path, need + first.shape, first.dtype)
        elif info.shape[-2:] != first.shape or info.dtype != first.dtype:
            raise StorageError(f"planes {first.shape} {first.dtype} do not match the existing "
                               f"field array {info.shape[-2:]} {info.dtype}", backend=self.name,
                               path=self._where(array_path))
        shape = tuple(max(a, b) for a, b in zip(info.shape[:3], need)) + first.shape
        if shape != info.shape:
            self._grow(array_path, shape)
            if shape[1] != info.shape[1]:
                self._described.discard(array_path)       # its channels (omero) changed
            info.shape = shape
        mask = self._present_mask(array_path, shape[:3])
        index_of = {name: (p.t - 1, p.channel - 1, p.z - 1) for p, name, _a in planes}
        self._store_planes(array_path, planes, index_of, mask.any())
        for name, idx in index_of.items():
            self._files[name] = PlaneRef(array_path, idx)
            mask[idx] = True
        self._written.add(array_path)
        self._unrecorded[array_path] = site
        self._measure_windows(array_path, planes)

    def _grow(self, array_path: str, shape: tuple) -> None:
        """Give the open array a larger shape; its metadata document is written by flush()
        (a plane beyond the shape on disk is found by ``recover_unflushed`` from its chunk).
        zarr has no public call that grows an array without writing its metadata: this does
        what ``Array.resize`` does for growth, minus the write, and falls back to resize."""
        arr = self._array(array_path)
        try:
            inner = arr._async_array
            object.__setattr__(inner, "metadata", inner.metadata.update_shape(shape))
        except AttributeError:
            arr.resize(shape)
            return
        self._unsaved_shapes.add(array_path)

    def _save_shapes(self) -> None:
        """Write the metadata documents of arrays grown in memory (resize to the same shape)."""
        with self._lock:
            while self._unsaved_shapes:
                arr = self._array(self._unsaved_shapes.pop())
                arr.resize(arr.shape)

    def _measure_windows(self, array_path: str, planes: list) -> None:
        """Widen the field's display window per channel to cover these planes (what its
        omero metadata shows; measured here, where the pixels are in memory)."""
        from .zarr_ngff import display_window
        windows = self._windows.setdefault(array_path, {})
        for p, _name, arr in planes:
            start, end = display_window(arr)
            old = windows.get(p.channel - 1)
            new = [min(start, old[0]), max(end, old[1])] if old else [start, end]
            if new != old:
                windows[p.channel - 1] = new
                self._windows_stale.add(array_path)

    def windows_stale(self) -> bool:
        """True if planes written since a field was described widened its display windows."""
        return bool(self._windows_stale)

    def _mark_unflushed(self) -> None:
        # Remote stores are written by many Dask workers at once: none rewrites the shared
        # root document (the client marks the store incomplete and flushes it at the end).
        if not self._unflushed and not self.remote:
            root = self._root_group()
            own = root.attrs.get(INDEX_KEY)
            if not (isinstance(own, dict) and own.get("incomplete")):   # a conversion's flag stays
                root.attrs[INDEX_KEY] = {"format": PLANES_FORMAT, "unflushed": True}
            self._unflushed = True

    def _create_field_array(self, array_path: str, shape: tuple, dtype) -> ArrayInfo:
        from .zarr_ngff import AXIS_NAMES
        row, col, field, level = array_path.split("/")
        chunks = (shape if self.config.chunk_strategy is ZarrChunkStrategy.WELL
                  else (1, 1, 1) + shape[-2:])
        v3 = self.config.zarr_format == 3
        try:
            group = self._root_group().require_group(row).require_group(col).require_group(field)
            self._open[array_path] = writing_every_chunk(group.create_array(
                level, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                compressors=self.config.compressors(), overwrite=True,
                chunk_key_encoding=None if v3 else {"name": "v2", "separator": "/"},
                **({"dimension_names": list(AXIS_NAMES)} if v3 else {})))
        except Exception as e:
            raise StorageError("cannot create zarr array", backend=self.name,
                               path=self._where(array_path), cause=e) from e
        info = self._arrays[array_path] = ArrayInfo(array_path, shape, np.dtype(dtype), chunks, AXES)
        return info

    def _store_planes(self, array_path: str, planes: list, index_of: dict, existing: bool) -> None:
        arr = self._array(array_path)
        info = self._arrays[array_path]
        if tuple(info.chunks) == tuple(info.shape):
            # The field is one chunk: assemble it and write it once, rather than
            # re-encoding the whole chunk for every plane.
            whole = arr[...] if existing else np.zeros(info.shape, dtype=info.dtype)
            for _p, name, data in planes:
                whole[index_of[name]] = data
            arr[...] = whole
        else:
            for _p, name, data in planes:
                arr[index_of[name]] = data

    def _present_mask(self, array_path: str, lead_shape: tuple) -> np.ndarray:
        """Which planes of a field exist (kept in memory; grown with the array)."""
        masks = self.__dict__.setdefault("_present_masks", {})
        mask = masks.get(array_path)
        if mask is None:
            mask = np.zeros(lead_shape, dtype=bool)
            for ref in self._files.values():
                if ref.array == array_path:
                    mask[ref.index] = True
        elif mask.shape != lead_shape:
            grown = np.zeros(lead_shape, dtype=bool)
            grown[tuple(slice(0, n) for n in mask.shape)] = mask
            mask = grown
        masks[array_path] = mask
        return mask

    def flush(self, *, plate_name: str | None = None, pixel_size: float | None = None,
              refresh_windows: bool = True) -> None:
        """Write OME-Zarr plate/well/image metadata (with ``self.physics``: scale, channels),
        the present-planes records and the root's format marker for what is stored.

        Incremental: image metadata is written once per new field (or new channel), again
        when later planes widened its display windows if ``refresh_windows``, and plate
        metadata when the set of fields changes, so saving planes one by one stays cheap.
        """
        from .zarr_ngff import write_image_metadata, write_plate_metadata
        with self._lock, compact_json():
            root = self._root_group()
            physics = {k: v for k, v in (self.physics or {}).items() if v is not None}
            if pixel_size is not None:
                physics["pixel_size"] = pixel_size
            if physics.get("pixel_size") is not None:
                for path, info in self._arrays.items():
                    if info.pixel_size != physics["pixel_size"]:
                        info.pixel_size = physics["pixel_size"]
                        self._described.discard(path)
            if refresh_windows:
                self._described -= self._windows_stale
                self._windows_stale.clear()
            self._save_shapes()
            while self._unrecorded:
                path, site = self._unrecorded.popitem()
                mask = self._present_mask(path, self._arrays[path].shape[:3])
                self._array(path).attrs[INDEX_KEY] = _planes_record(site, mask)
            omero = None           # windows not measured from written planes: once per flush
            for path, info in self._arrays.items():
                if path not in self._described:
                    measured = self._windows.get(path)
                    written = write_image_metadata(root, path, info, self.config,
                                                   physics or None, omero=None if measured
                                                   else omero, measured=measured)
                    omero = omero if measured else written
                    self._described.add(path)
            fields = frozenset(self._arrays)
            if fields != self._plate_described:
                write_plate_metadata(root, self._arrays, self.config,
                                     name=plate_name or self.store_name)
                self._plate_described = fields
            if self._unflushed or root.attrs.get(INDEX_KEY) != {"format": PLANES_FORMAT}:
                root.attrs[INDEX_KEY] = {"format": PLANES_FORMAT}     # last: the store is whole
            self._unflushed = False

    def index_document(self, arrays: Iterable[str] | None = None) -> dict:
        """What :meth:`adopt` takes: the arrays and planes a Dask worker wrote (in memory only;
        the store itself names its planes from its NGFF structure)."""
        self._save_shapes()           # the client opens these arrays from their documents
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
                self.__dict__.get("_present_masks", {}).pop(path, None)
            self.cache.clear()
            self._load_own_index(index)

    def recover_unflushed(self) -> None:
        """The index of a local store whose writer stopped between ``save_batch(flush=False)``
        and ``flush()`` (a daemon killed): every field array on disk (``row/col/field/0``),
        its planes from the chunks present (one chunk per plane; a field in one chunk has all
        its planes), its shape grown to hold them (the shape on disk is the last flush's).
        Names follow the same rule as the NGFF reader's."""
        import glob
        root = self._root_group()
        base = os.fspath(self.root)
        found = {os.path.dirname(os.path.relpath(m, base)) for pattern in ("zarr.json", ".zarray")
                 for m in glob.glob(os.path.join(glob.escape(base), "*", "*", "*", "0", pattern))}
        for array_path in natsorted(found):
            try:
                self._recover_array(root, base, array_path)
            except Exception as e:       # one unreadable array: the rest is recovered
                self.problems.append(f"{array_path}: not recovered ({e})")
        for problem in self.problems:
            log.warning("%s: %s", self.root, problem)
        log.warning("%s: recovered %d planes of %d fields written before the last flush",
                    self.root, len(self._files), len(self._arrays))

    def _recover_array(self, root, base: str, array_path: str) -> None:
        from .naming import ParsedName
        row, col, field, _level = array_path.split("/")
        arr = root[array_path]
        info = ArrayInfo(array_path, tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks), AXES)
        own = arr.attrs.get(INDEX_KEY)
        site = int(own.get("site", int(field) + 1)) if isinstance(own, dict) else int(field) + 1
        if len(info.shape) != 5:
            return
        present = _chunks_present(os.path.join(base, array_path), info)
        lead = tuple(max([n] + [p[i] + 1 for p in present]) for i, n in enumerate(info.shape[:3]))
        if lead != info.shape[:3]:                        # planes past the shape last written
            info.shape = lead + info.shape[3:]
            self._grow(array_path, info.shape)
        self._arrays[array_path] = info
        self._unrecorded[array_path] = site              # a writable opening records it again
        for t, c, z in present:
            name = ParsedName(f"{row}{col}", site, c + 1, z + 1, t + 1).virtual_name()
            self._files[name] = PlaneRef(array_path, (t, c, z))

    def mark_incomplete(self) -> None:
        """Flag a store being written remotely, until flush() writes the index over the flag."""
        self._writable(self.root)
        self._root_group().attrs[INDEX_KEY] = {"incomplete": True}

    # -- tree operations (a store is one flat directory of planes) --------------
    def delete(self, path, *, recursive: bool = False) -> None:
        """Forget a plane: it leaves the index, and its chunk goes if it has one of its own
        (``recover_unflushed`` reads the chunks present as the planes written)."""
        self._writable(path)
        name, ref = self._ref(path)
        with self._lock:
            del self._files[name]
            info = self._arrays[ref.array]
            if tuple(info.chunks[:3]) == (1, 1, 1):     # zarr deletes a chunk set to the fill
                arr = self._array(ref.array).with_config({"write_empty_chunks": False})
                arr[ref.index] = arr.fill_value
            mask = self._present_mask(ref.array, info.shape[:3])
            mask[ref.index] = False
            self._unrecorded[ref.array] = int(ref.array.split("/")[2]) + 1    # ours: field = site - 1
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


def _chunks_present(array_dir: str, info: ArrayInfo) -> list[tuple[int, int, int]]:
    """(t, c, z) of the planes whose chunk is on disk: keys ``t/c/z/0/0`` (zarr 2, "/"
    separator) or ``c/t/c/z/0/0`` (zarr 3), as this writer creates them."""
    lead = info.shape[:3]
    if tuple(info.chunks[:3]) != (1, 1, 1):           # one chunk per field: all or nothing
        first = ("0",) * len(info.shape)
        whole = any(os.path.isfile(os.path.join(array_dir, *prefix, *first))
                    for prefix in (("c",), ()))
        return list(np.ndindex(*lead)) if whole else []
    prefix = os.path.join(array_dir, "c") if os.path.isdir(os.path.join(array_dir, "c")) \
        else array_dir
    present = []
    for dirpath, _dirs, files in os.walk(prefix):
        parts = os.path.relpath(dirpath, prefix).split(os.sep)
        if len(parts) != 4 or not all(p.isdigit() for p in parts) or "0" not in files:
            continue
        present.append(tuple(int(p) for p in parts[:3]))    # past the shape too: see _grow
    return present


def compact_json():
    """Metadata documents without indentation: every reader of a big plate parses them all, and
    zarr's default indent makes them ~40 % larger."""
    import zarr
    return zarr.config.set({"json_indent": None})


def _planes_record(site: int, mask: np.ndarray) -> dict:
    """An array's own record: its site, and which planes exist when not all do."""
    from .zarr_ngff import encode_present
    record = {"format": PLANES_FORMAT, "site": site}
    present = encode_present(mask)
    if present is not None:
        record["present"] = present
    return record
