"""OME-Zarr plates written by other tools' own writers (ome-zarr-py, ngff-zarr) mount from a
local path: names by the README's rule, bytes equal to zarr's own read, physical metadata
in `info` and in ImageJ, the store never written into, malformed stores named precisely."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from backends.errors import MetadataError
from backends.ngff.backend import ZarrStorageBackend

from .conftest import imagej_available, run_cli

PIXEL, Z_STEP = 0.325, 2.0
LABELS = ["DAPI", "GFP"]


@dataclass
class Written:
    """A plate store and, independently of vfsmount, what it should serve."""

    store: Path
    planes: dict[str, tuple[str, tuple]] = field(default_factory=dict)  # name -> (array, index)
    pixel: float = PIXEL
    channels: list[str] = field(default_factory=lambda: list(LABELS))

    def add(self, well: str, site: int, array: str, axes: str, shape: tuple) -> None:
        """Name every plane by the README's rule: site = position in the well's image list,
        channel/z/t = index + 1."""
        lead = axes[:-2]
        for index in np.ndindex(*shape[:len(lead)]):
            c = dict(zip(lead, index))
            name = (f"{well}_s{site:03d}_w{c.get('c', 0) + 1}_z{c.get('z', 0) + 1:03d}"
                    f"_t{c.get('t', 0) + 1:03d}.tif")
            self.planes[name] = (array, index)


def _omero() -> dict:
    return {"channels": [{"label": n, "color": "FFFFFF", "active": True,
                          "window": {"min": 0, "max": 4000, "start": 0, "end": 4000}}
                         for n in LABELS]}


def write_ome_zarr_py(path: Path, version: str) -> Written:
    """ome-zarr-py's own writers: rows past Z, columns '3'/'12' (0.4) or '03'/'12' (0.5),
    a sparse plate, two acquisitions, an integer image path, a pyramid and labels."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image, write_labels, write_plate_metadata, write_well_metadata
    fmt = FormatV04() if version == "0.4" else FormatV05()
    axes = "czyx" if version == "0.4" else "tcyx"
    root = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    rows, cols = ["B", "AA"], (["3", "12"] if version == "0.4" else ["03", "12"])
    wells = [f"B/{cols[0]}", f"AA/{cols[1]}"]                           # sparse
    write_plate_metadata(root, rows, cols, wells, fmt=fmt, field_count=2,
                         acquisitions=[{"id": 0}, {"id": 1}])
    out = Written(path)
    rng = np.random.default_rng(0)
    for w in wells:
        r, c = w.split("/")
        wg = root.require_group(r).require_group(c)
        write_well_metadata(wg, [{"path": "0", "acquisition": 0}, {"path": "1", "acquisition": 1}],
                            fmt=fmt)
        for f in (0, 1):
            data = rng.integers(0, 4000, size=(2, 2, 24, 20), dtype=np.uint16)
            group = wg.require_group(str(f))
            write_image(data, group, scale_factors=[2], axes=axes, fmt=fmt,
                        scale={"y": PIXEL, "x": PIXEL}, axes_units={"y": "micrometer",
                                                                      "x": "micrometer"},
                        omero=_omero())
            write_labels((data[0] > 2000).astype(np.uint8), group, name="cells", axes=axes[1:],
                         fmt=fmt, scale_factors=[2])
            out.add(f"{r}{int(c):02d}", f + 1, f"{w}/{f}/{_level0(group)}", axes, data.shape)
    _integer_path(root[wells[0]])
    return out


def _level0(image: zarr.Group) -> str:
    attrs = dict(image.attrs)
    return attrs.get("ome", attrs)["multiscales"][0]["datasets"][0]["path"]


def _integer_path(well: zarr.Group) -> None:
    """An integer ``path`` in the well's image list (seen in the wild)."""
    attrs = dict(well.attrs)
    meta = attrs.get("ome", attrs)["well"]
    for image in meta["images"]:
        image["path"] = int(image["path"])
    well.attrs.update({"ome": {**attrs["ome"], "well": meta}} if "ome" in attrs else {"well": meta})


