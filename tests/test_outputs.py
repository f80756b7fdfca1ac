"""Writing back through the mount: outputs/ with real tools, crashes, an fsx-style exerciser."""
from __future__ import annotations

import errno
import hashlib
import io
import mmap
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.plates.metadata import read_metadata
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from vfsmount.control import is_mounted

from .conftest import imagej_available, mount_state, run_cli

SPEC = PlateSpec(wells=("A01", "B02"), sites=1, channels=2, z=2, shape=(48, 64))


@pytest.fixture
def plate(tmp_path):
    return make_imagexpress_plate(tmp_path / "plate", SPEC, thumbnails=False, projections=False)


def source_tree(tmp_path: Path) -> Path:
    """A folder of TIFFs named as plate images, a CSV and a nested folder, like a tool's output."""
    src = tmp_path / "results"
    (src / "tables").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for well in ("A01", "B02"):
        for c in (1, 2):
            tifffile.imwrite(src / f"{well}_s001_w{c}_z001_t001.tif",
                             rng.integers(0, 4000, (48, 64), dtype=np.uint16))
    (src / "measurements.csv").write_text("label,area\n1,10\n2,31\n")
    (src / "tables" / "summary.json").write_text('{"cells": 2}')
    return src


@pytest.mark.parametrize("materialize", ["disk", "zarr"])
def test_cp_dd_rsync_python_tifffile_then_remount(plate, mounts, tmp_path, materialize):
    mnt = mounts.mount(plate, "--writable", "--materialize", materialize)
    out = mnt / "outputs"
    src = source_tree(tmp_path)
    subprocess.run(["cp", "-r", str(src), str(out / "seg")], check=True)
    blob = os.urandom(3 * 2**20 + 123)
    (tmp_path / "blob.bin").write_bytes(blob)
    for bs in ("4k", "1M"):
        subprocess.run(["dd", f"if={tmp_path / 'blob.bin'}", f"of={out / f'dd_{bs}.bin'}", f"bs={bs}",
                        "status=none"], check=True)
    (out / "synced").mkdir()
    subprocess.run(["rsync", "-r", f"{src}/", f"{out / 'synced'}/"], check=True)
    with open(out / "seek.bin", "w+b") as f:                  # seek + write, read back at once
        f.write(b"A" * 1000)
        f.seek(500)
        f.write(b"B" * 10)
        f.seek(0)
        assert f.read() == b"A" * 500 + b"B" * 10 + b"A" * 490
    img = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    tifffile.imwrite(out / "seg" / "A01_s001_w3_z001_t001.tif", img)   # written in place
    tifffile.imwrite(out / "seg" / "B02_s001_w3_z001_t001.tif", img + 1)

    def check(root: Path) -> None:
        for f in ("measurements.csv", "tables/summary.json"):
            assert (root / "seg" / f).read_bytes() == (src / f).read_bytes()
            assert (root / "synced" / f).read_bytes() == (src / f).read_bytes()
        for name in sorted(p.name for p in src.glob("*.tif")):
            for folder in ("seg", "synced"):
                assert np.array_equal(tifffile.imread(root / folder / name), tifffile.imread(src / name))
        assert np.array_equal(tifffile.imread(root / "seg" / "A01_s001_w3_z001_t001.tif"), img)
        assert (root / "dd_4k.bin").read_bytes() == blob and (root / "dd_1M.bin").read_bytes() == blob
        assert (root / "seek.bin").read_bytes() == b"A" * 500 + b"B" * 10 + b"A" * 490

    check(out)
    mnt2 = mounts.remount(plate, mnt)                          # read-only mount of the result
    check(mnt2 / "outputs")
    meta = read_metadata(plate)["subdirectories"]
    assert "outputs/seg" in meta and "A01_s001_w3_z001_t001.tif" in meta["outputs/seg"]["image_files"]
    if materialize == "zarr":
        assert (plate / "outputs" / "seg.zarr").is_dir()
        assert not (plate / "outputs" / "seg" / "A01_s001_w1_z001_t001.tif").exists()
        assert meta["outputs/seg"]["available_backends"] == {"zarr": True}
        from ome_zarr.format import FormatV04
        from ome_zarr.io import parse_url
        from ome_zarr.reader import Reader
        store = plate / "outputs" / "seg.zarr"
        nodes = list(Reader(parse_url(str(store), fmt=FormatV04()))())
        assert nodes[0].zarr.root_attrs["plate"]["wells"] == [
            {"path": "A/01", "rowIndex": 0, "columnIndex": 0},
            {"path": "B/02", "rowIndex": 1, "columnIndex": 1}]
        image = next(iter(Reader(parse_url(str(store / "A" / "01" / "0"), fmt=FormatV04()))()))
        assert image.data[0].shape == (1, 3, 1, 48, 64)
        z = Plate.open(plate).backend("outputs/seg")
        assert np.array_equal(z.load("A01_s001_w3_z001_t001.tif"), img)
    else:
        assert (plate / "outputs" / "seg" / "measurements.csv").read_bytes() == \
            (src / "measurements.csv").read_bytes()
    assert os.listdir(plate / ".vfsmount-staging") == []
    for path in ("images", "workspace"):                        # everything else stays read-only
        with pytest.raises(OSError) as e:
            (mnt2 / path / "x.txt").write_text("no")
        assert e.value.errno in (errno.EROFS, errno.EACCES)


