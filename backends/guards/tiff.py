"""Decoding a TIFF the daemon did not write (vendor images, pipeline inputs, staged outputs)
without letting a corrupt one reach a C decoder unchecked.

The file's image directories are parsed by tifffile (Python). Before any pixel is decoded,
every page's strips or tiles are checked against the file: as many segments as the image
needs, each lying inside the file, and uncompressed ones long enough for their rows.
Uncompressed, LZW, Deflate and PackBits pages are then decoded here (length-checked
decoders); any other compression (JPEG, JPEG 2000, LERC, zstd, WebP, ...) is decoded in a
worker process (backends.guards.isolated), so a decoder crash cannot take the daemon down.
"""
from __future__ import annotations

import math
import os

import numpy as np

from .chunk_formats import ChunkFault
from .isolated import DecoderCrashed, run_isolated

IN_PROCESS_COMPRESSIONS = frozenset({1, 5, 8, 32946, 32773})   # none, LZW, Deflate x2, PackBits


def _segments_needed(page) -> int:
    planes = page.samplesperpixel if page.planarconfig == 2 else 1
    if page.is_tiled:
        return (math.ceil(page.imagewidth / page.tilewidth) * math.ceil(page.imagelength / page.tilelength)
                * math.ceil(page.imagedepth / max(page.tiledepth, 1)) * planes)
    rows = page.rowsperstrip or page.imagelength
    return math.ceil(page.imagelength / rows) * page.imagedepth * planes


def _segment_bytes(page) -> int:
    """Bytes of one uncompressed strip (tile): rows x row bytes."""
    samples = 1 if page.planarconfig == 2 else page.samplesperpixel
    if page.is_tiled:
        return page.tilewidth * page.tilelength * max(page.tiledepth, 1) * samples * page.bitspersample // 8
    rows = min(page.rowsperstrip or page.imagelength, page.imagelength)
    return math.ceil(page.imagewidth * samples * page.bitspersample / 8) * rows


def check_page(page, file_size: int) -> None:
    """Every strip/tile of ``page`` exists and lies inside a file of ``file_size`` bytes."""
    offsets, counts = page.dataoffsets, page.databytecounts
    if len(offsets) != len(counts) or len(offsets) < _segments_needed(page):
        raise ChunkFault(f"page {page.index}: {len(offsets)} strip/tile offsets and {len(counts)} "
                         f"byte counts for an image of {_segments_needed(page)}")
    ends = np.asarray(offsets, np.uint64) + np.asarray(counts, np.uint64)
    if len(ends) and int(ends.max()) > file_size:
        i = int(ends.argmax())
        raise ChunkFault(f"page {page.index}: strip/tile {i} ends at byte {int(ends[i])}, past the "
                         f"end of the file ({file_size} bytes): truncated")
    if page.compression == 1 and not page.is_tiled and len(counts) > 1:
        short = min(counts[:-1])                         # the last strip may hold fewer rows
        if short < _segment_bytes(page):
            raise ChunkFault(f"page {page.index}: an uncompressed strip of {short} bytes, "
                             f"its rows need {_segment_bytes(page)}")


def _decode(path: str) -> np.ndarray:
    import tifffile
    with tifffile.TiffFile(path) as tif:
        return tif.asarray()


def read_tiff_checked(path: str | os.PathLike) -> np.ndarray:
    """The image data of a TIFF, checked first (see the module's docstring). Raises ValueError
    (ChunkFault) for a file that fails the checks, DecoderCrashed if the worker dies on it."""
    import tifffile
    with tifffile.TiffFile(path) as tif:
        data = decode_checked(tif)
    return data if data is not None else run_isolated(_decode, os.fspath(path))


def decode_checked(tif) -> np.ndarray | None:
    """The data of an open ``tifffile.TiffFile``, its pages checked first; None if a page's
    compression must be decoded in a worker process (``read_tiff_checked`` does that)."""
    if len(tif.pages) == 0:               # tifffile only warns about a broken first IFD offset
        raise ValueError("no readable image directory (IFD) in the file")
    size = tif.filehandle.size
    pages = list(tif.pages)
    for page in pages:
        check_page(page, size)
    if all(int(p.compression) in IN_PROCESS_COMPRESSIONS for p in pages):
        return tif.asarray()
    return None


__all__ = ["read_tiff_checked", "decode_checked", "check_page", "DecoderCrashed", "IN_PROCESS_COMPRESSIONS"]
