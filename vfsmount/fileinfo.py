"""`vfsmount info FILE`: the facts about one file of a mount -- its coordinates on the plate
and where its bytes come from -- the same facts ``--xattrs`` serves as ``user.vfsmount.*``.

Extended attributes are off by default (every `ls -l` would pay two daemon round trips
per file for them); this reads the facts from the mount itself instead: the coordinates
from the file's name, the source from the mount's ``openhcs_metadata.json`` (the mapping
of pass-through files) or, for a zarr-backed TIFF, from the store's index.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from backends.layout import FS_TYPE, MAIN_ALIAS, ORIGINAL_DIR, OUTPUTS_DIR, PROCESSED_DIR
from backends.plates.metadata import METADATA_FILENAME, main_subdirectory
from backends.storage.mountinfo import mount_type, vfsmount_plate_name
from backends.naming import try_parse_virtual_name


def mount_root(path: Path) -> Path:
    """The vfsmount mount point that holds ``path``."""
    for p in (path, *path.parents):
        if mount_type(p) == FS_TYPE:
            return p
    raise ValueError(f"{path} is not inside a vfsmount mount")


def plate_of_mount(root: Path) -> str | None:
    """The plate a mount serves -- its real path, or its URL -- from this user's record of the
    mount (`vfsmount list`); None for a mount this user did not start."""
    from .control import active_mounts
    real = os.path.realpath(root)
    for record in active_mounts():
        if os.path.realpath(record.mountpoint) == real:   # a URL is no path: kept as it is
            return os.path.realpath(record.plate) if os.path.exists(record.plate) else record.plate
    return None


def file_facts(path: str | Path) -> dict:
    """Coordinates (well, site, channel, z, t) and source of one file of a mount."""
    path = Path(path).absolute()
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    root = mount_root(path.parent)
    folder, name = path.parent.relative_to(root).as_posix(), path.name
    facts: dict = {"file": str(path), "mount": str(root), "plate": plate_of_mount(root)}
    doc = json.loads((root / METADATA_FILENAME).read_bytes())
    key, entry = _entry(doc, folder)
    parsed = try_parse_virtual_name(name)
    if parsed is not None:
        facts.update(well=parsed.well, site=parsed.site, channel=parsed.channel, z=parsed.z,
                     t=parsed.t, channel_name=_channel_name(entry, parsed.channel))
    facts["source"] = _source(root, facts["plate"], folder, name, key, entry)
    return facts


def _entry(doc: dict, folder: str) -> tuple[str, dict | None]:
    """The metadata key and entry of the subdirectory a mount folder shows."""
    subdirs = doc["subdirectories"]
    key = {"root": "."}.get(folder, folder)
    if key == MAIN_ALIAS and key not in subdirs:
        key = main_subdirectory(doc)[0]
    return key, subdirs.get(key)


def _channel_name(entry: dict | None, channel: int) -> str | None:
    if entry is None:
        return None
    names = entry.get("channel_names") or entry.get("channels") or {}
    return names.get(str(channel))


def _source(root: Path, plate: str | None, folder: str, name: str, key: str,
            entry: dict | None) -> str:
    """Where the bytes come from, named by the plate's real path (never a path through the
    mount); a mount this user did not start names its plate by the folder name only."""
    base = plate or vfsmount_plate_name(root) or "PLATE"
    top = folder.split("/", 1)[0]
    if top == ORIGINAL_DIR:
        return os.path.join(base, folder[len(ORIGINAL_DIR) + 1:], name).replace("//", "/")
    if top == PROCESSED_DIR:
        return f"computed by pipeline {folder.partition('/')[2]!r} when read"
    zarr = entry is not None and entry.get("available_backends", {}).get("zarr")
    if top == OUTPUTS_DIR and not zarr:   # a file in the outputs folder (a hands-off plate's
        from backends.plates.metadata import outputs_dir      # is outside the plate)
        where = outputs_dir(plate)[0] if plate and os.path.isdir(plate) else \
            os.path.join(base, OUTPUTS_DIR)
        return os.path.join(where, folder.partition("/")[2], name)
    if entry is None:
        raise ValueError(f"{root / folder} is not an image folder of the mount")
    rel = entry.get("workspace_mapping", {}).get(name)
    if rel is not None:
        return os.path.join(base, rel)
    if zarr:
        from backends.ngff.backend import ZarrStorageBackend
        where = entry.get("path") or os.path.join(base, key)
        return ZarrStorageBackend(where, mode="r").plane(name).source
    return os.path.join(base, name) if key == "." else os.path.join(base, key, name)


def print_facts(facts: dict) -> None:
    for field in ("file", "well", "site", "channel", "z", "t", "source"):
        if field not in facts:
            continue
        value = facts[field]
        if field == "channel" and facts.get("channel_name"):
            value = f"{value} ({facts['channel_name']})"
        print(f"{field + ':':9s}{value}")
