"""Checks of compressed chunk bytes against their container format, before a decoder sees them.

numcodecs' Blosc decoder trusts the compressed size written in the chunk's own header and
reads past the end of a shorter buffer (a segfault, which no ``except`` can catch). The
other formats' C decoders are given the buffer's length, but a chunk is checked against
what its format lets us check anyway, so that a bad chunk is refused with a reason before
any C code runs. Every function takes a bytes-like object (a memoryview of the chunk, no
copy) and raises :class:`ChunkFault` with a reason, or returns None.

What each check covers (and cannot):
- Blosc 1.x (numcodecs, zarr's BloscCodec): header version, flags, compressor code, type
  size, decoded size; compressed size == bytes present; every block start and every split's
  length walked and found inside the buffer, the splits tiling it exactly.
- zstd frames: magic, header, frame content size == expected decoded size, every block's
  header and length walked to the frame's end (and its 4-byte checksum when flagged).
- gzip: magic, method, flags, optional header fields, trailer ISIZE == expected size.
- zlib: the RFC 1950 header (method, window, check bits, no preset dictionary).
- numcodecs LZ4 (a 4-byte decoded-size header and one raw LZ4 block; not the LZ4 frame
  format): the header's size == expected size.
- crc32c (zarr v3): the checksum over the payload.
Bit flips that keep a format consistent (inside compressed data without a checksum) cannot
be seen up front; the decoder then either refuses the chunk or returns other pixels.
"""
from __future__ import annotations

import struct

import numpy as np


class ChunkFault(ValueError):
    """The chunk's bytes do not fit their format; the message says how."""


_U32 = struct.Struct("<I")
_BLOSC_HEADER = struct.Struct("<BBBBIII")   # version, versionlz, flags, typesize, nbytes, blocksize, cbytes
BLOSC_MEMCPYED, BLOSC_DONT_SPLIT, BLOSC_RESERVED = 0x02, 0x10, 0x08
_BLOSC_MAX_SPLITS, _BLOSC_MIN_SPLIT_BUFFER = 16, 128


def _u32(buf, pos: int) -> int:
    return _U32.unpack_from(buf, pos)[0]


def _short(what: str, need: int, have: int) -> ChunkFault:
    return ChunkFault(f"{what}: needs {need} bytes, {have} present (truncated)")


def check_blosc(buf, expected_nbytes: int | None = None, typesize: int | None = None) -> None:
    n = len(buf)
    if n < 16:
        raise _short("blosc header", 16, n)
    version, _vlz, flags, ts, nbytes, blocksize, cbytes = _BLOSC_HEADER.unpack_from(buf)
    if cbytes != n:
        raise ChunkFault(f"blosc: header says {cbytes} compressed bytes, {n} present"
                         + (" (truncated)" if cbytes > n else ""))
    if version != 2 or flags & BLOSC_RESERVED or flags >> 5 > 4:
        raise ChunkFault(f"blosc: unknown format (version {version}, flags {flags:#04x})")
    if ts == 0 or (typesize is not None and ts != typesize):
        raise ChunkFault(f"blosc: type size {ts}, the array's is {typesize}")
    if expected_nbytes is not None and nbytes != expected_nbytes:
        raise ChunkFault(f"blosc: header says {nbytes} decoded bytes, the chunk holds "
                         f"{expected_nbytes}")
    if nbytes == 0:
        if cbytes != 16:
            raise ChunkFault(f"blosc: an empty buffer with {cbytes - 16} bytes of data")
        return
    if not 0 < blocksize <= nbytes:
        raise ChunkFault(f"blosc: block size {blocksize} for {nbytes} bytes")
    if flags & BLOSC_MEMCPYED:
        if cbytes != nbytes + 16:
            raise ChunkFault(f"blosc: stored uncompressed, but {cbytes - 16} bytes for {nbytes}")
        return
    _walk_blosc_blocks(buf, nbytes, blocksize, ts, not flags & BLOSC_DONT_SPLIT)


