"""Grouping a plate's images into the stacks a pipeline runs on.

Images that share every component except the variable ones (``z`` by default) form one group,
ordered along the variable components: one [Z, Y, X] stack.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from backends.naming import ParsedName, natural_key, parse_virtual_name

from .steps import COMPONENTS


@dataclass
class Group:
    key: tuple
    components: dict
    names: list[str]                  # ordered along the variable components
    coords: list[ParsedName]

    @property
    def stem(self) -> str:
        c = self.components
        parts = [c["well"]]
        for comp, prefix, width in (("site", "s", 3), ("channel", "w", 0), ("z", "z", 3), ("t", "t", 3)):
            if comp in c:
                parts.append(f"{prefix}{c[comp]:0{width}d}" if width else f"{prefix}{c[comp]}")
        return "_".join(parts)

    def plane_names(self, planes: int) -> list[ParsedName]:
        """Coordinates of an output stack of ``planes`` planes: the group's own where the count
        is kept, else z = 1..planes (a projection, say)."""
        if planes == len(self.coords):
            return list(self.coords)
        first = self.coords[0]
        return [ParsedName(first.well, first.site, first.channel, z + 1, first.t)
                for z in range(planes)]


def group_images(names: Iterable[str], variable: Sequence[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for name in names:
        p = parse_virtual_name(name)
        comps = {c: getattr(p, c) for c in COMPONENTS if c not in variable}
        key = tuple(comps.values())
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(key, comps, [], [])
        g.names.append(name)
        g.coords.append(p)
    for g in groups.values():
        order = sorted(range(len(g.names)), key=lambda i: natural_key(g.coords[i]))
        g.names = [g.names[i] for i in order]
        g.coords = [g.coords[i] for i in order]
    return sorted(groups.values(), key=lambda g: natural_key(g.coords[0]))


def groups_by_well(groups: Sequence[Group]) -> dict[str, list[Group]]:
    by_well: dict[str, list[Group]] = {}
    for g in groups:
        by_well.setdefault(g.components.get("well", ""), []).append(g)
    return by_well
