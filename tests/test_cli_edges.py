"""Edges a new user hits first (issue 21), each through the command line as typed.

Mounts made here go through `vfsmount mount`; the ``cli_mounts`` fixture unmounts whatever is
still mounted at the end, also when a test fails.
"""
from __future__ import annotations

import json
import fcntl
import os
import pty
import re
import shutil
import stat
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.storage.mountinfo import unescape
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from vfsmount.control import is_mounted, unmount

from .conftest import REPO, run_cli

SPEC = PlateSpec(wells=("A01",), sites=1, channels=2, z=2, t=1, shape=(32, 48))


@pytest.fixture(scope="module")
def plate_template(tmp_path_factory) -> Path:
    return make_imagexpress_plate(tmp_path_factory.mktemp("tpl") / "plate", SPEC)


@pytest.fixture
def plate(plate_template, tmp_path) -> Path:
    dest = tmp_path / "plate"
    shutil.copytree(plate_template, dest)
    return dest


@pytest.fixture
def cli_mounts():
    made: list[Path] = []
    yield made
    for mnt in made:
        if is_mounted(mnt):
            unmount(mnt)


def cli_mount(cli_mounts: list[Path], plate: Path, mnt: Path, *extra: str,
              check: bool = True) -> subprocess.CompletedProcess:
    mnt.mkdir(exist_ok=True)
    cli_mounts.append(mnt)
    return run_cli("mount", str(plate), str(mnt), *extra, check=check)


