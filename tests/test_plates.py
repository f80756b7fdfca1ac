"""Microscope handlers, openhcs_metadata.json and the virtual workspace, on real and synthetic plates."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.errors import (MetadataError, NameCollisionError, PathEscapeError, PlateFormatError,
                             StorageNotFoundError)
from backends.plates.handlers import detect_handler
from backends.plates.metadata import (METADATA_FILENAME, cache_metadata_path, get_primary_backend,
                               read_metadata, update_metadata)
from backends.naming import (ParsedName, normalize_well, parse_virtual_name, row_index, row_letters,
                             virtual_name)
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate, make_opera_plate, synthetic_image
from backends.storage.virtual_workspace import VirtualWorkspaceBackend

from .conftest import REPO, real_plate, run_cli


def tiffs_on_disk(root: Path, *, thumbs: bool = False) -> set[str]:
    out = set()
    for dirpath, _d, files in os.walk(root):
        for f in files:
            if f.lower().endswith((".tif", ".tiff")) and (thumbs or "_thumb" not in f):
                out.add(os.path.relpath(os.path.join(dirpath, f), root))
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _d, files in os.walk(root):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out[os.path.relpath(os.path.join(dirpath, f), root)] = (st.st_size, st.st_mtime_ns)
    return out


# -- naming ----------------------------------------------------------------------------

def test_virtual_name_roundtrip_including_1536_wells():
    for well in ("A01", "P24", "AF48", "Z01", "AA12"):
        p = ParsedName(well, 3, 2, 7, 12)
        name = virtual_name(p)
        assert parse_virtual_name(name) == p
    assert virtual_name(ParsedName("A01")) == "A01_s001_w1_z001_t001.tif"
    assert normalize_well("a1") == "A01" and normalize_well("AF048") == "AF48"
    assert [row_letters(i) for i in (1, 26, 27, 32)] == ["A", "Z", "AA", "AF"]
    assert all(row_index(row_letters(i)) == i for i in range(1, 100))
    with pytest.raises(PlateFormatError, match="expected e.g. A01_s001"):
        parse_virtual_name("A01_s1.tif")
    with pytest.raises(PlateFormatError, match="not a well name"):
        normalize_well("A00")


# -- the real exports --------------------------------------------------------------------

def test_projection_mix(tmp_path):
    src = real_plate("Projection-Mix")
    plate = Plate.open(src, rescan=True)
    assert plate.handler_name == "imagexpress"
    ws, proj = plate.entry("workspace"), plate.entry("projection")
    # By hand from the file list: ZStep_1..10 hold w1 and w2 for every z and w4 only in
    # ZStep_1; 2 wells x 2 sites x (10 + 10 + 1) = 84 z-plane images.
    assert len(ws["image_files"]) == 84
    assert ws["wells"] == ["E07", "E08"] and ws["sites"] == [1, 2]
    assert set(ws["channels"]) == {"1", "2", "4"} and ws["z_indexes"] == list(range(1, 11))
    # Top level beside the ZStep folders: projections of w1, w2, w3: 2 x 2 x 3 = 12.
    assert len(proj["image_files"]) == 12 and set(proj["channels"]) == {"1", "2", "3"}
    assert plate.scan.ignored == 96  # every image has a _thumb twin, none is mapped
    mapped = set(ws["workspace_mapping"].values()) | set(proj["workspace_mapping"].values())
    assert mapped == tiffs_on_disk(src)           # every source exactly once
    assert len(mapped) == 96
    m = ws["workspace_mapping"]
    assert m["E07_s001_w1_z001_t001.tif"].startswith("ZStep_1/Projection-Mix_E07_s1_w1")
    assert m["E08_s002_w2_z010_t001.tif"].startswith("ZStep_10/Projection-Mix_E08_s2_w2")
    assert proj["workspace_mapping"]["E07_s001_w3_z001_t001.tif"].startswith("Projection-Mix_E07_s1_w3")
    assert ws["pixel_size"] == pytest.approx(1.3668)
    assert plate.main == "workspace" and plate.primary_backend() == "virtual_workspace"


def test_timepoints_kept_apart():
    plate = Plate.open(real_plate("1well-3C-2S-Zmix-T"), rescan=True)
    e = plate.entry()
    assert len(e["image_files"]) == 12 and e["timepoints"] == [1, 2]
    assert e["wells"] == ["C07"] and e["sites"] == [1, 2] and set(e["channels"]) == {"1", "2", "3"}
    m = e["workspace_mapping"]
    assert m["C07_s001_w1_z001_t001.tif"].startswith("TimePoint_1/")
    assert m["C07_s001_w1_z001_t002.tif"].startswith("TimePoint_2/")
    assert set(m.values()) == tiffs_on_disk(real_plate("1well-3C-2S-Zmix-T"))


def test_opera_phenix_version1():
    plate = Plate.open(real_plate("Version1"), rescan=True)
    e = plate.entry()
    assert plate.handler_name == "opera_phenix"
    assert e["image_files"] == [f"A01_s001_w{c}_z001_t001.tif" for c in range(1, 7)]
    assert e["channels"]["5"] == "HOECHST 33342" and e["channels"]["6"] == "Brightfield"
    assert e["pixel_size"] == pytest.approx(0.597976, rel=1e-5)
    assert e["grid_dimensions"] == [1, 1]
    backend = plate.backend()
    img = backend.load("A01_s001_w3_z001_t001.tif")
    ref = tifffile.imread(real_plate("Version1") / "r01c01f01p01-ch3sk1fk1fl1.tiff")
    assert img.shape == (1080, 1080) and np.array_equal(img, ref)


def test_read_only_plate_metadata_goes_to_the_cache(_private_cache):
    src = real_plate("Version1")       # shipped r-x: must stay untouched even for root
    before = snapshot(src)
    plate = Plate.open(src, rescan=True)
    assert plate.metadata_file == cache_metadata_path(src)
    assert str(plate.metadata_file).startswith(str(_private_cache))
    assert not (src / METADATA_FILENAME).exists()
    assert snapshot(src) == before
    assert read_metadata(src)["subdirectories"]["workspace"]["main"] is True


# -- synthetic plates ------------------------------------------------------------------

@pytest.mark.parametrize("nested", [True, False])
def test_synthetic_imagexpress_roundtrip(tmp_path, nested):
    spec = PlateSpec(wells=("A01", "H12", "AF48"), sites=2, channels=3, z=3 if nested else 1,
                     t=2 if nested else 1, shape=(24, 32))
    root = make_imagexpress_plate(tmp_path / "ix", spec, nested=nested, projections=nested)
    plate = Plate.open(root)
    e = plate.entry("workspace")
    assert len(e["image_files"]) == spec.n_images
    expected = {virtual_name(p) for p in spec.coordinates()}
    assert set(e["image_files"]) == expected
    sources = set(e["workspace_mapping"].values())
    if nested:
        proj = plate.entry("projection")
        assert len(proj["image_files"]) == len(spec.wells) * spec.sites * spec.channels * spec.t
        sources |= set(proj["workspace_mapping"].values())
    assert sources == tiffs_on_disk(root)
    backend = plate.backend("workspace")
    for p in spec.coordinates():
        name = virtual_name(p)
        real = backend.real_path(name)
        assert parse_virtual_name(name) == p
        assert np.array_equal(backend.load(name), synthetic_image(p, spec.shape, spec.dtype))
        assert real.is_file() and "_thumb" not in real.name


def test_synthetic_opera_roundtrip(tmp_path):
    spec = PlateSpec(wells=("B03", "AF48"), sites=4, channels=2, z=2, t=2, shape=(16, 16))
    root = make_opera_plate(tmp_path / "op", spec)
    plate = Plate.open(root)
    e = plate.entry()
    assert plate.handler_name == "opera_phenix"
    assert set(e["image_files"]) == {virtual_name(p) for p in spec.coordinates()}
    assert all(v.startswith("Images/r") for v in e["workspace_mapping"].values())
    assert e["grid_dimensions"] == [2, 2]
    assert e["channels"] == {"1": "Channel 1", "2": "Channel 2"}
    backend = plate.backend()
    for p in spec.coordinates():
        assert np.array_equal(backend.load(virtual_name(p)), synthetic_image(p, spec.shape))


def test_single_channel_and_plain_names(tmp_path):
    root = tmp_path / "plain"
    root.mkdir()
    img = np.ones((4, 4), np.uint8)
    for name in ("A01_s1.TIF", "A01_s2.TIF", "B07_s1.TIF"):
        tifffile.imwrite(root / name, img)
    plate = Plate.open(root)
    assert plate.entry()["image_files"] == ["A01_s001_w1_z001_t001.tif", "A01_s002_w1_z001_t001.tif",
                                            "B07_s001_w1_z001_t001.tif"]


def test_normalized_plate_is_read_from_disk(tmp_path):
    root = tmp_path / "norm"
    root.mkdir()
    for name in ("A01_s001_w1_z001_t001.tif", "A01_s001_w2_z001_t001.tif"):
        tifffile.imwrite(root / name, np.zeros((3, 3), np.uint16))
    plate = Plate.open(root)
    assert plate.handler_name == "openhcs"
    assert plate.primary_backend() == "disk"
    assert plate.backend().load("A01_s001_w2_z001_t001.tif").shape == (3, 3)


def test_metadata_has_every_field_and_primary_backend(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=2))
    Plate.open(root)
    doc = json.loads((root / METADATA_FILENAME).read_text())
    entry = doc["subdirectories"]["workspace"]
    for field in ("microscope_handler_name", "source_filename_parser_name", "image_files",
                  "workspace_mapping", "available_backends", "main", "grid_dimensions",
                  "pixel_size", "channels", "wells", "sites", "z_indexes", "timepoints"):
        assert field in entry
    assert get_primary_backend(root) == "virtual_workspace"
    update_metadata(root, {"zarr": {"available_backends": {"zarr": True}, "image_files": []}},
                    main="zarr")
    assert get_primary_backend(root) == "zarr"
    doc = read_metadata(root)
    assert doc["subdirectories"]["workspace"]["main"] is False


def test_only_metadata_is_written_into_the_plate(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=2, channels=2, z=2))
    before = snapshot(root)
    run_cli("info", str(root))
    after = snapshot(root)
    assert set(after) - set(before) == {METADATA_FILENAME}
    assert {k: v for k, v in after.items() if k != METADATA_FILENAME} == before


# -- bad input --------------------------------------------------------------------------

def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(PlateFormatError, match="no microscope format recognized") as e:
        detect_handler(tmp_path)
    assert str(tmp_path) in str(e.value)
    res = run_cli("info", str(tmp_path), check=False)
    assert res.returncode == 1 and "no microscope format recognized" in res.stderr


def test_malformed_index_xml(tmp_path):
    make_opera_plate(tmp_path / "op", PlateSpec(wells=("A01",), sites=1, channels=1, z=1))
    index = tmp_path / "op" / "Images" / "Index.idx.xml"
    index.write_text("<EvaluationInputData><Images><Image>")
    with pytest.raises(MetadataError, match="malformed Harmony index XML") as e:
        Plate.open(tmp_path / "op")
    assert "Index.idx.xml" in str(e.value)


def test_malformed_htd(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=1))
    (root / "Plate.HTD").write_text('"HTSInfoFile", Version 1.0\nthis is not an HTD line\n')
    with pytest.raises(MetadataError, match="malformed HTD line 2") as e:
        Plate.open(root)
    assert "Plate.HTD" in str(e.value)


def test_htd_is_found_case_insensitively_and_used(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=4, channels=2, z=1))
    (root / "plate.htd").write_text('"HTSInfoFile", Version 1.0\n"XSites", 2\n"YSites", 2\n'
                                    '"WaveName1", "DAPI"\n"WaveName2", "GFP"\n"EndFile"\n')
    e = Plate.open(root).entry()
    assert e["grid_dimensions"] == [2, 2] and e["channels"] == {"1": "DAPI", "2": "GFP"}


def test_metadata_with_wrong_types(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=1))
    bad = {"subdirectories": {"workspace": {"main": "yes", "workspace_mapping": {}}}}
    (root / METADATA_FILENAME).write_text(json.dumps(bad))
    with pytest.raises(MetadataError, match=r"main must be true or false") as e:
        Plate.open(root)
    assert METADATA_FILENAME in str(e.value)
    (root / METADATA_FILENAME).write_text("{not json")
    with pytest.raises(MetadataError, match="not valid JSON"):
        read_metadata(root)


def test_failed_metadata_write_leaves_previous_intact(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=1))
    Plate.open(root)
    before = (root / METADATA_FILENAME).read_bytes()
    with pytest.raises(MetadataError):
        update_metadata(root, {"broken": {"image_files": "not a list"}})
    assert (root / METADATA_FILENAME).read_bytes() == before
    assert [p.name for p in root.iterdir() if p.name.startswith(".vfsmount-tmp")] == []


@pytest.mark.parametrize("bad", ["../outside.tif", "/etc/passwd", "a/../../x.tif"])
def test_mapping_entries_escaping_the_plate(tmp_path, bad):
    with pytest.raises(PathEscapeError, match=r"absolute|'\.\.'"):
        VirtualWorkspaceBackend(tmp_path, {"A01_s001_w1_z001_t001.tif": bad})


def test_symlink_out_of_the_plate_is_refused(tmp_path):
    plate = tmp_path / "plate"
    plate.mkdir()
    secret = tmp_path / "secret.tif"
    tifffile.imwrite(secret, np.zeros((2, 2), np.uint8))
    os.symlink(secret, plate / "link.tif")
    backend = VirtualWorkspaceBackend(plate, {"A01_s001_w1_z001_t001.tif": "link.tif"})
    with pytest.raises(PathEscapeError, match="not followed"):
        backend.load("A01_s001_w1_z001_t001.tif")
    with pytest.raises(StorageNotFoundError):
        backend.load("B01_s001_w1_z001_t001.tif")


def test_metadata_with_escaping_mapping_is_refused_at_open(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=1))
    plate = Plate.open(root)
    doc = plate.metadata
    doc["subdirectories"]["workspace"]["workspace_mapping"]["A01_s001_w1_z001_t001.tif"] = "../../etc/passwd"
    (root / METADATA_FILENAME).write_text(json.dumps(doc))
    with pytest.raises(PathEscapeError, match="passwd"):
        Plate.open(root).backend()


def test_two_sources_colliding_on_one_name(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    tifffile.imwrite(root / "A01_s1_w1.tif", np.zeros((2, 2), np.uint8))
    tifffile.imwrite(root / "Other_A01_s1_w1.tif", np.zeros((2, 2), np.uint8))
    with pytest.raises(NameCollisionError, match="A01_s001_w1_z001_t001.tif") as e:
        Plate.open(root)
    assert "A01_s1_w1.tif" in str(e.value) and "Other_A01_s1_w1.tif" in str(e.value)
    assert not (root / METADATA_FILENAME).exists()


def test_names_that_do_not_parse_are_reported_not_mapped(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=2))
    tifffile.imwrite(root / "ZStep_1" / "overview.tif", np.zeros((2, 2), np.uint8))
    plate = Plate.open(root)
    assert plate.scan.unparsed == ["ZStep_1/overview.tif"]
    assert "overview.tif" not in json.dumps(plate.metadata)
    out = run_cli("info", str(root)).stdout
    assert "did not parse" in out and "overview.tif" in out


def test_unreadable_directory(tmp_path_factory):
    """Run as an unprivileged user so permission bits apply (root reads everything)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    base = Path(f"/tmp/vfsmount-unreadable-{os.getpid()}")
    try:
        root = make_imagexpress_plate(base / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=2))
        os.chmod(base, 0o755)
        for d, _dirs, files in os.walk(base):
            os.chmod(d, 0o777)
        os.chmod(root / "ZStep_2", 0o000)
        env = {**os.environ, "XDG_CACHE_HOME": str(base / "cache"), "PYTHONPATH": str(REPO)}
        res = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              sys.executable, "-m", "vfsmount", "info", str(root)],
                             capture_output=True, text=True, env=env, cwd="/")
        assert res.returncode == 1, res.stdout + res.stderr
        assert "cannot read plate directory" in res.stderr and "ZStep_2" in res.stderr
    finally:
        if base.exists():
            os.chmod(base / "p" / "ZStep_2", 0o755)
            shutil.rmtree(base)


