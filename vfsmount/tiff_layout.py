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

import functools
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


class _HeaderFirst:
    """A layout whose pixels start right after its ``header`` (IFDs and values, padded)."""

    __slots__ = ()

    @property
    def data_offset(self) -> int:
        return len(self.header)


@dataclass(frozen=True)
class TiffLayout(_HeaderFirst):
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None
    header: bytes            # everything before the pixels, padding included
    rows_per_strip: int
    bigtiff: bool

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
            parts.append(_pixel_bytes(max(offset, self.data_offset) - self.data_offset,
                                      end - self.data_offset, self.shape[1], self.dtype, read_rows))
        return b"".join(parts)


def _pixel_bytes(a: int, b: int, width: int, dtype: np.dtype,
                 read_rows: Callable[[int, int], np.ndarray]):
    """Bytes ``a:b`` of a plane's pixel data, reading only the rows they cover."""
    row_bytes = width * dtype.itemsize
    y0, y1 = a // row_bytes, -(-b // row_bytes)
    rows = read_rows(y0, y1)
    if rows.shape != (y1 - y0, width):
        raise ValueError(f"plane source returned rows of shape {rows.shape}, "
                         f"expected {(y1 - y0, width)}")
    raw = memoryview(np.ascontiguousarray(rows, dtype=dtype)).cast("B")
    base = y0 * row_bytes
    return raw[a - base:b - base]


def synthesize(plane: np.ndarray, pixel_size: float | None = None, **kw) -> bytes:
    """The whole file for an in-memory plane (tests and small outputs)."""
    layout = TiffLayout.for_plane(plane.shape, plane.dtype, pixel_size, **kw)
    return layout.read(0, layout.size, lambda y0, y1: plane[y0:y1])


def _build_header(height: int, width: int, dtype: np.dtype, pixel_size: float | None,
                  rps: int, bigtiff: bool, z_spacing: float | None = None) -> bytes:
    head_size = 16 if bigtiff else 8
    description = imagej_description(pixel_size, z_spacing)

    def header_for(data_offset: int) -> bytes:
        entries = _plane_entries(height, width, dtype, rps, data_offset, bigtiff) + \
            _calibration_entries(description, pixel_size)
        return tiff_head(head_size, bigtiff) + encode_ifd(entries, head_size, bigtiff=bigtiff)

    # Offsets do not change the IFD's length, so one trial run fixes where the pixels start.
    data_offset = _aligned(len(header_for(0)))
    out = header_for(data_offset)
    return out + b"\0" * (data_offset - len(out))


# -- the IFD encoder shared by every layout ------------------------------------------------------

_BYTE, _UNDEFINED = 1, 7
_TYPE_SIZE = {_BYTE: 1, _ASCII: 1, _SHORT: 2, _LONG: 4, _RATIONAL: 8, _UNDEFINED: 1, _LONG8: 8}
_TYPE_FORMAT = {_SHORT: "H", _LONG: "I", _RATIONAL: "I", _LONG8: "Q"}
#: One IFD entry: (tag, field type, count, value). The value is raw bytes in the file's byte
#: order (ASCII, BYTE, UNDEFINED, or anything pre-encoded), or an int / a sequence of ints
#: (a RATIONAL is its numerator and denominator).
Entry = tuple


def tiff_head(first_ifd: int, bigtiff: bool = False, byteorder: str = "<") -> bytes:
    mark = b"II" if byteorder == "<" else b"MM"
    if bigtiff:
        return mark + struct.pack(byteorder + "HHHQ", 43, 8, 0, first_ifd)
    return mark + struct.pack(byteorder + "HI", 42, first_ifd)


def encode_ifd(entries, at: int, *, byteorder: str = "<", bigtiff: bool = False,
               next_ifd: int = 0) -> bytes:
    """One IFD placed at file offset ``at``, followed by its out-of-line values (each
    word-aligned). Entries are written in ascending tag order, as TIFF requires."""
    entry_fmt, count_fmt, off_fmt, inline_max = (("HHQ", "Q", "Q", 8) if bigtiff
                                                 else ("HHI", "H", "I", 4))
    entries = sorted(entries, key=lambda e: e[0])
    ifd_size = struct.calcsize("<" + count_fmt) + len(entries) * (4 + 2 * inline_max) + inline_max
    ifd = bytearray(struct.pack(byteorder + count_fmt, len(entries)))
    tail = bytearray()
    for tag, typ, count, value in entries:
        raw = _encode_value(typ, count, value, byteorder)
        if len(raw) > inline_max:
            field = struct.pack(byteorder + off_fmt, at + ifd_size + len(tail))
            tail += raw + b"\0" * (len(raw) & 1)
        else:
            field = raw.ljust(inline_max, b"\0")
        ifd += struct.pack(byteorder + entry_fmt, tag, typ, count) + field
    ifd += struct.pack(byteorder + off_fmt, next_ifd)
    return bytes(ifd) + bytes(tail)


