"""Build the mounted tree from a plate's metadata.

    MOUNT/
      images/                  the main subdirectory (same files as its own directory)
      <key>/                   one directory per metadata subdirectory: workspace/, projection/,
                               zarr/, root/ (for key "."), outputs/<name>/ ...
      original/                the plate's real tree, read-only
      openhcs_metadata.json    the plate's metadata, read-only

Directories fill themselves on first use, so mounting a 100,000-image plate
only reads its metadata.
"""
from __future__ import annotations

import logging
import os
import time
from functools import partial
from pathlib import Path

from natsort import natsorted

from backends.containment import Anchor
from backends.errors import PathEscapeError
from backends.layout import (COMPANION_FILE, LOADDATA_CSV, LOADDATA_ILLUM_CSV, MAIN_ALIAS,
                             ORIGINAL_DIR, OUTPUTS_DIR, PROCESSED_DIR)
from backends.naming import try_parse_virtual_name
from backends.paths import contained_path
from backends.plate import Plate

from .hyperstack import add_fiji_folders
from .listing import ImageDir, ListedImages, release_freed_memory
from .nodes import DirNode, PassthroughFile, SynthesizedTiff

log = logging.getLogger(__name__)

ROOT_INODE = 1


def display_name(key: str) -> str:
    return "root" if key in (".", "") else key


