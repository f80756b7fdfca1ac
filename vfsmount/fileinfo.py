"""`vfsmount info FILE`: the facts about one file of a mount -- its coordinates on the plate
and where its bytes come from -- the same facts ``--xattrs`` serves as ``user.vfsmount.*``.

Extended attributes are off by default (every `ls -l` would pay two daemon round trips
per file for them); this reads the facts from the mount itself instead: the coordinates
from the file's name, the source from the mount's ``openhcs_metadata.json`` (the mapping
of pass-through files) or, for a zarr-backed TIFF, from the store's index.
"""
from __future__ import annotations

import json
from pathlib import Path

from backends.layout import FS_TYPE, MAIN_ALIAS, ORIGINAL_DIR, OUTPUTS_DIR, PROCESSED_DIR
from backends.metadata import METADATA_FILENAME, main_subdirectory
from backends.mountinfo import mount_type
from backends.naming import try_parse_virtual_name


def mount_root(path: Path) -> Path:
    """The vfsmount mount point that holds ``path``."""
    for p in (path, *path.parents):
        if mount_type(p) == FS_TYPE:
            return p
    raise ValueError(f"{path} is not inside a vfsmount mount")


def file_facts(path: str | Path) -> dict:
    """Coordinates (well, site, channel, z, t) and source of one file of a mount."""
    path = Path(path).absolute()
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    root = mount_root(path.parent)
    folder, name = path.parent.relative_to(root).as_posix(), path.name
    facts: dict = {"file": str(path), "mount": str(root)}
    parsed = try_parse_virtual_name(name)
    if parsed is not None:
        facts.update(well=parsed.well, site=parsed.site, channel=parsed.channel, z=parsed.z,
                     t=parsed.t)
    facts["source"] = _source(root, folder, name)
    return facts


def _source(root: Path, folder: str, name: str) -> str:
    top = folder.split("/", 1)[0]
    if top == ORIGINAL_DIR:
        return f"{folder[len(ORIGINAL_DIR) + 1:]}/{name}".lstrip("/")
    if top == PROCESSED_DIR:
        return f"computed by pipeline {folder.partition('/')[2]!r} when read"
    doc = json.loads((root / METADATA_FILENAME).read_bytes())
    subdirs = doc["subdirectories"]
    key = {"root": "."}.get(folder, folder)
    if key == MAIN_ALIAS and key not in subdirs:
        key = main_subdirectory(doc)[0]
    entry = subdirs.get(key)
    if entry is None:
        if top == OUTPUTS_DIR:
            return f"{folder}/{name}"
        raise ValueError(f"{root / folder} is not an image folder of the mount")
    rel = entry.get("workspace_mapping", {}).get(name)
    if rel is not None:
        return rel
    if entry.get("available_backends", {}).get("zarr"):
        from backends.zarr_backend import ZarrStorageBackend
        where = entry.get("path") or str(root / ORIGINAL_DIR / key)
        return ZarrStorageBackend(where, mode="r").plane(name).source
    return f"{key}/{name}" if key != "." else name


def print_facts(facts: dict) -> None:
    for field in ("file", "well", "site", "channel", "z", "t", "source"):
        if field in facts:
            print(f"{field + ':':9s}{facts[field]}")
