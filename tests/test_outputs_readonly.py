"""A mount without --writable changes nothing anywhere (issue 32 A, B, F; issue 31 #1, #10).

The acceptance test takes a checksum (content, names, modes) of the plate and of the
daemon's working directory before and after a session of every write-like operation, with
Python calls (exact errno) and with the shell tools a user types.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate

SPEC = PlateSpec(wells=("A01",), sites=1, channels=2, z=1, shape=(32, 48))
PLANE = "A01_s001_w1_z001_t001.tif"


@pytest.fixture
def plate(tmp_path):
    p = make_imagexpress_plate(tmp_path / "plate", SPEC, thumbnails=False, projections=False)
    Plate.open(p)               # its metadata exists before any checksum
    return p


def tree_checksum(root: Path) -> str:
    """Names, modes, sizes and content of everything under ``root`` (links not followed)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)}\0{st.st_mode:o}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(Path(path).read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
    return h.hexdigest()


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _errno(action) -> int:
    try:
        action()
    except OSError as e:
        return e.errno
    return 0


def _python_session(mnt: Path, src: Path) -> dict[str, int]:
    """Every write-like call, on outputs/ (existing file, empty folder, zarr plane, new
    names) and on the read-only rest of the tree; the errno each one got (0: it worked)."""
    out = mnt / "outputs"
    img = next((mnt / "images").iterdir())
    ops = {
        "create": lambda: open(out / "new.txt", "x").close(),
        "open O_WRONLY|O_TRUNC": lambda: open(out / "keep.txt", "w").close(),
        "open O_APPEND": lambda: open(out / "keep.txt", "a").close(),
        "open O_RDWR": lambda: open(out / "keep.txt", "r+b").close(),
        "mkdir": lambda: os.mkdir(out / "newdir"),
        "mkdir in subfolder": lambda: os.mkdir(out / "sub" / "newdir"),
        "rmdir": lambda: os.rmdir(out / "emptydir"),
        "unlink": lambda: os.unlink(out / "keep.txt"),
        "unlink zarr plane": lambda: os.unlink(out / "seg" / PLANE),
        "unlink in subfolder": lambda: os.unlink(out / "sub" / "data.csv"),
        "rename file": lambda: os.rename(out / "keep.txt", out / "moved.txt"),
        "rename folder": lambda: os.rename(out / "emptydir", out / "moved"),
        "truncate": lambda: os.truncate(out / "keep.txt", 0),
        "chmod": lambda: os.chmod(out / "keep.txt", 0o600),
        "chmod folder": lambda: os.chmod(out / "sub", 0o700),
        "chown": lambda: os.chown(out / "keep.txt", os.getuid(), os.getgid()),
        "utime": lambda: os.utime(out / "keep.txt", (1, 1)),
        "link": lambda: os.link(out / "keep.txt", out / "hard.txt"),
        "symlink": lambda: os.symlink(src, out / "sym"),
        "setxattr": lambda: os.setxattr(out / "keep.txt", "user.k", b"v"),
        "mkfifo": lambda: os.mkfifo(out / "fifo"),
        "mknod": lambda: os.mknod(out / "node", 0o644 | stat.S_IFREG),
        "create in images/": lambda: open(mnt / "images" / "x.txt", "x").close(),
        "write image": lambda: open(img, "r+b").close(),
        "unlink image": lambda: os.unlink(img),
        "mkdir at top": lambda: os.mkdir(mnt / "newtop"),
        "rename image": lambda: os.rename(img, mnt / "images" / "y.tif"),
    }
    return {name: _errno(action) for name, action in ops.items()}


def _shell_session(mnt: Path, src: Path) -> dict[str, tuple[int, str]]:
    out = mnt / "outputs"
    cmds = {
        "touch": f"touch {out}/t.txt",
        "echo >": f"echo hi > {out}/e.txt",
        "echo > existing": f"echo hi > {out}/keep.txt",
        "cp": f"cp {src} {out}/c.txt",
        "mkdir": f"mkdir {out}/m",
        "rmdir": f"rmdir {out}/emptydir",
        "rm": f"rm -f {out}/keep.txt",
        "rm -r": f"rm -rf {out}/sub",
        "mv": f"mv {out}/keep.txt {out}/mv.txt",
        "truncate": f"truncate -s 0 {out}/keep.txt",
        "chmod": f"chmod 600 {out}/keep.txt",
        "chown": f"chown {os.getuid()}:{os.getgid()} {out}/keep.txt",
        "ln": f"ln {out}/keep.txt {out}/h.txt",
        "ln -s": f"ln -s {src} {out}/s",
        "setfattr": f"setfattr -n user.k -v v {out}/keep.txt",
        "mkfifo": f"mkfifo {out}/f",
        "mknod": f"mknod {out}/p p",
    }
    results = {}
    for name, cmd in cmds.items():
        res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60)
        results[name] = (res.returncode, res.stderr.strip())
    return results