def coordinate_xattrs(name: str, source: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    p = try_parse_virtual_name(name)
    if p is not None:
        for field, value in (("well", p.well), ("site", p.site), ("channel", p.channel),
                             ("z", p.z), ("t", p.t)):
            out[f"user.vfsmount.{field}".encode()] = str(value).encode()
    out[b"user.vfsmount.source"] = source.encode()
    return out


def source_xattrs(name: str, source_of) -> dict[bytes, bytes]:
    """coordinate_xattrs with ``source_of(name)``; a refused or missing source still lists
    its coordinates."""
    try:
        source = source_of(name)
    except Exception as e:
        source = f"unavailable: {e}"
    return coordinate_xattrs(name, source)


class BackendFiles:
    """PathSource for a subdirectory whose backend serves real files (virtual workspace, disk)."""

    def __init__(self, backend, plate_root: Path) -> None:
        self.backend, self.plate_root = backend, plate_root
        self.anchor = Anchor(plate_root)

    def path(self, name: str) -> Path:
        return self.backend.real_path(name)

    def open_fd(self, name: str) -> int:
        # resolved by the kernel beneath the plate: a symlink swapped in after the check
        # in real_path() still cannot lead outside
        return self.anchor.open_file(self.path(name))

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return source_xattrs(name, lambda n: os.path.relpath(self.path(n), self.plate_root))


class BackendPlanes:
    """PlaneSourceFactory for a subdirectory whose backend serves planes (zarr)."""

    def __init__(self, backend) -> None:
        self.backend = backend

    def plane(self, name: str):
        return self.backend.plane(name)

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return source_xattrs(name, lambda n: self.plane(n).source)


class OriginalFiles:
    """PathSource for the plate's real tree; names are plate-relative paths."""

    def __init__(self, plate_root: Path) -> None:
        self.plate_root = plate_root
        self.anchor = Anchor(plate_root)

    def path(self, rel: str) -> Path:
        return contained_path(self.plate_root, rel)

    def open_fd(self, rel: str) -> int:
        return self.anchor.open_file(rel)

    def xattrs(self, rel: str) -> dict[bytes, bytes]:
        return {b"user.vfsmount.source": rel.encode()}


class MetadataFile:
    """PathSource for openhcs_metadata.json, served from the file itself (a million-image
    plate's metadata is 100s of MB: not a copy in memory)."""

    def __init__(self, path: Path) -> None:
        self.file = Path(path)

    def path(self, name: str) -> Path:
        return self.file

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return {}


def listed_images(plate: Plate, key: str) -> ListedImages:
    """The pass-through images of subdirectory ``key``; their sources are stat-ed on first use.
    A mapping entry leaving the plate fails only its own file (EACCES, logged here once)."""
    backend = _backend(plate, key, plate.entry(key))
    names = plate.entry(key).get("image_files") or backend.list_files("")
    return ListedImages(backend, names, lambda name: source_xattrs(name, backend.source_rel))


def populate_images(plate: Plate, key: str):
    """A populator that fills a directory with one node per image of subdirectory ``key``."""
    def fill(directory: DirNode) -> None:
        entry = plate.entry(key)
        backend = _backend(plate, key, entry)
        names = entry.get("image_files") or backend.list_files("")
        started = time.perf_counter()
        if hasattr(backend, "plane"):
            source = BackendPlanes(backend)
            mtime = _mtime_ns(getattr(backend, "root", plate.path))
            for name in names:
                directory.add(name, SynthesizedTiff(name, source, mtime))
        elif hasattr(backend, "real_path"):
            source = BackendFiles(backend, plate.path)
            for name in names:
                directory.add(name, PassthroughFile(name, source))
        else:
            raise TypeError(f"backend {backend!r} serves neither planes nor real files")
        log.info("listed %d images of %s in %.3f s", len(names), key, time.perf_counter() - started)
    return fill


def _backend(plate: Plate, key: str, entry: dict):
    """The subdirectory's backend; a mapping with bad entries still lists its folder (each
    bad entry fails on its own with EACCES)."""
    try:
        return plate.backend(key)
    except PathEscapeError as e:
        if "workspace_mapping" not in entry:
            raise
        log.error("%s: %s; those files are refused, the rest is served", key, e)
        from backends.virtual_workspace import VirtualWorkspaceBackend
        return VirtualWorkspaceBackend(plate.path, entry["workspace_mapping"], strict=False)



def populate_computed(factory):
    """A populator listing the TIFFs a pipeline computes on read (see computed.py)."""
    def fill(directory: DirNode) -> None:
        for name in factory.names():
            directory.add(name, SynthesizedTiff(name, factory, directory.mtime_ns))
    return fill


def populate_original(plate_root: Path, rel: str = "", source: OriginalFiles | None = None):
    """A populator mirroring the real plate tree read-only; symlinks leaving the plate are hidden."""
    source = source or OriginalFiles(plate_root)

    def fill(directory: DirNode) -> None:
        here = plate_root / rel if rel else plate_root
        with os.scandir(here) as it:
            entries = natsorted(it, key=lambda e: e.name)
        for e in entries:
            if e.name.startswith(".vfsmount"):      # staging and temporary files
                continue
            child_rel = f"{rel}/{e.name}" if rel else e.name
            try:
                real = contained_path(plate_root, child_rel)
            except PathEscapeError:
                log.warning("hiding %s: it points outside the plate", here / e.name)
                continue
            if real.is_dir():
                directory.add(e.name, DirNode(_mtime_ns(real),
                                              populate_original(plate_root, child_rel, source)))
            elif real.is_file():
                directory.add(e.name, PassthroughFile(child_rel, source))
    return fill


def build_tree(plate: Plate, outputs=None, computed=(), views=None) -> DirNode:
    """The mount's tree; ``outputs`` (an OutputsArea) serves outputs/ and every
    ``outputs/...`` subdirectory of the metadata; each of ``computed`` (ComputedPlanes)
    becomes ``processed/<pipeline name>/``; ``views`` (plate_views.PlateViews) adds the
    LoadData CSVs and the OME companion."""
    root = DirNode(_mtime_ns(plate.metadata_file), inode=ROOT_INODE)
    dirs: dict[str, DirNode] = {}
    for key in plate.subdirectories:
        if outputs is not None and (key == OUTPUTS_DIR or key.startswith(OUTPUTS_DIR + "/")):
            continue
        parent = root
        parts = display_name(key).split("/")
        for i, part in enumerate(parts):
            if i == len(parts) - 1:
                node = image_folder(plate, key)
                dirs[key] = node
                parent.add(part, node)
            else:
                child = parent.get(part.encode())
                if child is None:
                    child = parent.add(part, DirNode(_mtime_ns(plate.metadata_file)))
                parent = child
    if outputs is not None:
        root.add(OUTPUTS_DIR, outputs.top)
    if computed:
        processed = root.add(PROCESSED_DIR, DirNode(_mtime_ns(plate.metadata_file)))
        for factory in computed:
            folder = processed.add(factory.pipeline.name,
                                   DirNode(time.time_ns(), populate_computed(factory)))
            if views is not None:
                folder.add(LOADDATA_CSV, views.computed_loaddata(factory))
    if plate.main in dirs:    # images/ (calibrated) and hyperstacks/: see hyperstack.py
        shown = {display_name(k) for k in plate.subdirectories}
        add_fiji_folders(root, plate, dirs[plate.main],
                         alias=MAIN_ALIAS if MAIN_ALIAS not in shown else None)
    if plate.url is None:     # a remote plate has no vendor tree to mirror
        root.add(ORIGINAL_DIR, DirNode(_mtime_ns(plate.path), populate_original(
            Path(os.path.realpath(plate.path)))))
    root.add("openhcs_metadata.json", PassthroughFile("openhcs_metadata.json",
                                                      MetadataFile(plate.metadata_file)))
    if views is not None:
        root.add(LOADDATA_CSV, views.loaddata())
        root.add(LOADDATA_ILLUM_CSV, views.loaddata_with_illum())
        root.add(COMPANION_FILE, views.companion())
    # Keep root entries in a stable, natural order.
    ordered = natsorted(root.children(), key=lambda kv: kv[0])
    root._children = dict(ordered)
    release_freed_memory()       # what parsing the metadata left behind
    return root


def image_folder(plate: Plate, key: str) -> DirNode:
    """The folder of subdirectory ``key``: pass-through images listed in columns (see
    listing.py), anything else one node per image."""
    mtime = _mtime_ns(plate.metadata_file)
    if plate.primary_backend(key) == "virtual_workspace":
        try:
            return ImageDir(mtime, listed_images(plate, key))
        except PathEscapeError as e:     # a tampered mapping: this folder fails, not the mount
            log.error("%s/: refused: %s", display_name(key), e)
            return DirNode(mtime, partial(_refuse, e))
    return DirNode(mtime, populate_images(plate, key))


def _refuse(error: Exception, directory: DirNode) -> None:
    raise error


def _mtime_ns(path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return time.time_ns()
