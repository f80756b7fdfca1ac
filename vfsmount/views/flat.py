"""The flat folders: one per image set, under the set's own name (``workspace/``,
``projection/``, ``zarr/``, ``root/`` for ".", ``outputs/<name>/`` in a read-only mount).

What a folder holds follows from what its image set serves: files stat-ed in bulk are listed
in columns (``listing.ImageDir``: no node per image), other real files are pass-through
nodes, planes of a store are TIFFs synthesized on read.
"""
from __future__ import annotations

import logging
import time
from functools import partial

from backends.errors import PathEscapeError
from backends.plates.image_set import ImageSet
from backends.layout import display_name

from ..listing import ImageDir, ListedImages, ListedPlanes, PlaneDir
from ..nodes import DirNode, PassthroughFile, SynthesizedTiff
from .base import Mount, source_xattrs

log = logging.getLogger(__name__)


def flat_folders(mount: Mount):
    """``(name, folder)`` for each top-level name of the shown image sets; a key with a "/"
    (``outputs/masks``) nests its folder under plain folders."""
    top: dict[str, DirNode] = {}
    for images in mount.shown():
        *parents, last = display_name(images.key).split("/")
        if not parents:
            top[last] = folder(mount, images)
            continue
        parent = top.get(parents[0]) or top.setdefault(parents[0], DirNode(mount.mtime_ns))
        for part in parents[1:]:
            parent = parent.get(part.encode()) or parent.add(part, DirNode(mount.mtime_ns))
        parent.add(last, folder(mount, images))
    return top.items()


def folder(mount: Mount, images: ImageSet) -> DirNode:
    """The folder of ``images``, made once per mount: other views show the same one."""
    if images.key not in mount.folders:
        mount.folders[images.key] = image_folder(images, mount.mtime_ns)
    return mount.folders[images.key]


def image_folder(images: ImageSet, mtime_ns: int) -> DirNode:
    """Files stat-ed in bulk listed in columns, planes of a store opened lazily listed well by
    well as its wells are read (see listing.py); anything else one node per image, made on
    first listing."""
    if images.streams_wells:
        return PlaneDir(mtime_ns, ListedPlanes(
            images, partial(source_xattrs, source_of=images.source_rel), images.mtime_ns))
    if not images.stats_in_bulk:
        return DirNode(mtime_ns, partial(_fill, images))
    try:
        listed = ListedImages(images, partial(source_xattrs, source_of=images.source_rel))
        return ImageDir(mtime_ns, listed)
    except PathEscapeError as e:     # a tampered mapping: this folder fails, not the mount
        log.error("%s/: refused: %s", display_name(images.key), e)
        return DirNode(mtime_ns, partial(_refuse, e))


def _fill(images: ImageSet, directory: DirNode) -> None:
    started = time.perf_counter()
    if images.serves_planes:
        planes, mtime = SetPlanes(images), images.mtime_ns
        for name in images.names:
            directory.add(name, SynthesizedTiff(name, planes, mtime))
    else:
        files = SetFiles(images)
        for name in images.names:
            directory.add(name, PassthroughFile(name, files))
    log.info("listed %d images of %s in %.3f s", len(images.names), images.key,
             time.perf_counter() - started)


def _refuse(error: Exception, directory: DirNode) -> None:
    raise error


class SetFiles:
    """PathSource of the pass-through files of an image set that serves real files."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def path(self, name: str):
        return self.images.real_path(name)

    def open_fd(self, name: str) -> int:
        return self.images.open_fd(name)

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return source_xattrs(name, self.images.source_rel)


class SetPlanes:
    """PlaneSourceFactory of the synthesized TIFFs of an image set that serves planes."""

    def __init__(self, images: ImageSet) -> None:
        self.images = images

    def plane(self, name: str):
        return self.images.plane(name)

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return source_xattrs(name, self.images.source_rel)
