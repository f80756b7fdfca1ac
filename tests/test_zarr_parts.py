"""The zarr backend's parts, each alone: the plane index value, the reader, the field writer,
and the one place that reaches into zarr (growing a shape in memory)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

from backends.errors import ReadOnlyError, StorageNotFoundError
from backends.ngff.index import ArrayInfo, PlaneIndex, PlaneRef, read_own_index, read_plate
from backends.ngff.config import ZarrConfig
from backends.ngff.read import ZarrReader
from backends.ngff.write import FieldWriter, grow_in_memory

REPO = Path(__file__).resolve().parent.parent
NAME = "A01_s001_w{c}_z001_t001.tif"


def _plane(value: int, shape=(8, 6), dtype="uint16") -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


# -- the plane index ------------------------------------------------------------------------

def test_plane_index_is_a_value_of_names_arrays_and_positions():
    index = PlaneIndex()
    info = ArrayInfo("A/01/0/0", (1, 2, 1, 8, 6), np.dtype("uint16"), (1, 1, 1, 8, 6),
                     ("t", "c", "z", "y", "x"))
    index.add_array(info)
    index.add_planes({NAME.format(c=1): PlaneRef(info.path, (0, 0, 0)),
                      NAME.format(c=2): PlaneRef(info.path, (0, 1, 0))})
    assert len(index) == 2 and NAME.format(c=2) in index
    assert index.ref(NAME.format(c=2)) == PlaneRef("A/01/0/0", (0, 1, 0))
    assert index.ref("B01_s001_w1_z001_t001.tif") is None
    assert [r.index for r in index.refs_of("A/01/0/0")] == [(0, 0, 0), (0, 1, 0)]
    assert index.remove_plane(NAME.format(c=1)).index == (0, 0, 0)
    index.forget_arrays(["A/01/0/0"])
    assert len(index) == 0 and not index.arrays


def test_own_index_document_round_trips_and_names_the_store_when_inconsistent():
    doc = {"arrays": {"A/01/0/0": {"shape": [1, 1, 1, 4, 4], "dtype": "<u2",
                                   "chunks": [1, 1, 1, 4, 4], "axes": list("tczyx")}},
           "files": {NAME.format(c=1): ["A/01/0/0", 0, 0, 0]}}
    index = read_own_index(doc, "/x/plate.zarr")
    assert index.ref(NAME.format(c=1)) == PlaneRef("A/01/0/0", (0, 0, 0))
    doc["files"][NAME.format(c=2)] = ["A/01/0/0", 0, 5, 0]          # outside the array
    with pytest.raises(Exception, match="plate.zarr"):
        read_own_index(doc, "/x/plate.zarr")


def test_read_plate_builds_the_index_from_an_ome_zarr_py_plate_without_a_backend(tmp_path):
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata
    root = zarr.open_group(tmp_path / "p.zarr", mode="w", zarr_format=2)
    write_plate_metadata(root, ["A"], ["1"], ["A/1"])
    well = root.require_group("A/1")
    write_well_metadata(well, [{"path": "0"}])
    write_image(np.zeros((2, 3, 8, 8), "uint8"), well.require_group("0"), axes="czyx",
                scale_factors=[])
    store = LocalStore(tmp_path / "p.zarr", read_only=True)
    index = read_plate(store, dict(root.attrs), 2, str(tmp_path / "p.zarr"))
    ref = index.ref("A01_s001_w2_z003_t001.tif")
    assert len(index) == 6 and ref.index == (1, 2) and ref.array.startswith("A/1/0/")
    assert index.info(ref.array).shape == (2, 3, 8, 8)


# -- the reader -----------------------------------------------------------------------------

def _one_field(tmp_path, chunks) -> tuple[LocalStore, PlaneIndex]:
    arr = zarr.create_array(tmp_path / "s.zarr", name="A/01/0/0", shape=(1, 2, 1, 8, 6),
                            chunks=chunks, dtype="uint16", fill_value=0)
    arr[0, 0, 0] = _plane(7)
    arr[0, 1, 0] = _plane(9)
    index = PlaneIndex()
    index.add_array(ArrayInfo("A/01/0/0", (1, 2, 1, 8, 6), np.dtype("uint16"), chunks,
                              ("t", "c", "z", "y", "x")))
    index.add_planes({NAME.format(c=c): PlaneRef("A/01/0/0", (0, c - 1, 0)) for c in (1, 2)})
    return LocalStore(tmp_path / "s.zarr", read_only=True), index


@pytest.mark.parametrize("chunks", [(1, 1, 1, 8, 6), (1, 2, 1, 8, 6)], ids=["plane", "field"])
def test_reader_serves_planes_rows_and_batches_through_its_cache(tmp_path, chunks):
    store, index = _one_field(tmp_path, chunks)
    reader = ZarrReader(store, index, where="/x/s.zarr")
    assert reader.load(NAME.format(c=2)).tolist() == _plane(9).tolist()
    plane = reader.plane(NAME.format(c=1))
    assert plane.shape == (8, 6) and plane.dtype == np.uint16 and plane.reader is reader
    assert not plane.is_decoded()
    assert plane.read_rows(2, 4).tolist() == _plane(7)[2:4].tolist()
    assert plane.is_decoded()                          # served from memory from now on
    reader.invalidate(NAME.format(c=1))
    assert not plane.is_decoded()
    assert [p[0, 0] for p in reader.load_batch([NAME.format(c=2), NAME.format(c=1)])] == [9, 7]
    assert plane.source == "/x/s.zarr/A/01/0/0[0,0,0]"


def test_reader_refuses_an_unknown_plane_naming_the_store(tmp_path):
    store, index = _one_field(tmp_path, (1, 1, 1, 8, 6))
    with pytest.raises(StorageNotFoundError, match="/x/s.zarr/B02"):
        ZarrReader(store, index, where="/x/s.zarr").load("B02_s001_w1_z001_t001.tif")


# -- the field writer -----------------------------------------------------------------------

def _writer(path: Path, *, writable: bool = True) -> FieldWriter:
    store = LocalStore(path)
    index = PlaneIndex()
    reader = ZarrReader(store, index, where=str(path), writable=True)
    group = zarr.open_group(store=store, mode="a", zarr_format=2)
    return FieldWriter(index, reader, lambda: group, config=ZarrConfig(chunk_strategy="file"),
                       where=str(path), store_name=path.name, writable=writable)


def test_field_writer_grows_a_field_and_records_only_the_planes_written(tmp_path):
    path = tmp_path / "w.zarr"
    writer = _writer(path)
    writer.save_batch([_plane(1)], [NAME.format(c=1)], flush=False)
    writer.save_batch([_plane(3)], [NAME.format(c=3)], flush=False)     # channel 2 never written
    assert writer.index.info("A/01/0/0").shape == (1, 3, 1, 8, 6)         # grown in memory
    on_disk = json.loads((path / "A/01/0/0/.zarray").read_text())["shape"]
    assert on_disk == [1, 1, 1, 8, 6]                                     # until flush()
    writer.flush()
    assert json.loads((path / "A/01/0/0/.zarray").read_text())["shape"] == [1, 3, 1, 8, 6]
    # what any NGFF reader then finds: two planes, not three
    root = zarr.open_group(path, mode="r")
    index = read_plate(LocalStore(path, read_only=True), dict(root.attrs), 2, str(path))
    assert sorted(index.names()) == [NAME.format(c=1), NAME.format(c=3)]
    assert writer.reader.load(NAME.format(c=3))[0, 0] == 3
    assert writer.written_arrays() == {"A/01/0/0"}


def test_field_writer_of_a_read_only_store_refuses_writes(tmp_path):
    writer = _writer(tmp_path / "r.zarr", writable=False)
    with pytest.raises(ReadOnlyError):
        writer.save_batch([_plane(1)], [NAME.format(c=1)])


def test_field_writer_adopts_what_another_writer_wrote(tmp_path):
    path = tmp_path / "d.zarr"
    worker, client = _writer(path), _writer(path)
    worker.save_batch([_plane(5)], [NAME.format(c=1)], flush=False)
    client.adopt(worker.index_document(worker.written_arrays()))
    client.flush()
    assert client.index.names() == [NAME.format(c=1)]
    assert client.reader.load(NAME.format(c=1))[0, 0] == 5


# -- the one place that reaches into zarr ---------------------------------------------------

def test_grow_in_memory_works_on_the_pinned_zarr(tmp_path):
    """``grow_in_memory`` edits a private zarr field: this pins the version it was checked on.
    When zarr is upgraded, check it again (and its fallback, ``resize``) and move the pin."""
    pinned = re.search(r"^zarr==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)[1]
    assert zarr.__version__ == pinned
    arr = zarr.create_array(tmp_path / "g.zarr", shape=(1, 4, 4), chunks=(1, 4, 4),
                            dtype="uint8", fill_value=0, zarr_format=3)
    assert grow_in_memory(arr, (3, 4, 4))
    assert arr.shape == (3, 4, 4)
    arr[2] = 7                                        # written beyond the shape on disk
    assert json.loads((tmp_path / "g.zarr/zarr.json").read_text())["shape"] == [1, 4, 4]
    arr.resize(arr.shape)                             # what FieldWriter.flush does
    again = zarr.open_array(tmp_path / "g.zarr", mode="r")
    assert again.shape == (3, 4, 4) and again[2, 0, 0] == 7


def test_no_mixins_nor_dict_setdefault_in_the_zarr_backend():
    for path in (REPO / "backends").rglob("*.py"):
        text = path.read_text()
        assert "__dict__.setdefault" not in text, path
        assert not re.search(r"^class \w*Mixin\b", text, re.M), path
    reaching = [str(p.relative_to(REPO)) for p in (REPO / "backends").rglob("*.py")
                if "_async_array" in p.read_text()]
    assert reaching == ["backends/ngff/write.py"]
