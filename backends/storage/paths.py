"""Path normalization and containment checks shared by every backend."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import PathEscapeError


def normalize_key(path: str | os.PathLike) -> str:
    """Normalize a backend key: forward slashes, no '.', no duplicate or trailing '/'.

    Used by the memory backend and the virtual name space, where a path is a
    key and not a location on disk. '..' is refused rather than resolved.
    """
    text = os.fspath(path).replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise PathEscapeError("path contains '..'", path=text)
    return "/" + "/".join(parts)


def check_relative(rel: str | os.PathLike, *, what: str = "path") -> PurePosixPath:
    """Refuse an absolute path or one containing '..'; return it as a PurePosixPath."""
    text = os.fspath(rel)
    p = PurePosixPath(text.replace("\\", "/"))
    if p.is_absolute() or text.startswith(("/", "\\")) or (len(text) > 1 and text[1] == ":"):
        raise PathEscapeError(f"{what} is absolute", path=text)
    if ".." in p.parts:
        raise PathEscapeError(f"{what} contains '..'", path=text)
    return p


def contained_path(root: Path, rel: str | os.PathLike, *, what: str = "path") -> Path:
    """Join ``rel`` under ``root`` and make sure the result (after symlinks) stays inside.

    ``root`` must already be resolved. Raises PathEscapeError otherwise. A backslash is a
    separator only where the name with a literal backslash does not exist (a vendor file may
    be named with one; a mapping written on Windows uses it as a separator).
    """
    p = check_relative(rel, what=what)
    text = os.fspath(rel)
    full = root.joinpath(*p.parts)
    if "\\" in text:
        literal = root.joinpath(*PurePosixPath(text).parts)
        if os.path.lexists(literal):
            full = literal
    resolved = Path(os.path.realpath(full))
    if resolved != root and root not in resolved.parents:
        raise PathEscapeError(f"{what} resolves outside {root}", path=os.fspath(rel))
    return full


def within(root: Path, path: str | os.PathLike) -> Path:
    """Resolve an absolute or root-relative path and require it to lie inside ``root``."""
    p = Path(path)
    full = p if p.is_absolute() else root / p
    resolved = Path(os.path.realpath(full))
    if resolved != root and root not in resolved.parents:
        raise PathEscapeError(f"path is outside the backend root {root}", path=os.fspath(path))
    return full
