"""Reading a store's NGFF structure (ours or another tool's) into a plane index.

The index maps each flat plane name (``A01_s001_w1_z001_t001.tif``) to an array and the
integer position of the plane in it, and describes every array from its metadata alone:
the plate's wells, each well's images, each image's level-0 dataset, and that array's
shape, dtype and chunks. No chunk is ever read, and every metadata document of one level
(all wells, then all images, then all arrays) is fetched concurrently through the store's
own async API, so a local directory and an ``s3://`` store take the same path.

What real writers produce, all read here: NGFF 0.4 (zarr v2, ``.zattrs``), 0.5 (zarr v3,
attributes under ``ome``) and 0.6 (``coordinateSystems``, ``sequence`` transformations);
sharded arrays; wells without ``well`` attributes (their images are the child groups that
hold ``multiscales``); integer or string ``path`` fields; columns ``1`` or ``01``; any subset
of t, c, z before y, x; pyramids (level 0 is served). ``labels/`` and ``tables/`` are never
images: only the datasets a ``multiscales`` entry lists are.

Names: site = position in the well's image list, channel/z/t = index + 1. A store written
by vfsmount carries the real t/c/z values on each array (``attrs["vfsmount"]``), and older
ones a root index of every name (``attrs["vfsmount"]["files"]``); both are honoured.

A malformed part (a listed well that is missing, a missing dataset, axes that do not
match the array) is one problem line naming the group; the rest of the plate is indexed.
"""
from __future__ import annotations

import bisect
import functools
import json
import logging
import math
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from ..errors import MetadataError
from ..naming import ParsedName, normalize_well, split_well, try_parse_virtual_name
from ..physics import to_micrometers
from .documents import decode_present

log = logging.getLogger(__name__)

INDEX_KEY = "vfsmount"
AXES = ("t", "c", "z", "y", "x")
_CONCURRENT_READS = 512          # metadata documents in flight at once


@dataclass
class ArrayInfo:
    path: str                       # store-relative array path, e.g. "A/01/0/0"
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    axes: tuple[str, ...]           # e.g. ("t", "c", "z", "y", "x") or ("c", "y", "x")
    pixel_size: float | None = None  # micrometres per pixel (x)
    z_spacing: float | None = None   # micrometres between z-planes
    unit: str | None = None          # the store's own spatial unit, as written


@dataclass
class PlaneRef:
    array: str
    index: tuple[int, ...]          # one integer per non-(y, x) axis