def write_ngff_zarr(path: Path, version: str, *, sharded: bool = False) -> Written:
    """ngff-zarr's HCS writer (HCSPlateWriter), a pyramid per field, channel labels."""
    import ngff_zarr as nz
    from ngff_zarr.hcs import HCSPlateWriter
    rows, cols = ["A", "B"], ["1", "2"]
    wells = [("A", "1"), ("A", "2"), ("B", "2")]
    plate = nz.Plate(columns=[nz.PlateColumn(name=c) for c in cols],
                     rows=[nz.PlateRow(name=r) for r in rows],
                     wells=[nz.PlateWell(path=f"{r}/{c}", rowIndex=rows.index(r),
                                         columnIndex=cols.index(c)) for r, c in wells],
                     name="p", field_count=2, version=version)
    out = Written(path)
    rng = np.random.default_rng(1)
    with HCSPlateWriter(str(path), plate) as writer:
        for r, c in wells:
            for f in range(2):
                data = rng.integers(0, 4000, size=(2, 3, 32, 40), dtype=np.uint16)
                image = nz.to_ngff_image(data, dims=["c", "z", "y", "x"],
                                         scale={"z": Z_STEP, "y": PIXEL, "x": PIXEL},
                                         axes_units={a: "micrometer" for a in "zyx"})
                ms = nz.to_multiscales(image, scale_factors=[2], chunks=16,
                                       method=nz.Methods.DASK_BIN_SHRINK)   # no wasm start-up
                ms.metadata.omero = nz.Omero(channels=[nz.OmeroChannel(
                    color="FFFFFF", window=nz.OmeroWindow(0, 4000, 0, 4000), label=n)
                    for n in LABELS])
                writer.write_well_image(ms, r, c, field_index=f,
                                        **({"chunks_per_shard": 2} if sharded else {}))
                out.add(f"{r}{int(c):02d}", f + 1, f"{r}/{c}/{f}/scale0/image", "czyx",
                        data.shape)
    return out


def without_well_attributes(path: Path) -> Written:
    """ome-zarr-py 0.5, then every well group's attributes removed: images come from the
    child groups holding multiscales."""
    out = write_ome_zarr_py(path, "0.5")
    for well_json in path.glob("*/*/zarr.json"):
        doc = json.loads(well_json.read_text())
        if "well" in doc.get("attributes", {}).get("ome", {}):
            doc["attributes"] = {}
            well_json.write_text(json.dumps(doc))
    return out


WRITERS = {
    "ome-zarr-py-0.4": lambda p: write_ome_zarr_py(p, "0.4"),
    "ome-zarr-py-0.5": lambda p: write_ome_zarr_py(p, "0.5"),
    "ngff-zarr-0.4": lambda p: write_ngff_zarr(p, "0.4"),
    "ngff-zarr-0.5-sharded": lambda p: write_ngff_zarr(p, "0.5", sharded=True),
    "ngff-zarr-0.6": lambda p: write_ngff_zarr(p, "0.6"),
    "no-well-attributes": without_well_attributes,
}


def snapshot(store: Path) -> dict[str, int]:
    return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*")}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_foreign_plate_info_and_mount(tmp_path, mounts, writer):
    written = WRITERS[writer](tmp_path / "plate.ome.zarr")
    store = written.store
    before = snapshot(store)
    if writer == "ngff-zarr-0.5-sharded":
        array = json.loads((store / "A/1/0/scale0/image/zarr.json").read_text())
        assert array["codecs"][0]["name"] == "sharding_indexed"
    info = json.loads(run_cli("info", str(store), "--json").stdout)
    entry = info["subdirectories"]["zarr"]
    assert info["format"] == "ome_zarr" and entry["images"] == len(written.planes)
    assert entry["pixel_size_um"] == pytest.approx(written.pixel)
    assert list(entry["channels"].values()) == written.channels
    if writer.startswith("ngff-zarr"):
        assert entry["z_spacing_um"] == pytest.approx(Z_STEP)
    assert not Path(info["metadata_file"]).is_relative_to(store)

    mnt = mounts.mount(store)
    names = sorted(os.listdir(mnt / "images"))
    assert names == sorted(written.planes)
    root = zarr.open_group(store, mode="r")
    for name, (array, index) in written.planes.items():
        direct = np.ascontiguousarray(root[array][index])
        served = tifffile.imread(mnt / "images" / name)
        assert served.dtype == direct.dtype and served.tobytes() == direct.tobytes(), name
    page = tifffile.TiffFile(mnt / "images" / names[0]).pages[0]
    x_res = page.tags["XResolution"].value
    assert x_res[1] / x_res[0] == pytest.approx(written.pixel, rel=1e-5)
    if writer.startswith("ngff-zarr"):
        assert tifffile.TiffFile(mnt / "images" / names[0]).imagej_metadata["spacing"] == Z_STEP
    assert snapshot(store) == before


