"""A deterministic, uncompressed TIFF for one 2D plane, laid out before any pixel is read.

This is vfsmount's one hand-written TIFF writer, on purpose: a FUSE file needs
its exact size and the byte range of every row at ``stat`` time, before the
zarr chunks are touched, and no TIFF library exposes that. The layout is::

    [8-byte header][IFD][ImageJ description][X/Y resolution][strip tables][pad to 16]
    [pixel rows, little-endian, contiguous]

Classic TIFF with strips and no tiles, so ImageJ 1.x (which reads pixel data
contiguously from the first strip offset) opens it, as do tifffile, Pillow and
libtiff. The description is an ImageJ header carrying the pixel size in
microns. Planes whose file would pass 4 GiB become BigTIFF (tifffile and
libtiff read those; ImageJ 1.x cannot).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

CLASSIC_LIMIT = 2**32 - 1
STRIP_TARGET_BYTES = 64 * 1024   # libtiff's preferred strip size; readers fetch whole strips
DATA_ALIGNMENT = 16

# TIFF field types
_SHORT, _LONG, _RATIONAL, _ASCII, _LONG8 = 3, 4, 5, 2, 16
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


class UnsupportedPlaneError(ValueError):
    """The dtype or shape cannot be written as a plain grayscale TIFF."""


def imagej_description(pixel_size: float | None, z_spacing: float | None = None) -> bytes:
    lines = ["ImageJ=1.11a", "images=1"]
    if pixel_size or z_spacing:
        lines.append("unit=micron")
    if z_spacing:
        lines.append(f"spacing={z_spacing!r}")        # ImageJ's voxel depth
    return ("\n".join(lines) + "\n").encode() + b"\0"


def _resolution(pixel_size: float | None) -> tuple[int, int]:
    if not pixel_size:
        return (1, 1)
    f = Fraction(1.0 / pixel_size).limit_denominator(1_000_000)
    return (f.numerator, f.denominator)


@dataclass(frozen=True)
class TiffLayout:
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None
    header: bytes            # everything before the pixels, padding included
    rows_per_strip: int
    bigtiff: bool

    @property
    def data_offset(self) -> int:
        return len(self.header)

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * self.dtype.itemsize

    @property
    def size(self) -> int:
        return self.data_offset + self.shape[0] * self.row_bytes

    @classmethod
    def for_plane(cls, shape: tuple[int, int], dtype, pixel_size: float | None = None,
                  *, force_bigtiff: bool = False, z_spacing: float | None = None) -> "TiffLayout":
        dtype = np.dtype(dtype)
        if dtype == np.bool_:
            dtype = np.dtype(np.uint8)
        if dtype.kind not in _SAMPLE_FORMAT or len(shape) != 2 or min(shape) < 1:
            raise UnsupportedPlaneError(f"cannot lay out a {dtype} plane of shape {tuple(shape)}")
        dtype = dtype.newbyteorder("<")
        height, width = int(shape[0]), int(shape[1])
        row_bytes = width * dtype.itemsize
        rps = max(1, min(height, STRIP_TARGET_BYTES // row_bytes))
        data_bytes = height * row_bytes
        bigtiff = force_bigtiff or data_bytes + 65536 + 16 * (height // rps + 1) > CLASSIC_LIMIT
        header = _build_header(height, width, dtype, pixel_size, rps, bigtiff, z_spacing)
        return cls((height, width), dtype, pixel_size, header, rps, bigtiff)

    def read(self, offset: int, length: int, read_rows: Callable[[int, int], np.ndarray]) -> bytes:
        """Bytes ``offset:offset+length`` of the file; pixel rows come from ``read_rows(y0, y1)``."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        parts = []
        if offset < self.data_offset:
            parts.append(self.header[offset:min(end, self.data_offset)])
        if end > self.data_offset:
            a = max(offset, self.data_offset) - self.data_offset
            b = end - self.data_offset
            y0, y1 = a // self.row_bytes, -(-b // self.row_bytes)
            rows = read_rows(y0, y1)
            if rows.shape != (y1 - y0, self.shape[1]):
                raise ValueError(f"plane source returned rows of shape {rows.shape}, "
                                 f"expected {(y1 - y0, self.shape[1])}")
            raw = memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B")
            base = y0 * self.row_bytes
            parts.append(raw[a - base:b - base])
        return b"".join(parts)


