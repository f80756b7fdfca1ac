"""Listing at plate scale with the default options: extended attributes off (ENOSYS, so the
kernel stops asking), `vfsmount info FILE` instead, pass-through sources checked once per
folder and opened without following symlinks, image folders served from columns."""
from __future__ import annotations

import errno
import json
import os
import subprocess

import numpy as np
import pytest
import tifffile

from backends.errors import PathEscapeError
from backends.plates.metadata import update_metadata
from backends.naming import virtual_name, ParsedName
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.storage.virtual_workspace import VirtualWorkspaceBackend, open_in_dir

from .conftest import run_cli


@pytest.fixture
def plate(tmp_path):
    spec = PlateSpec(wells=("A01", "B02"), sites=2, channels=2, z=2, t=1, shape=(16, 24))
    return make_imagexpress_plate(tmp_path / "plate", spec, thumbnails=False)


def remap(root, extra: dict[str, str]) -> None:
    entry = dict(Plate.open(root).entry("workspace"))
    entry["workspace_mapping"] = {**entry["workspace_mapping"], **extra}
    entry["image_files"] = sorted(entry["workspace_mapping"])
    update_metadata(root, {"workspace": entry})


def test_xattrs_are_off_by_default_and_the_kernel_stops_asking(plate, mounts):
    mnt = mounts.mount(plate)
    f = mnt / "images" / "B02_s002_w2_z002_t001.tif"
    for call in (lambda: os.getxattr(f, "user.vfsmount.well"), lambda: os.listxattr(f),
                 lambda: os.getxattr(f, "security.selinux")):
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EOPNOTSUPP        # the daemon's ENOSYS, as the kernel says it
    # `ls -l` still works and shows exact sizes (workspace/: the vendor's bytes; images/ adds
    # a calibrated IFD, see test_hyperstacks)
    out = subprocess.run(["ls", "-l", str(mnt / "workspace")], capture_output=True, text=True,
                         check=True).stdout
    ws = Plate.open(plate).entry("workspace")["workspace_mapping"]
    line = next(l for l in out.splitlines() if l.endswith(f.name))
    assert int(line.split()[4]) == (plate / ws[f.name]).stat().st_size
    # with --xattrs they are back
    mnt2 = mounts.mount(plate, "--xattrs")
    assert os.getxattr(mnt2 / "images" / f.name, "user.vfsmount.well") == b"B02"


def test_info_of_one_file(plate, mounts):
    mnt = mounts.mount(plate)
    name = "B02_s002_w2_z002_t001.tif"
    ws = Plate.open(plate).entry("workspace")["workspace_mapping"]
    for folder in ("images", "workspace"):
        facts = json.loads(run_cli("info", str(mnt / folder / name), "--json").stdout)
        assert (facts["well"], facts["site"], facts["channel"], facts["z"], facts["t"]) == \
            ("B02", 2, 2, 2, 1)
        # the plate's real path, never a path through the mount (issue 31)
        assert facts["source"] == os.path.join(os.path.realpath(plate), ws[name])
        assert facts["mount"] == str(mnt)
    text = run_cli("info", str(mnt / "original" / ws[name])).stdout
    assert f"source:  {os.path.join(os.path.realpath(plate), ws[name])}" in text
    res = run_cli("info", str(plate / ws[name]), check=False)
    assert res.returncode == 1 and "not inside a vfsmount mount" in res.stderr


def test_info_of_a_zarr_backed_file(tmp_path, mounts):
    from backends.plates.convert import convert_plate
    from backends.ngff.config import ZarrConfig
    spec = PlateSpec(wells=("A01",), sites=1, channels=2, z=2, shape=(8, 8))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False)
    convert_plate(root, config=ZarrConfig(chunk_strategy="file"), progress=False)
    mnt = mounts.mount(root)
    facts = json.loads(run_cli("info", str(mnt / "images" / "A01_s001_w2_z002_t001.tif"),
                               "--json").stdout)
    assert facts["channel"] == 2 and facts["z"] == 2
    assert facts["source"].endswith("A/01/0/0[0,1,1]"), facts["source"]