class PlaneIndex:
    """What planes a store holds and where: flat name -> :class:`PlaneRef`, array path ->
    :class:`ArrayInfo` (shape, dtype, chunks, axes, physics), and what was found wrong.

    A value: :func:`read_plate` and :func:`read_own_index` build one from a store's metadata,
    the field writer adds to it, the reader looks planes up in it. Nothing here touches zarr.

    A foreign plate's index may hold wells not read yet (:meth:`defer`): a well is read when
    one of its planes is first looked up (:meth:`ref`) or it is asked for (:meth:`well`,
    :meth:`read_wells`: a listing, well by well), every pending well when all names are asked
    for (:attr:`files`, :attr:`arrays`, :meth:`names`). So opening a plate of any size reads
    its plate document only, and a broken well fails only its own planes.

    Wells read from NGFF metadata are kept compact (:class:`WellPlanes`: a record per field,
    names made when asked), so a million planes cost kilobytes; a caller that wants the
    dictionary of every name (:attr:`files`, and every change: the field writer) turns them
    into one entry per plane first.
    """

    def __init__(self, arrays: dict[str, ArrayInfo] | None = None,
                 files: dict[str, PlaneRef] | None = None) -> None:
        self._arrays: dict[str, ArrayInfo] = dict(arrays or {})
        self._files: dict[str, PlaneRef] = dict(files or {})
        self._wells: dict[str, WellPlanes] = {}        # compact wells (see WellPlanes)
        self.problems: list[str] = []                  # one line each, naming the group
        self.channel_names: dict[int, str] = {}        # from omero.channels[].label
        self._pending: dict[str, Any] = {}             # well name -> what reading it needs
        self._read_wells: Any = None                   # (list of pending values) -> PlaneIndex
        self._loading = threading.RLock()
        self.wells_read = 0                            # wells whose metadata was read (lazily)
        self._order: tuple[list[str], dict[str, int]] | None = None   # explicit names, sorted

    # -- wells read on first use ----------------------------------------------------------
    def defer(self, wells: dict[str, Any], read_wells) -> None:
        """Wells to read later: ``read_wells([wells[name], ...])`` returns their index."""
        self._pending.update(wells)
        self._read_wells = read_wells

    @property
    def pending_wells(self) -> list[str]:
        return list(self._pending)

    def loaded_names(self) -> list[str]:
        """The names of the wells read so far (reads nothing)."""
        return list(self._files) + [n for w in self._wells.values() for n in w.names()]

    def loaded_arrays(self) -> dict[str, ArrayInfo]:
        return dict(self._arrays)

    def loaded_wells(self) -> set[str]:
        return {n.split("_", 1)[0] for n in self._files} | {w for w, p in self._wells.items()
                                                           if p.count}

    def load_wells(self, names: Iterable[str] | None = None) -> None:
        """Read the pending wells ``names`` (all of them by default), in one concurrent pass.
        A well whose documents cannot be fetched at all (an I/O error, not a malformed
        document: that is a problem line already) is logged, named, and served empty."""
        if not self._pending:
            return
        with self._loading:
            todo = [n for n in (self._pending if names is None else names) if n in self._pending]
            if not todo:
                return
            try:
                loaded = self._read_wells([self._pending[n] for n in todo])
            except MetadataError:
                raise
            except Exception as e:
                if len(todo) > 1:             # find the well that fails; read the others
                    for n in todo:
                        self.load_wells([n])
                    return
                problem = f"well {todo[0]}: its metadata cannot be read ({type(e).__name__}: {e})"
                log.error("%s; its planes are not served", problem)
                self.problems.append(problem)
                self.wells_read += 1
                del self._pending[todo[0]]
                return
            self.wells_read += len(todo)
            self._take(loaded)
            for n in todo:
                del self._pending[n]

    def _take(self, other: "PlaneIndex") -> None:
        self._arrays.update(other._arrays)
        self._files.update(other._files)
        self._wells.update(other._wells)
        self.problems.extend(other.problems)
        self.channel_names = self.channel_names or dict(other.channel_names)

    # -- wells in listing order ------------------------------------------------------------
    def well_order(self) -> list[str]:
        """Every well, read or not, in the natural order of the names (reads nothing)."""
        wells = {*self._wells, *self._pending, *(n.split("_", 1)[0] for n in self._files)}
        return sorted(wells, key=split_well)

    def well(self, name: str) -> "WellPlanes":
        """The planes of one well, read now if pending (empty if it has none)."""
        if name in self._pending:
            self.load_wells([name])
        wp = self._wells.get(name)
        if wp is None and self._files:       # explicit names (a writer's, an own index)
            wp = WellPlanes.explicit(name, self._files, self._arrays)
        return wp if wp is not None else WellPlanes(name, ())

    def read_wells(self, names: list[str]) -> list["WellPlanes"]:
        """Several wells at once (one concurrent pass over their documents), in order."""
        self.load_wells(names)
        return [self.well(n) for n in names]

    # -- lookups ---------------------------------------------------------------------------
    @property
    def arrays(self) -> dict[str, ArrayInfo]:
        self.load_wells()
        return self._arrays

    @property
    def files(self) -> dict[str, PlaneRef]:
        """Every name's ref, as one dictionary: reads every pending well and turns compact
        wells into one entry per plane (kept so: what is changed is this dictionary)."""
        self.load_wells()
        with self._loading:
            for wp in self._wells.values():
                self._files.update(wp.refs())
            self._wells.clear()
        return self._files

    def __len__(self) -> int:
        self.load_wells()
        return len(self._files) + sum(w.count for w in self._wells.values())

    def __contains__(self, name: str) -> bool:
        return self.ref(name) is not None

    def ref(self, name: str) -> PlaneRef | None:
        ref = self._files.get(name)
        if ref is None and (self._pending or self._wells):
            well = name.split("_", 1)[0]
            if well in self._pending:
                self.load_wells([well])
                ref = self._files.get(name)
            wp = self._wells.get(well)
            if ref is None and wp is not None:
                ref = wp.ref(name)
        return ref

    def names(self) -> list[str]:
        self.load_wells()
        return list(self._files) + [n for w in self._wells.values() for n in w.names()]

    def next_name(self, name: str) -> str | None:
        """The name after ``name`` in natural order (reads nothing; a compact well's planes
        within the well only): what a reader going through the planes wants next."""
        wp = self._wells.get(name.split("_", 1)[0])
        i = None if wp is None else wp.offset(name)
        if i is not None:
            return wp.names(i + 1, i + 2)[0] if i + 1 < wp.count else None
        if name not in self._files:
            return None
        with self._loading:
            if self._order is None or len(self._order[0]) != len(self._files):
                from natsort import natsorted
                order = natsorted(self._files)
                self._order = (order, {n: i for i, n in enumerate(order)})
            order, position = self._order
        i = position.get(name)
        return order[i + 1] if i is not None and i + 1 < len(order) else None

    def info(self, array: str) -> ArrayInfo:
        return self._arrays[array]           # an array reached through a ref is read already

    # -- building --------------------------------------------------------------------------
    def add_array(self, info: ArrayInfo) -> None:
        self._arrays[info.path] = info

    def add_planes(self, planes: dict[str, PlaneRef]) -> None:
        self.files.update(planes)

    def add_field(self, info: ArrayInfo, planes: dict[str, PlaneRef], where: str) -> None:
        """One image's array and planes; ValueError if a name is already another array's."""
        files = self.files
        clash = next((n for n in planes if n in files), None)
        if clash:
            raise ValueError(f"image {where!r}: plane {clash} is also in "
                             f"{files[clash].array!r}")
        self._arrays[info.path] = info
        files.update(planes)

    def remove_plane(self, name: str) -> PlaneRef:
        return self.files.pop(name)

    def refs_of(self, array: str) -> list[PlaneRef]:
        return [r for r in self.files.values() if r.array == array]

    def forget_arrays(self, paths: Iterable[str]) -> None:
        """Drop arrays and every plane in them (before taking them in again)."""
        paths = set(paths)
        self._files = {n: r for n, r in self.files.items() if r.array not in paths}
        self._order = None
        for p in paths:
            self._arrays.pop(p, None)

    def update(self, other: "PlaneIndex") -> None:
        """Take in another index, its pending wells included."""
        self._take(other)
        self.wells_read += other.wells_read
        if other._pending:
            self.defer(other._pending, other._read_wells)


