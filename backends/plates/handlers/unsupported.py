"""Instruments vfsmount knows by sight but does not read, so a plate of theirs is refused by name.

Each entry: the instrument, and how its export is recognized -- a marker file name (the
Yokogawa CellVoyager measurement files) or a single-file container's suffix (ND2, CZI, LIF, VSI).
A plate folder, its immediate subfolders (an export folder holding one measurement folder),
or a container file given as the plate is looked at; nothing deeper is read.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple


class Unsupported(NamedTuple):
    instrument: str
    marker_names: frozenset[str] = frozenset()   # exact file names, lower case
    suffixes: tuple[str, ...] = ()               # lower case
    name_pattern: re.Pattern | None = None       # the instrument's own image names


_CELLVOYAGER_IMAGE = re.compile(r"_[A-Z]{1,2}\d{2}_T\d{4}F\d{3}L\d{2}A\d{2}Z\d{2}C\d{2}\.tiff?$",
                                re.IGNORECASE)   # Plate_B03_T0001F001L01A01Z01C01.tif

UNSUPPORTED = (
    Unsupported("Yokogawa CellVoyager (CV7000/CV8000)",
                marker_names=frozenset({"measurementdata.mlf", "measurementdetail.mrf"}),
                name_pattern=_CELLVOYAGER_IMAGE),
    Unsupported("Nikon NIS-Elements ND2", suffixes=(".nd2",)),
    Unsupported("Zeiss CZI", suffixes=(".czi",)),
    Unsupported("Leica LIF", suffixes=(".lif", ".lof")),
    Unsupported("Olympus/Evident VSI", suffixes=(".vsi",)),
)


def _match(name: str) -> Unsupported | None:
    low = name.lower()
    return next((u for u in UNSUPPORTED if low in u.marker_names or low.endswith(u.suffixes)
                 or (u.name_pattern is not None and u.name_pattern.search(name))), None)


def unsupported_instrument(plate: str | os.PathLike) -> tuple[str, str] | None:
    """(instrument, the file that shows it, relative to ``plate``) if ``plate`` is a known format
    we do not read."""
    plate = Path(plate)
    if plate.is_file():
        found = _match(plate.name)
        return (found.instrument, plate.name) if found else None
    try:
        with os.scandir(plate) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return None
    for folder_entries in _with_subfolders(entries):
        for e in folder_entries:
            if (found := _match(e.name)) is not None:
                return found.instrument, os.path.relpath(e.path, plate)
    return None


def _with_subfolders(entries: list[os.DirEntry]):
    """The folder's own entries, then each immediate subfolder's."""
    yield entries
    for e in entries:
        if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
            try:
                with os.scandir(e.path) as it:
                    yield sorted(it, key=lambda x: x.name)
            except OSError:
                continue
