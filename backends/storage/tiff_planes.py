"""Vendor TIFF files as plane sources (see backends.storage.planes).

Shape and dtype come from the file's first IFD, so they are known without decoding a pixel;
the pixels are decoded (tifffile + imagecodecs: LZW, Deflate, ...) on first read and kept in
one byte-bounded LRU cache shared by every file, so the kernel's 128 KiB reads of one plane
decode it once. ``ImageSet.plane`` hides whether a set's planes are zarr chunks or files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cache import ArrayCache
from ..errors import CorruptDataError

#: Decoded vendor planes, shared by every TiffFilePlane (a 2048x2048 uint16 plane is 8 MiB).
DECODED = ArrayCache(256 << 20)


@dataclass
class TiffFilePlane:
    """The first image of a TIFF file as a PlaneSource."""

    path: Path
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None = None
    _key: tuple = field(default=(), repr=False)
    _raw_at: int | None = field(default=None, repr=False)   # uncompressed, contiguous: offset

    @classmethod
    def open(cls, path: str | os.PathLike, pixel_size: float | None = None) -> "TiffFilePlane":
        import tifffile
        path = Path(path)
        st = os.stat(path)       # a missing source is FileNotFoundError, as for pass-through files
        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                shape, dtype = tuple(page.shape), np.dtype(page.dtype).newbyteorder(tif.byteorder)
                plain = page.is_contiguous and page.compression == 1 and page.predictor == 1 \
                    and page.fillorder == 1
                raw_at = page.dataoffsets[0] if plain else None
        except Exception as e:
            raise CorruptDataError("cannot read the TIFF header", backend="tiff", path=path,
                                   cause=e) from e
        if len(shape) != 2:
            raise CorruptDataError(f"not a single grayscale plane (shape {shape})", backend="tiff",
                                   path=path)
        return cls(path, shape, dtype, pixel_size, (str(path), st.st_mtime_ns, st.st_size), raw_at)

    @property
    def source(self) -> str:
        return str(self.path)

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return DECODED.get_or_load(self._key, self._decode)[y0:y1]

    def is_decoded(self) -> bool:
        return self._key in DECODED

    def _decode(self) -> np.ndarray:
        import tifffile
        try:
            if self._raw_at is not None:     # 10x faster than tifffile for plain strips
                count = self.shape[0] * self.shape[1]
                plane = np.fromfile(self.path, self.dtype, count, offset=self._raw_at)
                plane = plane.reshape(self.shape) if plane.size == count else plane
            else:
                plane = tifffile.imread(self.path, key=0)
        except Exception as e:
            raise CorruptDataError("cannot decode the TIFF", backend="tiff", path=self.path,
                                   cause=e) from e
        if plane.shape != self.shape or plane.dtype.str[1:] != self.dtype.str[1:]:
            raise CorruptDataError(f"truncated, or changed while mounted: now {plane.dtype} "
                                   f"{plane.shape}, was {self.dtype} {self.shape}",
                                   backend="tiff", path=self.path)
        return np.ascontiguousarray(plane, dtype=self.dtype.newbyteorder("="))