CALIBRATION_PROBE = r"""
import ij.IJ; import ij.ImagePlus;
public class Calib { public static void main(String[] a) {
  ImagePlus imp = IJ.openImage(a[0]);
  if (imp == null) { System.out.println("NULL"); System.exit(2); }
  System.out.println("CAL " + imp.getCalibration().pixelWidth + " " + imp.getCalibration().pixelHeight
                     + " " + imp.getCalibration().pixelDepth + " " + imp.getCalibration().getUnit());
  System.exit(0);
}}
"""


@pytest.mark.imagej
@pytest.mark.skipif(not imagej_available(), reason="needs the Debian imagej package")
def test_imagej_reads_the_stores_pixel_size(tmp_path, mounts):
    written = write_ngff_zarr(tmp_path / "plate.ome.zarr", "0.6")
    mnt = mounts.mount(written.store)
    probe = tmp_path / "Calib.java"
    probe.write_text(CALIBRATION_PROBE)
    tif = mnt / "images" / sorted(written.planes)[0]
    res = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", "/usr/share/java/ij.jar",
                          str(probe), str(tif)], capture_output=True, text=True, timeout=180)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("CAL ")), None)
    assert line, res.stdout + res.stderr
    _, width, height, depth, unit = line.split()
    assert float(width) == pytest.approx(PIXEL, rel=1e-5) and unit in ("micron", "µm")
    assert float(height) == pytest.approx(PIXEL, rel=1e-5)
    assert float(depth) == pytest.approx(Z_STEP)


PIPELINE = """
from compute.pipeline import FunctionStep, Pipeline

def invert(stack):
    return stack.max() - stack

pipeline = Pipeline([FunctionStep(invert)], name="inverted")
"""


def test_run_writes_beside_the_store_never_into_it(tmp_path):
    written = write_ome_zarr_py(tmp_path / "plate.ome.zarr", "0.4")
    before = snapshot(written.store)
    pipeline = tmp_path / "invert.py"
    pipeline.write_text(PIPELINE)
    run_cli("run", str(pipeline), str(written.store), "--workers", "1")
    assert snapshot(written.store) == before
    outputs = tmp_path / "plate.ome.outputs" / "inverted"
    assert len([p for p in outputs.iterdir() if p.suffix == ".tif"]) == len(written.planes)


# -- malformed stores -----------------------------------------------------------------------

def _small(tmp_path: Path) -> Written:
    return write_ome_zarr_py(tmp_path / "bad.ome.zarr", "0.4")


def test_plate_listing_a_missing_well(tmp_path, mounts):
    written = _small(tmp_path)
    shutil.rmtree(written.store / "AA" / "12")
    res = run_cli("info", str(written.store))
    assert "plate lists well 'AA/12' but the store has no such group" in res.stdout
    mnt = mounts.mount(written.store)
    assert sorted(os.listdir(mnt / "images")) == sorted(n for n in written.planes
                                                       if n.startswith("B03"))
    shutil.rmtree(written.store / "B" / "3")
    res = run_cli("info", str(written.store), check=False)
    assert res.returncode == 1
    error = [ln for ln in res.stderr.splitlines() if "no readable images" in ln]
    assert len(error) == 1 and "'B/3'" in error[0] and "'AA/12'" in error[0]


def test_multiscales_dataset_missing(tmp_path):
    written = _small(tmp_path)
    shutil.rmtree(written.store / "B" / "3" / "1" / "s0")
    backend = ZarrStorageBackend(written.store)
    assert backend.problems == ["image 'B/3/1': multiscales dataset 's0' is missing"]
    assert sorted(backend.list_files()) == sorted(n for n in written.planes
                                                  if not n.startswith("B03_s002"))


def test_array_shape_not_matching_axes(tmp_path):
    written = _small(tmp_path)
    attrs_file = written.store / "AA" / "12" / "0" / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    attrs["multiscales"][0]["axes"] = attrs["multiscales"][0]["axes"][1:]     # zyx for czyx
    attrs_file.write_text(json.dumps(attrs))
    backend = ZarrStorageBackend(written.store)
    assert len(backend.problems) == 1
    assert backend.problems[0].startswith("array 'AA/12/0/s0': axes ('z', 'y', 'x') do not match "
                                          "its shape (2, 2, 24, 20)")
    assert not any(n.startswith("AA12_s001") for n in backend.list_files())


