"""Shared fixtures: sample plates (real ones copied, synthetic ones generated) and
mounts that are always unmounted, also when a test fails."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real sample plates: ``../shared/data`` beside the checkout, or VFSMOUNT_SAMPLE_DATA.
#: They cannot be fetched by a script (their upstream is not reachable from CI); without them,
#: every test that needs one skips with SAMPLES_MISSING.
SHARED_DATA = Path(os.environ.get("VFSMOUNT_SAMPLE_DATA") or REPO.parent / "shared" / "data")
SAMPLES_MISSING = (f"the real sample plates are not present ({SHARED_DATA}; set "
                   "VFSMOUNT_SAMPLE_DATA to their folder)")
REAL_PLATES = {
    "Projection-Mix": SHARED_DATA / "imagexpress" / "Projection-Mix",
    "1well-3C-2S-Zmix-T": SHARED_DATA / "imagexpress" / "1well-3C-2S-Zmix-T",
    "Version1": SHARED_DATA / "opera-phenix" / "Version1",
}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Metadata caches and daemon logs go to a temporary directory, not ~/.cache."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


def real_plate(name: str) -> Path:
    path = REAL_PLATES[name]
    if not path.is_dir():
        pytest.skip(SAMPLES_MISSING)
    return path


def copy_plate(source: Path, dest: Path) -> Path:
    """Copy a plate to ``dest``, writable (the shared sample plates are read-only)."""
    shutil.copytree(source, dest)
    for dirpath, dirnames, filenames in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), 0o644)
    return dest


@pytest.fixture
def copy_real_plate(tmp_path):
    """Copy a shared plate into a writable temporary directory (the shared copy stays untouched)."""
    def copy(name: str) -> Path:
        return copy_plate(real_plate(name), tmp_path / name)
    return copy


class Mounts:
    """Mounts made by one test; every one is unmounted at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.mountpoints: list[Path] = []
        self.logs: dict[Path, Path] = {}
        self.pids: dict[Path, int] = {}

    def mount(self, plate: Path, *extra: str, name: str | None = None) -> Path:
        from vfsmount.control import start_daemon
        mnt = self.tmp_path / (name or f"mnt{len(self.mountpoints)}")
        mnt.mkdir()
        self.mountpoints.append(mnt)
        subdir = None
        args = list(extra)
        if "--subdir" in args:
            i = args.index("--subdir")
            subdir = args[i + 1]
            del args[i:i + 2]
        pid, log = start_daemon(plate, mnt, subdir=subdir, log_level="DEBUG",
                                log_file=self.tmp_path / f"{mnt.name}.log", extra_args=args)
        self.logs[mnt] = log
        self.pids[mnt] = pid
        return mnt

    def log(self, mnt: Path) -> str:
        return self.logs[mnt].read_text()

    def remount(self, plate: Path, mnt: Path, *extra: str) -> Path:
        """Unmount ``mnt`` and mount ``plate`` again on a fresh mount point."""
        from vfsmount.control import unmount
        unmount(mnt)
        return self.mount(plate, *extra)

    def unmount_all(self) -> None:
        from vfsmount.control import unmount
        for mnt in self.mountpoints:
            try:
                unmount(mnt)
            except Exception:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path)
    try:
        yield m
    finally:
        m.unmount_all()


@pytest.fixture
def small_spec():
    from backends.plates.sample_plates import PlateSpec
    return PlateSpec(wells=("A01", "B02"), sites=2, channels=2, z=3, t=2, shape=(64, 96))


def mount_state(mnt: Path, *, until=lambda s: True, timeout: float = 10.0) -> dict:
    """A mount daemon's state file (data path, request counters; rewritten within 0.2 s of a
    change) once ``until(state)`` holds, else the last one read."""
    import json
    import time

    from vfsmount.control import state_path
    deadline = time.monotonic() + timeout
    state: dict = {}
    while time.monotonic() < deadline:
        try:
            state = json.loads(state_path(mnt).read_text())
        except (OSError, ValueError):
            state = {}
        if state and until(state):
            return state
        time.sleep(0.05)
    return state


def run_cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "vfsmount", *args], capture_output=True, text=True,
                         **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"vfsmount {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stdout}\n{res.stderr}")
    return res


