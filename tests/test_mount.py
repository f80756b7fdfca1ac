"""The mount, tried with real tools: ls, find, cp, stat, getfattr, tiffinfo, tifffile, Pillow, ImageJ."""
from __future__ import annotations

import errno
import filecmp
import json
import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import psutil
import pytest
import tifffile
from PIL import Image

from backends.plates.convert import convert_plate
from backends.plates.metadata import METADATA_FILENAME, update_metadata
from backends.naming import parse_virtual_name, virtual_name
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate, synthetic_image
from backends.ngff.config import ZarrConfig
from vfsmount.control import is_mounted, unmount
from vfsmount.tiff_layout import TiffLayout, synthesize

from .conftest import REPO, imagej_available, imagej_open, run_cli


@pytest.fixture
def converted_plate(tmp_path, small_spec):
    root = make_imagexpress_plate(tmp_path / "plate", small_spec)
    convert_plate(root, config=ZarrConfig(chunk_strategy="file"), progress=False)
    return root


def expected_plane(name: str, spec: PlateSpec) -> np.ndarray:
    return synthetic_image(parse_virtual_name(name), spec.shape, spec.dtype)


def served_tiff(name: str, spec: PlateSpec, plate: Path) -> bytes:
    """The TIFF the mount synthesizes: the plane, with the plate's pixel size and z spacing
    (from the MetaSeries z-positions of the synthetic plate) in its ImageJ calibration."""
    z = Plate.open(plate).entry("zarr").get("z_spacing")
    return synthesize(expected_plane(name, spec), 0.65, z_spacing=z)


def test_tree_sizes_and_posix_tools(converted_plate, small_spec, mounts, tmp_path):
    mnt = mounts.mount(converted_plate)
    assert sorted(os.listdir(mnt)) == ["hyperstacks", "images", "load_data.csv",
                                       "load_data_with_illum.csv", METADATA_FILENAME, "original",
                                       "outputs", "plate.companion.ome", "projection",
                                       "workspace", "zarr"]
    plate = Plate.open(converted_plate)
    names = plate.image_files("zarr")
    assert sorted(os.listdir(mnt / "images")) == sorted(names) == sorted(os.listdir(mnt / "zarr"))
    layout = TiffLayout.for_plane(small_spec.shape, small_spec.dtype, 0.65,
                                  z_spacing=plate.entry("zarr").get("z_spacing"))

    # ls -l: names and exact sizes, before any pixel is read
    out = subprocess.run(["ls", "-l", str(mnt / "images")], capture_output=True, text=True,
                         check=True).stdout.splitlines()[1:]
    sizes = {line.split()[-1]: int(line.split()[4]) for line in out}
    assert sizes == {n: layout.size for n in names}
    ws = plate.entry("workspace")["workspace_mapping"]
    for name, rel in ws.items():
        assert (mnt / "workspace" / name).stat().st_size == (converted_plate / rel).stat().st_size
    for line in out:
        assert line.startswith("-rw-r--r--")    # synthesized: 0644, so copies are editable;
        # writes through the mount are still refused (test_read_only_everywhere), issue 31 #5

    # find sees every file
    found = subprocess.run(["find", str(mnt / "images"), str(mnt / "workspace"), "-type", "f"],
                           capture_output=True, text=True, check=True).stdout.split()
    assert len(found) == 2 * len(names)

    # stat is stable before and after reading
    f = mnt / "images" / names[3]
    st1 = os.stat(f)
    data = f.read_bytes()
    st2 = os.stat(f)
    assert (st1.st_ino, st1.st_size, st1.st_mtime_ns) == (st2.st_ino, st2.st_size, st2.st_mtime_ns)
    assert st1.st_blksize >= 1 << 20 and len(data) == st1.st_size
    assert os.stat(mnt / "zarr" / names[3]).st_ino == st1.st_ino     # images/ is the main one

    # cp -r of the whole tree gives exactly the expected bytes
    dest = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(mnt), str(dest)], check=True)
    for name in names:
        want = served_tiff(name, small_spec, converted_plate)
        assert (dest / "images" / name).read_bytes() == want
    for name, rel in ws.items():
        assert filecmp.cmp(dest / "workspace" / name, converted_plate / rel, shallow=False)
    assert json.loads((dest / METADATA_FILENAME).read_text())["subdirectories"]["zarr"]["main"]
    assert filecmp.cmp(dest / "original" / rel, converted_plate / rel, shallow=False)

    # tifffile and Pillow read every plane identical to the source
    for name in names:
        want = expected_plane(name, small_spec)
        assert np.array_equal(tifffile.imread(mnt / "images" / name), want)
        assert np.array_equal(np.array(Image.open(mnt / "images" / name)), want)
        assert np.array_equal(tifffile.imread(mnt / "workspace" / name), want)

    # tiffinfo prints no warnings
    for name in names[:6]:
        res = subprocess.run(["tiffinfo", str(mnt / "images" / name)], capture_output=True, text=True)
        assert res.returncode == 0 and res.stderr.strip() == ""