def test_not_a_plate(tmp_path):
    g = zarr.open_group(tmp_path / "image.zarr", mode="w")
    g.create_array("0", shape=(4, 4), dtype="u1")
    with pytest.raises(MetadataError, match="not an OME-Zarr HCS plate"):
        ZarrStorageBackend(tmp_path / "image.zarr")
    res = run_cli("info", str(tmp_path / "image.zarr"), check=False)
    assert res.returncode == 1 and "not an OME-Zarr HCS plate" in res.stderr


def test_folder_holding_a_store(tmp_path, mounts):
    written = write_ngff_zarr(tmp_path / "plate" / "scan.ome.zarr", "0.5")
    before = snapshot(written.store)
    info = json.loads(run_cli("info", str(tmp_path / "plate"), "--json").stdout)
    assert info["format"] == "ome_zarr" and info["main"] == "scan.ome.zarr"
    assert info["subdirectories"]["scan.ome.zarr"]["images"] == len(written.planes)
    assert Path(info["metadata_file"]) == tmp_path / "plate" / "openhcs_metadata.json"
    mnt = mounts.mount(tmp_path / "plate")
    assert sorted(os.listdir(mnt / "images")) == sorted(written.planes)
    name, (array, index) = next(iter(written.planes.items()))
    direct = zarr.open_group(written.store, mode="r")[array][index]
    assert tifffile.imread(mnt / "images" / name).tobytes() == direct.tobytes()
    assert snapshot(written.store) == before


def test_broken_metadata_document(tmp_path):
    written = _small(tmp_path)
    (written.store / "B" / "3" / ".zattrs").write_text("{not json")
    backend = ZarrStorageBackend(written.store)
    assert backend.problems[0] == "'B/3/.zattrs' is not a JSON object; read as missing"
    # the well's group is still there: its images are found as child groups holding multiscales
    assert sorted(backend.list_files()) == sorted(written.planes)


# -- units: no micrometres unless the store says so (issue 31 #2) ---------------------------

def test_to_micrometers_never_guesses_a_unit():
    from backends.physics import to_micrometers
    assert to_micrometers(0.5, "micrometer") == 0.5 and to_micrometers(0.5, "µm") == 0.5
    assert to_micrometers(500.0, "nanometer") == pytest.approx(0.5)
    assert to_micrometers(1.0, None) is None and to_micrometers(1.0, "pixel") is None


def _write_image_without_units(path: Path) -> np.ndarray:
    """What ome-zarr-py's ``write_image`` gives by default: axes without a unit, scale 1."""
    from ome_zarr.writer import write_image
    data = np.arange(2 * 3 * 16 * 12, dtype=np.uint16).reshape(2, 3, 16, 12)
    write_image(data, zarr.open_group(path, mode="w", zarr_format=2), axes="czyx",
                scale_factors=[])
    return data


def test_single_image_without_units_is_served_uncalibrated(tmp_path, mounts):
    """A single OME-Zarr image (issue 31 #8) is a plate of one well, A01, one field; axes with
    no unit give no micrometres anywhere (issue 31 #2): not in info, not in the TIFFs."""
    store = tmp_path / "image.ome.zarr"
    data = _write_image_without_units(store)
    info = json.loads(run_cli("info", str(store), "--json").stdout)
    entry = info["subdirectories"]["zarr"]
    assert info["format"] == "ome_zarr" and entry["images"] == 6 and entry["wells"] == ["A01"]
    assert entry["pixel_size_um"] is None and entry["z_spacing_um"] is None
    assert entry["unit"] is None and "no length unit" in entry["unknown"]["pixel_size"]
    text = run_cli("info", str(store)).stdout
    assert "pixel:     unknown" in text and " um" not in text
    mnt = mounts.mount(store)
    names = sorted(os.listdir(mnt / "images"))
    assert names == sorted(f"A01_s001_w{c}_z{z:03d}_t001.tif" for c in (1, 2) for z in (1, 2, 3))
    with tifffile.TiffFile(mnt / "images" / "A01_s001_w2_z003_t001.tif") as tif:
        assert tif.asarray().tobytes() == data[1, 2].tobytes()
        assert "XResolution" not in tif.pages[0].tags or \
            tif.pages[0].tags["ResolutionUnit"].value == 1        # no unit: uncalibrated
        assert "unit" not in (tif.imagej_metadata or {})


