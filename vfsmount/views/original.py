"""``original/``: the plate's real tree, read-only (a store given directly has none)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from natsort import natsorted

from backends.guards.containment import Anchor
from backends.errors import PathEscapeError
from backends.layout import ORIGINAL_DIR, XATTR_PREFIX
from backends.storage.paths import contained_path

from ..nodes import DirNode, PassthroughFile
from .base import Mount, mtime_ns

log = logging.getLogger(__name__)


def original_folder(mount: Mount):
    if mount.plate.url is not None:     # a store given directly has no vendor tree to mirror
        return ()
    root = Path(os.path.realpath(mount.plate.path))
    return [(ORIGINAL_DIR, DirNode(mtime_ns(root), populate_original(root)))]


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
        return {f"{XATTR_PREFIX}source".encode(): rel.encode()}


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
                directory.add(e.name, DirNode(mtime_ns(real),
                                              populate_original(plate_root, child_rel, source)))
            elif real.is_file():
                directory.add(e.name, PassthroughFile(child_rel, source))
    return fill
