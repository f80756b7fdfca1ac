"""An image set: one subdirectory of a plate, as everything that serves it sees it.

A plate's metadata lists its image sets (``workspace``, ``projection``, ``zarr``, ``.``,
``outputs/<name>``); each is a list of flat names (``A01_s001_w1_z001_t001.tif``) served
by one storage backend. :class:`ImageSet` is the one contract the mount's views, the plate
views (LoadData, OME companion) and the napari reader build on. It states what it can do
as properties, the way zarr-python's ``abc/store.py`` does, so no caller asks a backend's
kind, probes it with ``hasattr`` or reads a private field:

- ``serves_files``: every name is a real file (a vendor TIFF behind a mapping, a disk
  folder): ``real_path``, ``open_fd`` (beneath the plate), ``source_stat`` (no link
  followed), and ``stat_sources`` (many rows at once, in order) where the set can stat in
  bulk (``stats_in_bulk``: a mapping, whose source folders are opened once);
- ``serves_planes``: every name is a plane of a store (zarr), synthesized as TIFF on read;
- ``plane(name)`` either way: a :class:`backends.storage.planes.PlaneSource` (shape and dtype
  known without decoding; rows read on demand), and ``read(name)`` the whole plane;
- ``physics``: pixel size, z spacing, time interval, channel names and facts, each None
  where the plate's metadata does not know it (nothing is invented);
- ``fields()``: the names grouped by field (well, site) over the set's channels, z-planes
  and time points;
- ``source(name)`` / ``source_rel(name)``: where the pixels live, for people (``info``,
  ``--xattrs``); ``mtime_ns``: when the set's storage last changed.

:meth:`backends.plates.plate.Plate.image_set` makes one per key and keeps it, so the backend and
its caches are shared by every view of the set (``Plate.backend(key)`` gives a caller a
backend of its own). The set reads its metadata entry once; the backend's kind is read here
and nowhere else.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from natsort import natsorted

from ..guards.containment import Anchor
from ..storage.disk import DiskStorageBackend
from ..errors import MetadataError, PathEscapeError
from .metadata import primary_backend
from ..naming import ParsedName, try_parse_virtual_name
from ..storage.planes import PlaneSource
from ..storage.tiff_planes import TiffFilePlane
from ..storage.virtual_workspace import VirtualWorkspaceBackend

log = logging.getLogger(__name__)

#: Backend kinds whose names are real files; every other kind serves planes of a store.
FILE_BACKENDS = frozenset({"virtual_workspace", "disk"})


@dataclass(frozen=True)
class Physics:
    """What an image set's metadata says about physical sizes and channels; None where it says
    nothing. Lengths in micrometres, the time interval in seconds."""

    pixel_size: float | None = None
    z_spacing: float | None = None
    time_interval: float | None = None
    channel_names: dict[int, str] = field(default_factory=dict)
    channel_info: dict[int, dict] = field(default_factory=dict)   # emission, excitation, color, window
    unknown: dict[str, str] = field(default_factory=dict)        # quantity -> why it is not known

    def label(self, channel: int) -> str:
        """The channel's name, ``w<n>`` where the plate names none."""
        return self.channel_names.get(channel) or f"w{channel}"


@dataclass(frozen=True)
class Field:
    """One field (well, site) of an image set: its planes' names by (channel, z, t), over the
    set's channels, z-planes and time points (a plane a ragged field lacks is None)."""

    well: str
    site: int
    channels: tuple[int, ...]
    zs: tuple[int, ...]
    ts: tuple[int, ...]
    planes: dict[tuple[int, int, int], str]

    def name(self, channel: int, z: int, t: int) -> str | None:
        return self.planes.get((channel, z, t))

    def coordinates(self) -> Iterator[tuple[int, int, int]]:
        """(channel, z, t) in ImageJ's order: channel fastest, then z, then time."""
        for t in self.ts:
            for z in self.zs:
                for c in self.channels:
                    yield c, z, t

    @property
    def complete(self) -> bool:
        return len(self.planes) == len(self.channels) * len(self.zs) * len(self.ts)


