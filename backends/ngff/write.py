"""Writing planes into a zarr store as an OME-Zarr HCS plate: the field writer.

:class:`FieldWriter` owns what writing needs: which fields are described, which planes of
each exist (present masks), display windows measured from written planes, shapes grown in
memory and not yet saved, and the unflushed flag. It adds what it writes to the
:class:`~backends.ngff.index.PlaneIndex` it shares with the reader, and writes through the
reader's open arrays.

zarr has no public way to grow an array's shape without writing its metadata document;
:func:`grow_in_memory` is the one place that reaches into zarr for it (tested against the
pinned zarr version in tests/test_zarr_parts.py).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from natsort import natsorted

from ..errors import ReadOnlyError, StorageError
from ..naming import ParsedName, parse_virtual_name, split_well
from .index import AXES, INDEX_KEY, ArrayInfo, PlaneIndex, PlaneRef, read_own_index
from .config import ZarrChunkStrategy, ZarrConfig
from .documents import (AXIS_NAMES, PLANES_FORMAT, display_window, encode_present,
                        write_image_metadata, write_plate_metadata)
from .read import ZarrReader
from .store import BACKEND_NAME

if TYPE_CHECKING:
    import zarr

log = logging.getLogger(__name__)


def grow_in_memory(arr: zarr.Array, shape: tuple) -> bool:
    """Give an open array a larger shape without writing its metadata document (what
    ``Array.resize`` does for growth, minus the write); False when this zarr has no such
    field, and the caller resizes instead.

    THE ONE PLACE that edits a private zarr field (``Array._async_array.metadata``): zarr
    3.x has no public call for it. Pinned and tested: tests/test_zarr_parts.py."""
    try:
        inner = arr._async_array
        object.__setattr__(inner, "metadata", inner.metadata.update_shape(shape))
    except AttributeError:
        return False
    return True


class FieldWriter:
    """Writes planes a field (well + site) at a time, and the NGFF metadata of what it wrote.

    ``root_group`` opens (once) the store's root group; ``remote``: the store is written by
    many Dask workers at once, so no writer rewrites the shared root document."""

    def __init__(self, index: PlaneIndex, reader: ZarrReader,
                 root_group: Callable[[], zarr.Group], *, config: ZarrConfig, where: str,
                 store_name: str, remote: bool = False, writable: bool = True) -> None:
        self.index = index
        self.reader = reader
        self.root_group = root_group
        self.config = config
        self.where = where
        self.store_name = store_name
        self.remote = remote
        self.writable = writable
        self.physics: dict | None = None    # the source's physics (documents.physics_of)
        self._lock = threading.RLock()
        self._described: set[str] = set()                 # arrays whose NGFF metadata is written
        self._plate_described: frozenset[str] = frozenset()
        self._written: set[str] = set()                   # arrays this writer wrote to
        self._unrecorded: dict[str, int] = {}             # array -> site: record not yet written
        self._windows: dict[str, dict[int, list[float]]] = {}   # display windows of written planes
        self._windows_stale: set[str] = set()             # fields whose windows widened since
        self._unflushed = False                           # metadata writes wait for flush()
        self._unsaved_shapes: set[str] = set()            # arrays grown in memory only
        self._present_masks: dict[str, np.ndarray] = {}   # array -> which planes exist

    def mark_described(self) -> None:
        """What the index holds is on disk, described (after opening a store)."""
        self._described.update(self.index.arrays)
        self._plate_described = frozenset(self.index.arrays)

    def describe_again(self) -> None:
        """Write every field's and the plate's metadata at the next flush (after recovery)."""
        self._described.clear()
        self._plate_described = frozenset()
        self._unflushed = True

    def _where(self, rel: str = "") -> str:
        return f"{self.where}/{rel}" if rel else self.where

    def _array(self, path: str) -> zarr.Array:
        return self.reader.array(path)

    def _writable(self, path) -> None:
        if not self.writable:
            raise ReadOnlyError("zarr store opened read-only", backend=BACKEND_NAME, path=path)

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
        self._writable(self.where)
        if len(data_list) != len(paths):
            raise ValueError(f"save_batch: {len(data_list)} arrays for {len(paths)} names")
        fields: dict[tuple[str, int], list[tuple[ParsedName, str, np.ndarray]]] = {}
        for data, path in zip(data_list, paths):
            name = os.fspath(path).rsplit("/", 1)[-1]
            parsed = parse_virtual_name(name)
            arr = np.asarray(data)
            if arr.ndim != 2:
                raise StorageError(f"a plane must be 2D, got shape {arr.shape}", backend=BACKEND_NAME,
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
        from positions, so the store needs no per-plane index (see documents.PLANES_FORMAT)."""
        row, col = split_well(well)
        array_path = f"{row}/{col:02d}/{site - 1}/0"
        first = planes[0][2]
        for _p, name, arr in planes:
            if arr.shape != first.shape or arr.dtype != first.dtype:
                raise StorageError(f"plane {arr.shape} {arr.dtype} differs from the field's "
                                   f"{first.shape} {first.dtype}", backend=BACKEND_NAME, path=name)
        need = tuple(max(getattr(p, axis) for p, _n, _a in planes) for axis in ("t", "channel", "z"))
        info = self.index.arrays.get(array_path)
        if info is None:
            info = self._create_field_array(array_path, need + first.shape, first.dtype)
        elif info.shape[-2:] != first.shape or info.dtype != first.dtype:
            raise StorageError(f"planes {first.shape} {first.dtype} do not match the existing "
                               f"field array {info.shape[-2:]} {info.dtype}", backend=BACKEND_NAME,
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
            self.index.files[name] = PlaneRef(array_path, idx)
            mask[idx] = True
        self._written.add(array_path)
        self._unrecorded[array_path] = site
        self._measure_windows(array_path, planes)

    def _grow(self, array_path: str, shape: tuple) -> None:
        """Give the open array a larger shape; its metadata document is written by flush()
        (a plane beyond the shape on disk is found by ``recover_unflushed`` from its chunk).
        (see :func:`grow_in_memory`; resized on disk at once where that cannot be done)."""
        arr = self._array(array_path)
        if grow_in_memory(arr, shape):
            self._unsaved_shapes.add(array_path)
        else:
            arr.resize(shape)

    def _save_shapes(self) -> None:
        """Write the metadata documents of arrays grown in memory (resize to the same shape)."""
        with self._lock:
            while self._unsaved_shapes:
                arr = self._array(self._unsaved_shapes.pop())
                arr.resize(arr.shape)

    def _measure_windows(self, array_path: str, planes: list) -> None:
        """Widen the field's display window per channel to cover these planes (what its
        omero metadata shows; measured here, where the pixels are in memory)."""
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
            root = self.root_group()
            own = root.attrs.get(INDEX_KEY)
            if not (isinstance(own, dict) and own.get("incomplete")):   # a conversion's flag stays
                root.attrs[INDEX_KEY] = {"format": PLANES_FORMAT, "unflushed": True}
            self._unflushed = True

    def _create_field_array(self, array_path: str, shape: tuple, dtype) -> ArrayInfo:
        row, col, field, level = array_path.split("/")
        chunks = (shape if self.config.chunk_strategy is ZarrChunkStrategy.WELL
                  else (1, 1, 1) + shape[-2:])
        v3 = self.config.zarr_format == 3
        try:
            group = self.root_group()
            for name in (row, col, field):
                group = _require_group(group, name)
            self.reader.adopt_array(array_path, group.create_array(
                level, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                compressors=self.config.compressors(), overwrite=True,
                chunk_key_encoding=None if v3 else {"name": "v2", "separator": "/"},
                **({"dimension_names": list(AXIS_NAMES)} if v3 else {})))
        except Exception as e:
            raise StorageError("cannot create zarr array", backend=BACKEND_NAME,
                               path=self._where(array_path), cause=e) from e
        info = ArrayInfo(array_path, shape, np.dtype(dtype), chunks, AXES)
        self.index.add_array(info)
        return info

    def _store_planes(self, array_path: str, planes: list, index_of: dict, existing: bool) -> None:
        arr = self._array(array_path)
        info = self.index.arrays[array_path]
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
        masks = self._present_masks
        mask = masks.get(array_path)
        if mask is None:
            mask = np.zeros(lead_shape, dtype=bool)
            for ref in self.index.refs_of(array_path):
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
        with self._lock, compact_json():
            root = self.root_group()
            physics = {k: v for k, v in (self.physics or {}).items() if v is not None}
            if pixel_size is not None:
                physics["pixel_size"] = pixel_size
            if physics.get("pixel_size") is not None:
                for path, info in self.index.arrays.items():
                    if info.pixel_size != physics["pixel_size"]:
                        info.pixel_size = physics["pixel_size"]
                        self._described.discard(path)
            if refresh_windows:
                self._described -= self._windows_stale
                self._windows_stale.clear()
            self._save_shapes()
            while self._unrecorded:
                path, site = self._unrecorded.popitem()
                mask = self._present_mask(path, self.index.arrays[path].shape[:3])
                self._array(path).attrs[INDEX_KEY] = _planes_record(site, mask)
            omero = None           # windows not measured from written planes: once per flush
            for path, info in self.index.arrays.items():
                if path not in self._described:
                    measured = self._windows.get(path)
                    written = write_image_metadata(root, path, info, self.config,
                                                   physics or None, omero=None if measured
                                                   else omero, measured=measured)
                    omero = omero if measured else written
                    self._described.add(path)
            fields = frozenset(self.index.arrays)
            if fields != self._plate_described:
                write_plate_metadata(root, self.index.arrays, self.config,
                                     name=plate_name or self.store_name)
                self._plate_described = fields
            if self._unflushed or root.attrs.get(INDEX_KEY) != {"format": PLANES_FORMAT}:
                root.attrs[INDEX_KEY] = {"format": PLANES_FORMAT}     # last: the store is whole
            self._unflushed = False

    def index_document(self, arrays: Iterable[str] | None = None) -> dict:
        """What :meth:`adopt` takes: the arrays and planes a Dask worker wrote (in memory only;
        the store itself names its planes from its NGFF structure)."""
        self._save_shapes()           # the client opens these arrays from their documents
        keep = set(self.index.arrays) if arrays is None else set(arrays)
        return {
            "format": 1,
            "arrays": {p: {"shape": list(a.shape), "dtype": a.dtype.str, "chunks": list(a.chunks),
                           "axes": list(a.axes), "pixel_size": a.pixel_size}
                       for p, a in self.index.arrays.items() if p in keep},
            "files": {n: [r.array, *r.index] for n, r in natsorted(self.index.files.items())
                      if r.array in keep},
        }

    def written_arrays(self) -> set[str]:
        return set(self._written)

    def adopt(self, index: dict) -> None:
        """Take in field arrays another process wrote into this store (a Dask worker: each
        writes its own wells' arrays and no shared document; the client calls flush())."""
        with self._lock:
            taken = read_own_index(index, self.where)
            paths = set(taken.arrays)
            self.index.forget_arrays(paths)
            self.reader.forget(paths)
            for path in paths:
                self._described.discard(path)
                self._present_masks.pop(path, None)
            self.index.update(taken)

    def recover_unflushed(self, base: str) -> None:
        """The index of a local store (directory ``base``) whose writer stopped between
        ``save_batch(flush=False)`` and ``flush()`` (a daemon killed): every field array on
        disk (``row/col/field/0``), its planes from the chunks present (one chunk per plane; a
        field in one chunk has all its planes), its shape grown to hold them (the shape on
        disk is the last flush's). Names follow the same rule as the NGFF reader's."""
        import glob
        root = self.root_group()
        found = {os.path.dirname(os.path.relpath(m, base)) for pattern in ("zarr.json", ".zarray")
                 for m in glob.glob(os.path.join(glob.escape(base), "*", "*", "*", "0", pattern))}
        problems = self.index.problems
        for array_path in natsorted(found):
            try:
                self._recover_array(root, base, array_path)
            except Exception as e:       # one unreadable array: the rest is recovered
                problems.append(f"{array_path}: not recovered ({e})")
        for problem in problems:
            log.warning("%s: %s", self.where, problem)
        log.warning("%s: recovered %d planes of %d fields written before the last flush",
                    self.where, len(self.index.files), len(self.index.arrays))

    def _recover_array(self, root, base: str, array_path: str) -> None:
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
        self.index.add_array(info)
        self._unrecorded[array_path] = site              # a writable opening records it again
        self.index.add_planes({
            ParsedName(f"{row}{col}", site, c + 1, z + 1, t + 1).virtual_name():
            PlaneRef(array_path, (t, c, z)) for t, c, z in present})

    def mark_incomplete(self) -> None:
        """Flag a store being written remotely, until flush() writes the index over the flag."""
        self._writable(self.where)
        self.root_group().attrs[INDEX_KEY] = {"incomplete": True}

    def delete(self, path) -> None:
        """Forget a plane: it leaves the index, and its chunk goes if it has one of its own
        (``recover_unflushed`` reads the chunks present as the planes written)."""
        self._writable(path)
        name, ref = self.reader.ref(path)
        with self._lock:
            self.index.remove_plane(name)
            info = self.index.info(ref.array)
            if tuple(info.chunks[:3]) == (1, 1, 1):     # zarr deletes a chunk set to the fill
                arr = self._array(ref.array).with_config({"write_empty_chunks": False})
                arr[ref.index] = arr.fill_value
            mask = self._present_mask(ref.array, info.shape[:3])
            mask[ref.index] = False
            self._unrecorded[ref.array] = int(ref.array.split("/")[2]) + 1    # ours: field = site - 1
            self.flush()


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


def _require_group(parent, name: str):
    """``parent[name]``, created if missing. Writers in other processes (Dask workers writing
    one store) create the same row and column groups at the same time: a group made by one
    of them between zarr's check and its own creation is opened, not an error."""
    from zarr.errors import ContainsGroupError
    try:
        return parent.require_group(name)
    except ContainsGroupError:
        return parent[name]


def compact_json():
    """Metadata documents without indentation: every reader of a big plate parses them all, and
    zarr's default indent makes them ~40 % larger."""
    import zarr
    return zarr.config.set({"json_indent": None})


def _planes_record(site: int, mask: np.ndarray) -> dict:
    """An array's own record: its site, and which planes exist when not all do."""
    record = {"format": PLANES_FORMAT, "site": site}
    present = encode_present(mask)
    if present is not None:
        record["present"] = present
    return record