class _Planes:
    """The planes of one array layout in natural (channel, z, t) order: shared by every field
    with that layout (a plate's fields usually share one)."""

    __slots__ = ("keys", "positions", "ordinal")

    def __init__(self, coordinates: Iterable[tuple]) -> None:
        ordered = sorted(coordinates, key=lambda p: (p[1], p[2], p[3]))
        self.keys = tuple((c, z, t) for _p, c, z, t in ordered)
        self.positions = tuple(p for p, *_ in ordered)
        self.ordinal = {k: i for i, k in enumerate(self.keys)}


@functools.lru_cache(maxsize=256)
def _shared_planes(lead: tuple, shape: tuple, values: tuple) -> _Planes:
    return _Planes(_plane_coordinates(lead, shape, values))


@dataclass(frozen=True)
class FieldPlanes:
    """One image of a well: its site, level-0 array and planes."""

    site: int
    info: ArrayInfo
    planes: _Planes


class WellPlanes:
    """The planes of one well read from its NGFF metadata: a record per field; the names, in
    natural order (site, channel, z, t), are made when asked, so a well keeps no object per
    plane. ``formats()`` gives what a plane's file size follows from, without a read."""

    __slots__ = ("well", "fields", "starts", "count")

    def __init__(self, well: str, fields: Iterable[FieldPlanes]) -> None:
        self.well = well
        self.fields = tuple(sorted(fields, key=lambda f: f.site))
        starts = [0]
        for f in self.fields:
            starts.append(starts[-1] + len(f.planes.keys))
        self.starts = tuple(starts)
        self.count = starts[-1]

    @classmethod
    def explicit(cls, well: str, files: dict[str, PlaneRef],
                 arrays: dict[str, ArrayInfo]) -> "WellPlanes | None":
        """A well of explicit names (an index built name by name) as fields."""
        by_field: dict[tuple[int, str], list] = {}
        for name, ref in files.items():
            p = try_parse_virtual_name(name)
            if p is not None and p.well == well:
                by_field.setdefault((p.site, ref.array), []).append(
                    (ref.index, p.channel, p.z, p.t))
        return cls(well, [FieldPlanes(site, arrays[a], _Planes(coords))
                          for (site, a), coords in by_field.items()]) if by_field else None

    def _name(self, f: FieldPlanes, key: tuple[int, int, int]) -> str:
        return ParsedName(self.well, f.site, *key).virtual_name()

    def names(self, lo: int = 0, hi: int | None = None) -> list[str]:
        """The names of rows [lo, hi) of this well."""
        hi = self.count if hi is None else min(hi, self.count)
        out: list[str] = []
        k = bisect.bisect_right(self.starts, lo) - 1
        while lo < hi:
            f, base = self.fields[k], self.starts[k]
            stop = min(hi, self.starts[k + 1])
            out.extend(self._name(f, key) for key in f.planes.keys[lo - base:stop - base])
            lo, k = stop, k + 1
        return out

    def coordinates(self) -> Iterable[tuple[int, int, int, int]]:
        """(site, channel, z, t) of every plane, in row order (no name made)."""
        for f in self.fields:
            for c, z, t in f.planes.keys:
                yield f.site, c, z, t

    def formats(self) -> list[tuple]:
        """(rows, plane shape, dtype, pixel size, z spacing) of each field in row order: every
        plane of a field shares its array's, so one file size per field, known unread."""
        return [(len(f.planes.keys), f.info.shape[-2:], f.info.dtype, f.info.pixel_size,
                 f.info.z_spacing) for f in self.fields]

    def _locate(self, name: str) -> tuple[int, FieldPlanes, int] | None:
        p = try_parse_virtual_name(name)
        if p is None or p.well != self.well:
            return None
        for k, f in enumerate(self.fields):
            if f.site == p.site:
                i = f.planes.ordinal.get((p.channel, p.z, p.t))
                if i is None or self._name(f, f.planes.keys[i]) != name:   # canonical only
                    return None
                return k, f, i
        return None

    def offset(self, name: str) -> int | None:
        """The row of ``name`` in this well, or None."""
        found = self._locate(name)
        return None if found is None else self.starts[found[0]] + found[2]

    def ref(self, name: str) -> PlaneRef | None:
        found = self._locate(name)
        return None if found is None else PlaneRef(found[1].info.path,
                                                   found[1].planes.positions[found[2]])

    def refs(self) -> dict[str, PlaneRef]:
        return {self._name(f, key): PlaneRef(f.info.path, pos) for f in self.fields
                for key, pos in zip(f.planes.keys, f.planes.positions)}


