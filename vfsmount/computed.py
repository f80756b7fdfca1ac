"""Compute on read: ``MOUNT/processed/<pipeline>/`` holds TIFFs that a pipeline computes the
first time they are read.

At mount time the pipeline runs once on a synthetic stack of the plate's real plane size, so
every file's exact size is known before anything is read. Reading any byte of an image
computes its whole stack (all z of that well, site, channel, time point) in a worker thread;
the results are kept in a byte-bounded LRU cache (``--compute-cache-mb``, default 256 MiB),
and the kernel keeps the pages of files already read. A function that raises makes that read
fail with EIO and a log line; the daemon carries on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from backends.storage.cache import ArrayCache
from backends.naming import ParsedName, parse_virtual_name
from compute.pipeline import Group, Pipeline, compute_group, group_images, output_layout

from .views.base import coordinate_xattrs

log = logging.getLogger(__name__)


@dataclass
class ComputedPlane:
    """A plane of a computed stack, as a PlaneSource."""

    owner: "ComputedPlanes"
    group: Group
    index: int
    shape: tuple[int, int]
    dtype: np.dtype
    pixel_size: float | None = None

    def read_rows(self, y0: int, y1: int) -> np.ndarray:
        return self.owner.stack(self.group)[self.index][y0:y1]

    def is_decoded(self) -> bool:
        return self.group.key in self.owner.cache

    @property
    def source(self) -> str:
        return f"computed by {self.owner.pipeline.name} from {', '.join(self.group.names)}"


class ComputedPlanes:
    """PlaneSourceFactory for one pipeline over the plate's main image set."""

    def __init__(self, pipeline: Pipeline, backend, names: list[str], *,
                 cache_bytes: int = 256 << 20, pixel_size: float | None = None) -> None:
        self.pipeline, self.backend = pipeline, backend
        self.cache = ArrayCache(cache_bytes)
        self.computed = 0           # stacks computed so far (for logs and tests)
        variable = pipeline.steps[0].variable_components
        groups = group_images(names, variable)
        first = backend.load(groups[0].names[0])
        keeps_z, shape, dtype = output_layout(pipeline, groups[0], first.dtype, first.shape)
        self.planes: dict[str, ComputedPlane] = {}
        for g in groups:
            coords = g.coords if keeps_z else [ParsedName(g.coords[0].well, g.coords[0].site,
                                                          g.coords[0].channel, 1, g.coords[0].t)]
            for i, p in enumerate(coords):
                self.planes[p.virtual_name()] = ComputedPlane(self, g, i, shape, dtype, pixel_size)

    def names(self) -> list[str]:
        return sorted(self.planes, key=lambda n: parse_virtual_name(n))

    def stack(self, group: Group) -> np.ndarray:
        def compute() -> np.ndarray:
            planes = self.backend.load_batch(group.names)
            out = compute_group(self.pipeline, group, planes)
            self.computed += 1
            log.info("computed %s for %s", self.pipeline.name, group.stem)
            return out
        return self.cache.get_or_load(group.key, compute)

    # -- PlaneSourceFactory ------------------------------------------------------------
    def plane(self, name: str) -> ComputedPlane:
        return self.planes[name]

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return coordinate_xattrs(name, self.planes[name].source)
