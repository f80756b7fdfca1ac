"""``hyperstacks/``: every field of the main image set as one ImageJ hyperstack.

    MOUNT/hyperstacks/{well}_s{site:03d}.tif         every channel, z-plane and time point of
                                                     one field of the main image set
    MOUNT/hyperstacks/{well}_s{site:03d}_t{t:03d}.tif  the same, one file per time point, for
                                                     fields whose file would pass 4 GiB

A hyperstack is laid out by ``tiff_layout.HyperstackLayout`` from the shape and dtype of one
plane, so ``stat`` gives its exact size before any pixel is read; its planes come from the
image set (``ImageSet.plane``: zarr chunks or vendor TIFFs decoded on demand), in ImageJ's
order: channel fastest, then z, then time; its calibration from the set's ``physics``. Every
field of a set has the set's channels, z-planes and time points (``ImageSet.fields``), so one
macro works on all of them; a plane a ragged field lacks is served as zeros and named in
ImageJ's ``Info``.
"""
from __future__ import annotations

import logging
import stat as stat_mod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from backends.plates.image_set import Field, ImageSet
from backends.layout import HYPERSTACKS_DIR, XATTR_PREFIX

from ..nodes import SYNTHESIZED_MODE, DirNode, FileNode
from ..tiff_layout import CLASSIC_LIMIT, HyperstackLayout
from .base import Mount

log = logging.getLogger(__name__)

#: Room kept below 4 GiB for a hyperstack's IFDs when deciding whether a field fits one file.
HEADER_ROOM = 64 << 20


def hyperstacks_folder(mount: Mount):
    """``hyperstacks/`` over the main image set, where it is shown."""
    main = mount.main()
    if main is None:
        return ()
    return [(HYPERSTACKS_DIR, DirNode(mount.mtime_ns, lambda d: _fill(d, main)))]


@dataclass(frozen=True)
class FieldPlan:
    """One hyperstack file: its planes' flat names in ImageJ's C-Z-T order (None = missing)."""

    well: str
    site: int
    channels: tuple[int, ...]
    zs: tuple[int, ...]
    ts: tuple[int, ...]
    names: tuple[str | None, ...]

    @classmethod
    def of(cls, f: Field) -> "FieldPlan":
        return cls(f.well, f.site, f.channels, f.zs, f.ts,
                   tuple(f.name(c, z, t) for c, z, t in f.coordinates()))

    def file_name(self, split: bool) -> str:
        base = f"{self.well}_s{self.site:03d}"
        return f"{base}_t{self.ts[0]:03d}.tif" if split else f"{base}.tif"

    def coordinates(self):
        for t in self.ts:
            for z in self.zs:
                for c in self.channels:
                    yield c, z, t