class ImageSet:
    """One plate subdirectory: its names, what it can serve, and its physics."""

    def __init__(self, plate: "Plate", key: str) -> None:
        self.plate, self.key = plate, key
        self.entry = plate.entry(key)          # looked up once: every view asks the set
        kind = primary_backend(self.entry)     # the one place a backend kind is read
        self.serves_files = kind in FILE_BACKENDS
        self.serves_planes = not self.serves_files
        self.stats_in_bulk = kind == "virtual_workspace"
        self._kind = kind

    def __repr__(self) -> str:
        return f"ImageSet({self.plate.location!r}, {self.key!r}, {self._kind})"

    # -- storage --------------------------------------------------------------------------
    def open_backend(self):
        """A new backend serving the names (``Plate.backend``: callers that want their own)."""
        where = self.entry.get("path")
        if self._kind == "zarr" and self.key in self.plate.opened:
            return self.plate.opened[self.key]
        if self._kind == "zarr":
            from ..ngff.backend import ZarrStorageBackend    # (zarr is imported on first use)
            return ZarrStorageBackend(where or self.plate.path / self.key, mode="r")
        if self._kind == "disk":   # "path": an output folder outside a hands-off plate
            return DiskStorageBackend(root=Path(where) if where else self.plate.path
                                      if self.key == "." else self.plate.path / self.key)
        if self._kind == "virtual_workspace":
            return VirtualWorkspaceBackend(self.plate.path, self.entry.get("workspace_mapping", {}))
        raise MetadataError(f"subdirectory {self.key!r} names an unknown backend {self._kind!r}",
                            path=self.plate.metadata_file)

    @cached_property
    def backend(self):
        """The backend serving the names; opened once and shared by every view of the set.
        A mapping with bad entries still serves the rest: each bad one fails alone (EACCES)."""
        try:
            return self.open_backend()
        except PathEscapeError as e:
            if "workspace_mapping" not in self.entry:
                raise
            log.error("%s: %s; those files are refused, the rest is served", self.key, e)
            return VirtualWorkspaceBackend(self.plate.path, self.entry["workspace_mapping"],
                                           strict=False)

    @cached_property
    def names(self) -> Sequence[str]:
        return self.entry.get("image_files") or self.backend.list_files("")

    @cached_property
    def _anchor(self) -> Anchor:
        return Anchor(self.plate.path)

    @property
    def mtime_ns(self) -> int:
        """When the set's storage last changed (a store's root; the plate for files)."""
        return _mtime_ns(getattr(self.backend, "root", None) or self.plate.path)

    def real_path(self, name: str) -> Path:
        """The real file behind ``name`` (``serves_files`` only)."""
        if not self.serves_files:
            raise TypeError(f"{self!r} serves planes of a store, not files")
        return self.backend.real_path(name)

    def open_fd(self, name: str) -> int:
        """A read-only descriptor of the file behind ``name``, opened beneath the plate (a
        symlink swapped in after the check still cannot lead outside; a mapped source is
        opened relative to its checked folder, no link followed)."""
        if self.stats_in_bulk:
            return self.backend.open_source(name)
        return self._anchor.open_file(self.real_path(name))

    def source_stat(self, name: str) -> os.stat_result:
        """The file behind ``name`` stat-ed as it is now (a link itself, never followed)."""
        if self.stats_in_bulk:
            folder, base = self.backend.source(name)
            return os.stat(os.path.join(folder.path, base), follow_symlinks=False)
        return os.stat(self.real_path(name))

    def stat_sources(self, names: Sequence[str], columns, on_progress) -> None:
        """Fill ``columns`` (sizes, mtimes, inodes[, modes]) for ``names`` in order, calling
        ``on_progress(rows done)`` as rows are stat-ed (``stats_in_bulk`` only)."""
        if not self.stats_in_bulk:
            raise TypeError(f"{self!r} does not stat its files in bulk")
        self.backend.stat_sources(names, columns, on_progress)

    # -- names well by well (a store opened lazily) ------------------------------------------
    @property
    def streams_wells(self) -> bool:
        """True if the names come well by well as the store's wells are read (a store opened
        lazily: its entry lists no names), so a listing need not read every well first."""
        return self._kind == "zarr" and "image_files" not in self.entry \
            and bool(self.entry.get("inferred_from"))

    def well_order(self) -> list[str]:
        """Every well, in the natural order of the names (reads nothing; ``streams_wells``)."""
        return self.backend.index.well_order()

    def read_wells(self, wells: list[str]) -> list:
        """The planes of ``wells`` (read now where not yet), each with ``count``,
        ``names(lo, hi)`` in natural order, ``offset(name)`` and ``formats()``."""
        return self.backend.index.read_wells(wells)

    def source(self, name: str) -> str:
        """Where ``name``'s pixels live, for people: the real file, or the store and array."""
        return str(self.real_path(name)) if self.serves_files else self.backend.plane(name).source

    def source_rel(self, name: str) -> str:
        """``source``, with a real file given relative to the plate (what ``--xattrs`` serves)."""
        if self.stats_in_bulk:
            return self.backend.source_rel(name)
        if self.serves_files:
            return os.path.relpath(self.real_path(name), self.plate.path)
        return self.backend.plane(name).source

    def plane(self, name: str) -> PlaneSource:
        if self.serves_planes:
            return self.backend.plane(name)
        return TiffFilePlane.open(self.real_path(name), self.physics.pixel_size)

    def read(self, name: str) -> np.ndarray:
        """The whole plane ``name`` as a 2D array."""
        source = self.plane(name)
        return source.read_rows(0, source.shape[0])

    # -- what the names mean ----------------------------------------------------------------
    @cached_property
    def physics(self) -> Physics:
        e = self.entry
        info = {int(c): dict(v) for c, v in (e.get("channel_info") or {}).items()}
        return Physics(pixel_size=_number(e.get("pixel_size")),
                       z_spacing=self._shared("z_spacing", "z_indexes"),
                       time_interval=self._shared("time_interval", "timepoints"),
                       channel_names=self._channel_names(), channel_info=info,
                       unknown=dict(e.get("physics_unknown") or {}))

    def _siblings(self, axis: str) -> list[dict]:
        """This set's entry, then the plate's other entries with the same planes along
        ``axis``: a zarr store converted from vendor files has the vendor's z-planes and
        channels, and its entry may not repeat what the vendor's entry knows about them."""
        def planes(e: dict):
            value = e.get(axis)
            return sorted(value) if isinstance(value, dict) else value
        mine = planes(self.entry)
        return [self.entry] + [e for e in self.plate.subdirectories.values()
                               if e is not self.entry and planes(e) == mine]

    def _shared(self, quantity: str, axis: str) -> float | None:
        return next((float(e[quantity]) for e in self._siblings(axis) if e.get(quantity)), None)

    def _channel_names(self) -> dict[int, str]:
        for e in self._siblings("channels"):
            names = e.get("channel_names") or e.get("channels") or {}
            named = {int(c): n for c, n in names.items() if n}
            if named:
                return named
        return {}

    def parsed(self) -> Iterator[tuple[str, ParsedName]]:
        """(name, coordinates) of every name that follows the flat naming scheme."""
        for name in self.names:
            p = try_parse_virtual_name(name)
            if p is not None:
                yield name, p

    def fields(self) -> list[Field]:
        """Every field in natural (well, site) order, each over the set's channels, z-planes
        and time points."""
        return fields_of(self.parsed())

    @property
    def plate_id(self) -> str | None:
        """The instrument's name or barcode of the plate (Harmony's ``PlateID``), where the
        plate's metadata records one: this set's entry, else any entry of the plate (a store
        converted from a Phenix export keeps the export's entry beside its own)."""
        entries = [self.entry, *self.plate.subdirectories.values()]
        return next((str(e["plate_id"]) for e in entries if e.get("plate_id")), None)

    @property
    def plate_format(self) -> tuple[int, int] | None:
        """(rows, columns) of the plate's format where the instrument records it."""
        entries = [self.entry, *self.plate.subdirectories.values()]
        return next(((int(e["plate_rows"]), int(e["plate_columns"])) for e in entries
                     if e.get("plate_rows") and e.get("plate_columns")), None)


def fields_of(parsed: Iterable[tuple[str, ParsedName]]) -> list[Field]:
    """(name, coordinates) pairs grouped by field, in natural (well, site) order, each field
    over the channels, z-planes and time points of them all (also for names that are not a
    plate subdirectory's, e.g. the planes a pipeline computes)."""
    planes: dict[tuple[str, int], dict[tuple[int, int, int], str]] = {}
    for name, p in parsed:
        planes.setdefault((p.well, p.site), {})[(p.channel, p.z, p.t)] = name
    axes = [tuple(sorted({k[i] for field_planes in planes.values() for k in field_planes}))
            for i in range(3)]
    return [Field(well, site, *axes, planes[(well, site)]) for well, site in natsorted(planes)]


def _number(value) -> float | None:
    return None if value in (None, "") else float(value)


def _mtime_ns(path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return time.time_ns()
