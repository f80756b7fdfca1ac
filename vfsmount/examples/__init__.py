"""Pipeline files installed with vfsmount: `vfsmount run cells PLATE` finds ``cells.py`` here by
name, from any folder; `vfsmount examples` lists them and copies them out to edit."""
from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def example_files() -> dict[str, Path]:
    """Name (the file's stem) -> path of every packaged pipeline file."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.py")) if not p.name.startswith("_")}


def find_example(text: str) -> Path | None:
    """The packaged pipeline file ``text`` names: ``cells``, ``cells.py`` or ``examples/cells.py``
    (as the README writes it, run from a folder without that file)."""
    path = Path(text)
    if path.suffix not in ("", ".py") or (path.parent.name not in ("", "examples")):
        return None
    return example_files().get(path.stem)


def summary(path: Path) -> str:
    """The first line of a pipeline file's docstring."""
    import ast
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
