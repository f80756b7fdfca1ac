"""The seam between storage and whatever serves images (the FUSE layer, viewers).

A plane source is one 2D image: its shape and dtype are known without reading
pixels, and rows can be read in ranges. Where the pixels live (a zarr chunk, a
computed result) is the source's business.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class PlaneSource(Protocol):
    shape: tuple[int, int]          # (rows, columns)
    dtype: np.dtype
    pixel_size: float | None         # micrometres per pixel, if known

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as a C-contiguous (y1 - y0, columns) array."""
        ...
