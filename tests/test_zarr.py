"""The zarr backend and `vfsmount convert`: round trips, OME-Zarr validity, foreign plates, faults."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr

from backends.plates.convert import convert_plate
from backends.errors import CorruptDataError, MetadataError, StorageExistsError, StorageNotFoundError
from backends.plates.metadata import METADATA_FILENAME, read_metadata
from backends.naming import virtual_name
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate, make_opera_plate, synthetic_image
from backends.ngff.backend import ZarrStorageBackend
from backends.ngff.config import ZarrConfig

from .conftest import REPO, run_cli


def assert_zarr_equals_source(plate: Plate, source_key: str = "workspace") -> int:
    z = plate.backend()
    src = plate.backend(source_key)
    names = src.list_files()
    assert z.list_files() == names
    for name in names:
        a = z.load(name)
        b = tifffile.imread(src.real_path(name))
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
    return len(names)


@pytest.mark.parametrize("name", ["Projection-Mix", "1well-3C-2S-Zmix-T", "Version1"])
@pytest.mark.parametrize("strategy", ["well", "file"])
def test_convert_real_plates_roundtrip(copy_real_plate, name, strategy):
    root = copy_real_plate(name)
    out = convert_plate(root, config=ZarrConfig(chunk_strategy=strategy), progress=False)
    assert out == root / "zarr"
    plate = Plate.open(root)
    assert plate.main == "zarr" and plate.primary_backend() == "zarr"
    assert plate.entry("workspace")["main"] is False
    n = assert_zarr_equals_source(plate)
    assert n == {"Projection-Mix": 84, "1well-3C-2S-Zmix-T": 12, "Version1": 6}[name]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("z,t", [(1, 1), (3, 1), (1, 2), (2, 3)])
def test_convert_synthetic_dtypes_z_t(tmp_path, dtype, z, t):
    spec = PlateSpec(wells=("A01", "AF48"), sites=2, channels=2, z=z, t=t, shape=(40, 56), dtype=dtype)
    root = make_imagexpress_plate(tmp_path / "p", spec, nested=True, thumbnails=False,
                                  projections=False)
    convert_plate(root, progress=False)
    plate = Plate.open(root)
    z_backend = plate.backend()
    for p in spec.coordinates():
        got = z_backend.load(virtual_name(p))
        assert got.dtype == np.dtype(dtype)
        assert np.array_equal(got, synthetic_image(p, spec.shape, dtype))
    # axes: (t, c, z, y, x) with time points kept
    info = z_backend.arrays()["A/01/0/0"]
    assert info.axes == ("t", "c", "z", "y", "x") and info.shape == (t, 2, z, 40, 56)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_written_plate_validates_with_ome_zarr(tmp_path, version):
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader, Well

    spec = PlateSpec(wells=("A01", "B03"), sites=2, channels=2, z=3, t=2, shape=(32, 48))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    store = convert_plate(root, config=ZarrConfig(ngff_version=version), progress=False)
    fmt = FormatV04() if version == "0.4" else FormatV05()
    if version == "0.4":
        assert (store / ".zgroup").exists() and (store / "A" / "01" / "0" / "0" / ".zarray").exists()
        zarray = json.loads((store / "A" / "01" / "0" / "0" / ".zarray").read_text())
        assert zarray["compressor"]["id"] == "blosc" and zarray["dimension_separator"] == "/"
    else:
        assert json.loads((store / "zarr.json").read_text())["zarr_format"] == 3
    reader = Reader(parse_url(str(store), fmt=fmt))
    plate_node = next(iter(reader()))
    plate_meta = plate_node.metadata
    assert {w["path"] for w in plate_node.zarr.root_attrs.get("ome", plate_node.zarr.root_attrs)
            ["plate"]["wells"]} == {"A/01", "B/03"}
    assert plate_meta is not None
    well = Reader(parse_url(str(store / "A" / "01"), fmt=fmt))
    nodes = list(well())
    assert any(isinstance(spec_, Well) for n in nodes for spec_ in n.specs)
    image = Reader(parse_url(str(store / "A" / "01" / "1"), fmt=fmt))
    node = next(iter(image()))
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "c", "z", "y", "x"]
    assert node.data[0].shape == (2, 2, 3, 32, 48)
    scale = node.metadata["coordinateTransformations"][0][0]["scale"]
    assert scale[-1] == pytest.approx(0.65)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reads_plate_written_by_ome_zarr_py(tmp_path, version):
    """A foreign plate: rows past Z (AA), columns without zero padding, integer 'path' fields."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
    fmt = FormatV04() if version == "0.4" else FormatV05()
    path = tmp_path / "foreign.zarr"
    root = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    rows, cols = ["B", "AA"], ["3", "12"]
    wells = [f"{r}/{c}" for r in rows for c in cols]
    write_plate_metadata(root, rows, cols, wells, fmt=fmt, field_count=2)
    rng = np.random.default_rng(0)
    expected = {}
    for w in wells:
        r, c = w.split("/")
        wg = root.require_group(r).require_group(c)
        write_well_metadata(wg, [{"path": "0"}, {"path": "1"}], fmt=fmt)
        for field in (0, 1):
            data = rng.integers(0, 4000, size=(2, 3, 24, 20), dtype=np.uint16)   # c, z, y, x
            write_image(data, wg.require_group(str(field)), scale_factors=[2], axes="czyx", fmt=fmt)
            for ci in range(2):
                for zi in range(3):
                    expected[f"{r}{int(c):02d}_s{field + 1:03d}_w{ci + 1}_z{zi + 1:03d}_t001.tif"] = \
                        data[ci, zi]
    # integer-valued "path" in the well metadata (seen in the wild)
    wg = root["B/3"]
    attrs = dict(wg.attrs)
    well_meta = attrs.get("ome", attrs)["well"]
    for im in well_meta["images"]:
        im["path"] = int(im["path"])
    if "ome" in attrs:
        attrs["ome"]["well"] = well_meta
        wg.attrs.put(attrs)
    else:
        wg.attrs["well"] = well_meta
    backend = ZarrStorageBackend(path)
    assert set(backend.list_files()) == set(expected)
    assert "AA12_s002_w2_z003_t001.tif" in expected
    for name, data in expected.items():
        assert np.array_equal(backend.load(name), data)
    assert np.array_equal(backend.plane("AA03_s001_w1_z002_t001.tif").read_rows(5, 9),
                          expected["AA03_s001_w1_z002_t001.tif"][5:9])


