"""Every chunk read from a zarr store is checked before zarr's decoders see it.

:func:`guard_store` wraps any zarr store (local, object storage, a cache in front of one).
Reading a chunk key, the wrapper finds the key's array (its ``zarr.json`` or ``.zarray``,
read once per array), and checks the bytes against the array's codec pipeline
(backends.guards.chunk_formats): Blosc, zstd, gzip, zlib, numcodecs LZ4, crc32c, uncompressed.
Sharded arrays (zarr v3): the shard index against the shard's size (and its crc32c), and
every inner chunk read against the inner codecs. A pipeline with a codec that has no check
(any other compressor, two compressors in a row, an unknown filter) is decoded once in a
worker process first (backends.guards.isolated), so a decoder crash kills the worker, not the
daemon. A chunk that fails is a CorruptDataError naming the array and the chunk key.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable

import numpy as np
from zarr.abc.store import ByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype
from zarr.storage import WrapperStore

from .chunk_formats import COMPRESSOR_CHECKS, ChunkFault, check_blosc, check_raw, strip_crc32c
from ..errors import CorruptDataError
from .isolated import DecoderCrashed, run_isolated_async

log = logging.getLogger(__name__)

METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata"})
ARRAY_DOCUMENTS = ("zarr.json", ".zarray")
# v2 filters run in NumPy on the already decompressed (checked) bytes
SAFE_V2_FILTERS = frozenset({"delta", "fixedscaleoffset", "quantize", "astype", "packbits",
                             "categorize", "bitround"})
SAFE_ARRAY_TO_ARRAY = frozenset({"transpose"})
EMPTY_SHARD_ENTRY = np.uint64(2**64 - 1)


@dataclass(frozen=True)
class Chain:
    """How the bytes of one chunk are checked: the bytes codecs in decoding order."""

    steps: tuple[str, ...]          # "crc32c" or a key of COMPRESSOR_CHECKS
    decoded_nbytes: int | None      # what the compressor (or the raw chunk) must hold
    typesize: int | None            # Blosc's type size
    checked: bool                   # False: trial-decode in a worker process instead
    trial_document: str = ""        # a one-chunk array with these codecs, for the worker
    trial: dict | None = None
    trial_key: str = ""

    def check(self, buf) -> None:
        for name in self.steps:
            if name == "crc32c":
                buf = strip_crc32c(buf)
            elif name == "blosc":
                return check_blosc(buf, self.decoded_nbytes, self.typesize)
            else:
                return COMPRESSOR_CHECKS[name](buf, self.decoded_nbytes)
        check_raw(buf, self.decoded_nbytes)


@dataclass(frozen=True)
class ShardLayout:
    chunks: int                     # inner chunks per shard
    index_nbytes: int
    index_at_end: bool
    index_crc32c: bool


@dataclass(frozen=True)
class ArrayGuard:
    path: str
    chain: Chain                    # whole chunks, or a shard's inner chunks
    shard: ShardLayout | None = None


def _name(codec: Any) -> str:
    name = codec if isinstance(codec, str) else codec.get("name") or codec.get("id", "")
    return name.removeprefix("numcodecs.")


def _config(codec: Any) -> dict:
    return {} if isinstance(codec, str) else codec.get("configuration") or codec


def _itemsize(dtype: Any) -> int | None:
    try:
        return np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        return None


def _chain(steps_encode_order: list[str], raw_nbytes: int | None, typesize: int | None,
           checkable: bool) -> Chain:
    """Decoding order is the reverse of encoding order; at most one compressor can be checked
    (the bytes an inner one sees exist only after the outer one has run)."""
    compressors = [i for i, s in enumerate(steps_encode_order) if s != "crc32c"]
    checkable = checkable and len(compressors) <= 1 and all(
        s == "crc32c" or s in COMPRESSOR_CHECKS for s in steps_encode_order)
    decoded = raw_nbytes
    if compressors and raw_nbytes is not None:       # checksums inside the compressor
        decoded = raw_nbytes + 4 * compressors[0]
    return Chain(tuple(reversed(steps_encode_order)), decoded, typesize, checkable)


def _v2_guard(path: str, doc: dict) -> ArrayGuard:
    chunks = [int(c) for c in doc["chunks"]]
    itemsize = _itemsize(doc["dtype"] if isinstance(doc["dtype"], str) else
                         [tuple(f) for f in doc["dtype"]])
    filters = doc.get("filters") or []
    compressor = doc.get("compressor")
    steps = [_name(compressor)] if compressor else []
    plain = not filters and itemsize is not None
    chain = _chain(steps, math.prod(chunks) * itemsize if plain else None,
                   itemsize if plain and itemsize <= 255 else None,
                   all(_name(f) in SAFE_V2_FILTERS for f in filters))
    trial = {**doc, "shape": chunks, "dimension_separator": "."}
    return ArrayGuard(path, _with_trial(chain, ".zarray", trial, ".".join("0" * len(chunks)) or "0"))


def _with_trial(chain: Chain, document: str, trial: dict, key: str) -> Chain:
    return Chain(chain.steps, chain.decoded_nbytes, chain.typesize, chain.checked, document,
                 trial, key)


def _v3_chain(doc: dict, codecs: list, shape: list[int]) -> Chain:
    names = [_name(c) for c in codecs]
    a2b = next((i for i, n in enumerate(names) if n not in SAFE_ARRAY_TO_ARRAY), len(names))
    itemsize = _itemsize(doc.get("data_type")) if isinstance(doc.get("data_type"), str) else None
    b2b = names[a2b + 1:]
    blosc = next((_config(c) for c in codecs[a2b + 1:] if _name(c) == "blosc"), {})
    chain = _chain(b2b, math.prod(shape) * itemsize if itemsize else None,
                   blosc.get("typesize") or itemsize, a2b < len(names) and names[a2b] == "bytes")
    trial = {"zarr_format": 3, "node_type": "array", "shape": shape,
             "data_type": doc.get("data_type"), "fill_value": doc.get("fill_value", 0),
             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}},
             "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
             "codecs": codecs, "attributes": {}}
    return _with_trial(chain, "zarr.json", trial, "/".join(["c"] + ["0"] * len(shape)))


def _v3_guard(path: str, doc: dict) -> ArrayGuard:
    codecs = doc["codecs"]
    shape = [int(s) for s in doc["chunk_grid"]["configuration"]["chunk_shape"]]
    shard = next((i for i, c in enumerate(codecs) if _name(c) == "sharding_indexed"), None)
    if shard is None:
        return ArrayGuard(path, _v3_chain(doc, codecs, shape))
    cfg = _config(codecs[shard])
    inner = [int(s) for s in cfg["chunk_shape"]]
    index_codecs = [_name(c) for c in cfg.get("index_codecs", ["bytes", "crc32c"])]
    chain = _v3_chain(doc, cfg["codecs"], inner)
    if shard != len(codecs) - 1 or index_codecs not in (["bytes"], ["bytes", "crc32c"]):
        # shards compressed as a whole, or an unusual index: a whole shard is trial-decoded
        # in the worker (the sharding codec is no "bytes" codec, so the chain is unchecked)
        return ArrayGuard(path, _v3_chain(doc, codecs, shape))
    n = math.prod(s // c for s, c in zip(shape, inner))
    crc = len(index_codecs) == 2
    layout = ShardLayout(n, 16 * n + 4 * crc, cfg.get("index_location", "end") == "end", crc)
    return ArrayGuard(path, chain, layout)


def array_guard(path: str, doc: dict) -> ArrayGuard | None:
    """The checks for the array described by a metadata document (None: not an array)."""
    try:
        if doc.get("zarr_format") == 3 and doc.get("node_type") == "array":
            return _v3_guard(path, doc)
        if doc.get("zarr_format") == 2 and "chunks" in doc and "dtype" in doc:
            return _v2_guard(path, doc)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        log.debug("%s: metadata not understood (%s); zarr will judge it", path, e)
    return None


# -- shards ------------------------------------------------------------------------------

def shard_index(layout: ShardLayout, index_bytes, shard_nbytes: int) -> np.ndarray:
    """The (offset, length) rows of the non-empty inner chunks, all checked to lie in the shard."""
    if len(index_bytes) != layout.index_nbytes:
        raise ChunkFault(f"shard index: {len(index_bytes)} bytes, expected {layout.index_nbytes} "
                         "(truncated)")
    payload = strip_crc32c(index_bytes) if layout.index_crc32c else index_bytes
    table = np.frombuffer(payload, "<u8").reshape(layout.chunks, 2)
    used = table[~(table == EMPTY_SHARD_ENTRY).all(axis=1)]
    lo, hi = ((0, shard_nbytes - layout.index_nbytes) if layout.index_at_end
              else (layout.index_nbytes, shard_nbytes))
    if hi < lo:
        raise ChunkFault(f"shard of {shard_nbytes} bytes is shorter than its index")
    offsets, lengths = used[:, 0], used[:, 1]
    if used.size and ((offsets < lo).any() or (lengths > hi).any() or
                      (offsets > np.uint64(hi) - lengths).any()):
        raise ChunkFault(f"shard index points outside the shard's {shard_nbytes} bytes "
                         "(truncated or corrupt)")
    return used


def shard_pieces(layout: ShardLayout, buf) -> list:
    n = len(buf)
    if n < layout.index_nbytes:
        raise ChunkFault(f"shard of {n} bytes is shorter than its {layout.index_nbytes}-byte index")
    index = buf[n - layout.index_nbytes:] if layout.index_at_end else buf[:layout.index_nbytes]
    return [buf[int(o):int(o) + int(ln)] for o, ln in shard_index(layout, index, n)]


def _is_index_request(layout: ShardLayout, byte_range: ByteRequest) -> bool:
    if layout.index_at_end:
        return isinstance(byte_range, SuffixByteRequest) and byte_range.suffix == layout.index_nbytes
    return isinstance(byte_range, RangeByteRequest) and (byte_range.start, byte_range.end) == (
        0, layout.index_nbytes)


# -- the worker-process trial decode ---------------------------------------------------------

def trial_decode(document: str, metadata: dict, key: str, data: bytes) -> None:
    """Decode one chunk as the only chunk of an in-memory array (runs in the worker)."""
    import zarr
    from zarr.storage import MemoryStore
    to_buffer = default_buffer_prototype().buffer.from_bytes
    store = MemoryStore({document: to_buffer(json.dumps(metadata).encode()), key: to_buffer(data)})
    zarr.open_array(store, mode="r")[...]


async def check_chunk(chain: Chain, buf) -> None:
    if chain.checked:
        return chain.check(buf)
    try:
        await run_isolated_async(trial_decode, chain.trial_document, chain.trial, chain.trial_key,
                                 bytes(buf))
    except DecoderCrashed as e:
        raise ChunkFault(str(e)) from e
    except Exception as e:       # the codec's own error, raised in the worker
        raise ChunkFault(f"cannot be decoded: {type(e).__name__}: {e}") from e


# -- the store wrapper ------------------------------------------------------------------------

class GuardedStore(WrapperStore):
    """A zarr store whose chunk reads are checked (see the module's docstring). Writes,
    listing and metadata pass through."""

    def __init__(self, store, where: str | None = None,
                 arrays: dict[str, ArrayGuard | None] | None = None) -> None:
        super().__init__(store)
        self._where = where or str(store)
        self._arrays = {} if arrays is None else arrays   # prefix -> guard, None: not an array

    def __getattr__(self, name: str):
        """Anything else is the wrapped store's (its cache directory, its root, ...)."""
        if name.startswith("__") or name == "_store":
            raise AttributeError(name)
        return getattr(self._store, name)

    @property
    def wrapped(self):
        """The store underneath (metadata may be read from it directly)."""
        return self._store

    def _with_store(self, store):
        return type(self)(store, self._where, self._arrays)

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        value = await self._store.get(key, prototype or default_buffer_prototype(), byte_range)
        if value is None:
            return None
        name = key.rsplit("/", 1)[-1]
        if name in METADATA_NAMES:
            self._learn(key, value)
            return value
        guard = await self._guard_for(key)
        if guard is not None:
            try:
                await self._check(guard, key, memoryview(value.as_numpy_array()), byte_range)
            except ChunkFault as e:
                raise CorruptDataError(f"chunk {key} of array {guard.path!r}: {e}",
                                       backend="zarr", path=f"{self._where}/{key}") from e
        return value

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]
                                 ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def _get_many(self, requests) -> AsyncIterator[tuple[str, Buffer | None]]:
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def set(self, key: str, value: Buffer) -> None:
        await self._store.set(key, value)
        if key.rsplit("/", 1)[-1] in ARRAY_DOCUMENTS:
            self._learn(key, value)

    async def delete_dir(self, prefix: str) -> None:
        await self._store.delete_dir(prefix)
        for known in [p for p in self._arrays if p == prefix or p.startswith(prefix + "/")]:
            self._arrays.pop(known, None)

    def _learn(self, key: str, value: Buffer) -> None:
        """zarr reads (and writes) an array's metadata before its chunks: keep its checks."""
        prefix, _, name = key.rpartition("/")
        if name not in ARRAY_DOCUMENTS:
            return
        try:
            doc = json.loads(value.to_bytes())
        except ValueError:
            return                      # zarr reports unreadable metadata itself
        if isinstance(doc, dict):
            guard = array_guard(prefix, doc)
            if guard is not None or name == "zarr.json":
                self._arrays[prefix] = guard

    async def _guard_for(self, key: str) -> ArrayGuard | None:
        """The array a chunk key belongs to: the shallowest prefix with array metadata
        (looked up once per prefix, for arrays opened from consolidated metadata)."""
        parts = key.split("/")
        for depth in range(len(parts)):
            prefix = "/".join(parts[:depth])
            if prefix not in self._arrays:
                self._arrays[prefix] = await self._load_guard(prefix)
            guard = self._arrays[prefix]
            if guard is not None:
                return guard
        return None

    async def _load_guard(self, prefix: str) -> ArrayGuard | None:
        for name in ARRAY_DOCUMENTS:
            value = await self._store.get(f"{prefix}/{name}" if prefix else name,
                                          default_buffer_prototype())
            if value is not None:
                try:
                    doc = json.loads(value.to_bytes())
                except ValueError:
                    return None
                return array_guard(prefix, doc) if isinstance(doc, dict) else None
        return None

    async def _check(self, guard: ArrayGuard, key: str, buf, byte_range) -> None:
        layout = guard.shard
        if layout is None:
            if byte_range is None:          # zarr decodes whole chunks only
                await check_chunk(guard.chain, buf)
            return
        if byte_range is None:
            for piece in shard_pieces(layout, buf):
                await check_chunk(guard.chain, piece)
        elif _is_index_request(layout, byte_range):
            shard_index(layout, buf, await self._store.getsize(key))
        else:
            if isinstance(byte_range, RangeByteRequest) and \
                    len(buf) != byte_range.end - byte_range.start:
                raise ChunkFault(f"bytes {byte_range.start}-{byte_range.end} of the shard: "
                                 f"{len(buf)} present (truncated)")
            await check_chunk(guard.chain, buf)


def guard_store(store, where: str | None = None) -> GuardedStore:
    """``store`` with every chunk read checked; ``where`` names it in errors (its root)."""
    return store if isinstance(store, GuardedStore) else GuardedStore(store, where)
