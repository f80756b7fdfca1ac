"""``openhcs_metadata.json`` at the mount's root: the plate's metadata file itself, served in
place (a million-image plate's metadata is 100s of MB: not a copy in memory)."""
from __future__ import annotations

from pathlib import Path

from backends.layout import METADATA_FILE

from ..nodes import PassthroughFile
from .base import Mount


def metadata_file(mount: Mount):
    return [(METADATA_FILE, PassthroughFile(METADATA_FILE, MetadataFile(mount.plate.metadata_file)))]


class MetadataFile:
    """PathSource of the one metadata file."""

    def __init__(self, path: Path) -> None:
        self.file = Path(path)

    def path(self, name: str) -> Path:
        return self.file

    def xattrs(self, name: str) -> dict[bytes, bytes]:
        return {}