IMAGEJ_PROBE = r"""
import ij.IJ; import ij.ImagePlus;
public class Probe { public static void main(String[] a) {
  ImagePlus imp = IJ.openImage(a[0]);
  if (imp == null) { System.out.println("NULL"); System.exit(2); }
  System.out.println("RESULT " + imp.getWidth() + " " + imp.getHeight() + " " + imp.getBitDepth()
                     + " " + imp.getStackSize() + " " + imp.getStatistics().mean);
  System.exit(0);
}}
"""

IMAGEJ_MACRO = """
path = getArgument();
open(path);
getStatistics(area, mean);
print("RESULT " + getWidth() + " " + getHeight() + " " + bitDepth() + " " + nSlices + " " + mean);
"""


def imagej_available() -> bool:
    return shutil.which("imagej") is not None and Path("/usr/share/java/ij.jar").exists()


def imagej_open(path: Path, tmp_path: Path, *, macro: bool = False) -> tuple[int, int, int, int, float]:
    """Open a file in real ImageJ 1.x, headless; return (width, height, bits, slices, mean)."""
    if macro:
        script = tmp_path / "probe.ijm"
        script.write_text(IMAGEJ_MACRO)
        cmd = ["xvfb-run", "-a", "imagej", "-b", str(script), str(path)]
    else:
        probe = tmp_path / "Probe.java"
        probe.write_text(IMAGEJ_PROBE)
        cmd = ["java", "-Djava.awt.headless=true", "-cp", "/usr/share/java/ij.jar", str(probe),
               str(path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    lines = [l for l in res.stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, f"ImageJ could not open {path}:\n{res.stdout}\n{res.stderr}"
    w, h, bits, slices, mean = lines[-1].split()[1:]
    return int(w), int(h), int(bits), int(slices), float(mean)


# -- the plain install, built beside the rest of the suite ------------------------------------
# `pip install .` into a fresh venv takes a minute or two, mostly waiting on unpacking: it is
# started (niced) when the suite is collected and its test is moved to the end, so the suite
# does not wait for it. tests/test_cli_edges.py::test_plain_install_runs_the_readme_pipeline.

PLAIN_INSTALL_PACKAGES = ("backends", "compute", "vfsmount", "benchmarks")   # as pyproject lists


class PlainInstall:
    """A fresh venv (no other site-packages) with ``pip install .`` of a copy of the checkout."""

    def __init__(self, root: Path):
        self.root, self.venv = root, root / "venv"
        src = root / "src"
        src.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(REPO / name, src / name)
        for package in PLAIN_INSTALL_PACKAGES:
            # (vfsmount/examples/ comes with vfsmount/: the checkout's examples/ is a link to it)
            shutil.copytree(REPO / package, src / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        script = (f"{sys.executable} -m venv {self.venv} && "
                  f"{self.venv}/bin/pip install -q --no-compile {src}")
        # its output to a file: a pipe nobody reads until the test runs could fill and stall pip
        self.log = root / "pip.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["nice", "-n", "19", "sh", "-c", script], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)

    def wait(self, timeout: float = 1200) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.hookimpl(trylast=True)     # after -k/-m deselection: no install for a test not run
def pytest_collection_modifyitems(config, items):
    # pjdfstest is built (once, then kept in build/) while the tests before it run
    pjdfstest = next((item.module for item in items if getattr(item, "module", None)
                      and item.module.__name__.endswith("test_pjdfstest")), None)
    if pjdfstest is not None:
        config._vfsmount_pjdfstest_build = pjdfstest.Build()
    installs = [item for item in items if item.get_closest_marker("install")]
    if not installs:
        return
    items[:] = [item for item in items if item not in installs] + installs
    import tempfile
    config._vfsmount_plain_install = PlainInstall(Path(tempfile.mkdtemp(prefix="vfsmount-plain-")))


def pytest_unconfigure(config):
    for started in ("_vfsmount_plain_install", "_vfsmount_pjdfstest_build"):
        if getattr(config, started, None) is not None:
            getattr(config, started).close()


@pytest.fixture
def plain_install(request) -> PlainInstall:
    install = getattr(request.config, "_vfsmount_plain_install", None)
    if install is None:     # the test was not collected with its marker
        pytest.skip("the plain install is started at collection for tests marked install")
    return install
