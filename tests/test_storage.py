"""The storage core: registry, memory and disk backends, FileManager, atomic writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import backends
from backends import (STORAGE_BACKENDS, Backend, FileManager, StorageBackend, StorageBackendMeta,
                      get_backend_class)
from backends.storage.atomic import atomic_open
from backends.storage.disk import DiskStorageBackend
from backends.errors import (CorruptDataError, PathEscapeError, StorageError, StorageExistsError,
                             StorageNotFoundError, UnknownBackendError, UnsupportedFormatError)

HEAVY = ("zarr", "ome_zarr", "numcodecs", "torch", "jax", "tensorflow", "cupy", "pyopencl",
         "pyclesperanto_prototype")


def test_importing_backends_loads_no_heavy_library():
    code = ("import sys, backends; heavy = %r; "
            "print([m for m in sys.modules if m.split('.')[0] in heavy])" % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    # importtime agrees: none of them is even touched
    trace = subprocess.run([sys.executable, "-X", "importtime", "-c", "import backends"],
                           capture_output=True, text=True, check=True).stderr
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in trace.splitlines()[1:]}
    assert not imported & set(HEAVY)


def test_zarr_backend_is_discovered_lazily():
    # the backend class is found by name without importing it up front, and zarr itself is
    # imported only where a store is opened (a plane read, a store written)
    code = ("import sys, backends; from backends import get_backend_class; "
            "assert 'zarr' not in sys.modules; "
            "assert 'backends.ngff.backend' not in sys.modules; cls = get_backend_class('zarr'); "
            "print(cls.__name__, 'backends.ngff.backend' in sys.modules, 'zarr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["ZarrStorageBackend", "True", "False"]


def test_new_backend_class_registers_itself(tmp_path):
    class NullBackend(StorageBackend):
        _backend_type = "null_test"

        def __init__(self):
            self.saved = {}

        def save(self, data, path, **kw): self.saved[str(path)] = data
        def load(self, path, **kw): return self.saved[str(path)]
        def list_files(self, directory, *, extensions=None, recursive=False): return sorted(self.saved)
        def list_dir(self, directory): return sorted(self.saved)
        def exists(self, path): return str(path) in self.saved
        def is_file(self, path): return str(path) in self.saved
        def is_dir(self, path): return False
        def delete(self, path, *, recursive=False): self.saved.pop(str(path))
        def ensure_directory(self, path): pass
        def copy(self, src, dst, *, overwrite=False): self.saved[str(dst)] = self.saved[str(src)]
        def move(self, src, dst, *, overwrite=False): self.saved[str(dst)] = self.saved.pop(str(src))

    try:
        assert isinstance(NullBackend, StorageBackendMeta)
        assert STORAGE_BACKENDS["null_test"] is NullBackend
        assert get_backend_class("null_test") is NullBackend
        fm = FileManager()
        fm.save(42, "x", "null_test")
        assert fm.load("x", "null_test") == 42
    finally:
        STORAGE_BACKENDS.pop("null_test", None)


def test_the_file_tree_is_a_capability_a_backend_has_or_not(tmp_path):
    """Disk and memory have folders, copies and renames; a zarr store (a flat set of planes)
    has not, and has no method that could only refuse: FileManager asks the capability."""
    from backends.ngff.backend import ZarrStorageBackend
    from backends.ngff.config import ZarrConfig
    from backends.storage.base import FileTree
    from backends.storage.memory import MemoryStorageBackend
    assert DiskStorageBackend(root=tmp_path).has_file_tree and MemoryStorageBackend().has_file_tree
    store = ZarrStorageBackend(tmp_path / "s.zarr", mode="w",
                               config=ZarrConfig(chunk_strategy="file"))
    assert not store.has_file_tree and not isinstance(store, FileTree)
    assert not any(callable(getattr(store, op, None)) for op in ("move", "ensure_directory"))
    fm = FileManager({"zarr": store})
    plane = np.arange(16, dtype=np.uint16).reshape(4, 4)
    a, b = "A01_s001_w1_z001_t001.tif", "A01_s001_w2_z001_t001.tif"
    fm.save(plane, a, Backend.ZARR)
    fm.copy(a, b, Backend.ZARR)                         # a plane copied by value, as before
    assert np.array_equal(fm.load(b, Backend.ZARR), plane)
    with pytest.raises(StorageExistsError):
        fm.copy(a, b, Backend.ZARR)
    for refused in (lambda: fm.move(a, "A01_s001_w3_z001_t001.tif", Backend.ZARR),
                    lambda: fm.ensure_directory("sub", Backend.ZARR)):
        with pytest.raises(StorageError, match="no folders, copies or renames") as e:
            refused()
        assert "zarr" in str(e.value)


def test_unknown_backend_is_a_clear_error():
    fm = FileManager()
    with pytest.raises(UnknownBackendError, match="unknown backend 'nosuch'.*known: .*disk"):
        fm.save(1, "/x", "nosuch")


def test_backend_enum_values():
    assert {b.value for b in Backend} >= {"memory", "disk", "zarr", "virtual_workspace"}
    assert get_backend_class(Backend.DISK) is DiskStorageBackend


# -- FileManager on memory and disk ------------------------------------------------

@pytest.fixture(params=["memory", "disk"])
def fm_root(request, tmp_path):
    fm = FileManager()
    if request.param == "disk":
        fm.register(Backend.DISK, DiskStorageBackend(root=tmp_path))
        return fm, Backend.DISK, str(tmp_path)
    return fm, Backend.MEMORY, "/mem"


def test_save_load_roundtrip_every_format(fm_root):
    fm, backend, root = fm_root
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    cases = {
        "a.tif": img, "b.npy": img.astype(np.float32), "c.json": {"k": [1, 2]},
        "d.txt": "hello", "e.bin": b"\x00\x01raw",
        "f.csv": [{"label": 1, "area": 10.5}, {"label": 2, "area": 3.0}],
    }
    for name, data in cases.items():
        fm.save(data, f"{root}/sub/{name}", backend)
    for name, data in cases.items():
        got = fm.load(f"{root}/sub/{name}", backend)
        if isinstance(data, np.ndarray):
            assert got.dtype == data.dtype and np.array_equal(got, data)
        elif name.endswith(".csv") and backend == Backend.DISK:
            assert got == [{"label": "1", "area": "10.5"}, {"label": "2", "area": "3.0"}]
        else:
            assert got == data


def test_batch_operations(fm_root):
    fm, backend, root = fm_root
    arrays = [np.full((2, 2), i, dtype=np.uint8) for i in range(5)]
    paths = [f"{root}/batch/img_{i}.tif" for i in range(5)]
    fm.save_batch(arrays, paths, backend)
    loaded = fm.load_batch(paths, backend)
    assert all(np.array_equal(a, b) for a, b in zip(arrays, loaded))
    with pytest.raises(ValueError):
        fm.save_batch(arrays, paths[:2], backend)


def test_listing_is_natural_order(fm_root):
    fm, backend, root = fm_root
    for i in (10, 2, 1, 100, 20):
        fm.save(np.zeros((1, 1), np.uint8), f"{root}/nat/img_{i}.tif", backend)
    fm.save("x", f"{root}/nat/notes.txt", backend)
    fm.save(np.zeros((1, 1), np.uint8), f"{root}/nat/deeper/img_3.tif", backend)
    names = [os.path.basename(p) for p in fm.list_image_files(f"{root}/nat", backend)]
    assert names == ["img_1.tif", "img_2.tif", "img_10.tif", "img_20.tif", "img_100.tif"]
    rec = fm.list_image_files(f"{root}/nat", backend, recursive=True)
    assert len(rec) == 6 and any(p.endswith("deeper/img_3.tif") for p in rec)
    everything = fm.list_files(f"{root}/nat", backend)
    assert any(p.endswith("notes.txt") for p in everything)
    txt = fm.list_files(f"{root}/nat", backend, extensions=[".txt"])
    assert [os.path.basename(p) for p in txt] == ["notes.txt"]
    assert fm.list_dir(f"{root}/nat", backend) == [
        "deeper", "img_1.tif", "img_2.tif", "img_10.tif", "img_20.tif", "img_100.tif", "notes.txt"]


def test_directories_exists_delete(fm_root):
    fm, backend, root = fm_root
    fm.ensure_directory(f"{root}/d/e", backend)
    assert fm.is_dir(f"{root}/d/e", backend) and fm.exists(f"{root}/d", backend)
    fm.save("x", f"{root}/d/e/f.txt", backend)
    assert fm.is_file(f"{root}/d/e/f.txt", backend)
    assert not fm.is_dir(f"{root}/d/e/f.txt", backend)
    with pytest.raises(StorageError, match="not empty"):
        fm.delete(f"{root}/d", backend)
    fm.delete(f"{root}/d/e/f.txt", backend)
    assert not fm.exists(f"{root}/d/e/f.txt", backend)
    fm.save("x", f"{root}/d/e/g.txt", backend)
    fm.delete(f"{root}/d", backend, recursive=True)
    assert not fm.exists(f"{root}/d", backend)
    with pytest.raises(StorageNotFoundError):
        fm.delete(f"{root}/d", backend)


def test_copy_and_move(fm_root):
    fm, backend, root = fm_root
    fm.save("one", f"{root}/cm/a.txt", backend)
    fm.copy(f"{root}/cm/a.txt", f"{root}/cm/b.txt", backend)
    assert fm.load(f"{root}/cm/b.txt", backend) == "one"
    with pytest.raises(StorageExistsError):
        fm.copy(f"{root}/cm/a.txt", f"{root}/cm/b.txt", backend)
    fm.move(f"{root}/cm/b.txt", f"{root}/cm/c.txt", backend)
    assert not fm.exists(f"{root}/cm/b.txt", backend)
    assert fm.load(f"{root}/cm/c.txt", backend) == "one"
    fm.save("two", f"{root}/cm/d.txt", backend)
    with pytest.raises(StorageExistsError):
        fm.move(f"{root}/cm/d.txt", f"{root}/cm/c.txt", backend)
    fm.move(f"{root}/cm/d.txt", f"{root}/cm/c.txt", backend, overwrite=True)
    assert fm.load(f"{root}/cm/c.txt", backend) == "two"


def test_load_missing_path_is_typed(fm_root):
    fm, backend, root = fm_root
    with pytest.raises(StorageNotFoundError) as e:
        fm.load(f"{root}/nope/missing.tif", backend)
    assert "missing.tif" in str(e.value) and backend.value in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_memory_backend_fails_loud_on_overwrite():
    fm = FileManager()
    obj = object()
    fm.save(obj, "/m/x", Backend.MEMORY)
    assert fm.load("/m/x", Backend.MEMORY) is obj      # any object, stored as is
    with pytest.raises(StorageExistsError, match="overwrite=True"):
        fm.save(1, "/m/x", Backend.MEMORY)
    fm.save(2, "/m/x", Backend.MEMORY, overwrite=True)
    assert fm.load("m//x/", Backend.MEMORY) == 2        # paths are normalized
    with pytest.raises(PathEscapeError):
        fm.save(3, "/m/../x", Backend.MEMORY)


def test_disk_path_outside_root_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.txt").write_text("s")
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    fm = FileManager({"disk": DiskStorageBackend(root)})
    for bad in ("../secret.txt", str(tmp_path / "secret.txt"), "link.txt"):
        with pytest.raises(PathEscapeError, match="outside the backend root"):
            fm.load(bad, "disk")
    with pytest.raises(PathEscapeError):
        fm.save("x", "../evil.txt", "disk")
    assert not (tmp_path / "evil.txt").exists()


def test_unsupported_extension(tmp_path):
    fm = FileManager()
    with pytest.raises(UnsupportedFormatError, match=r"'\.xyz'"):
        fm.save(b"data", str(tmp_path / "f.xyz"), Backend.DISK)
    assert not list(tmp_path.iterdir())
    (tmp_path / "g.xyz").write_bytes(b"raw")
    with pytest.raises(UnsupportedFormatError):
        fm.load(str(tmp_path / "g.xyz"), Backend.DISK)
    assert fm.load(str(tmp_path / "g.xyz"), Backend.DISK, raw=True) == b"raw"


def test_corrupt_tiff_names_the_file(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(CorruptDataError, match="bad.tif"):
        FileManager().load(str(bad), Backend.DISK)


def test_interrupted_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.json"
    fm = FileManager()
    fm.save({"v": 1}, str(target), Backend.DISK)
    with pytest.raises(StorageError, match="cannot write"):
        fm.save({"v": object()}, str(target), Backend.DISK)   # fails halfway through encoding
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]        # no temporary left behind
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write(b'{"v": 2, "trunc')
            raise RuntimeError("crash in the middle of a write")
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_wrong_data_for_format_is_refused_without_residue(tmp_path):
    fm = FileManager()
    with pytest.raises(StorageError, match="as tiff"):
        fm.save({"not": "an image"}, str(tmp_path / "x.tif"), Backend.DISK)
    with pytest.raises(StorageError, match="as text"):
        fm.save(123, str(tmp_path / "x.txt"), Backend.DISK)
    assert list(tmp_path.iterdir()) == []


def test_kill_during_write_leaves_old_or_new(tmp_path):
    """SIGKILL a process that rewrites a file in a loop: the file is always complete."""
    target = tmp_path / "big.npy"
    code = f"""
