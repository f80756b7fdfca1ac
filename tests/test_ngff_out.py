"""Every OME-Zarr store vfsmount writes is valid NGFF (checked with ome-zarr-models, the NGFF
pydantic validators, and opened with ome-zarr-py's Reader) and carries the instrument's
physics: pixel size, z spacing, channel names."""
from __future__ import annotations

import shutil
import statistics
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from backends.plates.convert import convert_plate
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.backend import ZarrStorageBackend
from backends.ngff.config import ZarrConfig
from backends.ngff.documents import downsample, pyramid_levels
from tests.conftest import REPO, imagej_available, run_cli


def _ome(group) -> dict:
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


def validate_store(path: Path, version: str) -> dict:
    """Validate the plate, every well, every image (and its labels) with ome-zarr-models;
    return {image path: its multiscales + omero metadata}."""
    from ome_zarr_models import v04, v05
    models = v04 if version == "0.4" else v05
    root = zarr.open_group(path, mode="r")
    models.HCS.from_zarr(root)
    plate = _ome(root)["plate"]
    assert plate["version"] == version and plate["field_count"] >= 1 and plate["acquisitions"]
    images = {}
    for well in plate["wells"]:
        models.Well.from_zarr(root[well["path"]])
        for image in _ome(root[well["path"]])["well"]["images"]:
            path_ = f"{well['path']}/{image['path']}"
            models.Image.from_zarr(root[path_])
            images[path_] = _ome(root[path_])
            if "labels" in root[path_]:
                for name in _ome(root[f"{path_}/labels"])["labels"]:
                    models.ImageLabel.from_zarr(root[f"{path_}/labels/{name}"])
    assert images
    return images


