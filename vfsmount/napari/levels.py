"""Small reads of a plate's planes, for the plate view: a pyramid level of a zarr store, or a
strided read of a file.

A zarr image set's planes know their level-0 array and position (``ImageSet.plane(name).ref``);
the coarser levels are the image's other ``multiscales`` datasets, read here through zarr's
public API (the store's own backends index level 0 only). Every field of a plate is taken to
have the first field's pyramid (the same dataset paths and factors): a field whose level
does not fit is read from level 0 instead.
"""
from __future__ import annotations

import logging
import threading
from functools import cached_property

import numpy as np

from backends.storage.cache import ArrayCache

log = logging.getLogger(__name__)

#: Small levels read whole (every channel, z and t of a field at once: one chunk read, not one
#: per channel); a level array up to this size is kept whole.
WHOLE = 8 << 20
LEVELS = ArrayCache(256 << 20)


def _ome(attrs: dict) -> dict:
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


class Reduced:
    """Planes of one image set at 1/factor of their size (factor: a power of two)."""

    def __init__(self, image_set) -> None:
        self.image_set = image_set
        self._arrays: dict[str, object] = {}
        self._format: int | None = None
        self._lock = threading.Lock()

    @cached_property
    def _store(self):
        import zarr.storage
        backend = self.image_set.backend
        if backend.remote:                       # s3:// : level 0 through the backend
            return None
        return zarr.storage.LocalStore(str(backend.root), read_only=True)

    @cached_property
    def _first_image(self) -> tuple[str, dict] | None:
        """(group path, attributes) of the first field's image group."""
        import zarr
        if not self.image_set.serves_planes or self._store is None:
            return None
        ref = self.image_set.plane(self.image_set.names[0]).ref
        group = ref.array.rsplit("/", 1)[0]
        return group, _ome(dict(zarr.open_group(self._store, path=group, mode="r").attrs))

    @cached_property
    def pyramid(self) -> list[tuple[str, int]]:
        """(dataset path, factor) of every level, finest first; [] for files."""
        first = self._first_image
        if first is None:
            return []
        group, attrs = first
        datasets = ((attrs.get("multiscales") or [{}])[0]).get("datasets") or []
        shapes = [self._array(f"{group}/{d['path']}").shape for d in datasets]
        return [(str(d["path"]), max(1, round(shapes[0][-1] / s[-1])))
                for d, s in zip(datasets, shapes) if s[:-2] == shapes[0][:-2]]

    @cached_property
    def omero(self) -> dict:
        """The first image's NGFF ``omero`` block ({} when there is none)."""
        first = self._first_image
        return (first[1].get("omero") or {}) if first else {}

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

    def read(self, name: str, factor: int) -> np.ndarray:
        """Plane ``name`` at about 1/factor: the coarsest level no coarser than that, strided."""
        level = max(((p, f) for p, f in self.pyramid if factor % f == 0), key=lambda pf: pf[1],
                    default=None)
        if level is not None and level[1] > 1:
            ref = self.image_set.plane(name).ref
            path = f"{ref.array.rsplit('/', 1)[0]}/{level[0]}"
            step = factor // level[1]
            try:
                arr = self._array(path)
                strided = (slice(None, None, step),) * 2
                if arr.nbytes <= WHOLE:
                    whole = LEVELS.get_or_load((str(self.image_set.backend.root), path, step),
                                               lambda: np.asarray(arr[(...,) + strided]))
                    return whole[tuple(ref.index)]
                return np.asarray(arr[tuple(ref.index) + strided])
            except Exception as e:          # a field without that level: read level 0
                log.info("%s: level %s unreadable (%s); level 0 instead", name, path, e)
        return np.asarray(self.image_set.read(name)[::factor, ::factor])
