"""A store opened lazily is listed well by well (issue 29, "plates of any size mounted at
once"): the first entries of `images/` come after one well is read, names and order are the
eager listing's, a name in a well no listing has reached is found by reading that well only,
a broken well fails its own entries only, and `info` prints as it reads."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from backends.ngff.backend import ZarrStorageBackend
from benchmarks.foreign_zarr import write_plate

from .conftest import run_cli
from .test_scaleout import s3, s3_server  # noqa: F401  (the local seaweedfs S3 fixture)

COLUMNS, FIELDS = 3, 2          # 16 rows x 3 columns = 48 wells x 2 fields x 6 planes


@pytest.fixture
def store(tmp_path) -> Path:
    """A foreign NGFF 0.4 plate (ome-zarr-py's writers), pixels in the last well's fields."""
    path = tmp_path / "plate.ome.zarr"
    write_plate(path, "0.4", COLUMNS, FIELDS)
    root = zarr.open_group(path, mode="r+")
    rng = np.random.default_rng(7)
    for f in range(FIELDS):
        arr = root[f"P/{COLUMNS}/{f}/0"]
        arr[...] = rng.integers(0, 60000, size=arr.shape, dtype=arr.dtype)
    return path


def eager_names(store: Path) -> list[str]:
    return ZarrStorageBackend(store).list_files()      # every well read, natural order


def test_listing_reads_wells_as_it_goes_and_a_lookup_reads_its_well_only(store):
    """In process, the way readdir drives the folder: a first reply after the first well,
    a lookup in the last well reading that well alone, then every row, as the eager list."""
    from backends.plates.plate import Plate
    from vfsmount.listing import ListedPlanes, PlaneDir
    plate = Plate.open(store, lazy=True)
    images = plate.image_set()
    index = images.backend.index
    assert images.streams_wells and index.wells_read == 1          # the mount read one well
    folder = PlaneDir(0, ListedPlanes(images, lambda name: {}, 0))
    folder.wait_rows(4096)                                         # readdir's first ask
    columns = folder.columns()
    assert columns.ready == FIELDS * 6 and index.wells_read == 1
    first = list(columns.names[0:columns.ready])
    assert first == eager_names(store)[:columns.ready]

    last = f"P{COLUMNS:02d}_s{FIELDS:03d}_w2_z003_t001.tif"
    node = folder.get(last.encode())
    assert node is not None and node.name == last and index.wells_read == 2
    assert folder.get(b"P03_s009_w1_z001_t001.tif") is None        # no such site
    assert folder.get(b"P3_s001_w1_z001_t001.tif") is None         # not the canonical name
    assert index.wells_read == 2

    names, sizes, inodes = [], [], []
    start = 0
    while True:
        folder.wait_rows(start + 4096)
        columns = folder.columns()
        if columns.ready <= start:
            break
        names += columns.names[start:columns.ready]
        sizes += columns.sizes[start:columns.ready]
        inodes += columns.inode_column()[start:columns.ready]
        start = columns.ready
    assert folder.planes.complete and names == eager_names(store)
    assert index.wells_read == 16 * COLUMNS
    row = names.index(last)
    assert inodes[row] == node.inode and sizes[row] == node.size     # the lookup's, listed
    assert len(set(inodes)) == len(inodes)


def _fifo_well(store: Path, well: str) -> tuple[Path, bytes]:
    """Replace a well's attributes with a named pipe: reading it blocks until written."""
    attrs = store / well / ".zattrs"
    doc = attrs.read_bytes()
    attrs.unlink()
    os.mkfifo(attrs)
    return attrs, doc


def _feed(fifo: Path, doc: bytes) -> None:
    """Write ``doc`` into the pipe once a reader has it open (a no-op when none ever does)."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        assert e.errno == errno.ENXIO
        return
    try:
        os.write(fd, doc)
    finally:
        os.close(fd)


def test_first_entries_come_before_later_wells_are_read(store, mounts):
    """The third well (natural order) blocks whoever reads it: the listing's first entries
    still come; then the well is fed and the rest of the listing follows, as the eager one."""
    expected = eager_names(store)
    fifo, doc = _fifo_well(store, "B/1")          # A1 (read at mount), A2, then B1 ...
    try:
        mnt = mounts.mount(store)
        got: list[str] = []
        done = threading.Event()

        def list_all() -> None:
            with os.scandir(mnt / "images") as it:
                for entry in it:
                    got.append(entry.name)
            done.set()
        threading.Thread(target=list_all, daemon=True).start()
        for _ in range(200):
            if len(got) >= FIELDS * 6 or done.is_set():
                break
            threading.Event().wait(0.05)
        assert got[:FIELDS * 6] == expected[:FIELDS * 6], got     # the first well's, at once
        assert not done.is_set()                                  # B1 not read: it blocks
        while not done.is_set():
            _feed(fifo, doc)
            done.wait(0.2)
        assert got == expected
    finally:
        _feed(fifo, doc)


def test_mount_lists_exactly_and_serves_a_plane_of_an_unread_well(store, mounts):
    mnt = mounts.mount(store)
    name = f"P{COLUMNS:02d}_s002_w2_z003_t001.tif"
    before = os.stat(mnt / "images" / name)                # a well no listing has reached
    data = zarr.open_group(store, mode="r")[f"P/{COLUMNS}/1/0"][1, 2]
    assert tifffile.imread(mnt / "images" / name).tobytes() == np.ascontiguousarray(data).tobytes()
    assert os.listdir(mnt / "images") == eager_names(store)
    assert os.listdir(mnt / "zarr") == eager_names(store)
    listed = {e.name: e.inode() for e in os.scandir(mnt / "images")}
    assert listed[name] == before.st_ino
    sizes = subprocess.run(["ls", "-l", str(mnt / "images")], capture_output=True, text=True,
                           check=True).stdout.splitlines()[1:]
    assert {int(line.split()[4]) for line in sizes} == {before.st_size}
    assert os.stat(mnt / "images" / name).st_ino == before.st_ino


def test_a_broken_well_fails_its_own_entries_only(store, mounts):
    broken = store / "C" / "2" / "1" / "0" / ".zarray"
    broken.write_text("{not json")                       # one field's array document
    unreadable = store / "D" / "3" / ".zattrs"           # a well's document cannot be read
    unreadable.unlink()
    unreadable.mkdir()
    expected = [n for n in eager_names(store) if not n.startswith(("C02_s002", "D03"))]
    mnt = mounts.mount(store)
    assert os.listdir(mnt / "images") == expected
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "images" / "C02_s002_w1_z001_t001.tif")
    assert os.stat(mnt / "images" / "C02_s001_w1_z001_t001.tif").st_size > 0
    log = mounts.log(mnt)
    assert "C/2/1/0/.zarray" in log and "well D03: its metadata cannot be read" in log
    assert os.listdir(mnt / "images")[:3] == expected[:3]     # the daemon still serves


def test_info_prints_each_well_as_read(store):
    """`info STORE` prints a line per well as it goes: with a later well's document blocking
    whoever reads it, the first wells' lines are out while `info` waits; then the totals,
    equal to the whole read's."""
    fifo, doc = _fifo_well(store, "H/1")             # the 22nd well: past info's first batch
    proc = subprocess.Popen([sys.executable, "-m", "vfsmount", "info", str(store)],
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("  A01:"):
                break
        threading.Event().wait(1.0)
        assert proc.poll() is None                    # still waiting for H01's document
        while proc.poll() is None:
            _feed(fifo, doc)
            threading.Event().wait(0.2)
        lines += proc.stdout.read().splitlines()
    finally:
        _feed(fifo, doc)
        proc.wait(timeout=60)
    fifo.unlink()
    fifo.write_bytes(doc)                            # a plain document again, for --json
    assert proc.returncode == 0
    wells = [ln for ln in lines if ln.startswith("  ") and ln[2:3].isalpha() and ": " in ln
             and "images" in ln]
    assert len(wells) == 16 * COLUMNS and wells[0] == f"  A01: {FIELDS} sites, {FIELDS * 6} images"
    total = 16 * COLUMNS * FIELDS * 6
    assert f"[zarr] (main)  {total} images via zarr" in lines
    full = json.loads(run_cli("info", str(store), "--json").stdout)["subdirectories"]["zarr"]
    assert full["images"] == total
    sets = full["image_sets"]["complete"]
    assert f"  image sets: {sets} complete" in lines


def test_info_names_a_broken_well(store):
    shutil.rmtree(store / "B" / "2")
    out = run_cli("info", str(store)).stdout
    assert "plate lists well 'B/2' but the store has no such group" in out
    assert "  B02: no images (see the problems below)" in out


def test_a_store_in_object_storage_is_listed_well_by_well_too(store, s3, mounts):
    """The same store uploaded as is to a local S3 (seaweedfs): mounted, a plane of a well no
    listing reached is served, the listing is the eager one, `info` prints a line per well."""
    from backends.storage.remote import filesystem

    from .test_scaleout import _unique
    url = s3.url(_unique("streamed"))
    fs, path = filesystem(url)
    fs.put(str(store), path, recursive=True)
    mnt = mounts.mount(url)
    name = f"P{COLUMNS:02d}_s001_w1_z002_t001.tif"
    data = zarr.open_group(store, mode="r")[f"P/{COLUMNS}/0/0"][0, 1]
    assert tifffile.imread(mnt / "images" / name).tobytes() == np.ascontiguousarray(data).tobytes()
    assert os.listdir(mnt / "images") == eager_names(store)
    out = run_cli("info", url).stdout
    assert f"  A01: {FIELDS} sites, {FIELDS * 6} images" in out
    assert f"[zarr] (main)  {16 * COLUMNS * FIELDS * 6} images via zarr" in out


def test_wells_without_planes_do_not_end_the_listing(store):
    """Wells the plate lists but the store lacks add no row: readdir's next ask reads on
    past them instead of ending the listing there."""
    from backends.plates.plate import Plate
    from vfsmount.listing import ListedPlanes, PlaneDir
    for well in ("A/2", "A/3", "B/1"):
        shutil.rmtree(store / well)
    folder = PlaneDir(0, ListedPlanes(Plate.open(store, lazy=True).image_set(), lambda n: {}, 0))
    folder.wait_rows(4096)
    first = folder.columns().ready
    assert first == FIELDS * 6                      # A01
    folder.wait_rows(first + 4096)
    columns = folder.columns()
    assert columns.ready > first and next(iter(columns.names[first:columns.ready])) == \
        "B02_s001_w1_z001_t001.tif"