def _encode_value(typ: int, count: int, value, byteorder: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        values = [value] if isinstance(value, int) else list(value)
        raw = struct.pack(f"{byteorder}{len(values)}{_TYPE_FORMAT[typ]}", *values)
    if len(raw) != _TYPE_SIZE[typ] * count:
        raise ValueError(f"TIFF tag of type {typ} and count {count} got {len(raw)} bytes")
    return raw


def _aligned(offset: int) -> int:
    return offset + (-offset % DATA_ALIGNMENT)


def _strips(height: int, rps: int, row_bytes: int, first: int) -> tuple[list[int], list[int]]:
    """Offsets and byte counts of contiguous strips of ``rps`` rows starting at ``first``."""
    n = -(-height // rps)
    counts = [rps * row_bytes] * n
    counts[-1] = (height - rps * (n - 1)) * row_bytes
    return [first + i * rps * row_bytes for i in range(n)], counts


def _plane_entries(height: int, width: int, dtype: np.dtype, rps: int, data_offset: int,
                   bigtiff: bool, subfile_type: int = 0) -> list:
    """Tags of one uncompressed grayscale plane whose rows start at ``data_offset``."""
    offsets, counts = _strips(height, rps, width * dtype.itemsize, data_offset)
    off_type = _LONG8 if bigtiff else _LONG
    return [
        (254, _LONG, 1, subfile_type),
        (256, _LONG, 1, width),
        (257, _LONG, 1, height),
        (258, _SHORT, 1, dtype.itemsize * 8),
        (259, _SHORT, 1, 1),                       # no compression
        (262, _SHORT, 1, 1),                       # min-is-black
        (273, off_type, len(offsets), offsets),
        (277, _SHORT, 1, 1),
        (278, _LONG, 1, rps),
        (279, off_type, len(counts), counts),
        (339, _SHORT, 1, _SAMPLE_FORMAT[dtype.kind]),
    ]


def _calibration_entries(description: bytes, pixel_size: float | None) -> list:
    """The ImageJ description and X/Y resolution in pixels per micron. The resolution unit
    is 'none': ImageJ and Bio-Formats take the unit from the description's ``unit=``."""
    xres = _resolution(pixel_size)
    return [
        (270, _ASCII, len(description), description),
        (282, _RATIONAL, 1, xres),
        (283, _RATIONAL, 1, xres),
        (296, _SHORT, 1, 1),
    ]


# -- a whole field as one ImageJ hyperstack ------------------------------------------------------

class FileTooLargeError(ValueError):
    """The file would pass what a classic TIFF can address (4 GiB)."""


@dataclass(frozen=True)
class HyperstackLayout(_HeaderFirst):
    """A multi-page classic TIFF: every IFD first, then the planes back to back::

        [header][IFD 1 + its values]...[IFD n + its values][pad to 16][plane 1]...[plane n]

    ImageJ 1.x reads an ImageJ stack from the first strip offset on, as if the planes were
    contiguous (they are); every other reader follows the IFDs. ``description`` and the
    ``extra`` entries (ImageJ's slice labels and Info) go into the first IFD only.
    """

    shape: tuple[int, int]
    dtype: np.dtype
    n_planes: int
    header: bytes

    @property
    def plane_bytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @property
    def size(self) -> int:
        return self.data_offset + self.n_planes * self.plane_bytes

    @classmethod
    def build(cls, shape: tuple[int, int], dtype, n_planes: int, description: bytes,
              pixel_size: float | None, extra: tuple = ()) -> "HyperstackLayout":
        dtype = np.dtype(dtype)
        if dtype.kind not in _SAMPLE_FORMAT or len(shape) != 2 or min(shape) < 1 or n_planes < 1:
            raise UnsupportedPlaneError(f"cannot lay out {n_planes} {dtype} planes of shape "
                                        f"{tuple(shape)}")
        dtype = dtype.newbyteorder("<")
        height, width = int(shape[0]), int(shape[1])
        rps = max(1, min(height, STRIP_TARGET_BYTES // (width * dtype.itemsize)))
        first = _calibration_entries(description, pixel_size) + list(extra)

        def ifds(data_offset: int) -> list[list]:
            step = height * width * dtype.itemsize
            return [_plane_entries(height, width, dtype, rps, data_offset + i * step, False)
                    + (first if i == 0 else []) for i in range(n_planes)]

        pixels = n_planes * height * width * dtype.itemsize
        too_large = FileTooLargeError(f"{n_planes} planes of {height}x{width} {dtype} pass 4 GiB")
        if pixels > CLASSIC_LIMIT:
            raise too_large
        sizes = [len(encode_ifd(e, 0)) for e in ifds(0)]    # offsets never change a length
        data_offset = _aligned(8 + sum(sizes))
        if data_offset + pixels > CLASSIC_LIMIT:
            raise too_large
        return cls((height, width), dtype, n_planes, _chain(ifds(data_offset), sizes, data_offset))

    def read(self, offset: int, length: int,
             read_rows: Callable[[int, int, int], np.ndarray]) -> bytes:
        """Bytes ``offset:offset+length``; rows of plane ``i`` come from ``read_rows(i, y0, y1)``."""
        end = min(offset + length, self.size)
        parts = []
        if offset < min(end, self.data_offset):
            parts.append(self.header[offset:min(end, self.data_offset)])
        pos = max(offset, self.data_offset) - self.data_offset
        stop = end - self.data_offset
        while pos < stop:
            i, a = divmod(pos, self.plane_bytes)
            b = min(stop - i * self.plane_bytes, self.plane_bytes)
            parts.append(_pixel_bytes(a, b, self.shape[1], self.dtype,
                                      functools.partial(read_rows, i)))
            pos = i * self.plane_bytes + b
        return b"".join(parts)


def _chain(ifds: list[list], sizes: list[int], data_offset: int) -> bytes:
    """Header and IFDs laid end to end, each IFD pointing at the next."""
    out = bytearray(tiff_head(8))
    for i, entries in enumerate(ifds):
        at = len(out)
        out += encode_ifd(entries, at, next_ifd=at + sizes[i] if i + 1 < len(ifds) else 0)
    return bytes(out) + b"\0" * (data_offset - len(out))


# -- a vendor file with a calibrated first IFD -----------------------------------------------------

#: Tags whose entries are copied from the vendor's first IFD: what it takes to decode its pixels.
_COPIED_TAGS = frozenset((256, 257, 258, 259, 262, 266, 273, 277, 278, 279, 284, 317, 320, 322,
                          323, 324, 325, 338, 339, 347))
@functools.lru_cache(maxsize=16)
def _calibrated_description(z_spacing: float | None) -> bytes:
    """The ImageJ description of a calibrated IFD: ``unit=micron`` and the z spacing, if
    known. Its length depends on the z spacing alone (one per image set), never on the pixel
    size, so a served size needs only the vendor file's size."""
    return imagej_description(1.0, z_spacing)


def _trailer_size(z_spacing: float | None) -> int:
    description = _calibrated_description(z_spacing)
    return (2 + 12 * (len(_COPIED_TAGS) + 4) + 4         # the IFD, at its largest
            + len(description) + (len(description) & 1) + 16)


def _calibrated_size(vendor_size, z_spacing: float | None = None):
    """Vendor bytes, a pad byte to the IFD's word boundary, the new IFD (ints or arrays)."""
    return vendor_size + (vendor_size & 1) + _trailer_size(z_spacing)


@dataclass(frozen=True)
class CalibratedLayout:
    """A vendor TIFF with a calibrated first IFD appended, its size known from the vendor file's
    size alone (no read at ``stat``)::

        [vendor header, first-IFD offset -> new IFD][vendor bytes 8..end][pad][new IFD + values]

    Every vendor byte but the 4-byte first-IFD offset is served unchanged at its own offset, so
    the new IFD's entries for the pixels are the vendor's own 12-byte entries, copied: their
    strip offsets and out-of-line arrays still point where they did, with the vendor's
    compression and predictor. Added: X/YResolution in pixels per micron, resolution unit none
    and an ImageJ description with ``unit=micron`` (how ImageJ and Bio-Formats read a pixel
    size) and, where the plate knows it, ``spacing=`` (ImageJ's voxel depth: an Image Sequence
    import of the flat files gets the instrument's z step). The new IFD's next-IFD offset is
    the vendor's, so further pages stay reachable.
    """

    vendor_size: int
    z_spacing: float | None = None

    @property
    def ifd_offset(self) -> int:
        return self.vendor_size + (self.vendor_size & 1)       # IFDs start on a word boundary

    @property
    def size(self) -> int:
        return _calibrated_size(self.vendor_size, self.z_spacing)

    @property
    def fits(self) -> bool:
        return self.size <= CLASSIC_LIMIT

    @staticmethod
    def served_sizes(vendor_sizes: "np.ndarray", z_spacing: float | None = None) -> "np.ndarray":
        """``size`` where it ``fits``, else the vendor size (served as it is), for a whole
        column of vendor sizes at once: what a listing of 100,000 files needs."""
        calibrated = _calibrated_size(vendor_sizes, z_spacing)
        return np.where(calibrated <= CLASSIC_LIMIT, calibrated, vendor_sizes)

    def patch(self, path, pixel_size: float) -> tuple[bytes, bytes]:
        """(the file's first 8 bytes, what follows the vendor's bytes), from the vendor's IFD."""
        import tifffile
        with tifffile.TiffFile(path) as tif:
            if tif.is_bigtiff or not len(tif.pages) or tif.filehandle.size != self.vendor_size:
                raise UnsupportedPlaneError(f"{path}: not a classic TIFF of {self.vendor_size} "
                                            "bytes with an image")
            fh, bo = tif.filehandle, tif.byteorder
            fh.seek(tif.pages.first.offset)
            n = struct.unpack(bo + "H", fh.read(2))[0]
            raw = fh.read(12 * n + 4)
        kept = [raw[i:i + 12] for i in range(0, 12 * n, 12)
                if struct.unpack(bo + "H", raw[i:i + 2])[0] in _COPIED_TAGS]
        next_ifd = struct.unpack(bo + "I", raw[12 * n:12 * n + 4])[0]
        ifd = _calibrated_ifd(kept, pixel_size, bo, self.ifd_offset, next_ifd,
                              _calibrated_description(self.z_spacing))
        trailer = b"\0" * (self.vendor_size & 1) + ifd.ljust(_trailer_size(self.z_spacing), b"\0")
        return tiff_head(self.ifd_offset, byteorder=bo), trailer

    def read(self, offset: int, length: int, read_vendor: Callable[[int, int], bytes],
             patch: tuple[bytes, bytes] | None) -> bytes:
        """Bytes ``offset:offset+length``; ``read_vendor(offset, length)`` reads the vendor file.
        Without a ``patch`` (a vendor file that cannot get one) the vendor's bytes are served
        as they are, then zeros (readers ignore what no IFD points to)."""
        v = self.vendor_size
        head, trailer = patch or (b"", b"\0" * (self.size - v))
        end = min(offset + length, self.size)
        parts = []
        if offset < min(len(head), end):
            parts.append(head[offset:min(len(head), end)])
        start = max(offset, len(head))
        if start < min(v, end):
            parts.append(read_vendor(start, min(v, end) - start))
        if end > v:
            parts.append(trailer[max(offset, v) - v:end - v])
        return b"".join(parts)


def _calibrated_ifd(kept: list[bytes], pixel_size: float, byteorder: str, at: int,
                    next_ifd: int, description: bytes) -> bytes:
    """The vendor's raw entries ``kept`` and the calibration's, as one IFD placed at ``at``."""
    n = len(kept) + 4
    values_at = at + 2 + 12 * n + 4
    # the calibration's 4 entries, encoded as if their IFD ended where this one's values start
    own = encode_ifd(_calibration_entries(description, pixel_size),
                     values_at - (2 + 12 * 4 + 4), byteorder=byteorder)
    entries = kept + [own[2 + 12 * i:14 + 12 * i] for i in range(4)]
    entries.sort(key=lambda entry: struct.unpack(byteorder + "H", entry[:2])[0])
    return (struct.pack(byteorder + "H", n) + b"".join(entries)
            + struct.pack(byteorder + "I", next_ifd) + own[2 + 12 * 4 + 4:])
