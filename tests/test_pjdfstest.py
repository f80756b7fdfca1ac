"""pjdfstest against outputs/ of a --writable mount (disk and zarr).

pjdfstest is built from its source tarball (``../shared/tools/pjdfstest-*.tar.gz``, or
``$VFSMOUNT_PJDFSTEST_TARBALL``) into ``build/pjdfstest/`` once (beside scripts/setup.sh's
builds; not the suite's private cache, which is new every session), in the background from
the moment the suite is collected (tests/conftest.py), so that the suite does not wait for it. Every subtest must pass except the
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
import tempfile
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


BUILD_TOOLS = ("autoreconf", "automake", "gcc", "make", "prove")


class Build:
    """pjdfstest built from its tarball into ``build/pjdfstest/NAME/pjdfstest`` (binary +
    tests/), kept across sessions; a build runs in a temporary folder beside it, started as a
    background process, and is renamed into place when complete (two sessions may race)."""

    def __init__(self) -> None:
        self.tarball = _tarball()
        self.missing = None
        if self.tarball is None:
            self.missing = "pjdfstest source tarball not found (../shared/tools/pjdfstest-*.tar.gz)"
        else:
            tool = next((t for t in BUILD_TOOLS if shutil.which(t) is None), None)
            if tool:
                self.missing = f"{tool} not installed (scripts/setup.sh installs it)"
        self.proc = None
        if self.missing or self.src.joinpath("pjdfstest").is_file():
            return
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=self.dest.parent))
        with tarfile.open(self.tarball) as tar:
            tar.extractall(self.tmp, filter="data")
        self.log = self.tmp / "build.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["nice", "-n", "10", "sh", "-c",
                 "autoreconf -ifs && ./configure && make pjdfstest"],
                cwd=self.tmp / "pjdfstest", stdout=log, stderr=subprocess.STDOUT)

    @property
    def dest(self) -> Path:
        return REPO / "build" / "pjdfstest" / self.tarball.name.removesuffix(".tar.gz")

    @property
    def src(self) -> Path:
        return self.dest / "pjdfstest"

    def wait(self) -> Path:
        if self.missing:
            pytest.skip(self.missing)
        if self.proc is not None:
            code = self.proc.wait(timeout=900)
            self.proc = None
            assert code == 0, f"building pjdfstest failed: {self.log.read_text()[-2000:]}"
            try:
                os.rename(self.tmp, self.dest)
            except OSError:             # another session put its build there first
                shutil.rmtree(self.tmp, ignore_errors=True)
        return self.src

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pjdfstest_dir(request) -> Path:
    """The built pjdfstest tree (binary + tests/): started at collection, see Build."""
    build = getattr(request.config, "_vfsmount_pjdfstest_build", None) or Build()
    try:
        return build.wait()
    finally:
        build.close()


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
