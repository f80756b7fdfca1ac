"""Writing planes into a zarr store as an OME-Zarr HCS plate, and its root index."""
from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np
from natsort import natsorted

from .errors import ReadOnlyError, StorageError
from .naming import ParsedName, parse_virtual_name, split_well
from .ngff_index import AXES, INDEX_KEY, ArrayInfo, PlaneRef
from .zarr_config import ZarrChunkStrategy


class ZarrWriterMixin:
    """The write side of ZarrStorageBackend (moved verbatim from zarr_backend.py)."""

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
