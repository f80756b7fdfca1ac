"""`ls -l` of 100,000 virtual images vs 100,000 real files; mount ready time and daemon RSS.

The real files are small TIFF stand-ins in one flat folder; the plate maps 100,000
virtual names onto them, so both listings stat the same number of real files.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from backends.metadata import update_metadata
from backends.naming import ParsedName, virtual_name
from vfsmount.control import start_daemon, unmount

from .common import table


def ls_l(path: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ls", "-l", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def run(args) -> None:
    n = 20_000 if args.quick else 100_000
    base = Path(tempfile.mkdtemp(prefix="vfsbench-ls-"))
    mnt = base / "mnt"
    mnt.mkdir()
    try:
        plate = base / "plate"
        real = plate / "flat"
        real.mkdir(parents=True)
        names = []
        mapping = {}
        for i in range(n):
            p = ParsedName(f"{chr(65 + i // 24 % 16)}{i % 24 + 1:02d}", i // 384 + 1, 1, 1, 1)
            name = virtual_name(p)
            names.append(name)
            (real / f"src_{i}.tif").write_bytes(b"II*\x00" + bytes(60))
            mapping[name] = f"flat/src_{i}.tif"
        names.sort()
        update_metadata(plate, {"workspace": {
            "microscope_handler_name": "imagexpress", "image_files": names,
            "workspace_mapping": mapping, "available_backends": {"virtual_workspace": True}}},
            main="workspace")
        ls_l(real)                                       # warm the real directory's dentries
        t_real = min(ls_l(real) for _ in range(3))
        rows, mount_rows = [], []
        for label, extra in (("with xattrs (default)", []), ("--no-xattrs", ["--no-xattrs"])):
            t0 = time.perf_counter()
            pid, _log = start_daemon(plate, mnt, log_level="WARNING", extra_args=extra)
            t_ready = time.perf_counter() - t0
            try:
                rss_ready = psutil.Process(pid).memory_info().rss
                t_first = ls_l(mnt / "images")
                t_again = min(ls_l(mnt / "images") for _ in range(3))
                rss_after = psutil.Process(pid).memory_info().rss
            finally:
                unmount(mnt)
            rows.append((f"{label}: first listing", t_real, t_first, t_first / t_real, "<= 1.3"))
            rows.append((f"{label}: again", t_real, t_again, t_again / t_real, "<= 1.3"))
            mount_rows.append((label, f"{t_ready:.2f} s", f"{rss_ready / 2**20:.0f} MB",
                               f"{rss_after / 2**20:.0f} MB"))
        table(f"ls -l of {n:,} virtual images vs {n:,} real files (seconds; ratio = mount / real)",
              rows, ("what", "real files", "mount", "ratio", "goal"))
        table(f"Mount of a {n:,}-image plate (goals: ready < 2 s, RSS < 200 MB)", mount_rows,
              ("mode", "ready time", "daemon RSS when ready", "daemon RSS after ls -l of all"))
        print("ls -l asks every file for security.selinux and ACL xattrs; with xattrs enabled each "
              "is a round trip to the daemon (answered ENODATA), with --no-xattrs the kernel stops asking.")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
