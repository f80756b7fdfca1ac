"""The architecture's rules, checked on the source (issue 14): layers import only downwards,
the FUSE layer dispatches on capabilities, and no function grows past one screen."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("vfsmount", "backends", "compute")
MAX_FUNCTION_LINES = 60
# Functions that read as tables (argparse builders, the TIFF tag layout) may be longer.
TABLE_LIKE = {"build_parser"}


def _modules(package: str):
    return sorted((REPO / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package,forbidden", [("backends", {"vfsmount", "compute"}),
                                               ("compute", {"vfsmount"})])
def test_layers_import_only_downwards(package, forbidden):
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & forbidden)
                 for p in _modules(package) if _imports(p) & forbidden}
    assert not offenders, f"{package}/ must not import {sorted(forbidden)}: {offenders}"


def test_no_function_longer_than_one_screen():
    long = []
    for package in PACKAGES:
        for path in _modules(package):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES and node.name not in TABLE_LIKE:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 60 lines:\n" + "\n".join(long)


def test_fuse_operations_dispatch_on_capabilities():
    tree = ast.parse((REPO / "vfsmount" / "fs.py").read_text())
    calls = [n for n in ast.walk(tree)
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "isinstance"]
    assert len(calls) <= 2, f"vfsmount/fs.py has {len(calls)} isinstance checks"


def test_pipeline_modules_stay_small():
    big = {str(p.relative_to(REPO)): len(p.read_text().splitlines())
           for p in _modules("compute") if len(p.read_text().splitlines()) >= 300}
    assert not big, f"compute/ modules of 300 lines or more: {big}"