def test_single_image_with_units_from_ngff_zarr(tmp_path, mounts):
    """ngff-zarr's single image (NGFF 0.5, micrometres, z step): served as A01 at its scale;
    Bio-Formats reads the physical size the store gives."""
    import ngff_zarr as nz
    data = np.random.default_rng(1).integers(0, 999, (2, 4, 20, 16), dtype=np.uint16)
    image = nz.to_ngff_image(data, dims=["c", "z", "y", "x"],
                             scale={"z": Z_STEP, "y": PIXEL, "x": PIXEL},
                             axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})
    store = tmp_path / "single.ome.zarr"
    nz.to_ngff_zarr(store, nz.to_multiscales(image, scale_factors=[]), version="0.5")
    entry = json.loads(run_cli("info", str(store), "--json").stdout)["subdirectories"]["zarr"]
    assert entry["images"] == 8 and entry["pixel_size_um"] == pytest.approx(PIXEL)
    assert entry["z_spacing_um"] == pytest.approx(Z_STEP) and entry["unit"] == "micrometer"
    mnt = mounts.mount(store)
    served = mnt / "images" / "A01_s001_w2_z004_t001.tif"
    assert tifffile.imread(served).tobytes() == data[1, 3].tobytes()
    from .test_hyperstacks import bioformats_jar, bioformats_pixels
    bioformats_jar()
    pixels = bioformats_pixels(served)
    assert float(pixels["PhysicalSizeX"]) == pytest.approx(PIXEL, rel=1e-4)
    assert pixels.get("PhysicalSizeXUnit", "µm") == "µm"


def test_single_plane_store_has_no_z_spacing_as_a_vendor_plate(tmp_path):
    """A Fractal-style MIP: one z-plane with z scale 1 micrometer is no spacing, as a vendor's
    single-plane plate reports it (unknown: a single z-plane)."""
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
    store = tmp_path / "mip.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=2)
    write_plate_metadata(root, ["B"], ["03"], ["B/03"])
    well = root.require_group("B/03")
    write_well_metadata(well, [{"path": "0"}])
    units = {a: "micrometer" for a in "zyx"}
    write_image(np.zeros((2, 1, 8, 8), np.uint16), well.require_group("0"), axes="czyx",
                scale_factors=[], scale={"z": 1.0, "y": PIXEL, "x": PIXEL}, axes_units=units)
    entry = json.loads(run_cli("info", str(store), "--json").stdout)["subdirectories"]["zarr"]
    assert entry["pixel_size_um"] == pytest.approx(PIXEL)
    assert entry["z_spacing_um"] is None and entry["unknown"]["z_spacing"] == "a single z-plane"
    plane = ZarrStorageBackend(store).plane("B03_s001_w2_z001_t001.tif")    # what a TIFF carries
    assert plane.z_spacing is None and plane.pixel_size == pytest.approx(PIXEL)


# -- plates of any size mounted at once (issue 29): each well read on first use -------------

def test_lazy_index_reads_a_well_on_first_use_and_a_broken_well_fails_alone(tmp_path, caplog):
    written = write_ome_zarr_py(tmp_path / "lazy.ome.zarr", "0.4")
    backend = ZarrStorageBackend(written.store)              # read-only: lazy
    assert backend.index.pending_wells == ["AA12"]            # the first well is read
    for field in ("0", "1"):                                 # broken after opening
        (written.store / "AA" / "12" / field / ".zattrs").write_text("{broken")
    b03 = sorted(n for n in written.planes if n.startswith("B03"))
    array, index = written.planes[b03[0]]
    assert backend.load(b03[0]).tobytes() == \
        np.ascontiguousarray(zarr.open_group(written.store, mode="r")[array][index]).tobytes()
    assert backend.index.pending_wells == ["AA12"]            # not read for B03's planes
    with caplog.at_level("WARNING"):
        assert sorted(backend.list_files()) == b03
    assert any("AA/12" in p for p in backend.problems)
    assert any("AA/12" in r.getMessage() for r in caplog.records)     # logged, named
    assert not backend.exists(next(n for n in written.planes if n.startswith("AA12")))


def test_lazy_plate_entry_names_every_well_and_lists_exactly(tmp_path):
    from backends.plates.plate import Plate
    written = write_ome_zarr_py(tmp_path / "entry.ome.zarr", "0.5")
    plate = Plate.open(written.store, lazy=True)
    entry = plate.entry()
    assert entry["inferred_from"] == "B03" and entry["wells"] == ["AA12", "B03"]
    assert "image_files" not in entry and entry["sites"] == [1, 2]
    assert entry["pixel_size"] == pytest.approx(PIXEL)
    assert sorted(plate.image_files()) == sorted(written.planes)     # exact, from every well
    full = Plate.open(written.store).entry()                         # info: read whole
    assert sorted(full["image_files"]) == sorted(written.planes) and "inferred_from" not in full