def test_extended_attributes(converted_plate, mounts):
    mnt = mounts.mount(converted_plate, "--xattrs")
    out = subprocess.run(["getfattr", "-d", str(mnt / "images" / "B02_s002_w2_z003_t002.tif")],
                         capture_output=True, text=True, check=True).stdout
    for line in ('user.vfsmount.well="B02"', 'user.vfsmount.site="2"', 'user.vfsmount.channel="2"',
                 'user.vfsmount.z="3"', 'user.vfsmount.t="2"'):
        assert line in out
    assert "zarr/B/02/1/0[1,1,2]" in out
    src = os.getxattr(mnt / "workspace" / "B02_s002_w2_z003_t002.tif", "user.vfsmount.source").decode()
    assert src.startswith("TimePoint_2/ZStep_3/SynthPlate_B02_s2_w2")
    assert os.listxattr(mnt / "images") == []
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / "images" / "B02_s002_w2_z003_t002.tif", "user.nope")
    assert e.value.errno == errno.ENODATA


def test_read_only_everywhere(converted_plate, mounts):
    mnt = mounts.mount(converted_plate)
    f = mnt / "images" / "A01_s001_w1_z001_t001.tif"
    for action in (lambda: open(f, "r+b"), lambda: (mnt / "images" / "new.tif").write_bytes(b"x"),
                   lambda: os.mkdir(mnt / "images" / "d"), lambda: os.unlink(f),
                   lambda: os.rename(f, mnt / "images" / "x.tif"),
                   lambda: os.setxattr(f, "user.x", b"1"), lambda: os.chmod(f, 0o666),
                   lambda: open(mnt / "original" / METADATA_FILENAME, "ab")):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM), action
    with open("/proc/self/mountinfo") as m:
        line = next(l for l in m if f" {mnt} " in l)
    assert "allow_other" not in line and "fuse.vfsmount" in line


@pytest.mark.parametrize("name", ["Projection-Mix", "1well-3C-2S-Zmix-T", "Version1"])
def test_real_plates_after_convert(copy_real_plate, mounts, name, tmp_path):
    root = copy_real_plate(name)
    run_cli("convert", str(root), "--no-progress")
    mnt = mounts.mount(root)
    plate = Plate.open(root)
    ws = plate.entry("workspace")["workspace_mapping"]
    assert sorted(os.listdir(mnt / "images")) == sorted(ws)
    for vname, rel in ws.items():
        want = tifffile.imread(root / rel)
        assert np.array_equal(tifffile.imread(mnt / "images" / vname), want)
        assert (mnt / "workspace" / vname).read_bytes() == (root / rel).read_bytes()
    if name == "Projection-Mix":
        assert len(os.listdir(mnt / "projection")) == 12


@pytest.mark.skipif(not imagej_available(), reason="Debian package imagej is not installed")
def test_imagej_macro_opens_zarr_backed_tiff(copy_real_plate, mounts, tmp_path):
    root = copy_real_plate("Version1")
    run_cli("convert", str(root), "--no-progress")
    mnt = mounts.mount(root)
    f = mnt / "images" / "A01_s001_w5_z001_t001.tif"
    want = tifffile.imread(root / "r01c01f01p01-ch5sk1fk1fl1.tiff")
    w, h, bits, slices, mean = imagej_open(f, tmp_path, macro=True)
    assert (w, h, bits, slices) == (1080, 1080, 16, 1)
    assert mean == pytest.approx(float(want.mean()), rel=1e-6)


def test_random_range_reads(converted_plate, small_spec, mounts):
    mnt = mounts.mount(converted_plate)
    name = "A01_s002_w2_z002_t001.tif"
    whole = served_tiff(name, small_spec, converted_plate)
    rng = random.Random(11)
    fd = os.open(mnt / "images" / name, os.O_RDONLY)
    try:
        for _ in range(1000):
            off = rng.randrange(0, len(whole) + 64)
            length = rng.randrange(0, 40_000)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(fd, length, off) == whole[off:off + length]
    finally:
        os.close(fd)