def _counters(mnt: Path, until=lambda s: True) -> dict:
    """The daemon's request counters (its state file, rewritten within 0.2 s of a change)."""
    return mount_state(mnt, until=until)


def test_cp_of_new_files_costs_few_requests(plate, mounts, tmp_path):
    """Issue 29: a file `cp -r` creates costs the daemon one LOOKUP (the name, not there yet)
    and one GETATTR (the folder, whose attributes the kernel dropped at the previous create)
    besides CREATE, FLUSH and RELEASE: folders of outputs/ keep their entries and attributes
    for a moment (the kernel drops them itself when it changes them), a created file its
    attributes (dropped at its first write). Readers still see each file whole at once."""
    src = tmp_path / "many"
    src.mkdir()
    files = {f"f{i:02d}.bin": os.urandom(3000 + i) for i in range(24)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    mnt = mounts.mount(plate, "--writable")
    (mnt / "outputs").stat()
    before = _counters(mnt)
    subprocess.run(["cp", "-r", str(src), str(mnt / "outputs" / "many")], check=True)
    after = _counters(mnt, until=lambda s: s["release_requests"] - before["release_requests"]
                      >= len(files))
    per_file = {k: (after[f"{k}_requests"] - before[f"{k}_requests"]) / len(files)
                for k in ("lookup", "getattr", "open", "flush", "release")}
    assert per_file["lookup"] <= 1.25 and per_file["getattr"] <= 1.25, per_file
    assert per_file["open"] == per_file["flush"] == per_file["release"] == 1, per_file
    for name, data in files.items():
        assert (mnt / "outputs" / "many" / name).read_bytes() == data
        assert (plate / "outputs" / "many" / name).read_bytes() == data
    folder = mnt / "outputs" / "many"
    os.mkdir(plate / "outputs" / "many" / "made_outside")   # a change the kernel cannot know of
    time.sleep(1.2)                                          # ... seen once its attributes expire
    assert folder.stat().st_nlink == os.stat(plate / "outputs" / "many").st_nlink
    assert "made_outside" in os.listdir(folder)


def test_read_your_writes_and_readers_see_old_content(plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    f = mnt / "outputs" / "data.txt"
    f.write_text("old")
    writer = open(f, "r+b")
    try:
        writer.write(b"NEW-CONTENT")
        writer.flush()
        with open(f, "rb") as reader:                           # another opener: committed bytes
            assert reader.read() == b"old"
        writer.seek(0)
        assert writer.read() == b"NEW-CONTENT"                  # the writer: its own bytes
    finally:
        writer.close()
    assert f.read_bytes() == b"NEW-CONTENT"


def test_two_writers_do_not_interfere(plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    payloads = {f"w{i}.bin": os.urandom(2**20 + i) for i in range(6)}
    errors = []

    def write(name, data):
        try:
            with open(mnt / "outputs" / name, "wb") as fh:
                for i in range(0, len(data), 65536):
                    fh.write(data[i:i + 65536])
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=kv) for kv in payloads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for name, data in payloads.items():
        assert (plate / "outputs" / name).read_bytes() == data


def test_posix_operations(plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    out = mnt / "outputs"
    (out / "d1" / "d2").mkdir(parents=True)
    (out / "d1" / "d2" / "f.txt").write_text("x" * 100)
    os.truncate(out / "d1" / "d2" / "f.txt", 10)
    assert (out / "d1" / "d2" / "f.txt").read_text() == "x" * 10
    os.rename(out / "d1" / "d2" / "f.txt", out / "d1" / "g.txt")
    os.rename(out / "d1", out / "renamed")
    assert (out / "renamed" / "g.txt").read_text() == "x" * 10
    assert (plate / "outputs" / "renamed" / "g.txt").read_text() == "x" * 10
    with pytest.raises(OSError) as e:
        os.rmdir(out / "renamed")
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(out / "renamed" / "g.txt")
    os.rmdir(out / "renamed" / "d2")
    os.rmdir(out / "renamed")
    assert os.listdir(out) == [] and os.listdir(plate / "outputs") == []
    (out / "t.txt").write_text("t")
    for action, err in ((lambda: os.link(out / "t.txt", out / "hard.txt"), errno.EPERM),
                        (lambda: os.symlink("/etc/passwd", out / "sym"), errno.EPERM),
                        (lambda: (out / "bell\x07.txt").write_text("x"), errno.EPERM),
                        (lambda: (out / "back\\slash.txt").write_text("x"), errno.EPERM),
                        (lambda: os.setxattr(out / "t.txt", "user.k", b"v"), errno.ENOTSUP)):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == err
    assert sorted(os.listdir(plate / "outputs")) == ["t.txt"]


def test_bad_images_are_refused_without_touching_data(plate, mounts, tmp_path):
    mnt = mounts.mount(plate, "--writable", "--materialize", "zarr")
    seg = mnt / "outputs" / "seg"
    seg.mkdir()
    good = np.full((48, 64), 7, np.uint16)
    tifffile.imwrite(seg / "A01_s001_w1_z001_t001.tif", good)
    with pytest.raises(OSError) as e:                       # named like an image, not a TIFF
        with open(seg / "A01_s001_w1_z001_t001.tif", "wb") as f:
            f.write(b"this is not a tiff")
    assert e.value.errno == errno.EINVAL
    for wrong in (np.zeros((10, 10), np.uint16), np.zeros((48, 64), np.float32)):
        buf = io.BytesIO()
        tifffile.imwrite(buf, wrong)
        with pytest.raises(OSError) as e:                   # shape / dtype disagree with the field
            with open(seg / "A01_s001_w2_z001_t001.tif", "wb") as f:
                f.write(buf.getvalue())
        assert e.value.errno == errno.EINVAL
    # tifffile swallows errors of close(); the file is refused all the same
    tifffile.imwrite(seg / "A01_s001_w3_z001_t001.tif", np.zeros((10, 10), np.uint16))
    assert np.array_equal(tifffile.imread(seg / "A01_s001_w1_z001_t001.tif"), good)   # untouched
    assert sorted(os.listdir(seg)) == ["A01_s001_w1_z001_t001.tif"]
    log = mounts.log(mnt)
    assert "not a valid TIFF" in log and "do not match" in log


def test_refused_image_is_gone_when_close_returns(plate, mounts):
    """The kernel's RELEASE comes after close() returns; the next open must not see a refused
    file half-gone (ENOENT from a stale inode) nor list it. Raced 1 cycle in ~20 before."""
    mnt = mounts.mount(plate, "--writable", "--materialize", "zarr")
    seg = mnt / "outputs" / "seg"
    seg.mkdir()
    tifffile.imwrite(seg / "A01_s001_w1_z001_t001.tif", np.full((48, 64), 7, np.uint16))
    wrong = io.BytesIO()
    tifffile.imwrite(wrong, np.zeros((10, 10), np.uint16))
    errnos, listings = [], []
    for _ in range(60):
        for _ in range(2):
            try:
                with open(seg / "A01_s001_w2_z001_t001.tif", "wb") as f:
                    f.write(wrong.getvalue())
                errnos.append(0)
            except OSError as e:
                errnos.append(e.errno)
        listings.append(tuple(os.listdir(seg)))
    assert set(errnos) == {errno.EINVAL}
    assert set(listings) == {("A01_s001_w1_z001_t001.tif",)}


def test_unlink_right_after_close_stays_unlinked(plate, mounts):
    """A RELEASE arriving after unlink(2) must not commit the file back into the plate."""
    mnt = mounts.mount(plate, "--writable")
    survivors = []
    for i in range(100):
        path = mnt / "outputs" / f"f{i}.bin"
        path.write_bytes(b"x" * 4096)
        fd = os.open(path, os.O_RDWR)          # opened for writing, nothing changed
        os.pread(fd, 10, 0)
        os.close(fd)
        path.unlink()
        if (plate / "outputs" / path.name).exists() or path.exists():
            survivors.append(path.name)
    time.sleep(0.5)                             # late RELEASEs have arrived by now
    survivors += [p.name for p in (plate / "outputs").iterdir()]
    assert survivors == []


def test_full_disk_gives_enospc(tmp_path, mounts):
    small = tmp_path / "small"
    small.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {res.stderr.strip()}")
    try:
        plate = make_imagexpress_plate(small / "plate", PlateSpec(wells=("A01",), sites=1, channels=1,
                                                                  z=1, shape=(16, 16)),
                                       thumbnails=False, projections=False)
        (small / "plate" / "outputs").mkdir()
        (small / "plate" / "outputs" / "keep.txt").write_text("keep")
        mnt = mounts.mount(plate, "--writable")
        with pytest.raises(OSError) as e:
            with open(mnt / "outputs" / "huge.bin", "wb") as f:
                for _ in range(16):
                    f.write(b"\0" * 2**20)
        assert e.value.errno == errno.ENOSPC
        assert (mnt / "outputs" / "keep.txt").read_text() == "keep"
        assert not (plate / "outputs" / "huge.bin").exists()
        assert os.listdir(small / "plate" / ".vfsmount-staging") == []   # the staged rest is gone
    finally:
        from vfsmount.control import unmount
        for m in mounts.mountpoints:
            unmount(m)
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_sigkill_during_concurrent_writes(plate, mounts, tmp_path):
    """20 rounds: writers stream files, the daemon is SIGKILLed at a random moment. After a
    remount every file is either complete or absent, and every successfully closed one is there."""
    rng = random.Random(5)
    closed: dict[str, bytes] = {}
    for rnd in range(20):
        mnt = mounts.mount(plate, "--writable", name=f"crash{rnd}")
        stop = threading.Event()

        def writer(wid: int) -> None:
            i = 0
            while not stop.is_set():
                name = f"r{rnd}_w{wid}_{i}.bin"
                body = os.urandom(rng.randrange(1, 3 * 2**20))
                data = hashlib.sha256(body).digest() + body
                try:
                    with open(mnt / "outputs" / name, "wb") as f:
                        for j in range(0, len(data), 256 * 1024):
                            f.write(data[j:j + 256 * 1024])
                    closed[name] = data
                except OSError:
                    return
                i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(mounts.pids[mnt], signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        deadline = time.monotonic() + 10
        while is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)
    for f in (plate / "outputs").iterdir():                     # nothing half-written visible
        data = f.read_bytes()
        assert hashlib.sha256(data[32:]).digest() == data[:32], f"{f.name} is corrupt"
    for name, data in closed.items():                           # every successful close landed
        assert (plate / "outputs" / name).read_bytes() == data, name
    mnt = mounts.mount(plate, "--writable", name="after")        # restart cleans staging
    assert os.listdir(plate / ".vfsmount-staging") == []
    assert len(os.listdir(mnt / "outputs")) >= len(closed) > 20


def test_fsx_exerciser_10000_operations(plate, mounts):
    """fsx-style: random writes, truncates, reads and mapped reads vs a reference buffer."""
    mnt = mounts.mount(plate, "--writable")
    path = mnt / "outputs" / "fsx.bin"
    ref = bytearray()
    rng = random.Random(42)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    mismatches = 0
    try:
        for op in range(10_000):
            kind = rng.random()
            if kind < 0.45:
                off = rng.randrange(0, len(ref) + 65536)
                data = rng.randbytes(rng.randrange(1, 65536))
                os.pwrite(fd, data, off)
                if off > len(ref):
                    ref.extend(b"\0" * (off - len(ref)))
                ref[off:off + len(data)] = data
            elif kind < 0.55:
                size = rng.randrange(0, max(1, len(ref) + 32768))
                os.ftruncate(fd, size)
                ref = ref[:size] + b"\0" * max(0, size - len(ref))
                ref = bytearray(ref)
            elif kind < 0.9:
                off = rng.randrange(0, len(ref) + 1)
                n = rng.randrange(0, 65536)
                if os.pread(fd, n, off) != bytes(ref[off:off + n]):
                    mismatches += 1
            elif kind < 0.97:
                if ref:
                    with mmap.mmap(fd, len(ref), prot=mmap.PROT_READ) as m:
                        off = rng.randrange(0, len(ref))
                        if m[off:off + 4096] != bytes(ref[off:off + 4096]):
                            mismatches += 1
            else:                                     # close (commit) and reopen
                os.close(fd)
                if path.read_bytes() != bytes(ref):
                    mismatches += 1
                fd = os.open(path, os.O_RDWR)
            assert os.fstat(fd).st_size == len(ref), f"size after op {op}"
    finally:
        os.close(fd)
    assert mismatches == 0
    assert (plate / "outputs" / "fsx.bin").read_bytes() == bytes(ref)


@pytest.mark.skipif(not imagej_available(), reason="Debian package imagej is not installed")
def test_imagej_saves_into_the_mount(plate, mounts, tmp_path):
    mnt = mounts.mount(plate, "--writable", "--materialize", "zarr")
    (mnt / "outputs" / "fiji").mkdir()
    target = mnt / "outputs" / "fiji" / "A01_s001_w1_z001_t001.tif"
    macro = tmp_path / "save.ijm"
    macro.write_text(f"""
newImage("blobs", "16-bit ramp", 64, 48, 1);
saveAs("Tiff", "{target}");
print("SAVED");
""")
    res = subprocess.run(["xvfb-run", "-a", "imagej", "-b", str(macro)], capture_output=True,
                         text=True, timeout=180)
    assert "SAVED" in res.stdout, res.stdout + res.stderr
    img = tifffile.imread(target)
    assert img.shape == (48, 64) and img.dtype == np.uint16 and img[0, -1] > img[0, 0]
    mnt2 = mounts.remount(plate, mnt)
    assert np.array_equal(tifffile.imread(mnt2 / "outputs" / "fiji" / target.name), img)
    assert (plate / "outputs" / "fiji.zarr").is_dir()


def test_info_lists_outputs(plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    (mnt / "outputs" / "res").mkdir()
    tifffile.imwrite(mnt / "outputs" / "res" / "A01_s001_w1_z001_t001.tif", np.zeros((4, 4), np.uint8))
    from vfsmount.control import unmount
    unmount(mnt)
    out = run_cli("info", str(plate), "--no-rescan").stdout
    assert "[outputs/res]" in out