def open_with_ome_zarr_py(path: Path, image_path: str) -> np.ndarray:
    """Level 0 of one field image as ome-zarr-py's Reader gives it (and the plate opens)."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    plate_nodes = list(Reader(parse_url(str(path)))())
    assert plate_nodes and "plate" in plate_nodes[0].metadata or plate_nodes[0].specs
    nodes = list(Reader(parse_url(str(path / image_path)))())
    return np.asarray(nodes[0].data[0])


def open_with_napari(path: Path, image_path: str) -> np.ndarray:
    """Level 0 of one field image as napari-ome-zarr's reader function gives it (napari
    without a Qt binding); the plate opens too, as a grid of first fields."""
    from napari_ome_zarr import napari_get_reader
    plate_layers = napari_get_reader(str(path))(str(path))
    assert plate_layers and plate_layers[0][2] == "image"
    data, meta, _kind = napari_get_reader(str(path / image_path))(str(path / image_path))[0]
    return np.asarray(data[0] if isinstance(data, list) else data), meta


def assert_pixels_equal_source(store_path: Path, source, names: list[str], version: str) -> None:
    """Every source plane equals its plane in the store, read back by vfsmount's reader and,
    for one field, by ome-zarr-py and by napari-ome-zarr."""
    store = ZarrStorageBackend(store_path)
    for name in names:
        np.testing.assert_array_equal(store.load(name), source.load(name), err_msg=name)
    ref = store.plane(names[0]).ref
    image = ref.array.rsplit("/", 1)[0]
    data = open_with_ome_zarr_py(store_path, image)
    np.testing.assert_array_equal(data[ref.index], source.load(names[0]))
    data, meta = open_with_napari(store_path, image)
    np.testing.assert_array_equal(data[ref.index], source.load(names[0]))


def metaseries_median_z_step(plate: Path) -> float:
    """The median step between consecutive ZStep_N planes, read independently of vfsmount."""
    series: dict[str, dict[int, float]] = {}
    for f in plate.glob("ZStep_*/*.tif"):
        if "_thumb" in f.name:
            continue
        with tifffile.TiffFile(f) as tif:
            z = tif.metaseries_metadata["PlaneInfo"]["z-position"]
        key = f.name.split("_w")[0] + "_w" + f.name.split("_w")[1][0]
        series.setdefault(key, {})[int(f.parent.name.split("_")[1])] = z
    steps = [abs(s[b] - s[a]) for s in series.values() for a, b in zip(sorted(s), sorted(s)[1:])]
    return statistics.median(steps)


def convert_and_validate(copy_real_plate, name: str, version: str):
    """A copy of a real sample plate, converted at ``version``: (plate, store, its images'
    NGFF metadata), every node of the store validated with ome-zarr-models."""
    plate = copy_real_plate(name)
    out = convert_plate(plate, plate / "store.zarr", config=ZarrConfig(ngff_version=version),
                        progress=False)
    return plate, out, validate_store(out, version)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_convert_projection_mix_is_valid_and_true_to_the_instrument(copy_real_plate, version):
    plate, out, images = convert_and_validate(copy_real_plate, "Projection-Mix", version)
    p = Plate.open(plate)
    source_key = p.entry("store.zarr")["source_subdirectory"]
    assert_pixels_equal_source(out, p.backend(source_key), p.image_files(source_key)[::7],
                               version)
    expected = metaseries_median_z_step(plate)
    for meta in images.values():
        ms = meta["multiscales"][0]
        scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert abs(scale[2] - expected) <= 0.05 and scale[3] == scale[4] == pytest.approx(1.3668)
        assert [a.get("unit") for a in ms["axes"]] == [None, None, "micrometer", "micrometer",
                                                       "micrometer"]
        labels = [c["label"] for c in meta["omero"]["channels"]]
        # channel n at c index n-1; every channel's _IllumSetting_ is FITC_05 (w3: projections only)
        assert [labels[c - 1] for c in (1, 2, 4)] == ["FITC_05"] * 3
        assert all(c["window"]["end"] > c["window"]["start"] for c in meta["omero"]["channels"])
    entry = p.entry(source_key)
    assert abs(entry["z_spacing"] - expected) <= 0.05
    assert entry["channel_names"] == {"1": "FITC_05", "2": "FITC_05", "4": "FITC_05"}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_convert_opera_phenix_names_channels_from_the_xml(copy_real_plate, version):
    plate, out, images = convert_and_validate(copy_real_plate, "Version1", version)
    ns = {"h": "http://www.perkinelmer.com/PEHH/HarmonyV5"}
    xml = ET.parse(plate / "Index.idx.xml").getroot()
    names = {int(i.find("h:ChannelID", ns).text): i.find("h:ChannelName", ns).text
             for i in xml.iter("{%s}Image" % ns["h"]) if i.find("h:ChannelID", ns) is not None}
    (meta,) = images.values()
    assert [c["label"] for c in meta["omero"]["channels"]] == [names[c] for c in sorted(names)]
    ms = meta["multiscales"][0]
    # one plane: no z spacing to know, and none is claimed (the z axis has no unit)
    assert "unit" not in ms["axes"][2]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]        # 1080 px -> one 540 px level
    p = Plate.open(plate)
    assert p.entry("workspace")["physics_unknown"]["z_spacing"] == "a single z-plane"
    assert_pixels_equal_source(out, p.backend("workspace"), p.image_files("workspace"), version)
    info = run_cli("info", str(plate), "--no-rescan").stdout
    assert "spacing unknown (a single z-plane)" in info


def test_pyramid_levels_halve_until_the_plane_fits(tmp_path):
    assert pyramid_levels((1, 1, 1, 4096, 3000), ZarrConfig()) == 2
    assert pyramid_levels((1, 1, 1, 1024, 1024), ZarrConfig()) == 0
    assert pyramid_levels((1, 1, 1, 4096, 4096), ZarrConfig(pyramid_levels=0)) == 0
    a = np.arange(5 * 7, dtype=np.uint16).reshape(5, 7)
    half = downsample(a)
    assert half.shape == (3, 4) and half[0, 0] == round(a[:2, :2].mean())


def test_convert_levels_option(tmp_path):
    plate = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1,
                                                             z=2, shape=(2100, 1030)),
                                   thumbnails=False, projections=False)
    run_cli("convert", str(plate), "--output", str(tmp_path / "auto.zarr"), "--no-progress")
    run_cli("convert", str(plate), "--output", str(tmp_path / "none.zarr"), "--levels", "0",
            "--no-progress", "--overwrite")
    auto = validate_store(tmp_path / "auto.zarr", "0.4")["A/01/0"]["multiscales"][0]
    none = validate_store(tmp_path / "none.zarr", "0.4")["A/01/0"]["multiscales"][0]
    assert [d["path"] for d in auto["datasets"]] == ["0", "1", "2"] and len(none["datasets"]) == 1
    level2 = zarr.open_group(tmp_path / "auto.zarr", mode="r")["A/01/0/2"]
    assert level2.shape[-2:] == (525, 258)
    scale = auto["datasets"][2]["coordinateTransformations"][0]["scale"]
    assert scale[2] == pytest.approx(2.5) and scale[3] == pytest.approx(0.65 * 4)


# -- outputs keep the physics of their source ----------------------------------------------

SMALL = PlateSpec(wells=("A01", "B02"), sites=1, channels=2, z=3, shape=(64, 96))


def expected_labels(plate: Path, name: str) -> np.ndarray:
    """What examples/cells.py computes for one (well, site, channel) stack, run in-process."""
    from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu
    p = Plate.open(plate)
    stem = name.split("_z")[0]
    names = [n for n in p.image_files() if n.startswith(stem + "_z")]
    stack = np.stack(p.backend().load_batch(names))
    return label_with_measurements(threshold_otsu(gaussian_filter(stack)), stack)[0]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_run_materialize_zarr_outputs_are_valid_and_keep_the_plate_scale(tmp_path, version):
    plate = make_imagexpress_plate(tmp_path / "p", SMALL, thumbnails=False, projections=False)
    convert_plate(plate, config=ZarrConfig(ngff_version=version), progress=False)
    run_cli("run", str(REPO / "examples" / "cells.py"), str(plate), "--materialize", "zarr",
            "--no-progress")
    store = plate / "outputs" / "cells.zarr"
    images = validate_store(store, version)
    assert set(images) == {"A/01/0", "B/02/0"}
    for path, meta in images.items():
        scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
        assert scale[2:] == pytest.approx([2.5, 0.65, 0.65])        # the plate's z step and pixel
        assert [c["label"] for c in meta["omero"]["channels"]] == ["Wave1", "Wave2"]
        root = zarr.open_group(store, mode="r")
        assert _ome(root[f"{path}/labels"])["labels"] == ["rois"]    # label_with_measurements
        np.testing.assert_array_equal(root[f"{path}/labels/rois/0"][0, 0],
                                      root[f"{path}/0"][0, 1])       # the last stack written: w2
    out = ZarrStorageBackend(store)
    name = "B02_s001_w2_z002_t001.tif"
    np.testing.assert_array_equal(out.load(name), expected_labels(plate, name)[1])
    assert out.plane(name).pixel_size == pytest.approx(0.65)
    ref = out.plane(name).ref
    data = open_with_ome_zarr_py(store, ref.array.rsplit("/", 1)[0])
    np.testing.assert_array_equal(data[ref.index], out.load(name))
    table = (plate / "outputs" / "cells" / "B02_s001_w2_t001_measurements.csv").read_text()
    header, first = table.splitlines()[:2]
    cols = dict(zip(header.split(","), first.split(",")))
    assert float(cols["area_um2"]) == pytest.approx(float(cols["area"]) * 0.65 ** 2, rel=1e-5)
    assert float(cols["centroid_x_um"]) == pytest.approx(float(cols["centroid_x"]) * 0.65,
                                                         rel=1e-5)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_cp_into_a_zarr_materializing_mount_writes_a_valid_store(tmp_path, mounts, version):
    plate = make_imagexpress_plate(tmp_path / "p", SMALL, thumbnails=False, projections=False)
    convert_plate(plate, config=ZarrConfig(ngff_version=version), progress=False)
    mnt = mounts.mount(plate, "--writable", "--materialize", "zarr")
    names = sorted(n for n in (mnt / "images").iterdir() if n.name.startswith("B02_s001_w2"))
    (mnt / "outputs" / "copy").mkdir()
    subprocess.run(["cp", *map(str, names), str(mnt / "outputs" / "copy")], check=True)
    from vfsmount.control import unmount
    unmount(mnt)
    store = plate / "outputs" / "copy.zarr"
    (meta,) = validate_store(store, version).values()
    scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale[2:] == pytest.approx([2.5, 0.65, 0.65])
    source = Plate.open(plate).backend()
    assert_pixels_equal_source(store, source, [n.name for n in names], version)
    # channel 2 only: the store records that c index 0 holds nothing
    assert ZarrStorageBackend(store).list_files() == [n.name for n in names]


PIXEL_PROBE = r"""
import ij.IJ; import ij.ImagePlus;
public class PixelProbe { public static void main(String[] a) {
  ImagePlus imp = IJ.openImage(a[0]);
  if (imp == null) { System.out.println("NULL"); System.exit(2); }
  ij.measure.Calibration c = imp.getCalibration();
  System.out.println("CAL " + c.pixelWidth + " " + c.pixelHeight + " " + c.getUnit());
  System.exit(0);
}}
"""


@pytest.mark.imagej
@pytest.mark.skipif(not imagej_available(), reason="needs the Debian imagej package")
def test_pipeline_output_tiff_opens_in_imagej_with_the_plate_pixel_size(tmp_path):
    plate = make_imagexpress_plate(tmp_path / "p", SMALL, thumbnails=False, projections=False)
    run_cli("run", str(REPO / "examples" / "cells.py"), str(plate), "--no-progress")
    tiff = plate / "outputs" / "cells" / "A01_s001_w1_z002_t001.tif"
    probe = tmp_path / "PixelProbe.java"
    probe.write_text(PIXEL_PROBE)
    res = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", "/usr/share/java/ij.jar",
                          str(probe), str(tiff)], capture_output=True, text=True, timeout=180)
    line = next(l for l in res.stdout.splitlines() if l.startswith("CAL "))
    width, height, unit = line.split()[1:]
    assert float(width) == pytest.approx(0.65) and float(height) == pytest.approx(0.65)
    assert unit in ("micron", "µm", "um")


# -- issue 20: metadata batched, a killed writer's planes recovered from their chunks -----------

def _planes(names: list[str], shape=(32, 40)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {n: rng.integers(100, 4000, shape, dtype=np.uint16) for n in names}
    out[names[-1]][:] = 0            # an all-zero plane is a written plane too
    return out


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_planes_written_before_a_crash_are_recovered(tmp_path, version):
    """save_batch(flush=False) writes chunks and shapes only (what the mount does per closed
    file); a writer killed before flush() leaves the store marked unflushed. Opening it
    rebuilds the index from the chunks; a writable opening writes valid NGFF again."""
    from backends.ngff.backend import output_store
    names = ["A01_s001_w1_z001_t001.tif", "A01_s001_w1_z002_t001.tif",
             "A01_s001_w2_z002_t001.tif", "B03_s002_w1_z001_t001.tif"]
    planes = _planes(names)
    path = tmp_path / "out.zarr"
    first = output_store(path, {"pixel_size": 0.5, "ngff_version": version})
    first.save_batch([planes[names[0]]], [names[0]])                      # flushed
    for name in names[1:]:
        first.save_batch([planes[name]], [name], flush=False)             # then "killed"
    root = zarr.open_group(path, mode="r")
    assert [w["path"] for w in _ome(root)["plate"]["wells"]] == ["A/01"]   # B03: not yet
    assert dict(root.attrs)["vfsmount"]["unflushed"] is True
    assert root["A/01/0/0"].shape[:3] == (1, 1, 1)      # grown in memory only: batched too
    reader = ZarrStorageBackend(path)                                     # read-only: in memory
    assert reader.list_files() == names
    for name in names:
        np.testing.assert_array_equal(reader.load(name), planes[name])
    assert dict(zarr.open_group(path, mode="r").attrs)["vfsmount"]["unflushed"] is True
    writer = output_store(path, {"pixel_size": 0.5})                       # the next mount
    assert writer.list_files() == names
    assert dict(zarr.open_group(path, mode="r").attrs)["vfsmount"] == {"format": 2}
    validate_store(path, version)
    assert ZarrStorageBackend(path).list_files() == names


def test_display_windows_come_from_the_planes_written(tmp_path):
    from backends.ngff.backend import output_store
    names = ["A01_s001_w1_z001_t001.tif", "A01_s001_w1_z002_t001.tif"]
    dim, bright = np.full((64, 64), 100, np.uint16), np.full((64, 64), 100, np.uint16)
    bright[:32] = 3000
    store = output_store(tmp_path / "w.zarr", {"pixel_size": 0.5})
    store.save_batch([dim], [names[0]], flush=False)
    store.save_batch([bright], [names[1]], flush=False)
    store.flush()
    (meta,) = validate_store(tmp_path / "w.zarr", "0.4").values()
    window = meta["omero"]["channels"][0]["window"]
    assert (window["start"], window["end"]) == (100, 3000)