def test_reading_touches_only_needed_chunks(tmp_path):
    spec = PlateSpec(wells=("A01",), sites=1, channels=2, z=4, shape=(32, 32))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    store = convert_plate(root, config=ZarrConfig(chunk_strategy="file"), progress=False)
    chunk_dir = store / "A" / "01" / "0" / "0"
    chunks = sorted(p for p in chunk_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(chunks) == 8    # one per plane
    # Remove every chunk except the one plane we read: the read still succeeds.
    keep = chunk_dir / "0" / "1" / "2" / "0" / "0"     # t=0, c=1 (w2), z=2 (z003)
    for c in chunks:
        if c != keep:
            c.unlink()
    backend = ZarrStorageBackend(store)
    p = next(q for q in spec.coordinates() if (q.channel, q.z) == (2, 3))
    assert np.array_equal(backend.load(virtual_name(p)), synthetic_image(p, spec.shape))


def test_load_batch_whole_well(tmp_path):
    spec = PlateSpec(wells=("A01", "A02"), sites=3, channels=2, z=2, shape=(16, 16))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    convert_plate(root, progress=False)
    backend = Plate.open(root).backend()
    names = [virtual_name(p) for p in spec.coordinates() if p.well == "A02"]
    got = backend.load_batch(names)
    for name, arr, p in zip(names, got, [q for q in spec.coordinates() if q.well == "A02"]):
        assert np.array_equal(arr, synthetic_image(p, spec.shape))


def test_save_single_planes_grows_the_field(tmp_path):
    store = ZarrStorageBackend(tmp_path / "out.zarr", mode="w", config=ZarrConfig(chunk_strategy="file"))
    a = np.arange(64, dtype=np.uint16).reshape(8, 8)
    store.save(a, "A01_s001_w1_z001_t001.tif")
    store.save(a + 1, "A01_s001_w2_z001_t001.tif")
    store.save(a + 2, "A01_s001_w1_z002_t001.tif")
    reread = ZarrStorageBackend(tmp_path / "out.zarr")
    assert reread.list_files() == ["A01_s001_w1_z001_t001.tif", "A01_s001_w1_z002_t001.tif",
                                   "A01_s001_w2_z001_t001.tif"]
    assert np.array_equal(reread.load("A01_s001_w2_z001_t001.tif"), a + 1)
    assert np.array_equal(reread.load("A01_s001_w1_z002_t001.tif"), a + 2)
    with pytest.raises(Exception, match="do not match"):
        store.save(np.zeros((4, 4), np.uint16), "A01_s001_w1_z003_t001.tif")


# -- bad input and crashes ---------------------------------------------------------------

def test_corrupt_chunk_names_array_and_chunk(tmp_path):
    spec = PlateSpec(wells=("A01",), sites=1, channels=1, z=2, shape=(32, 32))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    store = convert_plate(root, config=ZarrConfig(chunk_strategy="file"), progress=False)
    chunk = store / "A" / "01" / "0" / "0" / "0" / "0" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])      # truncated
    backend = ZarrStorageBackend(store)
    with pytest.raises(CorruptDataError) as e:
        backend.load("A01_s001_w1_z002_t001.tif")
    msg = str(e.value)
    assert "A/01/0/0" in msg and "chunk 0/0/1/0/0" in msg
    # the other plane is still fine
    assert backend.load("A01_s001_w1_z001_t001.tif").shape == (32, 32)


