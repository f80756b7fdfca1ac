"""What Fiji/ImageJ users open: whole fields as hyperstacks, and calibrated flat files.

    MOUNT/hyperstacks/{well}_s{site:03d}.tif         every channel, z-plane and time point of
                                                     one field of the main subdirectory
    MOUNT/hyperstacks/{well}_s{site:03d}_t{t:03d}.tif  the same, one file per time point, for
                                                     fields whose file would pass 4 GiB
    MOUNT/images/...                                 vendor files behind a calibrated first IFD

A hyperstack is laid out by ``tiff_layout.HyperstackLayout`` from the shape and dtype of one
plane, so ``stat`` gives its exact size before any pixel is read; its planes come from the
backend's plane sources (``backends.tiff_planes.plane_source``: zarr chunks or vendor TIFFs
decoded on demand), in ImageJ's order: channel fastest, then z, then time. Every field of a
subdirectory has the subdirectory's channels, z-planes and time points, so one macro works on
all of them; a plane a ragged field lacks is served as zeros and named in ImageJ's ``Info``.
"""
from __future__ import annotations

import logging
import stat as stat_mod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from natsort import natsorted

from backends.naming import try_parse_virtual_name
from backends.tiff_planes import plane_source

from .nodes import DirNode, FileNode, PassthroughFile
from .tiff_layout import (CLASSIC_LIMIT, CalibratedLayout, FileTooLargeError, HyperstackLayout,
                          UnsupportedPlaneError)

log = logging.getLogger(__name__)

HYPERSTACKS_DIR = "hyperstacks"
#: Room kept below 4 GiB for a hyperstack's IFDs when deciding whether a field fits one file.
HEADER_ROOM = 64 << 20


@dataclass(frozen=True)
class Calibration:
    """What a subdirectory's metadata says about physical sizes; None where it says nothing
    (nothing is invented: an unknown z spacing is left out of the file)."""

    pixel_size: float | None
    z_spacing: float | None
    time_interval: float | None
    channel_names: dict[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, plate, key: str) -> "Calibration":
        entry = plate.entry(key)
        return cls(entry.get("pixel_size"), _physical(plate, entry, "z_spacing", "z_indexes"),
                   _physical(plate, entry, "time_interval", "timepoints"),
                   _channel_names(plate, entry))

    def label(self, channel: int) -> str:
        return self.channel_names.get(channel) or f"w{channel}"


def _siblings(plate, entry: dict, axis: str) -> list[dict]:
    """``entry``, then the plate's other entries with the same planes along ``axis``: a zarr
    store converted from the vendor files has the vendor's z-planes and channels, and its
    entry may not repeat what the vendor's entry knows about them."""
    def planes(e: dict):
        value = e.get(axis)
        return sorted(value) if isinstance(value, dict) else value
    return [entry] + [e for e in plate.subdirectories.values()
                      if e is not entry and planes(e) == planes(entry)]


def _physical(plate, entry: dict, quantity: str, axis: str) -> float | None:
    return next((float(e[quantity]) for e in _siblings(plate, entry, axis) if e.get(quantity)),
                None)


def _channel_names(plate, entry: dict) -> dict[int, str]:
    for e in _siblings(plate, entry, "channels"):
        names = e.get("channel_names") or e.get("channels") or {}
        named = {int(c): n for c, n in names.items() if n}
        if named:
            return named
    return {}


@dataclass(frozen=True)
class FieldPlan:
    """One hyperstack file: its planes' flat names in ImageJ's C-Z-T order (None = missing)."""

    well: str
    site: int
    channels: tuple[int, ...]
    zs: tuple[int, ...]
    ts: tuple[int, ...]
    names: tuple[str | None, ...]

    def file_name(self, split: bool) -> str:
        base = f"{self.well}_s{self.site:03d}"
        return f"{base}_t{self.ts[0]:03d}.tif" if split else f"{base}.tif"

    def coordinates(self):
        for t in self.ts:
            for z in self.zs:
                for c in self.channels:
                    yield c, z, t


