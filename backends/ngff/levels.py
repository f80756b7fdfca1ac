"""Small reads of a local store's coarser pyramid levels, thousands at once: for an overview of a
whole plate (napari's plate view shows every field of every well at 1/8 or less).

:func:`overview_levels` gives a store's :class:`OverviewLevels`. A plane is asked for by its
level-0 array and position (``PlaneRef``); the coarser levels are its image's other
``multiscales`` datasets (the plane index and :class:`~backends.ngff.read.ZarrReader` know level
0 only). Every field is taken to have the first field's pyramid (the same dataset paths and
factors): a field whose level does not fit is answered None, and its caller reads level 0.

Why reads are batched (``read_many``): through zarr's synchronous API each small array costs
an open (its metadata read and parsed) and two hops to zarr's event loop, about 2.6 ms on the
2-core machine, 9 s for a 384-well x 9-field plate. A small zarr v2 level whose ``.zarray`` is
byte-equal to the first field's (same writer, same shape) is read as its one chunk file,
checked against its codec's format and decoded by numcodecs (``_DirectV2``); any other array
goes through zarr's async API, all of them in one coroutine on zarr's loop, each opened on
its own unless its metadata document is the first field's. Chunk files are read FILE_THREADS
at a time (file-system waits and decoders release the GIL).
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..storage.cache import ArrayCache

log = logging.getLogger(__name__)

#: Small levels read whole (every channel, z and t of a field at once: one chunk read, not one
#: per channel); a level array up to this size is kept whole.
WHOLE = 1 << 20
LEVELS = ArrayCache(256 << 20)
FILE_THREADS = 8               # small files read at once (opens and reads wait on the file system)
_META = {2: ".zarray", 3: "zarr.json"}       # an array's metadata document, by zarr format

#: A plane asked for: (its level-0 array path, its index in that array, its (height, width)).
Wanted = tuple[str, tuple, tuple[int, int]]


def overview_levels(backend, first_array: str) -> "OverviewLevels | None":
    """The pyramid levels of a zarr backend's store, the first field's level-0 array
    ``first_array`` standing for every field's; None for a store in object storage (its
    planes are read at level 0, through the backend and its caches)."""
    if backend.remote:
        return None
    return OverviewLevels(Path(backend.root), first_array)


def in_threads(read: Callable, items: Sequence) -> list:
    """``read`` of every item, in order, FILE_THREADS at a time: small files are mostly waits
    on the file system (an open and a read of 0.3 ms each on the loaded 2-core machine),
    which overlap."""
    if len(items) < 2 * FILE_THREADS:
        return [read(i) for i in items]
    with ThreadPoolExecutor(FILE_THREADS) as pool:
        return list(pool.map(read, items, chunksize=max(1, len(items) // (4 * FILE_THREADS))))


def _ome(attrs: dict) -> dict:
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


class OverviewLevels:
    """The coarser levels of one local store's images, read small and many at once."""

    def __init__(self, root: Path, first_array: str) -> None:
        self._root = root
        self._first_group = first_array.rsplit("/", 1)[0]
        self._arrays: dict[str, object] = {}
        self._docs: dict[str, bytes] = {}
        self._directs: dict[str, _DirectV2 | None] = {}
        self._format: int | None = None
        self._lock = threading.Lock()

    @cached_property
    def _store(self):
        from .store import open_store       # zarr: imported when a level is first read
        # every chunk checked before a decoder sees it, as the mount's reads are
        return open_store(self._root, remote=False, read_only=True)

    @cached_property
    def _attrs(self) -> dict:
        """The first field's image group attributes (its NGFF block)."""
        import zarr
        return _ome(dict(zarr.open_group(self._store, path=self._first_group, mode="r").attrs))

    @cached_property
    def pyramid(self) -> list[tuple[str, int]]:
        """(dataset path, factor) of every level, finest first."""
        datasets = ((self._attrs.get("multiscales") or [{}])[0]).get("datasets") or []
        shapes = [self._array(f"{self._first_group}/{d['path']}").shape for d in datasets]
        return [(str(d["path"]), max(1, round(shapes[0][-1] / s[-1])))
                for d, s in zip(datasets, shapes) if s[:-2] == shapes[0][:-2]]

    @cached_property
    def omero(self) -> dict:
        """The first image's NGFF ``omero`` block ({} when there is none)."""
        return self._attrs.get("omero") or {}

    def _array(self, path: str):
        arr = self._arrays.get(path)
        if arr is None:
            import zarr
            # the first array's format for every other: no probing for zarr.json, then .zarray
            # (a third of the time of opening a small level)
            arr = zarr.open_array(self._store, path=path, mode="r", zarr_format=self._format)
            with self._lock:
                self._arrays[path] = arr
                self._format = arr.metadata.zarr_format
        return arr

    def level(self, factor: int) -> tuple[str, int] | None:
        """(dataset path, its factor): the coarsest level no coarser than 1/factor; None when
        level 0 it is (no pyramid, or factor 1)."""
        best = max(((p, f) for p, f in self.pyramid if factor % f == 0), key=lambda pf: pf[1],
                   default=None)
        return best if best is not None and best[1] > 1 else None

    def read_many(self, planes: Sequence[Wanted], factor: int) -> list[np.ndarray | None]:
        """Each plane at about 1/factor, from the coarsest level no coarser than that, strided
        to 1/factor; None for a plane whose field has no readable such level (and for all of
        them when there is no such level): its caller reads level 0."""
        level = self.level(factor)
        if level is None or not planes:
            return [None] * len(planes)
        from zarr.core.sync import sync        # zarr's own loop (safe in any thread)
        wanted = [(_level_path(array, level[0]), tuple(index), (-(-shape[0] // factor),
                                                                 -(-shape[1] // factor)))
                  for array, index, shape in planes]
        try:
            template = self._array(wanted[0][0])                # parsed once
            self._template_doc(template)
        except Exception as e:          # the first field has no such level: level 0 for all
            log.info("%s: level unreadable (%s); level 0 instead", wanted[0][0], e)
            return [None] * len(planes)
        step = factor // level[1]
        direct = self._direct(template)
        got: list = in_threads(lambda w: direct.read(*w, step), wanted) if direct \
            else [_OTHER] * len(wanted)
        rest = [i for i, g in enumerate(got) if g is _OTHER]
        for i, plane in zip(rest, sync(self._read_levels([wanted[i] for i in rest], template,
                                                         step))):
            got[i] = plane
        return got

    def _direct(self, template) -> "_DirectV2 | None":
        """The fast path for the template's kind of array, or None (zarr reads it)."""
        if template.path not in self._directs:
            self._directs[template.path] = _DirectV2.of(template, self._template_doc(template),
                                                       self._root)
        return self._directs[template.path]

    async def _read_levels(self, wanted, template, step: int) -> list[np.ndarray | None]:
        """Each (level path, index, expected shape) read, or None where it cannot be (a field
        without that level, or with another shape): runs on zarr's loop, so no zarr ``sync``
        call may be made here."""
        strided = (slice(None, None, step),) * 2
        root = str(self._root)
        out: list[np.ndarray | None] = []
        for path, index, expected in wanted:   # one at a time: concurrent reads were slower
            try:
                whole = (root, path, step)
                if template.nbytes <= WHOLE:
                    data = _cached(whole)
                    if data is None:
                        arr = await self._level_array(path, template)
                        data = np.asarray(await arr.getitem((...,) + strided))
                        data = LEVELS.get_or_load(whole, lambda: data)
                    plane = data[index]
                else:
                    arr = await self._level_array(path, template)
                    plane = np.asarray(await arr.getitem(index + strided))
                if not _fits(plane, expected):
                    raise ValueError(f"shape {plane.shape}, level 0 strided is {expected}")
            except Exception as e:
                log.info("%s: level unreadable (%s); level 0 instead", path, e)
                plane = None
            out.append(plane)
        return out

    async def _level_array(self, path: str, template):
        """``path``'s array: the template's parsed metadata where its document is the same."""
        import zarr
        from zarr.api.asynchronous import open_array
        from zarr.storage import StorePath
        fmt = template.metadata.zarr_format
        mine = Path(self._root, path, _META[fmt])
        if mine.read_bytes() == self._template_doc(template):
            return zarr.AsyncArray(metadata=template.metadata,
                                   store_path=StorePath(self._store, path))
        return await open_array(store=self._store, path=path, mode="r", zarr_format=fmt)

    def _template_doc(self, template) -> bytes:
        doc = self._docs.get(template.path)
        if doc is None:
            meta = _META[template.metadata.zarr_format]
            doc = self._docs[template.path] = Path(self._root, template.path,
                                                   meta).read_bytes()
        return doc


def _level_path(level0: str, dataset: str) -> str:
    """A level's array path, from the field's level-0 array path."""
    return f"{level0.rsplit('/', 1)[0]}/{dataset}"


def _fits(plane: np.ndarray, expected) -> bool:
    """A level rounds odd sizes down or up: more than one pixel off is another pyramid."""
    return plane.ndim == 2 and max(abs(a - b) for a, b in zip(plane.shape, expected)) <= 1


class _Missing(Exception):
    pass


def _missing():
    raise _Missing


def _cached(key) -> np.ndarray | None:
    """A level array kept in LEVELS, or None (an ArrayCache loads on a miss: here it must not,
    the read is a coroutine)."""
    try:
        return LEVELS.get_or_load(key, _missing)
    except _Missing:
        return None


_OTHER = object()      # a level array the direct path does not read (zarr does)


class _DirectV2:
    """A zarr v2 level array of one chunk (a pyramid's small levels), read without zarr's
    per-array machinery: the chunk file's bytes, checked against the codec's format
    (backends.guards.chunk, as every chunk vfsmount reads), decoded by the array's numcodecs
    compressor. Used for an array whose ``.zarray`` is byte-equal to the template's; any other
    (another writer, another shape, filters, an unchecked codec) is left to zarr."""

    def __init__(self, doc: bytes, meta: dict, chain, compressor, root: Path) -> None:
        self.doc, self.chain, self.compressor, self.root = doc, chain, compressor, root
        self.shape = tuple(int(n) for n in meta["shape"])
        self.dtype = np.dtype(meta["dtype"])
        self.fill = meta.get("fill_value") or 0
        self.key = (meta.get("dimension_separator") or ".").join("0" * len(self.shape))

    @classmethod
    def of(cls, template, doc: bytes, root: Path) -> "_DirectV2 | None":
        import json
        import numcodecs
        from ..guards.chunk import array_guard
        meta = json.loads(doc)
        guard = array_guard(template.path, meta)
        if meta.get("zarr_format") != 2 or meta.get("chunks") != meta.get("shape") or \
                meta.get("filters") or meta.get("order", "C") != "C" or guard is None or \
                not guard.chain.checked or not isinstance(meta.get("dtype"), str):
            return None
        compressor = numcodecs.get_codec(meta["compressor"]) if meta.get("compressor") else None
        return cls(doc, meta, guard.chain, compressor, root)

    def read(self, path: str, index: tuple, expected, step: int):
        """The plane at ``index`` of level array ``path``, strided; _OTHER when zarr must read
        it; None when it cannot be read (level 0 then)."""
        from ..guards.chunk import ChunkFault
        whole = (str(self.root), path, step)
        data = _cached(whole)
        if data is None:
            folder = self.root / path
            try:
                if (folder / ".zarray").read_bytes() != self.doc:
                    return _OTHER
                try:
                    buf = (folder / self.key).read_bytes()
                except FileNotFoundError:              # never written: the fill value
                    data = np.full(self.shape, self.fill, self.dtype)
                else:
                    self.chain.check(memoryview(buf))
                    raw = self.compressor.decode(buf) if self.compressor else buf
                    data = np.frombuffer(raw, self.dtype).reshape(self.shape)
            except (OSError, ChunkFault, ValueError, RuntimeError) as e:
                log.info("%s: level unreadable (%s); level 0 instead", path, e)
                return None
            strided = (...,) + (slice(None, None, step),) * 2
            data = LEVELS.get_or_load(whole, lambda: np.ascontiguousarray(data[strided]))
        plane = data[index]
        return plane if _fits(plane, expected) else None