def test_store_without_plate_metadata_is_refused(tmp_path):
    g = zarr.open_group(tmp_path / "bare.zarr", mode="w")
    g.create_array("x", shape=(4, 4), dtype="u1")
    with pytest.raises(MetadataError, match="not an OME-Zarr HCS plate"):
        ZarrStorageBackend(tmp_path / "bare.zarr")
    with pytest.raises(StorageNotFoundError):
        ZarrStorageBackend(tmp_path / "missing.zarr")


def test_inconsistent_shapes_are_refused(tmp_path):
    spec = PlateSpec(wells=("A01",), sites=1, channels=1, z=2, shape=(16, 16))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    store = convert_plate(root, progress=False)
    array_attrs = store / "A" / "01" / "0" / "0" / ".zattrs"
    good = array_attrs.read_text()
    record = json.loads(good)
    record["vfsmount"]["present"] = "not a bitmap!"        # the array's record of its planes
    array_attrs.write_text(json.dumps(record))
    with pytest.raises(MetadataError, match="A/01/0/0"):
        ZarrStorageBackend(store)
    array_attrs.write_text(good)
    # axes that do not match the array
    image_attrs = json.loads((store / "A" / "01" / "0" / ".zattrs").read_text())
    image_attrs["multiscales"][0]["axes"] = image_attrs["multiscales"][0]["axes"][1:]
    (store / "A" / "01" / "0" / ".zattrs").write_text(json.dumps(image_attrs))
    with pytest.raises(MetadataError, match="do not match its shape"):
        ZarrStorageBackend(store)


def test_convert_refuses_existing_store_unless_overwrite(tmp_path):
    root = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1, z=1))
    convert_plate(root, progress=False)
    with pytest.raises(StorageExistsError, match="--overwrite"):
        convert_plate(root, progress=False)
    res = run_cli("convert", str(root), check=False)
    assert res.returncode == 1 and "--overwrite" in res.stderr
    run_cli("convert", str(root), "--overwrite", "--compressor", "lz4", "--chunk-strategy", "file",
            "--no-progress")
    entry = read_metadata(root)["subdirectories"]["zarr"]
    assert entry["zarr_config"]["compressor"] == "lz4" and entry["main"] is True