def _walk_blosc_blocks(buf, nbytes: int, blocksize: int, typesize: int, split: bool) -> None:
    """Every block's splits ([int32 length][bytes]) lie inside the buffer and tile it exactly,
    so the decoder's own bounds (it trusts the header's size, now checked) are never crossed."""
    cbytes = len(buf)
    nblocks, leftover = -(-nbytes // blocksize), nbytes % blocksize
    first = 16 + 4 * nblocks
    if first > cbytes:
        raise _short(f"blosc table of {nblocks} block starts", first, cbytes)
    starts = np.frombuffer(buf, "<i4", nblocks, 16)
    if int(starts.min()) < first or int(starts.max()) >= cbytes:
        raise ChunkFault("blosc: a block starts outside the buffer")
    used = 0
    for j, start in enumerate(starts.tolist()):
        last_partial = bool(leftover) and j == nblocks - 1
        size = leftover if last_partial else blocksize
        splits = typesize if (split and typesize <= _BLOSC_MAX_SPLITS and not last_partial
                              and size // typesize >= _BLOSC_MIN_SPLIT_BUFFER) else 1
        pos = start
        for _ in range(splits):
            if pos + 4 > cbytes:
                raise _short(f"blosc block {j}", pos + 4, cbytes)
            length = _U32.unpack_from(buf, pos)[0]
            pos += 4 + length
            if length == 0 or length > size or pos > cbytes:
                raise ChunkFault(f"blosc: block {j} has a split of {length} bytes that does not "
                                 f"fit (block of {size} bytes, buffer of {cbytes})")
        used += pos - start
    if used != cbytes - first:
        raise ChunkFault(f"blosc: blocks cover {used} bytes, the buffer has {cbytes - first}")


_ZSTD_MAGIC, _ZSTD_BLOCK_MAX = 0xFD2FB528, 128 << 10


def check_zstd(buf, expected_nbytes: int | None = None) -> None:
    """One or more zstd frames (and skippable frames) that end exactly at the buffer's end."""
    n, pos, total, known = len(buf), 0, 0, True
    if n == 0:
        raise ChunkFault("zstd: empty chunk")
    while pos < n:
        if pos + 4 > n:
            raise _short("zstd frame magic", pos + 4, n)
        magic = _u32(buf, pos)
        if magic & 0xFFFFFFF0 == 0x184D2A50:        # skippable frame: [magic][size][bytes]
            if pos + 8 > n:
                raise _short("zstd skippable frame", pos + 8, n)
            pos += 8 + _u32(buf, pos + 4)
            if pos > n:
                raise _short("zstd skippable frame", pos, n)
            continue
        if magic != _ZSTD_MAGIC:
            raise ChunkFault(f"zstd: no frame magic at byte {pos}")
        pos, size = _zstd_frame(buf, pos + 4)
        known = known and size is not None
        total += size or 0
    if expected_nbytes is not None and known and total != expected_nbytes:
        raise ChunkFault(f"zstd: frames hold {total} decoded bytes, the chunk holds "
                         f"{expected_nbytes}")


def _zstd_frame(buf, pos: int) -> tuple[int, int | None]:
    """Walk one frame from its header descriptor; return (end, content size or None)."""
    n = len(buf)
    if pos >= n:
        raise _short("zstd frame header", pos + 1, n)
    fhd = buf[pos]
    if fhd & 0x08:
        raise ChunkFault("zstd: reserved bit set in the frame header")
    fcs_flag, single, checksum, dict_flag = fhd >> 6, fhd & 0x20, fhd & 0x04, fhd & 0x03
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    pos += 1 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    if pos + fcs_size > n:
        raise _short("zstd frame header", pos + fcs_size, n)
    size = int.from_bytes(buf[pos:pos + fcs_size], "little") if fcs_size else None
    if fcs_size == 2:
        size += 256
    pos += fcs_size
    while True:
        if pos + 3 > n:
            raise _short("zstd block header", pos + 3, n)
        header = int.from_bytes(buf[pos:pos + 3], "little")
        last, kind, length = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3 or length > _ZSTD_BLOCK_MAX:
            raise ChunkFault(f"zstd: invalid block header at byte {pos}")
        pos += 3 + (1 if kind == 1 else length)     # an RLE block is one byte
        if pos > n:
            raise _short("zstd block", pos, n)
        if last:
            break
    pos += 4 if checksum else 0
    if pos > n:
        raise _short("zstd frame checksum", pos, n)
    return pos, size


def check_gzip(buf, expected_nbytes: int | None = None) -> None:
    n = len(buf)
    if n < 18:
        raise _short("gzip member", 18, n)
    if buf[0] != 0x1F or buf[1] != 0x8B or buf[2] != 8 or buf[3] & 0xE0:
        raise ChunkFault("gzip: no gzip header (magic, method 8, flags)")
    flags, pos = buf[3], 10
    if flags & 0x04:                                   # FEXTRA
        pos += 2 + int.from_bytes(buf[pos:pos + 2], "little")
    for bit in (0x08, 0x10):                           # FNAME, FCOMMENT: zero-terminated
        if flags & bit:
            end = bytes(buf[pos:pos + 65536]).find(b"\0")
            if end < 0:
                raise ChunkFault("gzip: unterminated name or comment in the header")
            pos += end + 1
    pos += 2 if flags & 0x02 else 0                    # FHCRC
    if pos + 9 > n:
        raise _short("gzip header and trailer", pos + 9, n)
    if (buf[pos] >> 1) & 3 == 3:
        raise ChunkFault("gzip: reserved deflate block type")
    isize = _u32(buf, n - 4)
    if expected_nbytes is not None and isize != expected_nbytes % (1 << 32):
        raise ChunkFault(f"gzip: trailer says {isize} decoded bytes, the chunk holds "
                         f"{expected_nbytes} (truncated or corrupt)")


def check_zlib(buf, expected_nbytes: int | None = None) -> None:
    n = len(buf)
    if n < 7:
        raise _short("zlib stream", 7, n)
    cmf, flg = buf[0], buf[1]
    if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flg) % 31 or flg & 0x20:
        raise ChunkFault("zlib: not a zlib header (method 8, window, check bits, no dictionary)")
    if (buf[2] >> 1) & 3 == 3:
        raise ChunkFault("zlib: reserved deflate block type")


def check_lz4(buf, expected_nbytes: int | None = None) -> None:
    """numcodecs' LZ4: [uint32 decoded size][one LZ4 block] (decoded with LZ4_decompress_safe)."""
    n = len(buf)
    if n < 5:
        raise _short("numcodecs lz4 chunk", 5, n)
    size = _u32(buf, 0)
    if expected_nbytes is not None and size != expected_nbytes:
        raise ChunkFault(f"lz4: header says {size} decoded bytes, the chunk holds {expected_nbytes}")


def check_raw(buf, expected_nbytes: int | None = None) -> None:
    if expected_nbytes is not None and len(buf) != expected_nbytes:
        raise ChunkFault(f"uncompressed chunk of {len(buf)} bytes, expected {expected_nbytes}")


def strip_crc32c(buf):
    """zarr v3's crc32c codec: payload + little-endian CRC32C of it. Returns the payload."""
    import google_crc32c
    n = len(buf)
    if n < 4:
        raise _short("crc32c checksum", 4, n)
    payload = buf[:n - 4]
    if google_crc32c.value(bytes(payload)) != _u32(buf, n - 4):   # it takes bytes only
        raise ChunkFault("crc32c checksum does not match")
    return payload


# codec name (zarr v2 "id" or v3 "name", numcodecs.zarr3 names included) -> check
COMPRESSOR_CHECKS = {
    "blosc": check_blosc, "zstd": check_zstd, "gzip": check_gzip, "zlib": check_zlib,
    "lz4": check_lz4,
}
