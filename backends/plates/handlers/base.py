"""The microscope-handler interface and the scan result every handler produces."""
from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from natsort import natsorted

from ...errors import NameCollisionError
from ...naming import ParsedName, natural_key
from ...physics import ChannelInfo, PlatePhysics

log = logging.getLogger(__name__)

# Directories a handler never descends into: our own outputs and stores.
SKIP_DIRS = frozenset({"zarr", "outputs", "__pycache__"})


@dataclass
class ScannedSet:
    """Images a handler found that appear together as one flat directory (one metadata
    subdirectory), before any metadata is written; the mount's view of a subdirectory is
    ``backends.plates.image_set.ImageSet``."""

    key: str
    backend: str                                     # "virtual_workspace" or "disk"
    images: dict[str, ParsedName] = field(default_factory=dict)   # flat name -> coordinates
    sources: dict[str, str] = field(default_factory=dict)         # flat name -> plate-relative path

    def add(self, parsed: ParsedName, source: str) -> None:
        name = parsed.virtual_name()
        previous = self.sources.get(name)
        if previous is not None:
            raise NameCollisionError(
                f"two source files map to one virtual name {name!r}: {previous!r} and {source!r}",
                path=source)
        self.images[name] = parsed
        self.sources[name] = source


@dataclass
class PlateScan:
    """What a handler found in a plate."""

    handler: "MicroscopeHandler"
    image_sets: list[ScannedSet]
    grid_dimensions: list[int] | None = None
    pixel_size: float | None = None
    channel_names: dict[int, str | None] = field(default_factory=dict)
    unparsed: list[str] = field(default_factory=list)   # TIFFs whose names did not parse
    ignored: int = 0                                      # thumbnails and the like
    physics: PlatePhysics = field(default_factory=PlatePhysics)   # z spacing, channels, ...
    plate_facts: dict = field(default_factory=dict)   # plate_id, plate_rows, plate_columns

    def metadata_entries(self) -> dict[str, dict]:
        """One openhcs_metadata.json subdirectory entry per image set (the shared helper)."""
        return {s.key: subdirectory_entry(self, s) for s in self.image_sets if s.images}


def subdirectory_entry(scan: PlateScan, s: ScannedSet) -> dict:
    images = s.images
    names = sorted(images, key=lambda n: natural_key(images[n]))
    coords = s.images.values()
    channels = sorted({p.channel for p in coords})
    z_indexes, timepoints = sorted({p.z for p in coords}), sorted({p.t for p in coords})
    labels = {str(c): scan.channel_names.get(c) or scan.physics.channels.get(c, ChannelInfo()).name
              for c in channels}
    entry = {
        "microscope_handler_name": scan.handler.name,
        "source_filename_parser_name": scan.handler.parser_name,
        "image_files": names,
        "available_backends": {s.backend: True},
        "main": False,
        "grid_dimensions": scan.grid_dimensions,
        "pixel_size": scan.pixel_size,
        "channels": labels,
        "wells": natsorted({p.well for p in coords}),
        "sites": sorted({p.site for p in coords}),
        "z_indexes": z_indexes,
        "timepoints": timepoints,
        **scan.physics.entry_fields(len(z_indexes), len(timepoints), labels),
        **scan.plate_facts,
    }
    if s.backend == "virtual_workspace":
        entry["workspace_mapping"] = {n: s.sources[n] for n in names}
    return entry


class MicroscopeHandler(ABC):
    """Knows one instrument's layout: how to recognize it and how to map its files."""

    name: str = ""
    parser_name: str = ""

    @classmethod
    @abstractmethod
    def detect(cls, plate: Path) -> bool:
        """Cheap check: does this plate look like this handler's format?"""

    @abstractmethod
    def scan(self, plate: Path) -> PlateScan:
        """Walk the plate and map every image to its coordinates."""


def scandir_sorted(path: str) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """(subdirectories, files) of a directory; errors propagate with the path."""
    dirs, files = [], []
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            (dirs if e.is_dir(follow_symlinks=False) else files).append(e)
    return dirs, files
