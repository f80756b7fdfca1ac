"""Reading planes of a zarr store: decoded-plane cache, row ranges, read-ahead, batches.

:class:`ZarrReader` owns what reading needs: the arrays it opened, the decoded-plane cache
and the read-ahead state. It looks planes up in a :class:`~backends.ngff.index.PlaneIndex`
it is given and never changes it.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..storage.cache import ArrayCache
from ..errors import StorageError, StorageNotFoundError
from .index import PlaneIndex, PlaneRef
from .store import BACKEND_NAME, failure

if TYPE_CHECKING:
    import zarr

log = logging.getLogger(__name__)


@dataclass
class ZarrPlane:
    """One plane of a zarr array as a PlaneSource (see backends.storage.planes)."""

    backend: Any                    # the ZarrStorageBackend serving it (its decoded cache)
    name: str
    ref: PlaneRef
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None = None
    z_spacing: float | None = None
    reader: "ZarrReader | None" = None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.reader.read_rows(self.ref, self.name, y0, y1)

    def is_decoded(self) -> bool:
        return self.reader.is_decoded(self.ref)

    @property
    def source(self) -> str:
        return f"{self.reader.where}/{self.ref.array}[{','.join(map(str, self.ref.index))}]"


class ZarrReader:
    """Planes of one store, read through a decoded-plane cache.

    ``store`` is the zarr store, or None with ``open_store`` (a callable that opens it when
    the first array is: a mount lists planes without zarr). ``where`` names the store in
    errors; ``writable`` opens arrays for writing too (the field writer writes through the
    arrays opened here, so one open array serves both); ``owner`` is what
    :class:`ZarrPlane.backend` names."""

    def __init__(self, store, index: PlaneIndex, *, where: str, remote: bool = False,
                 writable: bool = False, cache: ArrayCache | None = None, owner: Any = None,
                 open_store: Callable[[], Any] | None = None) -> None:
        self._store = store
        self._open_store = open_store
        self.index = index
        self.where = where
        self.remote = remote
        self.writable = writable
        # Decoded planes (and whole single-chunk field arrays) for row-range reads:
        # a FUSE read asks for 128 KiB at a time, and decoding a chunk per request
        # would decode each chunk dozens of times.
        self.cache = cache if cache is not None else ArrayCache(256 << 20)
        self.owner = owner
        self._lock = threading.RLock()
        self._open: dict[str, zarr.Array] = {}
        self._expected: str | None = None            # read-ahead: the name after the last read
        self._prefetcher = None

    @property
    def store(self):
        """The zarr store (opened now if it was not: zarr is imported then)."""
        if self._store is None:
            with self._lock:
                if self._store is None:
                    self._store = self._open_store()
        return self._store

    def failure(self, what: str, rel: str, e: BaseException) -> StorageError:
        return failure(what, f"{self.where}/{rel}" if rel else self.where, e, remote=self.remote)

    def array(self, path: str) -> zarr.Array:
        arr = self._open.get(path)
        if arr is None:
            with self._lock:
                arr = self._open.get(path)
                if arr is None:
                    import zarr
                    arr = zarr.open_array(store=self.store, path=path,
                                          mode="a" if self.writable else "r")
                    self._open[path] = arr = writing_every_chunk(arr) if self.writable else arr
        return arr

    def adopt_array(self, path: str, arr: zarr.Array) -> None:
        """An array the writer just created: read and written through from now on."""
        with self._lock:
            self._open[path] = writing_every_chunk(arr)

    def forget(self, paths: Iterable[str]) -> None:
        """Arrays another process rewrote: reopen them, decode their planes again."""
        with self._lock:
            for path in paths:
                self._open.pop(path, None)
            self._expected = None
        self.cache.clear()

    def ref(self, path: str | os.PathLike) -> tuple[str, PlaneRef]:
        name = os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]
        ref = self.index.ref(name)
        if ref is None:
            raise StorageNotFoundError("no such plane in zarr store", backend=BACKEND_NAME,
                                       path=f"{self.where}/{name}")
        return name, ref

    def _cache_key(self, ref: PlaneRef):
        info = self.index.info(ref.array)
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
            whole = self.cache.get_or_load(key, lambda: self.read_whole(ref.array))
            return whole[ref.index][y0:y1]
        plane = self.cache.get_or_load(key, lambda: self.read(ref, name))
        return plane[y0:y1]

    def _read_ahead(self, name: str) -> None:
        """A reader going through the planes in order (cp, rsync, cat *) is about to want the
        next one: fetch it in the background so the network wait overlaps this plane's reads.
        The next name comes from the index (a well read lazily: from its own records, never
        by reading or sorting every name)."""
        with self._lock:
            sequential = self._expected == name
            nxt = self._expected = self.index.next_name(name)
            if not sequential or nxt is None:
                return
            if self._prefetcher is None:
                from concurrent.futures import ThreadPoolExecutor
                self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="zarr-read-ahead")
        ref = self.index.ref(nxt)
        if ref is not None and self._cache_key(ref) not in self.cache:
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
        ref = self.index.ref(name)
        if ref is None:
            return
        self.cache.discard(ref.array)
        self.cache.discard((ref.array, ref.index))

    def is_decoded(self, ref: PlaneRef) -> bool:
        """True when rows of this plane can be served from memory without decoding."""
        return self._cache_key(ref) in self.cache

    def read_whole(self, array_path: str) -> np.ndarray:
        try:
            return self.array(array_path)[...]
        except Exception as e:
            raise self.failure(f"array {array_path!r}", array_path, e) from e

    def read(self, ref: PlaneRef, name: str, rows: slice = slice(None)) -> np.ndarray:
        try:
            arr = self.array(ref.array)
            out = arr[ref.index + (rows, slice(None))]
        except Exception as e:  # codec errors have no common type; name the chunk
            info = self.index.info(ref.array)
            y0 = rows.start or 0
            chunk = [i // c for i, c in zip(ref.index + (y0, 0), info.chunks)]
            raise self.failure(f"chunk {'/'.join(map(str, chunk))} of array {ref.array!r} "
                               f"(plane {name})", ref.array, e) from e
        return np.ascontiguousarray(out)

    def load(self, path: str | os.PathLike) -> np.ndarray:
        name, ref = self.ref(path)
        return self.read(ref, name)

    def load_batch(self, paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
        """Planes in the order asked; each array needed is read once, as a whole."""
        refs = [self.ref(p) for p in paths]
        by_array: dict[str, list[int]] = {}
        for i, (_name, ref) in enumerate(refs):
            by_array.setdefault(ref.array, []).append(i)
        out: list[Any] = [None] * len(refs)
        for array_path, positions in by_array.items():
            if len(positions) == 1:
                name, ref = refs[positions[0]]
                out[positions[0]] = self.read(ref, name)
                continue
            whole = self.read_whole(array_path)
            for i in positions:
                out[i] = np.ascontiguousarray(whole[refs[i][1].index])
            del whole
        return out

    def plane(self, path: str | os.PathLike) -> ZarrPlane:
        name, ref = self.ref(path)
        info = self.index.info(ref.array)
        return ZarrPlane(self.owner, name, ref, info.shape[-2:], info.dtype, info.pixel_size,
                         info.z_spacing, self)


def writing_every_chunk(arr: zarr.Array) -> zarr.Array:
    """``arr`` storing every chunk written, one equal to the fill value (a black plane) too:
    the chunks on disk are then the record of which planes were written (what
    ``recover_unflushed`` reads after a crash), and zarr skips comparing each chunk with the
    fill value."""
    return arr.with_config({"write_empty_chunks": True})
