"""pjdfstest against outputs/ of a --writable mount (disk and zarr).

pjdfstest is built from its source tarball (``../shared/tools/pjdfstest-*.tar.gz``, or
``$VFSMOUNT_PJDFSTEST_TARBALL``) into a cache folder once. Every subtest must pass except the
documented refusals of ``tests/pjdfstest_refusals.py``, and every listed refusal must still
fail (the table is exactly what happens); no test file may crash or hang.
pjdfstest's names never parse as plate images, so a zarr mount takes the same paths as a disk
one: CI runs each suite once, in one of the two modes (``CI_SPLIT``: the suite's 15-minute
budget); VFSMOUNT_PJDFSTEST_FULL=1 runs every suite in both.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from vfsmount.control import is_mounted

from .conftest import REPO
from .pjdfstest_refusals import REFUSED, refused_subtests

SUITES = ("open", "mkdir", "rmdir", "rename", "unlink", "truncate", "ftruncate", "chmod", "chown",
          "link", "symlink")
# CI runs every suite once, split between the two modes (both take the same paths in
# outputs/, see above); VFSMOUNT_PJDFSTEST_FULL=1 runs every suite in both.
CI_SPLIT = {"disk": ("open", "rename", "chmod", "chown", "link", "symlink"),
            "zarr": ("mkdir", "rmdir", "unlink", "truncate", "ftruncate")}
# chown/00.t alone takes about as long as all the rest: 1,279 subtests, nearly all of them
# the refused owner changes of pjdfstest_refusals ("fixed_modes"); it runs with FULL=1.
CI_SKIP = ("chown/00.t",)
assert sorted(CI_SPLIT["disk"] + CI_SPLIT["zarr"]) == sorted(SUITES)


def _tarball() -> Path | None:
    env = os.environ.get("VFSMOUNT_PJDFSTEST_TARBALL")
    candidates = [Path(env)] if env else []
    candidates += sorted((REPO.parent / "shared" / "tools").glob("pjdfstest-*.tar.gz"))
    candidates += sorted(Path("/work/shared/tools").glob("pjdfstest-*.tar.gz"))
    return next((c for c in candidates if c.is_file()), None)


@pytest.fixture(scope="session")
def pjdfstest_dir() -> Path:
    """The built pjdfstest tree (binary + tests/), cached across sessions."""
    tarball = _tarball()
    if tarball is None:
        pytest.skip("pjdfstest source tarball not found (../shared/tools/pjdfstest-*.tar.gz)")
    for tool in ("autoreconf", "automake", "gcc", "make", "prove"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/setup.sh installs it)")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vfsmount-tests"
    build = cache / tarball.name.removesuffix(".tar.gz")
    src = build / "pjdfstest"
    if not (src / "pjdfstest").is_file():
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(build, filter="data")
        for cmd in (["autoreconf", "-ifs"], ["./configure"], ["make", "pjdfstest"]):
            res = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
            assert res.returncode == 0, f"{' '.join(cmd)} failed: {res.stderr[-2000:]}"
    return src


def parse_prove(output: str, tests_dir: Path) -> tuple[dict[str, set[int]], list[str]]:
    """(failing subtests per test file, test files that crashed or did not finish)."""
    failed: dict[str, set[int]] = {}
    broken: list[str] = []
    current = None
    for line in output.splitlines():
        m = re.match(r"^(\S+\.t)\s+\(Wstat: (\d+).*?\)", line)
        if m:
            current = os.path.relpath(m.group(1), tests_dir)
            if m.group(2) != "0":
                broken.append(f"{current}: wait status {m.group(2)}")
            continue
        m = re.match(r"^\s+Failed tests?:\s+(.*)$", line) or \
            (re.match(r"^\s+([\d, -]+)$", line) if current else None)
        if m and current:
            for part in m.group(1).replace(" ", "").split(","):
                if part:
                    lo, _, hi = part.partition("-")
                    failed.setdefault(current, set()).update(range(int(lo), int(hi or lo) + 1))
            continue
        m = re.match(r"^\s+Parse errors?:\s+(.*)$", line)
        if m and current:
            broken.append(f"{current}: {m.group(1)}")
        elif not line.startswith(" "):
            current = current if m else None
    return failed, broken


def table_mismatch(failed: dict[str, set[int]], ran: set[str]) -> dict[str, dict[str, list[int]]]:
    """Per test file run (``ran``: paths relative to tests/): failing subtests not in the
    refusal table ("unlisted") and listed ones that pass ("stale"); empty when the table is
    exact."""
    files = set(failed) | {f for f in REFUSED if f in ran}
    out = {}
    for f in sorted(files):
        got, listed = failed.get(f, set()), refused_subtests(f)
        if got != listed:
            out[f] = {"unlisted": sorted(got - listed), "stale": sorted(listed - got)}
    return out


@pytest.mark.parametrize("materialize", ["disk", "zarr"])
def test_pjdfstest_in_outputs(plate_for_pjd, mounts, pjdfstest_dir, materialize):
    full = os.environ.get("VFSMOUNT_PJDFSTEST_FULL") == "1"
    suites = SUITES if full else CI_SPLIT[materialize]
    mnt = mounts.mount(plate_for_pjd, "--writable", "--materialize", materialize)
    work = mnt / "outputs"      # plate-relative paths in outputs/ are limited to PATH_MAX
    tests = pjdfstest_dir / "tests"
    skip = () if full else CI_SKIP
    ran = sorted(str(t.relative_to(tests)) for s in suites for t in (tests / s).glob("*.t")
                 if str(t.relative_to(tests)) not in skip)
    res = subprocess.run(["prove", "-j3", *(str(tests / t) for t in ran)], cwd=work,
                         capture_output=True, text=True, timeout=900)
    failed, broken = parse_prove(res.stdout + res.stderr, tests)
    assert broken == [], broken                               # no crash, no hang, no bad plan
    assert is_mounted(mnt) and os.listdir(mnt / "images"), "the daemon died"
    mismatch = table_mismatch(failed, set(ran))
    assert mismatch == {}, f"the refusal table does not match what fails: {mismatch}"
    assert "Traceback" not in mounts.log(mnt)


@pytest.fixture
def plate_for_pjd(tmp_path):
    from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
    return make_imagexpress_plate(tmp_path / "plate", PlateSpec(wells=("A01",), sites=1, channels=1,
                                                                z=1, shape=(8, 8)),
                                  thumbnails=False, projections=False)