import numpy as np
from backends import FileManager, Backend
fm = FileManager()
i = 0
while True:
    fm.save(np.full(2_000_000, i % 250, dtype=np.uint8), {str(target)!r}, Backend.DISK)
    i += 1
"""
    for delay in (0.3, 0.55, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", code])
        try:
            import time
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait()
        if target.exists():
            data = np.load(target)
            assert data.shape == (2_000_000,) and (data == data[0]).all()


def test_mirror_directory(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "x.tif").write_bytes(b"1")
    (src / "y.txt").write_text("2")
    fm = FileManager()
    n = fm.mirror_directory(str(src), str(tmp_path / "dst"), Backend.DISK)
    assert n == 2
    link = tmp_path / "dst" / "a" / "b" / "x.tif"
    assert link.is_symlink() and link.read_bytes() == b"1"
    (tmp_path / "dst" / "real.txt").write_text("keep")
    (src / "real.txt").write_text("src")
    with pytest.raises(StorageExistsError):
        fm.mirror_directory(str(src), str(tmp_path / "dst"), Backend.DISK,
                            overwrite_symlinks_only=True)
    assert (tmp_path / "dst" / "real.txt").read_text() == "keep"


def test_public_names_exported():
    for name in ("FileManager", "Backend", "StorageError", "DiskStorageBackend", "VirtualBackend"):
        assert hasattr(backends, name)


def test_a_location_is_decided_once(tmp_path, monkeypatch):
    """"Is it object storage" is asked once, when a plate is opened (Location.of); the store
    backend it opens takes the decided Location and does not ask again."""
    from backends.plates.convert import convert_plate
    from backends.plates.plate import Plate
    from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
    from backends.storage import remote
    from backends.storage.remote import Location
    url = Location.of("s3://bucket/plate.zarr/")
    assert (url.where, url.remote) == ("s3://bucket/plate.zarr", True)
    assert Location.of(url) is url
    assert Location.of(tmp_path / "p") == Location(tmp_path / "p", False)
    plate = make_imagexpress_plate(tmp_path / "p", PlateSpec(wells=("A01",), sites=1, channels=1,
                                                             z=1, shape=(8, 8)))
    store = convert_plate(plate, progress=False)
    asked = []
    real = remote.is_url
    monkeypatch.setattr(remote, "is_url", lambda where: asked.append(where) or real(where))
    opened = Plate.open(store)
    assert asked == [store] and not opened.remote
    assert opened.image_set("zarr").backend.remote is False and len(asked) == 1