def test_symlinked_source_is_not_followed_even_inside_the_plate(plate, mounts):
    ws = Plate.open(plate).entry("workspace")["workspace_mapping"]
    inside = plate / ws["A01_s001_w1_z001_t001.tif"]
    os.symlink(inside, plate / "link_inside.tif")
    remap(plate, {"C01_s001_w1_z001_t001.tif": "link_inside.tif"})
    mnt = mounts.mount(plate)
    assert "C01_s001_w1_z001_t001.tif" in os.listdir(mnt / "workspace")
    with pytest.raises(OSError) as e:
        (mnt / "workspace" / "C01_s001_w1_z001_t001.tif").read_bytes()
    assert e.value.errno == errno.EACCES
    assert "not followed" in mounts.log(mnt)
    # everything else is still served
    assert (mnt / "workspace" / "A01_s001_w1_z001_t001.tif").read_bytes() == inside.read_bytes()


def test_source_folder_swapped_for_a_link_is_refused(tmp_path):
    root = tmp_path / "plate"
    (root / "d").mkdir(parents=True)
    tifffile.imwrite(root / "d" / "a.tif", np.zeros((2, 2), np.uint8))
    outside = tmp_path / "outside"
    outside.mkdir()
    tifffile.imwrite(outside / "a.tif", np.ones((2, 2), np.uint8))
    backend = VirtualWorkspaceBackend(root, {"A01_s001_w1_z001_t001.tif": "d/a.tif"})
    os.close(backend.open_source("A01_s001_w1_z001_t001.tif"))
    (root / "d" / "a.tif").unlink()
    (root / "d").rmdir()
    os.symlink(outside, root / "d")
    with pytest.raises(PathEscapeError, match="replaced by a link"):
        backend.open_source("A01_s001_w1_z001_t001.tif")


@pytest.mark.parametrize("name, rel", [
    ("A01_s001_w1_z001_t001.tif", "d/../../x.tif"), ("A01_s001_w1_z001_t001.tif", "../x.tif"),
    ("A01_s001_w1_z001_t001.tif", "d/x\0.tif"), ("A01_s001_w1_z001_t001.tif", "/etc/passwd"),
    ("A01_s001_w1_z001_t001.tif", "d//x.tif"), ("..", "x.tif"), ("a/b.tif", "x.tif"),
    ("a\0.tif", "x.tif")])
def test_names_with_dotdot_slash_or_nul_are_refused(tmp_path, name, rel):
    mapping = {virtual_name(ParsedName("A01", s)): f"ok_{s}.tif" for s in range(1, 50)}
    mapping[name] = rel
    with pytest.raises(PathEscapeError):
        VirtualWorkspaceBackend(tmp_path, mapping)


def test_open_in_dir_refuses_names_that_leave_the_folder(tmp_path):
    from backends.storage.virtual_workspace import SourceDir
    (tmp_path / "d").mkdir()
    folder = SourceDir(tmp_path, "d")
    for bad in ("..", "../d/x", "x\0y", ""):
        with pytest.raises((PathEscapeError, ValueError)):
            open_in_dir(folder, bad)


def test_missing_and_replaced_sources_in_a_listed_folder(plate, mounts):
    ws = Plate.open(plate).entry("workspace")["workspace_mapping"]
    gone, kept = "A01_s001_w1_z001_t001.tif", "A01_s001_w2_z001_t001.tif"
    (plate / ws[gone]).unlink()
    mnt = mounts.mount(plate)
    listing = {e.name: e.stat().st_size for e in os.scandir(mnt / "workspace")}
    assert listing[gone] == 0 and listing[kept] == (plate / ws[kept]).stat().st_size
    with pytest.raises(OSError) as e:
        (mnt / "workspace" / gone).read_bytes()
    assert e.value.errno == errno.ENOENT
    # images/ serves the same source behind a calibrated IFD: other bytes, so another inode
    # (the kernel's page cache must not mix the two)
    assert os.stat(mnt / "images" / kept).st_ino != os.stat(mnt / "workspace" / kept).st_ino


def test_plate_names_are_shared_with_the_mapping(plate):
    entry = Plate.open(plate).entry("workspace")
    names, mapping = entry["image_files"], entry["workspace_mapping"]
    assert all(a is b for a, b in zip(names, mapping))