def plan_fields(names) -> list[FieldPlan]:
    """One plan per field of a subdirectory's flat names, each with the subdirectory's
    channels, z-planes and time points."""
    fields: dict[tuple[str, int], dict[tuple[int, int, int], str]] = {}
    for name in names:
        p = try_parse_virtual_name(name)
        if p is not None:
            fields.setdefault((p.well, p.site), {})[(p.channel, p.z, p.t)] = name
    axes = [tuple(sorted({k[i] for planes in fields.values() for k in planes})) for i in range(3)]
    plans = []
    for well, site in natsorted(fields):
        empty = FieldPlan(well, site, *axes, ())
        names = tuple(fields[(well, site)].get(k) for k in empty.coordinates())
        plans.append(FieldPlan(well, site, *axes, names))
    return plans


class HyperstackFile(FileNode):
    """One field (or one time point of it) as an ImageJ hyperstack, synthesized on demand."""

    __slots__ = ("name", "plan", "_backend", "_cal", "_sources", "_layout", "_missing", "_ahead")

    def __init__(self, name: str, plan: FieldPlan, backend, cal: Calibration,
                 mtime_ns: int) -> None:
        super().__init__(stat_mod.S_IFREG | 0o444, mtime_ns)
        self.name, self.plan, self._backend, self._cal = name, plan, backend, cal
        self._sources: list = [None] * len(plan.names)
        self._layout: HyperstackLayout | None = None
        self._missing = [coord for coord, n in zip(plan.coordinates(), plan.names) if n is None]
        self._ahead = 0                  # planes up to this index are decoded or on their way

    def get_xattrs(self) -> dict[bytes, bytes]:
        p = self.plan
        return {b"user.vfsmount.well": p.well.encode(), b"user.vfsmount.site": str(p.site).encode(),
                b"user.vfsmount.source": f"hyperstack of {len(p.names)} planes, "
                                         f"{len(self._missing)} missing".encode()}

    def _source(self, i: int):
        src = self._sources[i]
        if src is None and self.plan.names[i] is not None:
            src = self._sources[i] = plane_source(self._backend, self.plan.names[i],
                                                  self._cal.pixel_size)
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


def populate_hyperstacks(plate, key: str, backend_of):
    """A populator listing one hyperstack per field of subdirectory ``key``; ``backend_of()``
    gives the backend that serves its planes (the main directory's, to share its caches)."""
    def fill(directory: DirNode) -> None:
        backend = backend_of()
        cal = Calibration.of(plate, key)
        names = plate.entry(key).get("image_files") or backend.list_files("")
        fields = plan_fields(names)
        if not fields:
            return
        probe = plane_source(backend, next(n for n in fields[0].names if n))
        for plan in fields:
            parts = [plan] if _fits_one_file(plan, probe.shape, probe.dtype) else _by_time(plan)
            for part in parts:
                if not _fits_one_file(part, probe.shape, probe.dtype):
                    log.warning("hyperstacks: %s passes 4 GiB even for one time point; not listed",
                                part.file_name(True))
                    continue
                name = part.file_name(len(parts) > 1)
                directory.add(name, HyperstackFile(name, part, backend, cal, directory.mtime_ns))
    return fill


def _by_time(plan: FieldPlan) -> list[FieldPlan]:
    per_t = len(plan.channels) * len(plan.zs)
    return [FieldPlan(plan.well, plan.site, plan.channels, plan.zs, (t,),
                      plan.names[i * per_t:(i + 1) * per_t]) for i, t in enumerate(plan.ts)]


# -- calibrated flat files ---------------------------------------------------------------------