def synthesize(plane: np.ndarray, pixel_size: float | None = None, **kw) -> bytes:
    """The whole file for an in-memory plane (tests and small outputs)."""
    layout = TiffLayout.for_plane(plane.shape, plane.dtype, pixel_size, **kw)
    return layout.read(0, layout.size, lambda y0, y1: plane[y0:y1])


def _build_header(height: int, width: int, dtype: np.dtype, pixel_size: float | None,
                  rps: int, bigtiff: bool, z_spacing: float | None = None) -> bytes:
    n_strips = -(-height // rps)
    row_bytes = width * dtype.itemsize
    description = imagej_description(pixel_size, z_spacing)
    xres = _resolution(pixel_size)
    off_type, off_fmt, off_size = (_LONG8, "Q", 8) if bigtiff else (_LONG, "I", 4)

    # (tag, type, count, value-or-bytes); values that do not fit in the entry go to the tail.
    strip_offsets_placeholder = object()
    entries = [
        (254, _LONG, 1, 0),
        (256, _LONG, 1, width),
        (257, _LONG, 1, height),
        (258, _SHORT, 1, dtype.itemsize * 8),
        (259, _SHORT, 1, 1),                       # no compression
        (262, _SHORT, 1, 1),                       # min-is-black
        (270, _ASCII, len(description), description),
        (273, off_type, n_strips, strip_offsets_placeholder),
        (277, _SHORT, 1, 1),
        (278, _LONG, 1, rps),
        (279, off_type, n_strips, None),           # byte counts, filled below
        (282, _RATIONAL, 1, struct.pack("<II", *xres)),
        (283, _RATIONAL, 1, struct.pack("<II", *xres)),
        (296, _SHORT, 1, 1),                       # resolution unit: none (ImageJ reads 'unit=')
        (339, _SHORT, 1, _SAMPLE_FORMAT[dtype.kind]),
    ]
    head_size = 16 if bigtiff else 8
    entry_size, count_size, next_size = (20, 8, 8) if bigtiff else (12, 2, 4)
    ifd_size = count_size + len(entries) * entry_size + next_size
    inline_max = 8 if bigtiff else 4

    # First pass: the tail (out-of-line values) and the pixel data offset.
    tail_offset = head_size + ifd_size
    counts = [rps * row_bytes] * n_strips
    counts[-1] = (height - rps * (n_strips - 1)) * row_bytes
    tail_items = []
    for tag, typ, count, value in entries:
        size = {_SHORT: 2, _LONG: 4, _RATIONAL: 8, _ASCII: 1, _LONG8: 8}[typ] * count
        if size > inline_max:
            tail_items.append((tag, size))
    tail_len = sum(size + (size & 1) for _tag, size in tail_items)   # word-align each value
    data_offset = head_size + ifd_size + tail_len
    data_offset += -data_offset % DATA_ALIGNMENT
    offsets = [data_offset + i * rps * row_bytes for i in range(n_strips)]

    def encode(typ: int, value) -> bytes:
        if isinstance(value, bytes):
            return value
        if value is strip_offsets_placeholder:
            return struct.pack(f"<{n_strips}{off_fmt}", *offsets)
        if value is None:
            return struct.pack(f"<{n_strips}{off_fmt}", *counts)
        return struct.pack({_SHORT: "<H", _LONG: "<I", _LONG8: "<Q"}[typ], value)

    ifd = bytearray(struct.pack("<Q" if bigtiff else "<H", len(entries)))
    tail = bytearray()
    for tag, typ, count, value in entries:
        raw = encode(typ, value)
        if len(raw) > inline_max:
            pos = tail_offset + len(tail)
            tail += raw + (b"\0" if len(raw) & 1 else b"")
            field = struct.pack("<Q" if bigtiff else "<I", pos)
        else:
            field = raw.ljust(inline_max, b"\0")
        ifd += struct.pack("<HHQ" if bigtiff else "<HHI", tag, typ, count) + field
    ifd += b"\0" * next_size                       # no next IFD
    head = (b"II" + struct.pack("<HHHQ", 43, 8, 0, head_size) if bigtiff
            else b"II" + struct.pack("<HI", 42, head_size))
    out = head + bytes(ifd) + bytes(tail)
    assert len(out) <= data_offset, "TIFF header layout overran its own size computation"
    return out + b"\0" * (data_offset - len(out))
