"""What a user reads must be true (issue 31): error words, stale mounts after convert, `info FILE`,
a hands-off mode for instrument shares, packaged examples, measurement CSV columns, option
suggestions, and logs without false alarms. Everything through the command line as typed.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from vfsmount.control import is_mounted, unmount

from .conftest import run_cli

SPEC = PlateSpec(wells=("A01", "B02"), sites=1, channels=2, z=2, t=1, shape=(32, 48))


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


def error_line(res: subprocess.CompletedProcess, code: int = 1) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


# -- 3: wrong words ---------------------------------------------------------------------------

def test_a_store_given_directly_is_read_only_in_true_words(plate, tmp_path, cli_mounts):
    store = tmp_path / "local.zarr"
    run_cli("convert", str(plate), "--output", str(store), "--no-progress")
    line = error_line(cli_mount(cli_mounts, store, tmp_path / "mnt", "--writable", check=False))
    assert "remote" not in line, line
    assert "given directly" in line and "read-only" in line and "without --writable" in line
    assert f"vfsmount run PIPELINE {store}" in line and str(tmp_path / "local.outputs") in line


def test_a_missing_mount_point_is_said_to_be_missing(plate, tmp_path):
    line = error_line(run_cli("mount", str(plate), str(tmp_path / "nowhere"), check=False))
    assert "does not exist" in line and "not a directory" not in line, line
    (tmp_path / "afile").write_text("x")
    line = error_line(run_cli("mount", str(plate), str(tmp_path / "afile"), check=False))
    assert "is not a directory" in line, line


# -- 12: near-miss options --------------------------------------------------------------------

@pytest.mark.parametrize("argv, suggestion", [
    (["mount", "P", "M", "--writeable"], "`--writable`"),
    (["mount", "P", "M", "--materialise", "zarr"], "`--materialize`"),
    (["info", "P", "--jsno"], "`--json`"),
    (["convert", "P", "--compressor", "zstdd"], "`zstd`"),
    (["mout", "P", "M"], "`mount`"),
])
def test_near_miss_options_get_a_suggestion(argv, suggestion):
    line = error_line(run_cli(*argv, check=False), code=2)
    assert f"did you mean {suggestion}?" in line, line


def test_a_far_miss_gets_no_suggestion():
    line = error_line(run_cli("mount", "P", "M", "--xyzzy", check=False), code=2)
    assert "unrecognized arguments: --xyzzy" in line and "did you mean" not in line, line


# -- 4: convert under a mount; `info FILE` names the real plate --------------------------------

def test_convert_of_a_mounted_plate_is_refused_and_info_file_names_the_plate(plate, tmp_path,
                                                                             cli_mounts):
    mnt = tmp_path / "mnt"
    cli_mount(cli_mounts, plate, mnt)
    line = error_line(run_cli("convert", str(plate), "--no-progress", check=False))
    assert f"mounted on {mnt}" in line and f"vfsmount umount {mnt}" in line, line
    assert not (plate / "zarr").exists()
    name = sorted(os.listdir(mnt / "images"))[0]          # A01_s001_w1_z001_t001.tif
    facts = json.loads(run_cli("info", str(mnt / "images" / name), "--json").stdout)
    real = os.path.realpath(plate)
    assert facts["plate"] == real
    assert facts["source"].startswith(real + "/") and str(mnt) not in facts["source"]
    assert os.path.isfile(facts["source"])
    channel_names = json.loads((plate / "openhcs_metadata.json").read_text())[
        "subdirectories"]["workspace"]["channel_names"]
    assert facts["channel"] == 1 and facts["channel_name"] == channel_names["1"]
    text = run_cli("info", str(mnt / "images" / name)).stdout
    assert re.search(rf"^channel: 1 \({re.escape(channel_names['1'])}\)$", text, re.M), text

    # unmounted, convert goes ahead; remounted, info names the store in the plate
    run_cli("umount", str(mnt))
    run_cli("convert", str(plate), "--no-progress")
    cli_mount(cli_mounts, plate, mnt)
    facts = json.loads(run_cli("info", str(mnt / "images" / name), "--json").stdout)
    assert facts["source"].startswith(os.path.join(real, "zarr") + "/"), facts
    assert facts["channel_name"] == channel_names["1"]


# -- 7: the examples are installed with the package --------------------------------------------

def test_packaged_examples_run_by_name_from_any_folder(plate, tmp_path, cli_mounts):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = run_cli("examples", cwd=elsewhere).stdout
    assert re.search(r"^cells\s+Three-step pipeline", listed, re.M), listed
    res = run_cli("run", "cells", str(plate), "--no-progress", cwd=elsewhere)
    assert "cells: 4 stacks, 8 images" in res.stdout and (plate / "outputs" / "cells").is_dir()
    # as the README once wrote it, from a folder that has no examples/
    res = run_cli("run", "examples/cells.py", str(plate), "--output", "again", "--no-progress",
                  cwd=elsewhere)
    assert (plate / "outputs" / "again").is_dir(), res.stdout
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cli_mounts.append(mnt)
    run_cli("mount", str(plate), str(mnt), "--pipeline", "cells", cwd=elsewhere)
    assert os.listdir(mnt / "processed" / "cells")
    # copied out to edit, never over the user's own file
    run_cli("examples", "--copy", "mine", cwd=elsewhere)
    copied = elsewhere / "mine" / "cells.py"
    assert "name=\"cells\"" in copied.read_text()
    line = error_line(run_cli("examples", "--copy", "mine", cwd=elsewhere, check=False))
    assert "exists" in line
    line = error_line(run_cli("run", "cellz", str(plate), cwd=elsewhere, check=False))
    assert "no such pipeline file" in line and "cells" in line


# -- 6: hands-off plates -----------------------------------------------------------------------

def checksum(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: its mode, size, mtime and (files) content hash."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def test_a_plate_owned_by_another_account_is_never_written(plate, tmp_path, cli_mounts):
    """An instrument share: info, a plain mount, a --writable session and a pipeline run
    leave every byte, mode and mtime of the plate folder as it was; results land in the
    folder the user named, metadata and staging in the user's cache."""
    for p in [plate, *plate.rglob("*")]:
        os.chown(p, 4242, 4242, follow_symlinks=False)   # the acquisition account's
    results = tmp_path / "my results"
    before = checksum(plate)

    info = json.loads(run_cli("info", str(plate), "--json").stdout)
    assert "owned by" in info["hands_off"] and info["outputs_dir"] is None
    cache = Path(os.environ["XDG_CACHE_HOME"])
    assert Path(info["metadata_file"]).is_relative_to(cache)
    text = run_cli("info", str(plate)).stdout
    assert "hands-off: owned by" in text and "--outputs-dir DIR" in text

    mnt = tmp_path / "mnt"
    cli_mount(cli_mounts, plate, mnt)
    name = sorted(os.listdir(mnt / "images"))[0]
    assert tifffile.imread(mnt / "images" / name).shape == (32, 48)
    run_cli("umount", str(mnt))
    line = error_line(cli_mount(cli_mounts, plate, mnt, "--writable", check=False))
    assert "hands-off" in line and "--outputs-dir DIR" in line
    line = error_line(cli_mount(cli_mounts, plate, mnt, "--writable", "--outputs-dir",
                                str(plate / "outputs"), check=False))
    assert "inside the plate" in line

    cli_mount(cli_mounts, plate, mnt, "--writable", "--outputs-dir", str(results))
    rows = json.loads(run_cli("list", "--json").stdout)
    row = next(r for r in rows if r["mountpoint"] == str(mnt))
    assert row["outputs_dir"] == str(results) and Path(row["metadata_file"]).is_relative_to(cache)
    listed = run_cli("list").stdout
    assert "OUTPUTS" in listed and str(results) in listed
    (mnt / "outputs" / "masks").mkdir()
    mask = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48)
    tifffile.imwrite(mnt / "outputs" / "masks" / name, mask)
    (mnt / "outputs" / "table.csv").write_text("a,b\n1,2\n")
    assert np.array_equal(tifffile.imread(mnt / "outputs" / "masks" / name), mask)
    facts = json.loads(run_cli("info", str(mnt / "outputs" / "masks" / name), "--json").stdout)
    assert facts["source"] == str(results / "masks" / name)
    run_cli("umount", str(mnt))
    assert np.array_equal(tifffile.imread(results / "masks" / name), mask)
    assert (results / "table.csv").read_text() == "a,b\n1,2\n"
    assert not [p for p in results.rglob("*") if "staging" in p.name]

    # the folder is kept for the plate: a pipeline run and a later mount use it
    run_cli("run", "cells", str(plate), "--no-progress")
    assert (results / "cells").is_dir()
    cli_mount(cli_mounts, plate, mnt)
    assert sorted(os.listdir(mnt / "outputs")) == ["cells", "masks", "table.csv"]
    info = json.loads(run_cli("info", str(plate), "--json").stdout)
    assert info["subdirectories"]["outputs/masks"]["images"] == 1
    run_cli("umount", str(mnt))
    assert checksum(plate) == before


