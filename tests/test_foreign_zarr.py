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
from backends.zarr_backend import ZarrStorageBackend

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