def test_info_json(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01", "B02"), sites=2, channels=2,
                                                            z=3, t=2))
    report = json.loads(run_cli("info", str(root), "--json").stdout)
    assert report["format"] == "imagexpress"
    ws = report["subdirectories"]["workspace"]
    assert ws["images"] == 2 * 2 * 2 * 3 * 2 and ws["timepoints"] == [1, 2]
    assert ws["pixel_size_um"] == pytest.approx(0.65)
    assert report["metadata_file"] == str(root / METADATA_FILENAME)
    assert ws["available_backends"] == ["virtual_workspace"]


# -- physics from the instrument's own metadata ---------------------------------------------

def test_imagexpress_physics_come_from_the_metaseries_tags(tmp_path):
    spec = PlateSpec(wells=("A01",), sites=1, channels=2, z=3, t=2, shape=(16, 16))
    plate = make_imagexpress_plate(tmp_path / "p", spec, z_step=1.75, pixel_size=0.325)
    ws = Plate.open(plate).entry("workspace")
    assert ws["pixel_size"] == pytest.approx(0.325) and ws["z_spacing"] == pytest.approx(1.75)
    assert ws["time_interval"] == pytest.approx(60.0)          # TimePoint_1 -> _2: one minute
    assert ws["channel_names"] == {"1": "Wave1", "2": "Wave2"}
    info = ws["channel_info"]["2"]
    assert info["emission_wavelength"] == 550 and info["window"] == [10, 3000]
    assert info["color"] == "92FF00" and ws["physics_unknown"] == {}
    proj = Plate.open(plate).entry("projection")
    assert proj["z_spacing"] is None and proj["physics_unknown"]["z_spacing"] == "a single z-plane"