def test_metadata_file_is_served_in_place(plate, mounts):
    from backends.plates.metadata import METADATA_FILENAME
    mnt = mounts.mount(plate)
    assert (mnt / METADATA_FILENAME).read_bytes() == (plate / METADATA_FILENAME).read_bytes()
    entry = dict(Plate.open(plate).entry("workspace"))
    update_metadata(plate, {"workspace": {**entry, "pixel_size": 0.5}})    # rewritten meanwhile
    served = json.loads((mnt / METADATA_FILENAME).read_bytes())
    assert served["subdirectories"]["workspace"]["pixel_size"] == 0.5


def test_a_tampered_mapping_entry_fails_only_its_own_file(plate, mounts):
    """Issue 17: a mapping entry leaving the plate fails its own file (EACCES), never the
    folder: the other images are listed and read."""
    remap(plate, {"C01_s001_w1_z001_t001.tif": "../outside.tif"})
    mnt = mounts.mount(plate)
    listed = os.listdir(mnt / "workspace")
    assert "A01_s001_w1_z001_t001.tif" in listed
    with pytest.raises(OSError) as e:
        (mnt / "workspace" / "C01_s001_w1_z001_t001.tif").read_bytes()
    assert e.value.errno == errno.EACCES
    assert "'..'" in mounts.log(mnt) and "C01_s001_w1_z001_t001.tif" in mounts.log(mnt)
    ws = Plate.open(plate).entry("workspace")["workspace_mapping"]
    assert (mnt / "workspace" / "A01_s001_w1_z001_t001.tif").read_bytes() == \
        (plate / ws["A01_s001_w1_z001_t001.tif"]).read_bytes()


# -- issue 20: a first listing streams rows as their sources are stat-ed ------------------------

def _sized_plate(root, n: int) -> dict[str, int]:
    """A nested plate of ``n`` sources of distinct sizes (several stat batches); name -> size."""
    from benchmarks.mount_scale import make_plate
    (folder,) = make_plate(root, n)
    entry = dict(Plate.open(root).entry("workspace"))
    update_metadata(root, {"workspace": {**entry, "pixel_size": 0.5}})   # images/: calibrated
    mapping = entry["workspace_mapping"]
    sizes = {}
    for i, (name, rel) in enumerate(mapping.items()):
        os.truncate(root / rel, 8 * i + 3)
        sizes[name] = 8 * i + 3
    return sizes


def test_a_first_listing_serves_every_row_with_its_size(tmp_path, mounts):
    """More rows than one stat batch (backends.storage.virtual_workspace.STAT_ROWS): readdir serves
    the rows stat-ed so far and waits for the rest; every size is the source's, in images/
    (calibrated: vendor + trailer) and workspace/ alike, and matches what a read returns."""
    from backends.storage.virtual_workspace import STAT_ROWS
    from vfsmount.tiff_layout import CalibratedLayout
    n = 2 * STAT_ROWS + 700
    sizes = _sized_plate(tmp_path / "plate", n)
    mnt = mounts.mount(tmp_path / "plate")
    listed = {e.name: e.stat(follow_symlinks=False) for e in os.scandir(mnt / "workspace")}
    assert {k: v.st_size for k, v in listed.items()} == sizes
    calibrated = {e.name: e.stat().st_size for e in os.scandir(mnt / "images")}
    assert calibrated == {k: CalibratedLayout(v).size for k, v in sizes.items()}
    inodes = {v.st_ino for v in listed.values()}
    assert len(inodes) == n and not inodes & {os.stat(mnt / "images" / k).st_ino for k in sizes}
    last = max(sizes, key=sizes.get)                      # stat-ed in the last batch
    assert len((mnt / "workspace" / last).read_bytes()) == sizes[last]