class HyperstackFile(FileNode):
    """One field (or one time point of it) as an ImageJ hyperstack, synthesized on demand."""

    __slots__ = ("name", "plan", "_images", "_cal", "_sources", "_layout", "_missing", "_ahead")

    def __init__(self, name: str, plan: FieldPlan, images: ImageSet, mtime_ns: int) -> None:
        super().__init__(stat_mod.S_IFREG | SYNTHESIZED_MODE, mtime_ns)
        self.name, self.plan, self._images, self._cal = name, plan, images, images.physics
        self._sources: list = [None] * len(plan.names)
        self._layout: HyperstackLayout | None = None
        self._missing = [coord for coord, n in zip(plan.coordinates(), plan.names) if n is None]
        self._ahead = 0                  # planes up to this index are decoded or on their way

    def get_xattrs(self) -> dict[bytes, bytes]:
        p = self.plan
        return {f"{XATTR_PREFIX}well".encode(): p.well.encode(),
                f"{XATTR_PREFIX}site".encode(): str(p.site).encode(),
                f"{XATTR_PREFIX}source".encode(): f"hyperstack of {len(p.names)} planes, "
                                                  f"{len(self._missing)} missing".encode()}

    def _source(self, i: int):
        src = self._sources[i]
        if src is None and self.plan.names[i] is not None:
            src = self._sources[i] = self._images.plane(self.plan.names[i])
        return src

    @property
    def layout(self) -> HyperstackLayout:
        if self._layout is None:
            first = next(i for i, n in enumerate(self.plan.names) if n is not None)
            src = self._source(first)
            self._layout = HyperstackLayout.build(
                tuple(src.shape), src.dtype, len(self.plan.names), self._description(),
                self._cal.pixel_size, self._imagej_tags())
        return self._layout

    @property
    def size(self) -> int:
        return self.layout.size

    def _description(self) -> bytes:
        from tifffile import imagej_description
        p, cal = self.plan, self._cal
        extra = {"unit": "micron"} if cal.pixel_size else {}
        if cal.z_spacing and len(p.zs) > 1:
            extra["spacing"] = cal.z_spacing
        if cal.time_interval and len(p.ts) > 1:
            extra["finterval"] = cal.time_interval
        text = imagej_description((len(p.ts), len(p.zs), len(p.channels), 1, 1), "TZCYX", **extra)
        return text.encode() + b"\0"

    def _imagej_tags(self) -> tuple:
        """ImageJ's slice labels (the channel names) and Info (what the file holds)."""
        from tifffile import imagej_metadata_tag
        labels = [self._cal.label(c) for c, _z, _t in self.plan.coordinates()]
        tags = imagej_metadata_tag({"Labels": labels, "Info": self._info()}, "<")
        return tuple((code, dtype, count, value) for code, dtype, count, value, _once in tags)

    def _info(self) -> str:
        p = self.plan
        lines = [f"vfsmount hyperstack: well {p.well}, site {p.site}",
                 "channels: " + ", ".join(f"{c}={self._cal.label(c)}" for c in p.channels),
                 f"z-planes: {list(p.zs)}", f"time points: {list(p.ts)}"]
        if self._missing:
            lines.append(f"missing planes, served as zeros ({len(self._missing)}):")
            lines += [f"  channel {c} ({self._cal.label(c)}), z {z}, t {t}"
                      for c, z, t in self._missing]
        return "\n".join(lines) + "\n"

    def _rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        layout = self.layout
        src = self._source(i)
        if src is None:
            return np.zeros((y1 - y0, layout.shape[1]), layout.dtype)
        if tuple(src.shape) != layout.shape or np.dtype(src.dtype).str[1:] != layout.dtype.str[1:]:
            raise ValueError(f"{self.plan.names[i]} is {np.dtype(src.dtype)} {tuple(src.shape)}, "
                             f"the field's first plane {layout.dtype} {layout.shape}")
        return src.read_rows(y0, y1)

    def read(self, handle, offset: int, length: int) -> bytes:
        layout = self.layout
        first = max(offset - layout.data_offset, 0) // layout.plane_bytes
        last = (offset + length - 1 - layout.data_offset) // layout.plane_bytes
        self._prefetch(first, last + PREFETCH_PLANES)
        return layout.read(offset, length, self._rows)

    def _prefetch(self, first: int, upto: int) -> None:
        """ImageJ reads the planes in order: decode the ones after ``first`` up to ``upto`` in
        the background, so that decoding overlaps the reader's work instead of adding to it."""
        upto = min(upto, len(self.plan.names) - 1)
        for i in range(max(self._ahead, first) + 1, upto + 1):
            if self.plan.names[i] is not None:
                _prefetcher().submit(self._warm, i)
        self._ahead = max(self._ahead, upto)

    def _warm(self, i: int) -> None:
        try:
            self._source(i).read_rows(0, 1)       # decodes the whole plane into the cache
        except Exception:                         # the reader's own read reports it
            pass

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        # Planes already decoded (or missing) are a memcpy away: answer inline.
        layout = self._layout
        if layout is None:
            return None
        first = max(offset - layout.data_offset, 0) // layout.plane_bytes
        last = max(offset + length - 1 - layout.data_offset, 0) // layout.plane_bytes
        for i in range(first, min(last, layout.n_planes - 1) + 1):
            src = self._sources[i]
            if self.plan.names[i] is not None and (src is None or not src.is_decoded()):
                return None
        return self.read(handle, offset, length)


PREFETCH_PLANES = 2
_pool: ThreadPoolExecutor | None = None


def _prefetcher() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(2, thread_name_prefix="hyperstack-prefetch")
    return _pool


def _fits_one_file(plan: FieldPlan, shape, dtype) -> bool:
    pixels = len(plan.names) * int(np.prod(shape)) * np.dtype(dtype).itemsize
    return pixels + HEADER_ROOM <= CLASSIC_LIMIT


def _fill(directory: DirNode, images: ImageSet) -> None:
    """One hyperstack per field of ``images`` (per time point where a field passes 4 GiB)."""
    plans = [FieldPlan.of(f) for f in images.fields()]
    if not plans:
        return
    probe = images.plane(next(n for n in plans[0].names if n))
    for plan in plans:
        parts = [plan] if _fits_one_file(plan, probe.shape, probe.dtype) else _by_time(plan)
        for part in parts:
            if not _fits_one_file(part, probe.shape, probe.dtype):
                log.warning("hyperstacks: %s passes 4 GiB even for one time point; not listed",
                            part.file_name(True))
                continue
            name = part.file_name(len(parts) > 1)
            directory.add(name, HyperstackFile(name, part, images, directory.mtime_ns))


def _by_time(plan: FieldPlan) -> list[FieldPlan]:
    per_t = len(plan.channels) * len(plan.zs)
    return [FieldPlan(plan.well, plan.site, plan.channels, plan.zs, (t,),
                      plan.names[i * per_t:(i + 1) * per_t]) for i, t in enumerate(plan.ts)]