def _prepare_outputs(plate: Path, mounts) -> None:
    """outputs/ as a user leaves it: a file, an empty folder, a subfolder, zarr planes."""
    mnt = mounts.mount(plate, "--writable", "--materialize", "zarr", name="writer")
    out = mnt / "outputs"
    (out / "keep.txt").write_text("keep me")
    (out / "emptydir").mkdir()
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (out / "seg").mkdir()
    tifffile.imwrite(out / "seg" / PLANE, np.full((32, 48), 9, np.uint16))
    from vfsmount.control import unmount
    unmount(mnt)


def test_read_only_mount_changes_nothing_anywhere(plate, mounts, tmp_path, monkeypatch):
    _prepare_outputs(plate, mounts)
    cwd = tmp_path / "cwd"               # the daemon's working directory (issue 32 B)
    cwd.mkdir()
    (cwd / "unrelated.txt").write_text("x")
    src = tmp_path / "src.txt"
    src.write_text("data")
    monkeypatch.chdir(cwd)
    before = tree_checksum(plate), tree_checksum(cwd), listing(plate), listing(cwd)
    mnt = mounts.mount(plate)
    assert (mnt / "outputs" / "seg" / PLANE).is_file() and (mnt / "outputs" / "keep.txt").is_file()
    got = _python_session(mnt, src)
    assert listing(cwd) == before[3], "files created in the daemon's working directory"
    root_ok = {errno.EROFS} | ({errno.EACCES, errno.EPERM} if os.geteuid() != 0 else set())
    wrong = {name: (os.strerror(e) if e else "succeeded") for name, e in got.items()
             if e not in root_ok}
    assert wrong == {}, f"write-like calls not refused with EROFS: {wrong}"
    shell = _shell_session(mnt, src)
    wrong = {name: r for name, r in shell.items()
             if r[0] == 0 or "Read-only file system" not in r[1]}
    assert wrong == {}, f"shell commands not refused with EROFS: {wrong}"
    assert (mnt / "outputs" / "keep.txt").read_text() == "keep me"
    assert tifffile.imread(mnt / "outputs" / "seg" / PLANE).max() == 9
    from vfsmount.control import unmount
    unmount(mnt)
    after = tree_checksum(plate), tree_checksum(cwd), listing(plate), listing(cwd)
    assert after[2] == before[2] and after[3] == before[3], "names changed"
    assert after == before, "the plate or the daemon's working directory changed"


def test_outputs_folder_absent_is_an_empty_read_only_folder(plate, mounts):
    """Issue 31 #10: outputs/ is in every local mount; nothing is created on disk for it."""
    assert not (plate / "outputs").exists()
    before = tree_checksum(plate)
    mnt = mounts.mount(plate)
    out = mnt / "outputs"
    assert "outputs" in os.listdir(mnt)
    assert os.listdir(out) == []
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o555
    assert _errno(lambda: os.mkdir(out / "x")) == errno.EROFS
    assert _errno(lambda: open(out / "x.txt", "w")) == errno.EROFS
    assert tree_checksum(plate) == before
    assert not (plate / "outputs").exists() and not (plate / ".vfsmount-staging").exists()
    (plate / "outputs").mkdir()                 # made outside the mount: seen from now on
    (plate / "outputs" / "late.txt").write_text("late")
    assert os.listdir(out) == ["late.txt"]
    assert (out / "late.txt").read_text() == "late"


def test_del_is_refused_in_names_like_other_control_characters(plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    out = mnt / "outputs"
    for name in ("del\x7f.txt", "bell\x07.txt"):
        assert _errno(lambda: (out / name).write_text("x")) == errno.EPERM
        assert _errno(lambda: (out / name).mkdir()) == errno.EPERM
    (out / "ok.txt").write_text("x")
    assert _errno(lambda: os.rename(out / "ok.txt", out / "ok\x7f.txt")) == errno.EPERM
    assert sorted(os.listdir(plate / "outputs")) == ["ok.txt"]


def test_flush_of_a_tiff_still_being_written_logs_no_error(plate, mounts):
    """Issue 31 #1: tifffile (numpy's tofile through a dup) closes a dup before the file is
    complete; that flush is normal. Only a real loss is an ERROR, naming the file."""
    mnt = mounts.mount(plate, "--writable")
    (mnt / "outputs" / "smoothed").mkdir()
    name = "outputs/smoothed/A01_s001_w4_smooth.tif"
    data = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    tifffile.imwrite(mnt / name, data)
    assert np.array_equal(tifffile.imread(plate / name), data)
    log = mounts.log(mnt)
    assert f"committed {name}" in log
    assert [line for line in log.splitlines() if " ERROR " in line] == []
    broken = mnt / "outputs" / "smoothed" / "broken.tif"   # a real loss: still an ERROR
    fd = os.open(broken, os.O_WRONLY | os.O_CREAT)
    os.write(fd, b"II*\x00" + b"\x00" * 100)
    try:
        os.close(fd)
    except OSError as e:
        assert e.errno == errno.EINVAL
    deadline = time.monotonic() + 10         # the kernel's RELEASE comes after close()
    while time.monotonic() < deadline and " ERROR " not in mounts.log(mnt):
        time.sleep(0.05)
    errors = [line for line in mounts.log(mnt).splitlines() if " ERROR " in line]
    assert errors and all("broken.tif" in line for line in errors)
    assert not (plate / "outputs" / "smoothed" / "broken.tif").exists()