def test_hands_off_by_choice_for_a_plate_of_ones_own(plate, tmp_path):
    before = checksum(plate)
    info = json.loads(run_cli("info", str(plate), "--hands-off", "--json").stdout)
    assert info["hands_off"].startswith("marked hands-off")
    line = error_line(run_cli("convert", str(plate), "--no-progress", check=False))
    assert "hands-off" in line and "--output DIR" in line
    line = error_line(run_cli("run", "cells", str(plate), check=False))
    assert "--outputs-dir DIR" in line
    assert checksum(plate) == before
    # a plate of one's own, not marked: metadata and outputs in the plate, as before
    other = tmp_path / "other"
    shutil.copytree(plate, other)
    info = json.loads(run_cli("info", str(other), "--json").stdout)
    assert info["hands_off"] is None and info["outputs_dir"] == str(other / "outputs")
    assert info["metadata_file"] == str(other / "openhcs_metadata.json")


# -- 11: measurement tables carry the image's columns ------------------------------------------

LEADING = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Channel",
           "Metadata_Timepoint", "ImageNumber", "ObjectNumber"]


def read_tables(folder: Path) -> dict[str, list[dict]]:
    tables = {}
    for p in sorted(folder.glob("*_measurements.csv")):
        with open(p, newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames[:len(LEADING)] == LEADING, (p.name, reader.fieldnames)
            tables[p.name] = list(reader)
    return tables


def test_measurement_tables_have_plate_well_site_and_numbers(plate, tmp_path, cli_mounts):
    run_cli("run", "cells", str(plate), "--no-progress")
    tables = read_tables(plate / "outputs" / "cells")
    assert len(tables) == 4          # 2 wells x 2 channels, one site and time point
    numbers = {}
    for name, rows in tables.items():
        well, site, channel, t = re.match(r"([A-Z]+\d+)_s(\d+)_w(\d+)_t(\d+)_", name).groups()
        assert rows, name
        for r in rows:
            assert (r["Metadata_Plate"], r["Metadata_Well"], r["Metadata_Site"],
                    r["Metadata_Channel"], r["Metadata_Timepoint"]) == \
                ("plate", well, str(int(site)), str(int(channel)), str(int(t)))
            assert r["ObjectNumber"] == r["label"]
        numbers.setdefault(well, set()).update(r["ImageNumber"] for r in rows)
    # one ImageNumber per image set (well, site, t), shared by its channels, in plate order
    assert numbers == {"A01": {"1"}, "B02": {"2"}}
    # through a --writable mount the same columns, the plate named by its folder
    mnt = tmp_path / "mnt"
    cli_mount(cli_mounts, plate, mnt, "--writable")
    run_cli("run", "cells", str(mnt), "--output", "viamount", "--no-progress")
    run_cli("umount", str(mnt))
    rows = read_tables(plate / "outputs" / "viamount")["B02_s001_w2_t001_measurements.csv"]
    assert {(r["Metadata_Plate"], r["Metadata_Well"], r["ImageNumber"]) for r in rows} == \
        {("plate", "B02", "2")}


# -- 10: one rule for recording output folders -------------------------------------------------

def test_every_output_folder_is_recorded_by_one_rule(plate, tmp_path, cli_mounts):
    mnt = tmp_path / "mnt"
    cli_mount(cli_mounts, plate, mnt, "--writable")
    plane = np.ones((32, 48), np.uint16)
    for rel in ("masks/A01_s001_w1_z001_t001.tif", "smoothed/A01_s001_w4_smooth.tif"):
        (mnt / "outputs" / rel).parent.mkdir(exist_ok=True)
        tifffile.imwrite(mnt / "outputs" / rel, plane)
    run_cli("umount", str(mnt))
    run_cli("run", "cells", str(plate), "--no-progress")
    subdirs = json.loads(run_cli("info", str(plate), "--json").stdout)["subdirectories"]
    assert (subdirs["outputs/masks"]["images"], subdirs["outputs/masks"]["other_files"]) == (1, 0)
    assert (subdirs["outputs/smoothed"]["images"], subdirs["outputs/smoothed"]["other_files"]) \
        == (0, 1)
    # a pipeline's folder by the same rule: its images, and its tables and ROI zips
    assert (subdirs["outputs/cells"]["images"], subdirs["outputs/cells"]["other_files"]) == (8, 8)
    text = run_cli("info", str(plate), "--no-rescan").stdout
    assert "[outputs/smoothed]  0 images" in text and "1 file not named like a plate image" in text


# -- log levels: no false alarms in the demo and the README's examples -------------------------

ALARM = re.compile(r"\b(ERROR|WARNING|CRITICAL)\b")


def alarms(text: str) -> list[str]:
    return [line for line in text.splitlines() if ALARM.search(line)]


def test_demo_and_readme_examples_log_no_error_or_warning(tmp_path, cli_mounts):
    """`vfsmount demo` (what `make demo` runs), then the README's first steps on its plate:
    every command's output and every daemon log free of ERROR and WARNING lines."""
    said = []

    def cli(*args: str) -> subprocess.CompletedProcess:
        res = run_cli(*args, cwd=tmp_path)
        said.extend([res.stdout, res.stderr])
        return res

    demo = cli("demo", "--dir", str(tmp_path / "demo"), "--unmount")
    demo_log = Path(re.search(r"log (\S+)\)", demo.stdout)[1])
    plate, mnt = tmp_path / "demo" / "SamplePlate", tmp_path / "demo" / "mnt"
    log = tmp_path / "readme.log"
    cli_mounts.append(mnt)
    cli("mount", str(plate), str(mnt), "--writable", "--pipeline", "cells", "--log-file", str(log))
    cli("run", "cells", str(mnt), "--no-progress")
    name = sorted(os.listdir(mnt / "images"))[0]
    cli("info", str(mnt / "images" / name))
    cli("info", str(plate))
    cli("list")
    tifffile.imread(mnt / "hyperstacks" / sorted(os.listdir(mnt / "hyperstacks"))[0])
    processed = sorted(os.listdir(mnt / "processed" / "cells"))
    assert tifffile.imread(mnt / "processed" / "cells" / processed[0]).shape == (256, 256)
    shutil.copytree(mnt / "images", tmp_path / "copied")     # cp -r MNT/images/ here/
    cli("umount", str(mnt))
    assert (plate / "outputs" / "cells").is_dir()
    logs = demo_log.read_text() + log.read_text()
    assert "mounted" in logs and "unmounted" in logs
    assert alarms(logs) == [] and alarms("\n".join(said)) == []


def test_saving_a_tiff_back_logs_no_error(tmp_path, plate, cli_mounts):
    """The README's "Save a result back" (ImageJ, tifffile): a flush of a TIFF still being
    written is normal, not an ERROR (issue 31 #1, fixed in vfsmount/outfile.py)."""
    mnt, log = tmp_path / "mnt", tmp_path / "save.log"
    cli_mount(cli_mounts, plate, mnt, "--writable", "--log-file", str(log))
    (mnt / "outputs" / "smoothed").mkdir()
    tifffile.imwrite(mnt / "outputs" / "smoothed" / "A01_s001_w4_smooth.tif",
                     np.ones((32, 48), np.uint16))
    run_cli("umount", str(mnt))
    assert (plate / "outputs" / "smoothed" / "A01_s001_w4_smooth.tif").is_file()
    assert alarms(log.read_text()) == []


def test_an_error_line_names_the_file_and_what_to_do(tmp_path, plate, cli_mounts):
    # a writable mount: on a read-only one (mounted ro) the kernel refuses before the daemon
    mnt, log = tmp_path / "mnt", tmp_path / "ro.log"
    cli_mount(cli_mounts, plate, mnt, "--writable", "--log-file", str(log))
    with pytest.raises(OSError):
        (mnt / "images" / "mine.tif").write_bytes(b"x")
    run_cli("umount", str(mnt))
    errors = [line for line in log.read_text().splitlines() if " ERROR " in line]
    assert errors and all("mine.tif" in e and "--writable" in e for e in errors), errors