def test_stat_sources_fills_rows_in_order_and_reports_progress(tmp_path):
    from backends.storage.virtual_workspace import STAT_ROWS
    root = tmp_path / "p"
    (root / "d").mkdir(parents=True)
    names, mapping = [], {}
    for i in range(STAT_ROWS + 10):
        name = virtual_name(ParsedName("A01", i + 1))
        (root / "d" / f"f{i}.tif").write_bytes(b"x" * (i % 7))
        names.append(name)
        mapping[name] = f"d/f{i}.tif"
    os.unlink(root / "d" / "f3.tif")
    os.symlink(root / "d" / "f4.tif", root / "d" / "f5.tif.link")
    mapping[names[5]] = "d/f5.tif.link"                 # a symlink: never followed
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.tif").write_bytes(b"secret")
    os.symlink(outside, root / "linked")
    mapping[names[6]] = "linked/x.tif"                  # a folder leaving the plate
    backend = VirtualWorkspaceBackend(root, mapping)
    progress = []
    sizes, mtimes, inodes = backend.stat_sources(names, on_progress=progress.append)
    assert progress == [STAT_ROWS, STAT_ROWS + 10]
    assert [sizes[i] for i in (3, 5, 6)] == [-1, -1, -1]
    expected = [i % 7 for i in range(len(names))]
    assert [s for i, s in enumerate(sizes) if i not in (3, 5, 6)] == \
        [e for i, e in enumerate(expected) if i not in (3, 5, 6)]
    assert inodes[0] == os.stat(root / "d" / "f0.tif").st_ino


def test_a_source_folder_leaving_the_plate_fails_only_its_files(plate, mounts, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.tif").write_bytes(b"secret")
    os.symlink(outside, plate / "linked")
    remap(plate, {"C01_s001_w1_z001_t001.tif": "linked/x.tif"})
    mnt = mounts.mount(plate)
    listed = {e.name: e.stat().st_size for e in os.scandir(mnt / "workspace")}
    assert listed["C01_s001_w1_z001_t001.tif"] == 0
    with pytest.raises(OSError) as e:
        (mnt / "workspace" / "C01_s001_w1_z001_t001.tif").read_bytes()
    assert e.value.errno == errno.EACCES
    ws = Plate.open(plate).entry("workspace")["workspace_mapping"]
    assert listed["A01_s001_w1_z001_t001.tif"] == (plate / ws["A01_s001_w1_z001_t001.tif"]).stat().st_size


STORE_WITHOUT_ZARR = r"""
import io, sys
import numpy as np, tifffile
from pathlib import Path
from backends.plates.plate import Plate
from vfsmount.tree import build_tree
store = Path(sys.argv[1])
root = build_tree(Plate.open(store, lazy=True))        # what the daemon builds before ready
images = root.get(b"images")
images.listing().wait_rows(4096)                        # readdir's first ask
columns = images.columns()
names = list(columns.names[0:columns.ready])
assert images.get(names[-1].encode()).size == list(columns.sizes[0:columns.ready])[-1]
node = images.get(b"P02_s002_w2_z003_t001.tif")         # a lookup in the last well
assert "zarr" not in sys.modules and "numcodecs" not in sys.modules, "zarr before a read"
tif = tifffile.imread(io.BytesIO(node.read(None, 0, node.size)))
assert "zarr" in sys.modules
import zarr
want = zarr.open_array(store / "P/2/1/0", mode="r")[1, 2]
assert want.any()
np.testing.assert_array_equal(tif, want)
print(len(names), names[-1])
"""


def test_a_store_is_listed_without_zarr_and_read_with_it(tmp_path):
    """Issue 29 (mount ready at any size): a local store's mount and its first listing read
    JSON documents only, so the daemon is ready without importing zarr (about a second on
    the 2-core machine); the first plane read imports it (in a worker) and is the store's."""
    import sys
    from benchmarks.foreign_zarr import write_plate
    import zarr
    store = tmp_path / "plate.ome.zarr"
    write_plate(store, "0.5", 2, 2)                     # NGFF 0.5: zarr v3 documents
    arr = zarr.open_array(store / "P/2/1/0", mode="r+")
    arr[...] = np.arange(arr.size, dtype=arr.dtype).reshape(arr.shape)
    out = subprocess.run([sys.executable, "-c", STORE_WITHOUT_ZARR, str(store)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["12", "A01_s002_w2_z003_t001.tif"]   # one well: 2 fields x 6