def test_a_plate_without_z_positions_says_its_spacing_is_unknown(tmp_path):
    for z in (1, 2):     # plain TIFFs: no MetaSeries tags at all
        folder = tmp_path / "p" / f"ZStep_{z}"
        folder.mkdir(parents=True)
        tifffile.imwrite(folder / "A01_s1_w1.tif", np.zeros((8, 8), np.uint16))
    ws = Plate.open(tmp_path / "p").entry("workspace")
    assert ws["z_spacing"] is None and ws["pixel_size"] is None
    assert "no z-position" in ws["physics_unknown"]["z_spacing"]
    out = run_cli("info", str(tmp_path / "p"), "--no-rescan").stdout
    assert "spacing unknown (the MetaSeries tags record no z-position steps)" in out
    js = json.loads(run_cli("info", str(tmp_path / "p"), "--json", "--no-rescan").stdout)
    assert js["subdirectories"]["workspace"]["z_spacing_um"] is None


def test_opera_physics_come_from_the_harmony_xml(tmp_path):
    spec = PlateSpec(wells=("B03",), sites=2, channels=2, z=4, shape=(16, 16))
    plate = make_opera_plate(tmp_path / "p", spec, z_step_m=1.5e-6)
    ws = Plate.open(plate).entry("workspace")
    assert ws["z_spacing"] == pytest.approx(1.5) and ws["pixel_size"] == pytest.approx(0.598)
    assert ws["channel_names"] == {"1": "Channel 1", "2": "Channel 2"}
    assert ws["channel_info"]["2"]["emission_wavelength"] == 520
