"""The parsed-filename model and the one function that builds a virtual name.

Every image of every plate appears under ``{well}_s{site:03d}_w{channel}_z{z:03d}_t{t:03d}.tif``
(``A01_s001_w1_z001_t001.tif``). Wells are row letters (A..Z, then AA..AF for
1536-well plates) plus a two-digit column.
"""
from __future__ import annotations

import re
import functools
from typing import NamedTuple

from .errors import PlateFormatError

_WELL = re.compile(r"^([A-Za-z]{1,2})0*(\d{1,3})$")
_NORMALIZED = re.compile(
    r"^(?P<well>[A-Z]{1,2}\d{2,3})_s(?P<site>\d+)_w(?P<channel>\d+)_z(?P<z>\d+)_t(?P<t>\d+)"
    r"(?P<ext>\.tiff?)$", re.IGNORECASE)


class ParsedName(NamedTuple):
    """One image's coordinates on the plate. All indices are 1-based.

    A NamedTuple rather than a frozen dataclass: plates have 100,000s of images and
    this is built once per file while mapping them.
    """

    well: str
    site: int = 1
    channel: int = 1
    z: int = 1
    t: int = 1
    extension: str = ".tif"

    def virtual_name(self) -> str:
        return virtual_name(self)

    @property
    def row(self) -> str:
        return split_well(self.well)[0]

    @property
    def column(self) -> int:
        return split_well(self.well)[1]


@functools.lru_cache(maxsize=4096)
def normalize_well(well: str) -> str:
    """``a1`` -> ``A01``, ``AF048`` -> ``AF48``; refuses anything else."""
    row, col = split_well(well)
    return f"{row}{col:02d}"


@functools.lru_cache(maxsize=4096)
def split_well(well: str) -> tuple[str, int]:
    m = _WELL.match(well)
    if not m or int(m.group(2)) == 0:
        raise PlateFormatError(f"not a well name: {well!r} (expected row letters and a column, e.g. A01)")
    return m.group(1).upper(), int(m.group(2))


def natural_key(p: ParsedName) -> tuple:
    """Sort key giving the natural order of virtual names (w2 before w10, A01 before AA01),
    from the coordinates: much faster than natsort on 100,000s of names."""
    row, col = split_well(p.well)
    return (row, col, p.site, p.channel, p.z, p.t)


def row_letters(index: int) -> str:
    """1 -> A, 26 -> Z, 27 -> AA, 32 -> AF."""
    if index < 1:
        raise PlateFormatError(f"row index must be >= 1, got {index}")
    letters = ""
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def row_index(letters: str) -> int:
    """Inverse of row_letters: A -> 1, AA -> 27."""
    n = 0
    for ch in letters.upper():
        n = n * 26 + (ord(ch) - ord("A") + 1)
    return n


def virtual_name(p: ParsedName) -> str:
    """The single place where a normalized image name is built."""
    try:
        return f"{p.well}_s{p.site:03d}_w{p.channel}_z{p.z:03d}_t{p.t:03d}.tif"
    except (TypeError, ValueError):
        raise PlateFormatError(f"site, channel, z and t must be integers: {p}") from None


def parse_virtual_name(name: str) -> ParsedName:
    """Parse a normalized name; raises PlateFormatError naming the file otherwise."""
    m = _NORMALIZED.match(name)
    if not m:
        raise PlateFormatError("file name is not a normalized plate image name "
                               "(expected e.g. A01_s001_w1_z001_t001.tif)", path=name)
    return ParsedName(well=normalize_well(m["well"]), site=int(m["site"]), channel=int(m["channel"]),
                      z=int(m["z"]), t=int(m["t"]), extension=".tif")


def try_parse_virtual_name(name: str) -> ParsedName | None:
    try:
        return parse_virtual_name(name)
    except PlateFormatError:
        return None