@dataclass
class Node:
    """One zarr node's metadata document (never its chunks)."""

    kind: str | None                 # "group", "array", or None when missing
    attrs: dict
    shape: tuple[int, ...] = ()
    dtype: Any = None
    chunks: tuple[int, ...] = ()


def _ome(attrs: dict) -> dict:
    """NGFF 0.5+ nests everything under "ome"; 0.4 keeps it at the top."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


# -- metadata documents ---------------------------------------------------------------------

class NodeReader:
    """Metadata of many nodes at once. Documents are fetched concurrently through the store's
    async API (``s3://`` and any other zarr store), or, for a local directory, read straight
    from disk: thousands of small files read in a loop beat a thread hop per file."""

    def __init__(self, store, zarr_format: int, *, with_array_attrs: bool = False,
                 local_root: str | None = None) -> None:
        self.store = store
        self.zarr_format = zarr_format
        self.with_array_attrs = with_array_attrs   # zarr v2 keeps array attributes apart
        if local_root is None:
            from zarr.storage import LocalStore
            base = getattr(store, "wrapped", store)    # under backends.guards.chunk's check
            local_root = str(base.root) if isinstance(base, LocalStore) else None
        self.local_root = local_root
        self.problems: list[str] = []            # documents that are not JSON objects

    def groups(self, paths: list[str]) -> list[Node]:
        return self._nodes(paths, "group")

    def arrays(self, paths: list[str]) -> list[Node]:
        return self._nodes(paths, "array")

    def children(self, paths: list[str]) -> list[list[str]]:
        if self.local_root is not None:
            return [_local_children(f"{self.local_root}/{p.strip('/')}") for p in paths]
        import asyncio                  # (a remote store's: a local one's mount needs none)

        async def all_children() -> list[list[str]]:
            return list(await asyncio.gather(*(self._children(p) for p in paths)))
        return self._run(all_children())

    def _nodes(self, paths: list[str], kind: str) -> list[Node]:
        if self.zarr_format == 3:
            return [_node_v3(d) for d in self.fetch([_join(p, "zarr.json") for p in paths])]
        attrs: list[dict | None] = [None] * len(paths)
        if kind == "group" or self.with_array_attrs:
            attrs = self.fetch([_join(p, ".zattrs") for p in paths])
        # a group with attributes exists: only the others need their .zgroup looked at
        need = [i for i, a in enumerate(attrs) if kind == "array" or a is None]
        found = self.fetch([_join(paths[i], ".zarray" if kind == "array" else ".zgroup")
                            for i in need])
        meta: list[dict | None] = [{} for _ in paths]
        for i, m in zip(need, found):
            meta[i] = m
        nodes = []
        for m, a in zip(meta, attrs):
            if m is None and (kind == "array" or a is None):
                nodes.append(Node(None, {}))
            elif kind == "group":
                nodes.append(Node("group", a or {}))
            else:
                nodes.append(Node("array", a or {}, tuple(m["shape"]), m["dtype"],
                                  tuple(m["chunks"])))
        return nodes

    def fetch(self, keys: list[str]) -> list[dict | None]:
        """The JSON documents at ``keys`` (None where missing)."""
        if self.local_root is not None:
            return [self._parse(k, _read_local(f"{self.local_root}/{k}")) for k in keys]
        return self._run(self._fetch_async(keys))

    async def _fetch_async(self, keys: list[str]) -> list[dict | None]:
        import asyncio
        from zarr.core.buffer import default_buffer_prototype
        gate = asyncio.Semaphore(_CONCURRENT_READS)

        async def one(key: str) -> dict | None:
            async with gate:
                try:
                    buf = await self.store.get(key, prototype=default_buffer_prototype())
                except FileNotFoundError:
                    return None
            return None if buf is None else self._parse(key, buf.to_bytes())
        return list(await asyncio.gather(*(one(k) for k in keys)))

    def _parse(self, key: str, raw: bytes | None) -> dict | None:
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError as e:
            doc = e
        if not isinstance(doc, dict):
            self.problems.append(f"{key!r} is not a JSON object; read as missing")
            return None
        return doc

    @staticmethod
    def _run(coro):
        from zarr.core.sync import sync
        return sync(coro)

    async def _children(self, path: str) -> list[str]:
        prefix = path.strip("/")
        return [name async for name in self.store.list_dir(prefix)
                if not name.startswith(".") and name not in ("zarr.json",)]


def _local_children(path: str) -> list[str]:
    """A local group's children, as the store's ``list_dir`` names them (no hidden names)."""
    try:
        return [n for n in os.listdir(path) if not n.startswith(".") and n != "zarr.json"]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _read_local(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None




def _node_v3(doc: dict | None) -> Node:
    if doc is None:
        return Node(None, {})
    attrs = doc.get("attributes") or {}
    if doc.get("node_type") != "array":
        return Node("group", attrs)
    # a sharded array's chunk grid is its shards: the unit a read fetches
    chunks = doc["chunk_grid"]["configuration"]["chunk_shape"]
    return Node("array", attrs, tuple(doc["shape"]), doc["data_type"], tuple(chunks))


# -- the plate walk -------------------------------------------------------------------------

@dataclass
class Field:
    """One image of a well, on its way to the index."""

    path: str                        # the image group, e.g. "B/3/0"
    well: str                        # normalized, e.g. "B03"
    site: int
    node: Node | None = None         # its group metadata, once read
    multiscales: dict | None = None
    dataset: dict | None = None

    @property
    def array_path(self) -> str:
        return _join(self.path, str(self.dataset["path"]))


IMAGE_WELL = "A01"      # the one well a single OME-Zarr image is served as (site 1)


def read_plate(store, root_attrs: dict, zarr_format: int, where: str, *,
               lazy: bool = False, local_root: str | None = None) -> PlaneIndex:
    """The plane index of an OME-Zarr HCS plate, from metadata documents alone; a single
    OME-Zarr image (``multiscales`` at the root, as ome-zarr-py's ``write_image`` and
    ngff-zarr write it) is a plate of one well, :data:`IMAGE_WELL`, with one field.

    ``lazy``: only the plate document and the first well are read now; each other well when
    first needed (see :class:`PlaneIndex`), its problems logged then. A plate none of whose
    wells can be read is refused either way: now, or when its names are first asked for.

    ``local_root``: the store is that local directory, its documents read from disk
    (``store`` may then be None: nothing here needs zarr)."""
    ome = _ome(root_attrs)
    plate = ome.get("plate")
    reader = NodeReader(store, zarr_format, with_array_attrs=INDEX_KEY in root_attrs,
                        local_root=local_root)
    index = PlaneIndex()
    if isinstance(plate, dict) and isinstance(plate.get("wells"), list):
        wells = _plate_wells(plate, index)
    elif "multiscales" in ome:
        wells, lazy = [("", IMAGE_WELL, Node("group", root_attrs))], False
    else:
        raise MetadataError("not an OME-Zarr HCS plate nor image: root attributes have no "
                            "'plate' with 'wells' and no 'multiscales'", backend="zarr",
                            path=where)
    for problem in index.problems:
        log.warning("%s: %s (the rest of the plate is served)", where, problem)
    tally = {"read": 0, "planes": 0}

    def read_wells(chosen: list[list[tuple]]) -> PlaneIndex:
        part = _read_wells(reader, [w for group in chosen for w in group])
        for problem in part.problems:
            log.warning("%s: %s (the rest of the plate is served)", where, problem)
        tally["read"] += len(chosen)
        tally["planes"] += len(part._files) + sum(w.count for w in part._wells.values())
        if tally["read"] == len(by_well) and not tally["planes"]:
            detail = "; ".join((index.problems + part.problems)[:3]) or "no well lists an image"
            raise MetadataError(f"OME-Zarr plate has no readable images: {detail}",
                                backend="zarr", path=where)
        return part

    by_well: dict[str, list[tuple]] = {}
    for w in wells:
        by_well.setdefault(w[1], []).append(w)
    if not by_well:
        raise MetadataError("OME-Zarr plate has no readable images: "
                            + ("; ".join(index.problems[:3]) or "the plate lists no well"),
                            backend="zarr", path=where)
    index.defer(by_well, read_wells)
    # the first well is read now either way: a plate of one well is refused here, and the
    # first well is what a lazy plate's description is inferred from
    index.load_wells(list(by_well)[:1] if lazy else None)
    return index


def _read_wells(reader: NodeReader, wells: list[tuple]) -> PlaneIndex:
    """The index of some wells: (group path, well name[, its group node]) each."""
    index = PlaneIndex()
    known = [w for w in wells if len(w) == 3]
    fields = [Field(path, name, 1, node) for path, name, node in known]
    fields += _well_fields(reader, [w[:2] for w in wells if len(w) == 2], index)
    _read_images(reader, fields, index)
    by_well: dict[str, list[FieldPlanes]] = {}
    _index_arrays(reader, [f for f in fields if f.dataset is not None], index, by_well)
    for well, planes in by_well.items():
        index._wells[well] = WellPlanes(well, planes)
    index.problems[:0] = reader.problems
    reader.problems = []
    return index


def _plate_wells(plate: dict, index: PlaneIndex) -> list[tuple[str, str]]:
    """(group path, normalized well name) of every well the plate lists."""
    wells = []
    for well in plate["wells"]:
        path = str(well.get("path", "")).strip("/") if isinstance(well, dict) else ""
        parts = path.split("/")
        try:
            if len(parts) != 2:
                raise ValueError
            wells.append((path, normalize_well(parts[0] + parts[1])))
        except ValueError:
            index.problems.append(f"plate well path {path!r} is not 'row/column'")
    return wells


def _well_fields(reader: NodeReader, wells: list[tuple[str, str]], index: PlaneIndex) -> list[Field]:
    fields: list[Field] = []
    bare: list[tuple[str, str]] = []
    for (path, name), node in zip(wells, reader.groups([p for p, _ in wells])):
        if node.kind is None:
            index.problems.append(f"plate lists well {path!r} but the store has no such group")
            continue
        well = _ome(node.attrs).get("well")
        images = well.get("images") if isinstance(well, dict) else None
        if not isinstance(images, list):
            bare.append((path, name))
            continue
        for site, image in enumerate(images, 1):
            image_path = image.get("path") if isinstance(image, dict) else None
            fields.append(Field(_join(path, str(image_path)), name, site))   # may be an int
    return fields + _fields_from_children(reader, bare)


def _fields_from_children(reader: NodeReader, wells: list[tuple[str, str]]) -> list[Field]:
    """A well group without ``well`` attributes: its images are the child groups holding
    ``multiscales``, in natural order."""
    from natsort import natsorted
    if not wells:
        return []
    candidates = [(path, name, child)
                  for (path, name), children in zip(wells, reader.children([p for p, _ in wells]))
                  for child in natsorted(children) if child not in ("labels", "tables")]
    nodes = reader.groups([_join(p, c) for p, _n, c in candidates])
    fields: list[Field] = []
    sites: dict[str, int] = {}
    for (path, name, child), node in zip(candidates, nodes):
        if node.kind == "group" and "multiscales" in _ome(node.attrs):
            sites[path] = sites.get(path, 0) + 1
            fields.append(Field(_join(path, child), name, sites[path], node))
    return fields


def _read_images(reader: NodeReader, fields: list[Field], index: PlaneIndex) -> None:
    """Each image's multiscales entry and its level-0 dataset."""
    todo = [f for f in fields if f.node is None]
    for f, node in zip(todo, reader.groups([f.path for f in todo])):
        f.node = node
    for f in fields:
        ms = _ome(f.node.attrs).get("multiscales")
        if f.node.kind is None:
            index.problems.append(f"well lists image {f.path!r} but the store has no such group")
        elif not isinstance(ms, list) or not ms or not isinstance(ms[0], dict) \
                or not ms[0].get("datasets"):
            index.problems.append(f"image {f.path!r} has no multiscales datasets")
        else:
            f.multiscales, f.dataset = ms[0], ms[0]["datasets"][0]   # level 0 of the pyramid


def _index_arrays(reader: NodeReader, fields: list[Field], index: PlaneIndex,
                  by_well: dict[str, list[FieldPlanes]]) -> None:
    for f, node in zip(fields, reader.arrays([f.array_path for f in fields])):
        if node.kind is None:
            index.problems.append(f"image {f.path!r}: multiscales dataset "
                                  f"{str(f.dataset['path'])!r} is missing")
            continue
        try:
            info = _array_info(f, node)
            _add_planes(index, info, f, node.attrs.get(INDEX_KEY), by_well)
        except (ValueError, TypeError, KeyError) as e:
            index.problems.append(str(e) if isinstance(e, ValueError) else
                                  f"image {f.path!r}: unreadable metadata ({type(e).__name__}: {e})")
            continue
        if not index.channel_names:
            index.channel_names = _channel_names(f.node.attrs)


def _array_info(f: Field, node: Node) -> ArrayInfo:
    path = f.array_path
    axes_meta = _axes(f.multiscales)
    axes = tuple(a["name"].lower() for a in axes_meta) or AXES[-len(node.shape):]
    lead = axes[:-2]
    if len(axes) != len(node.shape) or axes[-2:] != ("y", "x") or \
            not set(lead) <= {"t", "c", "z"} or len(set(lead)) != len(lead):
        raise ValueError(f"array {path!r}: axes {axes} do not match its shape {node.shape} "
                         "(need any of t, c, z, then y, x)")
    try:
        dtype = np.dtype(node.dtype)
    except TypeError:
        raise ValueError(f"array {path!r}: data type {node.dtype!r} cannot be served") from None
    scale = _scale(f.multiscales, f.dataset, len(axes))
    units = {a["name"].lower(): a.get("unit") for a in axes_meta}
    # a length only where the axis names its unit (one that converts to micrometres): an
    # axis without one counts pixels or planes (ome-zarr-py's default scale 1), not microns
    pixel = to_micrometers(scale[-1], units.get("x")) if scale else None
    z_spacing = to_micrometers(scale[axes.index("z")], units.get("z")) \
        if "z" in axes and scale and node.shape[axes.index("z")] > 1 else None   # 1 plane: none
    return ArrayInfo(path, tuple(node.shape), dtype, tuple(node.chunks), axes, pixel,
                     z_spacing, units.get("x"))


def _is_ours(own: Any) -> bool:
    """An array record of vfsmount's index-free format (see documents.PLANES_FORMAT)."""
    return isinstance(own, dict) and isinstance(own.get("format"), int) and own["format"] >= 2


def _axes(ms: dict) -> list[dict]:
    """Axis dicts of a multiscales entry: ``axes`` (0.4/0.5, strings in 0.3) or the coordinate
    system the datasets map into (0.6)."""
    axes = ms.get("axes")
    if axes is None:
        systems = [s for s in ms.get("coordinateSystems", []) if isinstance(s, dict)]
        outputs = {((t.get("output") or {}).get("name") if isinstance(t.get("output"), dict)
                    else t.get("output"))
                   for t in ms["datasets"][0].get("coordinateTransformations", [])}
        named = [s for s in systems if s.get("name") in outputs]
        axes = (named or systems or [{}])[0].get("axes", [])
    return [a if isinstance(a, dict) else {"name": str(a)} for a in axes]


def _scale(ms: dict, dataset: dict, n: int) -> list[float] | None:
    """The product of every scale on the way from the level-0 array to physical space
    (the dataset's own, nested ``sequence`` ones, then the multiscales-wide ones)."""
    found = [s for t in dataset.get("coordinateTransformations", []) + ms.get(
        "coordinateTransformations", []) for s in _scales(t)]
    vectors = [s for s in found if len(s) == n]
    if not vectors:
        return None
    return [float(math.prod(v)) for v in zip(*vectors)]


def _scales(t: Any) -> Iterable[list]:
    if not isinstance(t, dict):
        return
    if t.get("type") == "scale" and isinstance(t.get("scale"), list):
        yield t["scale"]
    for inner in t.get("transformations", []) or []:     # 0.6 "sequence"
        yield from _scales(inner)


def _channel_names(image_attrs: dict) -> dict[int, str]:
    channels = (_ome(image_attrs).get("omero") or {}).get("channels") or []
    return {i: str(c["label"]) for i, c in enumerate(channels, 1)
            if isinstance(c, dict) and c.get("label") not in (None, "")}


def _add_planes(index: PlaneIndex, info: ArrayInfo, f: Field, own: Any,
                by_well: dict[str, list[FieldPlanes]]) -> None:
    """Name every plane of one image: ours by the values we wrote, others by position."""
    own = own if isinstance(own, dict) else {}
    lead = info.axes[:-2]
    values = tuple((a, tuple(own[a])) for a in lead if isinstance(own.get(a), list))
    site, present = f.site, None
    if _is_ours(own):          # its site, and which planes exist when not all do
        site = int(own.get("site", f.site))
        try:
            present = decode_present(own, info.shape[:-2]) if own.get("present") else None
        except ValueError as e:
            raise ValueError(f"array {info.path!r}: unreadable present-planes record ({e})") \
                from None
    if present is None:
        planes = _shared_planes(lead, info.shape[:-2], values)
    else:
        planes = _Planes(p for p in _plane_coordinates(lead, info.shape[:-2], values)
                         if present[p[0]])
    same = next((g for g in by_well.get(f.well, ()) if g.site == site), None)
    if same is not None:
        raise ValueError(f"image {f.path!r}: site {site} of well {f.well} is also "
                         f"{same.info.path!r}'s")
    index._arrays[info.path] = info
    by_well.setdefault(f.well, []).append(FieldPlanes(site, info, planes))


@functools.lru_cache(maxsize=256)
def _plane_coordinates(lead: tuple, shape: tuple, values: tuple) -> tuple:
    """(position, channel, z, t) of every plane; every field of a plate usually shares one."""
    known = dict(values)
    out = []
    for position in np.ndindex(*shape):
        coords = {a: (known[a][i] if a in known else i + 1) for a, i in zip(lead, position)}
        if any(not isinstance(v, int) or v < 1 for v in coords.values()):
            continue              # a slot of ours never written
        out.append((position, coords.get("c", 1), coords.get("z", 1), coords.get("t", 1)))
    return tuple(out)


def read_own_index(own: dict, where: str) -> PlaneIndex:
    """A vfsmount store's root index of every name (kept for stores written before the
    names were derived from the NGFF structure; also what a Dask worker hands back)."""
    index = PlaneIndex()
    try:
        for path, a in own["arrays"].items():
            index.add_array(ArrayInfo(path, tuple(a["shape"]), np.dtype(a["dtype"]),
                                      tuple(a["chunks"]), tuple(a["axes"]), a.get("pixel_size")))
        for name, (path, *pos) in own["files"].items():
            info = index.info(path)
            if len(pos) != len(info.shape) - 2 or any(
                    not 0 <= i < n for i, n in zip(pos, info.shape)):
                raise ValueError(f"{name}: index {pos} outside array {path} {info.shape}")
            index.files[name] = PlaneRef(path, tuple(pos))
    except (KeyError, TypeError, ValueError) as e:
        raise MetadataError("inconsistent vfsmount index in zarr store attributes",
                            backend="zarr", path=where, cause=e) from e
    return index