def test_failed_conversion_never_marks_partial_store_main(tmp_path):
    spec = PlateSpec(wells=("A01", "B01"), sites=1, channels=1, z=2, shape=(16, 16))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    plate = Plate.open(root)
    bad = root / plate.entry()["workspace_mapping"]["B01_s001_w1_z002_t001.tif"]
    good_bytes = bad.read_bytes()
    bad.write_bytes(b"II*\x00" + b"\xff" * 64)          # corrupt source TIFF
    before = (root / METADATA_FILENAME).read_bytes()
    with pytest.raises(CorruptDataError, match=bad.name):
        convert_plate(root, progress=False)
    assert (root / METADATA_FILENAME).read_bytes() == before
    assert not (root / "zarr").exists()
    assert (root / ".zarr.partial").exists()            # left for inspection; removed on restart
    bad.write_bytes(good_bytes)
    convert_plate(root, progress=False)
    assert not (root / ".zarr.partial").exists()
    assert Plate.open(root).main == "zarr"


def test_sigkill_mid_conversion_then_restart(tmp_path):
    spec = PlateSpec(wells=tuple(f"A{c:02d}" for c in range(1, 13)), sites=2, channels=2, z=4,
                     shape=(256, 256))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    Plate.open(root)
    before = (root / METADATA_FILENAME).read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "vfsmount", "convert", str(root),
                             "--chunk-strategy", "file", "--level", "9", "--no-progress"],
                            cwd=REPO)
    deadline = time.monotonic() + 60
    while not (root / ".zarr.partial" / "A").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (root / METADATA_FILENAME).read_bytes() == before
    assert "zarr" not in read_metadata(root)["subdirectories"]
    assert not (root / "zarr").exists()
    run_cli("convert", str(root), "--no-progress")
    plate = Plate.open(root)
    assert plate.main == "zarr" and len(plate.image_files()) == spec.n_images
    assert_zarr_equals_source(plate)


def test_convert_opera_with_output_elsewhere(tmp_path):
    root = make_opera_plate(tmp_path / "op", PlateSpec(wells=("A01",), sites=2, channels=2, z=1))
    out = tmp_path / "elsewhere" / "plate.zarr"
    run_cli("convert", str(root), "--output", str(out), "--ngff-version", "0.5", "--no-progress")
    plate = Plate.open(root)
    assert plate.main == "zarr" and plate.entry()["path"] == str(out)
    assert_zarr_equals_source(plate)


@pytest.mark.parametrize("root_key", ["kept without files", "removed"])
def test_own_store_reads_without_the_root_index(tmp_path, root_key):
    """Our stores are read by the NGFF-structure reader too: without the root `vfsmount.files`
    index the names come from each array's t/c/z values (or, with no vfsmount key at all,
    from positions), and equal the indexed ones."""
    spec = PlateSpec(wells=("A01", "B03"), sites=2, channels=3, z=2, t=2, shape=(16, 24))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False, projections=False)
    store = convert_plate(root, config=ZarrConfig(ngff_version="0.5"), progress=False)
    indexed = ZarrStorageBackend(store)
    doc = json.loads((store / "zarr.json").read_text())
    if root_key == "removed":
        del doc["attributes"]["vfsmount"]
    else:
        doc["attributes"]["vfsmount"] = {"format": 2}
    (store / "zarr.json").write_text(json.dumps(doc))
    derived = ZarrStorageBackend(store)
    assert derived.list_files() == indexed.list_files()
    assert {n: derived.index.files[n] for n in derived.list_files()} == indexed.index.files
    name = virtual_name(next(iter(spec.coordinates())))
    assert np.array_equal(derived.load(name), indexed.load(name))
    assert derived.arrays()["B/03/1/0"].pixel_size == indexed.arrays()["B/03/1/0"].pixel_size