def mount_options(mnt: Path) -> tuple[str, str]:
    """(fsname, mount + super options) of the mount at ``mnt``, from /proc/self/mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if unescape(fields[4]) == os.path.realpath(mnt):
            sep = fields.index("-")
            return unescape(fields[sep + 2]), fields[5] + "," + fields[sep + 3]
    raise AssertionError(f"{mnt} is not in mountinfo")


def one_line_error(res: subprocess.CompletedProcess, code: int = 1) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


# -- plate names, list, umount --all -----------------------------------------------------------

WEIRD_NAMES = ["Big Plate µ", "plate,run=2", "x,allow_other", "a=b\\c"]


def test_any_plate_name_mounts_and_list_shows_it(plate, tmp_path, cli_mounts):
    mnts = {}
    for i, name in enumerate(WEIRD_NAMES):
        weird = tmp_path / name
        shutil.copytree(plate, weird)
        mnts[name] = tmp_path / f"mnt {i},µ"
        cli_mount(cli_mounts, weird, mnts[name], "--chunk-cache-mb", "64")
        assert len(os.listdir(mnts[name] / "images")) == 4
        fsname, options = mount_options(mnts[name])
        assert "allow_other" not in options.split(",")          # the name injected nothing
        assert re.fullmatch(r"vfsmount:[A-Za-z0-9._~%-]+", fsname), fsname
    listing = run_cli("list").stdout
    as_json = json.loads(run_cli("list", "--json").stdout)
    assert {m["plate"] for m in as_json} == {str(tmp_path / n) for n in WEIRD_NAMES}
    for m in as_json:
        assert m["alive"] and Path(m["log_file"]).is_file() and m["mountpoint"] in listing
        # the settings that differ from the defaults (MountConfig) are listed
        assert str(m["pid"]) in listing and m["options"] == ["--chunk-cache-mb", "64"]
    res = run_cli("umount", "--all")
    assert res.stdout.count(": unmounted") == len(WEIRD_NAMES)
    assert not any(is_mounted(m) for m in mnts.values())
    assert run_cli("list").stdout.strip() == "no vfsmount mounts"


# -- mount points ------------------------------------------------------------------------------

def test_non_empty_mount_point_is_refused_unless_nonempty(plate, tmp_path, cli_mounts):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "notes.txt").write_text("mine")
    line = one_line_error(cli_mount(cli_mounts, plate, mnt, check=False))
    assert "not empty" in line and "--nonempty" in line and not is_mounted(mnt)
    cli_mount(cli_mounts, plate, mnt, "--nonempty")
    assert (mnt / "images").is_dir()
    run_cli("umount", str(mnt))
    assert (mnt / "notes.txt").read_text() == "mine"


def test_umount_of_a_folder_not_mounted_fails(tmp_path):
    line = one_line_error(run_cli("umount", str(tmp_path), check=False))
    assert "is not mounted" in line
    assert "MOUNTPOINT or --all" in one_line_error(run_cli("umount", check=False))


def test_busy_mount_is_refused_unless_lazy(plate, tmp_path, cli_mounts):
    mnt = tmp_path / "mnt"
    cli_mount(cli_mounts, plate, mnt)
    name = sorted(os.listdir(mnt / "images"))[0]
    with open(mnt / "images" / name, "rb") as f:
        line = one_line_error(run_cli("umount", str(mnt), check=False))
        assert "busy" in line and "--lazy" in line and is_mounted(mnt)
        assert "detached" in run_cli("umount", "--lazy", str(mnt)).stdout
        assert not is_mounted(mnt)
        assert f.read(4) in (b"II*\x00", b"II+\x00")   # an open file keeps working


# -- read-only plates --------------------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in root.rglob("*")}


def _make_read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_plate_is_never_written(plate, tmp_path, cli_mounts):
    run_cli("info", str(plate))   # metadata in the plate while it is still writable
    _make_read_only(plate)
    before = _snapshot(plate)
    try:
        line = one_line_error(run_cli("convert", str(plate), check=False))
        assert "read-only" in line and "--output DIR" in line
        out = tmp_path / "elsewhere.zarr"
        run_cli("convert", str(plate), "--output", str(out))
        assert (out / "zarr.json").is_file() or (out / ".zattrs").is_file()
        line = one_line_error(cli_mount(cli_mounts, plate, tmp_path / "mnt", "--writable",
                                        check=False))
        assert "read-only" in line
        line = one_line_error(run_cli("run", str(REPO / "examples" / "cells.py"), str(plate),
                                      check=False))
        assert "read-only" in line
        assert _snapshot(plate) == before
    finally:
        for p in [plate, *plate.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


# -- instruments we do not read ----------------------------------------------------------------

def _cv8000_export(root: Path, with_markers: bool) -> Path:
    meas = root / "CV8000-export" / "Meas_20241007_150209"
    meas.mkdir(parents=True)
    img = np.zeros((16, 16), np.uint16)
    for ch in range(1, 5):
        tifffile.imwrite(meas / f"SC_BP445-45_20x v2_M01_CH0{ch}.tif", img)
    for well in ("B03", "C04"):
        tifffile.imwrite(meas / f"Plate_{well}_T0001F001L01A01Z01C01.tif", img)
    if with_markers:
        (meas / "MeasurementData.mlf").write_text("<bts:MeasurementData/>")
        (meas / "MeasurementDetail.mrf").write_text("<bts:MeasurementDetail/>")
    return meas


@pytest.mark.parametrize("with_markers", [True, False])
def test_yokogawa_cellvoyager_is_refused_by_name(tmp_path, with_markers):
    meas = _cv8000_export(tmp_path, with_markers)
    for folder in (meas, meas.parent):
        line = one_line_error(run_cli("info", str(folder), check=False))
        assert "Yokogawa CellVoyager" in line and "not supported" in line
        assert "ImageXpress" in line and "Opera Phenix" in line     # what is supported
    assert not (meas / "openhcs_metadata.json").exists()


def test_shading_files_are_not_wells(tmp_path):
    folder = tmp_path / "shading"
    folder.mkdir()
    for ch in range(1, 5):
        tifffile.imwrite(folder / f"SC_BP445-45_20x v2_M01_CH0{ch}.tif", np.zeros((8, 8), np.uint8))
    line = one_line_error(run_cli("info", str(folder), check=False))
    assert "no microscope format recognized" in line and "CH01" not in line


@pytest.mark.parametrize("suffix,instrument", [
    (".nd2", "Nikon"), (".czi", "Zeiss CZI"), (".lif", "Leica LIF"), (".vsi", "Olympus/Evident")])
def test_single_file_formats_are_refused_by_name(tmp_path, suffix, instrument):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / f"run1{suffix}").write_bytes(b"\0" * 64)
    for target in (folder, folder / f"run1{suffix}"):
        line = one_line_error(run_cli("info", str(target), check=False))
        assert instrument in line and f"run1{suffix}" in line and "ImageXpress" in line


# -- the command line itself -------------------------------------------------------------------

def test_version_and_bad_log_level():
    import vfsmount
    assert run_cli("--version").stdout.strip() == f"vfsmount {vfsmount.__version__}"
    line = one_line_error(run_cli("--log-level", "LOUD", "list", check=False), code=2)
    assert "unknown level 'LOUD'" in line
    line = one_line_error(run_cli("list", "--log-level", "LOUD", check=False), code=2)
    assert "unknown level 'LOUD'" in line


def test_dependent_options_are_checked(plate, tmp_path):
    (tmp_path / "mnt").mkdir()
    line = one_line_error(run_cli("mount", str(plate), str(tmp_path / "mnt"), "--materialize",
                                  "zarr", check=False), code=2)
    assert "--materialize needs --writable" in line
    line = one_line_error(run_cli("mount", str(plate), str(tmp_path / "mnt"),
                                  "--compute-cache-mb", "9", check=False), code=2)
    assert "--compute-cache-mb needs --pipeline" in line
    line = one_line_error(run_cli("run", "p.py", str(plate), "--workers", "3", "--dask",
                                  "local:1", check=False), code=2)
    assert "--workers cannot go with --dask" in line
    assert not is_mounted(tmp_path / "mnt")


def test_pipeline_mistakes_give_file_and_line(plate, tmp_path, cli_mounts):
    bad = tmp_path / "bad.py"
    bad.write_text("from compute.pipeline import Pipeline\n\npipeline = Pipeline([)\n")
    line = one_line_error(run_cli("run", str(bad), str(plate), check=False))
    assert line.startswith(f"vfsmount run: error: {bad}:3: SyntaxError")
    line = one_line_error(cli_mount(cli_mounts, plate, tmp_path / "mnt", "--pipeline", str(bad),
                                    check=False))
    assert f"{bad}:3: SyntaxError" in line and not is_mounted(tmp_path / "mnt")
    broken = tmp_path / "broken.py"
    broken.write_text("x = 1\npipeline = undefined_name\n")
    line = one_line_error(run_cli("run", str(broken), str(plate), check=False))
    assert f"{broken}:2: NameError" in line
    res = run_cli("--log-level", "debug", "run", str(broken), str(plate), check=False)
    assert res.returncode == 1 and "Traceback" in res.stderr


def test_user_mistakes_are_one_line(tmp_path):
    line = one_line_error(run_cli("info", str(tmp_path / "nowhere"), check=False))
    assert "nowhere" in line
    line = one_line_error(run_cli("mount", str(tmp_path), check=False), code=2)
    assert "mountpoint" in line
    line = one_line_error(run_cli("run", str(tmp_path / "none.py"), str(tmp_path), check=False))
    assert "no such pipeline file" in line


def test_closed_pipe_is_quiet(plate):
    for i in range(2500):   # enough unparsed names that the JSON overflows the pipe buffer
        (plate / f"not_an_image_name_from_any_instrument_{i:05d}.tif").write_bytes(b"")
    cmd = (f"{sys.executable} -m vfsmount --log-level error info --json '{plate}' | head -n 2; "
           "echo rc=${PIPESTATUS[0]} >&2")
    res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=REPO)
    assert res.stdout.splitlines() == ["{", '  "schema": 1,']
    assert res.stderr.strip() in ("rc=141", "rc=0"), res.stderr


def test_every_option_has_help():
    from vfsmount.cli import build_parser
    parser = build_parser()
    for name, sub in [("vfsmount", parser), *parser.commands.items()]:
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    for name in parser.commands:
        assert run_cli(name, "--help").stdout.startswith(f"usage: vfsmount {name}")


def test_progress_bar_only_on_a_terminal(plate, tmp_path):
    res = run_cli("convert", str(plate), "--output", str(tmp_path / "a.zarr"))
    assert "\r" not in res.stderr and "plane" not in res.stderr
    main_fd, tty_fd = pty.openpty()
    fcntl.ioctl(tty_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))   # a real size
    try:
        proc = subprocess.run([sys.executable, "-m", "vfsmount", "convert", str(plate), "--output",
                               str(tmp_path / "b.zarr")], stderr=tty_fd, stdout=subprocess.PIPE,
                              timeout=120)
        os.close(tty_fd)
        seen = b""
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(main_fd)
    assert proc.returncode == 0 and b"\r" in seen and b"plane" in seen


# -- info --------------------------------------------------------------------------------------

def test_info_json_keys_and_plane_format(plate):
    full = json.loads(run_cli("info", "--json", str(plate)).stdout)
    again = json.loads(run_cli("info", "--json", "--no-rescan", str(plate)).stdout)
    assert full["schema"] == 1 and again["schema"] == 1
    assert set(full) == set(again) and {"unparsed_tiffs", "ignored_thumbnails"} <= set(again)
    assert full["ignored_thumbnails"] == 4 and again["ignored_thumbnails"] is None
    for key, s in full["subdirectories"].items():
        assert set(s) == set(again["subdirectories"][key])
        assert (s["width"], s["height"], s["dtype"], s["bytes_per_plane"]) == (48, 32, "uint16",
                                                                                48 * 32 * 2)


def test_info_says_unknown_pixel_size(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    for ch in (1, 2):
        tifffile.imwrite(folder / f"A01_s1_w{ch}.tif", np.zeros((8, 12), np.uint8))
    out = run_cli("info", str(folder)).stdout
    assert "None" not in out and re.search(r"pixel: +unknown", out)
    assert re.search(r"plane: +12 x 8 uint8, 96 bytes", out)


# -- README ------------------------------------------------------------------------------------

def _readme_commands() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text()
    table = text.split("<!-- commands:", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for m in re.finditer(r"^\| `vfsmount (\w+) ([^`]*)`", table, re.MULTILINE):
        rows[m[1]] = set(re.findall(r"--[a-z0-9][a-z0-9-]*", m[2]))
    return rows


def _help_commands() -> dict[str, set[str]]:
    top = run_cli("--help").stdout
    names = re.findall(r"^    (\w+) ", top, re.MULTILINE)   # the COMMAND list
    return {name: set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", run_cli(name, "--help").stdout,
                                 re.MULTILINE)) - {"--help", "--log-level"} for name in names}


def test_readme_command_table_matches_help():
    assert _readme_commands() == _help_commands()


# -- a plain install -------------------------------------------------------------------------

@pytest.mark.install
def test_plain_install_runs_the_readme_pipeline(plate, tmp_path, plain_install):
    """`pip install .` without extras (a fresh venv that sees no other site-packages) runs
    `vfsmount run cells PLATE` (the example installed with the package); a missing extra is
    named with its install line. The install is started at collection (tests/conftest.py)."""
    code, out = plain_install.wait()
    assert code == 0, out
    venv, env = plain_install.venv, plain_install.env

    def vfsmount(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "vfsmount"), *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    # the packaged example, by name, from a folder outside the checkout (cwd=tmp_path)
    res = vfsmount("run", "cells", str(plate))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "cells: 2 stacks, 4 images" in res.stdout and (plate / "outputs" / "cells").is_dir()
    uses_torch = tmp_path / "uses_torch.py"
    uses_torch.write_text("import torch\npipeline = []\n")
    res = vfsmount("run", str(uses_torch), str(plate))
    assert "uses_torch.py:1: No module named 'torch' (pip install 'vfsmount[torch]')" in res.stderr
    res = vfsmount("run", str(REPO / "examples" / "cells.py"), str(plate), "--dask", "local:1")
    assert "pip install 'vfsmount[dask]'" in res.stderr and res.returncode == 1
