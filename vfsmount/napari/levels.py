"""Small reads of a plate's planes, for the plate view: a pyramid level of a zarr store, or a
strided read of a file; many at once (a plate view shows thousands).

A zarr image set's planes know their level-0 array and position (``ImageSet.plane(name).ref``);
the store's coarser levels are read by ``backends.ngff.levels`` (batched, see there). What no
level serves (files, a store in object storage, a field without the level) is read at level 0
through the image set and strided, FILE_THREADS at a time.
"""
from __future__ import annotations

from functools import cached_property
from typing import Sequence

import numpy as np


class Reduced:
    """Planes of one image set at 1/factor of their size (factor: a power of two)."""

    def __init__(self, image_set) -> None:
        self.image_set = image_set

    @cached_property
    def _levels(self):
        """The store's pyramid (backends.ngff.levels.OverviewLevels), or None: files, or a
        store whose levels are not read directly."""
        if not self.image_set.serves_planes:
            return None
        from backends.ngff.levels import overview_levels   # zarr: only when a plate is shown
        first = self.image_set.plane(self.image_set.names[0]).ref.array
        return overview_levels(self.image_set.backend, first)

    @property
    def omero(self) -> dict:
        """The first image's NGFF ``omero`` block ({} when there is none)."""
        return self._levels.omero if self._levels is not None else {}

    def read(self, name: str, factor: int) -> np.ndarray:
        """Plane ``name`` at about 1/factor (see ``read_many``)."""
        return self.read_many([name], factor)[0]

    def read_many(self, names: Sequence[str], factor: int) -> list[np.ndarray]:
        """Planes ``names`` at about 1/factor: from the coarsest level no coarser than that,
        strided to 1/factor; from level 0 strided where there is no such level."""
        got: list = [None] * len(names)
        if self._levels is not None and factor > 1:
            planes = [self.image_set.plane(n) for n in names]
            got = self._levels.read_many([(p.ref.array, p.ref.index, p.shape) for p in planes],
                                         factor)
        missing = [i for i, g in enumerate(got) if g is None]   # no such level: level 0
        for i, plane in zip(missing, self._strided_many([names[i] for i in missing], factor)):
            got[i] = plane
        return got

    def _strided_many(self, names: Sequence[str], factor: int) -> list[np.ndarray]:
        from backends.ngff.levels import in_threads
        return in_threads(lambda n: self._strided(n, factor), names)

    def _strided(self, name: str, factor: int) -> np.ndarray:
        """Level 0 of ``name``, decoded whole, strided. (A memory map of an uncompressed TIFF,
        touching only every k-th row, was 2-3 times slower here, cold or warm: the kernel
        reads ahead whole pages anyway, and each page fault costs more than the read.)"""
        return np.asarray(self.image_set.read(name)[::factor, ::factor])