def test_eight_concurrent_readers_stay_exact(tmp_path, mounts):
    """8 s in CI (the suite's 15-minute budget); VFSMOUNT_READERS_SECONDS=60 for the long run."""
    spec = PlateSpec(wells=("A01", "A02"), sites=2, channels=2, z=2, shape=(1024, 1024))
    root = make_imagexpress_plate(tmp_path / "big", spec, thumbnails=False, projections=False)
    convert_plate(root, config=ZarrConfig(chunk_strategy="well"), progress=False)
    mnt = mounts.mount(root)
    names = sorted(os.listdir(mnt / "images"))[:8]
    expected = {n: served_tiff(n, spec, root) for n in names}
    daemon = psutil.Process(mounts.pids[mnt])
    errors: list[str] = []
    reads = [0] * len(names)
    stop = time.monotonic() + float(os.environ.get("VFSMOUNT_READERS_SECONDS", "8"))
    rss: list[int] = []

    def reader(i: int, name: str) -> None:
        path = mnt / "images" / name
        while time.monotonic() < stop and not errors:
            with open(path, "rb") as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)   # make the daemon serve it
                data = f.read()
            if data != expected[name]:
                errors.append(f"{name}: wrong bytes")
            reads[i] += 1

    threads = [threading.Thread(target=reader, args=(i, n)) for i, n in enumerate(names)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append(daemon.memory_info().rss)
        time.sleep(1)
    for t in threads:
        t.join()
    assert not errors, errors
    assert min(reads) >= 5, reads
    # bounded: the decoded-chunk cache is 256 MiB; nothing grows with the number of reads
    assert max(rss) < 600 * 2**20, max(rss)
    late = rss[len(rss) // 2:]
    assert max(late) - min(late) < 64 * 2**20, (min(late), max(late))


# -- faults ------------------------------------------------------------------------------

def test_missing_source_and_corrupt_chunk_fail_cleanly(converted_plate, mounts):
    plate = Plate.open(converted_plate)
    ws = plate.entry("workspace")["workspace_mapping"]
    gone = "A01_s001_w1_z001_t001.tif"
    (converted_plate / ws[gone]).unlink()
    chunk = converted_plate / "zarr" / "B" / "02" / "0" / "0" / "0" / "0" / "0" / "0" / "0"
    chunk.write_bytes(b"\x02\x01garbage")
    mnt = mounts.mount(converted_plate)
    with pytest.raises(OSError) as e:
        (mnt / "workspace" / gone).read_bytes()
    assert e.value.errno in (errno.ENOENT, errno.EIO)
    with pytest.raises(OSError) as e:
        (mnt / "images" / "B02_s001_w1_z001_t001.tif").read_bytes()
    assert e.value.errno == errno.EIO
    # the daemon keeps serving everything else
    assert tifffile.imread(mnt / "images" / "A01_s001_w1_z001_t001.tif").shape == (64, 96)
    assert tifffile.imread(mnt / "workspace" / "A01_s001_w2_z001_t001.tif").shape == (64, 96)
    log = mounts.log(mnt)
    assert "source missing" in log and gone in log
    assert "B02_s001_w1_z001_t001.tif" in log and "chunk 0/0/0/0/0" in log and "B/02/0/0" in log


def test_source_replaced_while_mounted(converted_plate, mounts):
    plate = Plate.open(converted_plate)
    rel = plate.entry("workspace")["workspace_mapping"]["A02_s001_w1_z001_t001.tif"] \
        if "A02_s001_w1_z001_t001.tif" in plate.entry("workspace")["workspace_mapping"] else \
        next(iter(plate.entry("workspace")["workspace_mapping"].values()))
    name = next(k for k, v in plate.entry("workspace")["workspace_mapping"].items() if v == rel)
    mnt = mounts.mount(converted_plate)
    first = (mnt / "workspace" / name).read_bytes()
    assert first == (converted_plate / rel).read_bytes()
    new = np.full((64, 96), 7, np.uint16)
    tmp = converted_plate / (rel + ".new")
    tifffile.imwrite(tmp, new)
    os.replace(tmp, converted_plate / rel)
    deadline = time.monotonic() + 10
    while True:
        got = (mnt / "workspace" / name).read_bytes()
        if got == (converted_plate / rel).read_bytes() or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert got == (converted_plate / rel).read_bytes()
    assert np.array_equal(tifffile.imread(mnt / "workspace" / name), new)


def test_kill_9_leaves_no_dead_mount(converted_plate, mounts):
    mnt = mounts.mount(converted_plate)
    assert is_mounted(mnt)
    os.kill(mounts.pids[mnt], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while is_mounted(mnt) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not is_mounted(mnt)           # auto_unmount cleaned up after the daemon
    assert os.listdir(mnt) == []
    assert unmount(mnt) == "not mounted"


def test_umount_while_a_reader_holds_a_file(converted_plate, mounts):
    mnt = mounts.mount(converted_plate)
    f = open(mnt / "images" / "A01_s001_w1_z001_t001.tif", "rb")
    try:
        f.read(100)
        result = unmount(mnt)
        assert result.startswith("detached") or result == "unmounted"
        assert not is_mounted(mnt)
    finally:
        f.close()
    pid = mounts.pids[mnt]
    deadline = time.monotonic() + 10
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("clear_by", ["umount", "mount"])
def test_dead_mount_is_cleared_by_umount(converted_plate, tmp_path, clear_by):
    """A daemon killed without auto_unmount's helper leaves 'Transport endpoint is not
    connected'; `vfsmount umount` clears it, and so does the next `vfsmount mount` there."""
    mnt = tmp_path / "dead"
    mnt.mkdir()
    proc = subprocess.Popen([os.sys.executable, "-c", f"""
import pyfuse3, trio
from backends.plates.plate import Plate
from vfsmount.fs import VfsOperations
from vfsmount.tree import build_tree
ops = VfsOperations(build_tree(Plate.open({str(converted_plate)!r})))
pyfuse3.init(ops, {str(mnt)!r}, {{"fsname=vfsmount-dead"}})
print("up", flush=True)
trio.run(pyfuse3.main)
"""], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.kill()
        proc.wait()
        with pytest.raises(OSError) as e:
            os.listdir(mnt)
        assert e.value.errno == errno.ENOTCONN
        if clear_by == "mount":
            from vfsmount.control import start_daemon
            start_daemon(converted_plate, mnt, log_file=tmp_path / "again.log")
            assert os.listdir(mnt / "images")
            unmount(mnt)
        else:       # (a folder that is not mounted is an error for `vfsmount umount`)
            res = run_cli("umount", str(mnt))
            assert "detached" in res.stdout or "unmounted" in res.stdout
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


# -- security ----------------------------------------------------------------------------

def test_symlinks_cannot_expose_outside_files(tmp_path, mounts):
    spec = PlateSpec(wells=("A01",), sites=1, channels=1, z=1, shape=(8, 8))
    root = make_imagexpress_plate(tmp_path / "p", spec, thumbnails=False)
    secret = tmp_path / "secret.tif"
    tifffile.imwrite(secret, np.full((8, 8), 9, np.uint8))
    os.symlink(secret, root / "escape.tif")
    os.symlink(tmp_path, root / "escape_dir")
    plate = Plate.open(root)
    # a tampered mapping pointing at the escaping symlink
    entry = dict(plate.entry("workspace"))
    entry["workspace_mapping"] = {**entry["workspace_mapping"], "B01_s001_w1_z001_t001.tif": "escape.tif"}
    entry["image_files"] = sorted(entry["workspace_mapping"])
    update_metadata(root, {"workspace": entry})
    mnt = mounts.mount(root)
    with pytest.raises(OSError) as e:
        (mnt / "workspace" / "B01_s001_w1_z001_t001.tif").read_bytes()
    assert e.value.errno == errno.EACCES
    assert "escape.tif" not in os.listdir(mnt / "original")
    assert "escape_dir" not in os.listdir(mnt / "original")
    assert "symbolic link; links are not followed" in mounts.log(mnt)


def test_readdir_of_300k_entries(tmp_path, mounts):
    root = tmp_path / "huge"
    root.mkdir()
    tifffile.imwrite(root / "one.tif", np.zeros((4, 4), np.uint8))
    names = [virtual_name(parse_virtual_name(f"A01_s{s:03d}_w1_z001_t001.tif"))
             for s in range(1, 300_001)]
    update_metadata(root, {"workspace": {
        "microscope_handler_name": "imagexpress", "image_files": names,
        "workspace_mapping": dict.fromkeys(names, "one.tif"),
        "available_backends": {"virtual_workspace": True}}}, main="workspace")
    mnt = mounts.mount(root)
    listed = os.listdir(mnt / "images")          # many readdir calls with increasing offsets
    assert len(listed) == 300_000 and len(set(listed)) == 300_000
    assert listed == names
    out = subprocess.run(f"ls -f {mnt / 'images'} | wc -l", shell=True, capture_output=True,
                         text=True, check=True).stdout
    assert int(out) == 300_000 + 2                # plus . and ..


def test_statfs(converted_plate, mounts):
    mnt = mounts.mount(converted_plate)
    st = os.statvfs(mnt)
    assert st.f_namemax == 255 and st.f_bsize >= 1 << 20


def test_mount_cli_errors(tmp_path):
    res = run_cli("mount", str(tmp_path / "nope"), str(tmp_path), check=False)
    assert res.returncode == 1 and "nope" in res.stderr
    res = run_cli("mount", str(tmp_path), str(tmp_path / "missing-mnt"), check=False)
    assert res.returncode == 1 and "does not exist" in res.stderr      # (issue 31: the true words)


def test_subdir_option(converted_plate, mounts):
    mnt = mounts.mount(converted_plate, "--subdir", "projection")
    assert sorted(os.listdir(mnt / "images")) == sorted(os.listdir(mnt / "projection"))