class Calibrated:
    """A vendor TIFF served with the plate's pixel size in a new first IFD, appended after the
    vendor's bytes (see ``CalibratedLayout``): its size comes from the vendor file's size
    alone, so ``ls -l`` reads nothing. A file that cannot get one (BigTIFF, not a TIFF) is
    served as it is, padded with zeros to that size, with one log line.

    A mixin over a pass-through file class (``PassthroughFile``, or the listing's
    ``ListedFile``): the concrete class adds the slots ``pixel_size`` and ``_patch``."""

    __slots__ = ()

    def _layout(self) -> CalibratedLayout | None:
        layout = CalibratedLayout(super().size)
        return layout if layout.fits else None          # past 4 GiB: served as it is

    def _patch_for(self, layout: CalibratedLayout) -> tuple[bytes, bytes] | None:
        if self._patch is None:
            try:
                self._patch = layout.patch(self.path(), self.pixel_size)
            except FileNotFoundError:
                raise
            except Exception as e:      # tifffile's errors have no common type
                log.warning("%s: served without calibration: %s", self.name, e)
                self._patch = False
        return self._patch or None

    def refresh(self) -> bool:
        changed = super().refresh()
        if changed:
            self._patch = None
        return changed

    @property
    def size(self) -> int:
        layout = self._layout()
        return layout.size if layout else super().size

    def bytes_are_source(self) -> bool:
        return self._layout() is None          # past 4 GiB: the vendor's bytes as they are

    def read(self, handle, offset: int, length: int) -> bytes:
        layout = self._layout()
        if layout is None:
            return super().read(handle, offset, length)
        plain_read = super().read
        return layout.read(offset, length, lambda o, n: plain_read(handle, o, n),
                           self._patch_for(layout))

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        # The vendor's bytes after its 8-byte header are served at their own offsets.
        layout = self._layout()
        if layout is None or (offset >= 8 and offset + length <= layout.vendor_size):
            return super().read_nowait(handle, offset, length)
        return None


class CalibratedTiff(Calibrated, PassthroughFile):
    """A calibrated pass-through file of an ordinary directory (its own inode)."""

    __slots__ = ("pixel_size", "_patch")

    def __init__(self, plain: PassthroughFile, pixel_size: float) -> None:
        super().__init__(plain.name, plain._source, plain.mode & 0o777)
        self.pixel_size = pixel_size
        self._patch: tuple[bytes, bytes] | bool | None = None    # False: none possible


def is_tiff_name(name: str) -> bool:
    return name.lower().endswith((".tif", ".tiff"))


def populate_calibrated(main: DirNode, pixel_size: float):
    """A populator showing ``main``'s files, its pass-through TIFFs with a calibrated IFD."""
    def fill(directory: DirNode) -> None:
        for name, node in main.children():
            if type(node) is PassthroughFile and is_tiff_name(node.name):
                node = CalibratedTiff(node, pixel_size)
            directory.add(name, node)
    return fill


def add_fiji_folders(root: DirNode, plate, main: DirNode, alias: str | None) -> None:
    """``alias`` (images/, unless None): the main directory, calibrated; and hyperstacks/
    with the main directory's fields."""
    from .listing import ImageDir
    pixel = plate.entry().get("pixel_size")
    if alias and isinstance(main, ImageDir):
        root.add(alias, main.calibrated(float(pixel)) if pixel else main.alias())
    elif alias and pixel:
        root.add(alias, DirNode(main.mtime_ns, populate_calibrated(main, float(pixel))))
    elif alias:
        root.add(alias, DirNode(main.mtime_ns, lambda d: d.share_children(main)))
    root.add(HYPERSTACKS_DIR, DirNode(main.mtime_ns, populate_hyperstacks(
        plate, plate.main, lambda: _backend_of(main, plate))))


def _backend_of(main: DirNode, plate):
    """The backend that already serves the main directory (its decoded-plane cache is shared);
    a new one if its files do not say."""
    for _name, node in main.children():
        backend = getattr(getattr(node, "_source", None), "backend", None)
        if backend is not None:
            return backend
        break
    return plate.backend(plate.main)
