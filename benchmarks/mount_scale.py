"""Mount ready time and daemon memory for plates of 300,000 and (simulated) 1,000,000 images.

The plate is nested like an ImageXpress export: ``TimePoint_1/ZStep_N/`` folders of empty
vendor-named files (made with mknod, so creating a million costs seconds, not minutes), mapped
by ``openhcs_metadata.json`` onto flat names. "Simulated" means the files are empty: the
mount never reads pixels to list them. Ready time is from starting the daemon to the mount
being live (what `vfsmount mount` waits for), and the CPU seconds the daemon spent until then
(steadier than wall time on a busy machine); RSS is the daemon's resident memory when ready
and after `ls -l` of every image. Baseline in the same run: `ls -l` of the same number of
real files (one ZStep folder is listed per source directory, all of them in total).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from backends.plates.metadata import update_metadata
from backends.naming import ParsedName, virtual_name
from vfsmount.control import start_daemon, unmount

from .common import table

PER_FOLDER = 10_000


def make_plate(root: Path, n: int) -> list[Path]:
    """n empty source files in ZStep folders of PER_FOLDER files; returns the folders."""
    mapping: dict[str, str] = {}
    folders = []
    for i in range(n):
        z, j = divmod(i, PER_FOLDER)
        if j == 0:
            folder = root / "TimePoint_1" / f"ZStep_{z + 1}"
            folder.mkdir(parents=True)
            folders.append(folder)
        well = f"{chr(65 + j // 24 % 16)}{j % 24 + 1:02d}"
        site = j // 384 + 1
        src = f"Plate_{well}_s{site}_w1.tif"
        os.mknod(folder / src)
        mapping[virtual_name(ParsedName(well, site, 1, z + 1, 1))] = \
            f"TimePoint_1/ZStep_{z + 1}/{src}"
    update_metadata(root, {"workspace": {
        "microscope_handler_name": "imagexpress", "image_files": list(mapping),
        "workspace_mapping": mapping, "available_backends": {"virtual_workspace": True}}},
        main="workspace")
    return folders


def ls_l(*paths: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["ls", "-l", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def measure(plate: Path, mnt: Path, folders: list[Path]) -> tuple:
    ls_l(*folders)                                   # warm the real folders' dentries
    t_real = min(ls_l(*folders) for _ in range(2))
    t0 = time.perf_counter()
    pid, _log = start_daemon(plate, mnt, log_level="WARNING")
    t_ready = time.perf_counter() - t0
    try:
        proc = psutil.Process(pid)
        rss_ready = proc.memory_info().rss
        cpu_ready = sum(proc.cpu_times()[:2])
        t_first = ls_l(mnt / "images")
        t_again = ls_l(mnt / "images")
        rss_after = proc.memory_info().rss
    finally:
        unmount(mnt)
    return t_ready, cpu_ready, rss_ready, rss_after, t_real, t_first, t_again


def run(args) -> None:
    sizes = [(30_000, "2 s, 200 MB"), (100_000, "5 s, 500 MB")] if args.quick else \
        [(300_000, "2 s, 200 MB"), (1_000_000, "5 s, 500 MB")]
    ready_rows, ls_rows = [], []
    for n, goal in sizes:
        base = Path(tempfile.mkdtemp(prefix="vfsbench-scale-"))
        mnt = base / "mnt"
        mnt.mkdir()
        try:
            folders = make_plate(base / "plate", n)
            os.sync()
            t_ready, cpu_ready, rss_ready, rss_after, t_real, t_first, t_again = measure(
                base / "plate", mnt, folders)
            ready_rows.append((f"{n:,}", f"{t_ready:.2f} s", f"{cpu_ready:.2f} s",
                               f"{rss_ready / 2**20:.0f} MB",
                               f"{rss_after / 2**20:.0f} MB", f"< {goal}"))
            ls_rows.append((f"{n:,}", t_real, t_first, t_first / t_real, t_again,
                            t_again / t_real))
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            shutil.rmtree(base, ignore_errors=True)
    table("Mount of a nested plate, default options (ready = daemon started to mount live)",
          ready_rows, ("images", "ready time", "daemon CPU until ready", "daemon RSS when ready",
                       "daemon RSS after ls -l of all", "goal"))
    table("ls -l of all images vs ls -l of the same real files (seconds; ratio = mount / real)",
          ls_rows, ("images", "real files", "mount first", "ratio", "mount again", "ratio"))
