"""`ls -l` of 100,000 images of a nested plate vs `ls -l` of the same 100,000 real files.

The plate is nested like an ImageXpress export (``TimePoint_1/ZStep_N/``, 10,000 files per
folder, see mount_scale.make_plate); its mapping gives every source a flat name, so both
listings stat the same files. Baseline: `ls -l` of all the real folders at once, warm.
"First" is the first `ls -l` on a fresh mount (the daemon stats every source then), the
median of three mounts; "again" the best of three on the same mount. Default options
(folders that cannot change while mounted have their listings cached by the kernel,
cache_readdir), `--no-passthrough` (no data path change for listings: it must not be
slower), and `--xattrs` for comparison.
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import psutil

from vfsmount.control import start_daemon, unmount

from .common import table
from .mount_scale import ls_l, make_plate


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def listings(plate: Path, mnt: Path, extra: list[str], mounts: int) -> tuple[list[float], float,
                                                                           float]:
    """First-listing times (one per fresh mount), the best repeated listing, and the daemon's
    CPU seconds for the first listing (median): on a busy machine wall times swing, CPU less."""
    firsts, again, cpu = [], float("inf"), []
    for _ in range(mounts):
        pid, _log = start_daemon(plate, mnt, log_level="WARNING", extra_args=extra)
        try:
            daemon = psutil.Process(pid)
            before = cpu_seconds(daemon)
            firsts.append(ls_l(mnt / "images"))
            cpu.append(cpu_seconds(daemon) - before)
            again = min(again, *(ls_l(mnt / "images") for _ in range(3)))
        finally:
            unmount(mnt)
    return firsts, again, statistics.median(cpu)


def ls_cpu(*paths: Path) -> float:
    """CPU seconds `ls -l` itself spends (user + system)."""
    before = os.times()
    ls_l(*paths)
    after = os.times()
    return (after.children_user - before.children_user) + \
        (after.children_system - before.children_system)


def run(args) -> None:
    n = 20_000 if args.quick else 100_000
    base = Path(tempfile.mkdtemp(prefix="vfsbench-ls-"))
    mnt = base / "mnt"
    mnt.mkdir()
    try:
        folders = make_plate(base / "plate", n)
        ls_l(*folders)                                   # warm the real folders' dentries
        t_real = min(ls_l(*folders) for _ in range(3))
        real_cpu = min(ls_cpu(*folders) for _ in range(3))
        rows = []
        again_by = {}
        for label, extra, mounts in (("default options", [], 3),
                                     ("passthrough forced off", ["--no-passthrough"], 1),
                                     ("--xattrs", ["--xattrs"], 1)):
            firsts, again, cpu = listings(base / "plate", mnt, extra, mounts)
            first = statistics.median(firsts)
            spread = f" ({min(firsts):.2f}-{max(firsts):.2f})" if len(firsts) > 1 else ""
            rows.append((f"{label}: first listing{spread}", t_real, first, first / t_real,
                         "<= 2.0 (compass 1.3)"))
            rows.append((f"{label}: daemon CPU of the first listing vs CPU of `ls -l` of the "
                         f"real files", real_cpu, cpu, cpu / real_cpu, "—"))
            rows.append((f"{label}: again", t_real, again, again / t_real,
                         "<= 1.05 (issue 29)"))
            again_by[label] = again / t_real
        table(f"ls -l of {n:,} images of a nested plate vs {n:,} real files "
              f"(seconds; ratio = mount / real)", rows, ("what", "real files", "mount", "ratio",
                                                         "goal"))
        table("ls -l again: default (cached listings) vs passthrough forced off (ratios to the "
              "real files of the same run)",
              [("again", again_by["passthrough forced off"], again_by["default options"],
                again_by["default options"] / again_by["passthrough forced off"])],
              ("what", "forced off", "default", "default / forced off"))
        print("With --xattrs every `ls -l` asks each file for security.selinux and an ACL, each "
              "a daemon round trip the kernel does not cache; by default the daemon answers "
              "ENOSYS once and the kernel stops asking.")
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
