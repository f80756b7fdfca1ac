"""Reading planes of a zarr store: decoded-plane cache, row ranges, read-ahead, batches."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import zarr
from natsort import natsorted

from .errors import StorageError, StorageNotFoundError
from .ngff_index import PlaneRef

log = logging.getLogger(__name__)


@dataclass
class ZarrPlane:
    """One plane of a zarr array as a PlaneSource (see backends.planes)."""

    backend: Any                    # the ZarrStorageBackend
    name: str
    ref: PlaneRef
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None = None
    z_spacing: float | None = None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.backend.read_rows(self.ref, self.name, y0, y1)

    def is_decoded(self) -> bool:
        return self.backend.is_decoded(self.ref)

    @property
    def source(self) -> str:
        return f"{self.backend.root}/{self.ref.array}[{','.join(map(str, self.ref.index))}]"


class ZarrReadMixin:
    """The read side of ZarrStorageBackend."""

    def _array(self, path: str) -> zarr.Array:
        arr = self._open.get(path)
        if arr is None:
            with self._lock:
                arr = self._open.get(path)
                if arr is None:
                    arr = zarr.open_array(store=self._store, path=path,
                                          mode="r" if self.mode == "r" else "a")
                    self._open[path] = arr = writing_every_chunk(arr) if self.mode != "r" \
                        else arr
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
        return ZarrPlane(self, name, ref, info.shape[-2:], info.dtype, info.pixel_size,
                         info.z_spacing)


def writing_every_chunk(arr: zarr.Array) -> zarr.Array:
    """``arr`` storing every chunk written, one equal to the fill value (a black plane) too:
    the chunks on disk are then the record of which planes were written (what
    ``recover_unflushed`` reads after a crash), and zarr skips comparing each chunk with the
    fill value."""
    return arr.with_config({"write_empty_chunks": True})
