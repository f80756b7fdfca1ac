"""Sequential reads through the mount against baselines measured in the same run.

- vendor files (32 of 8 MiB) through workspace/ vs `cat` of the same real files, cold and
  warm, with the default data path (kernel FUSE passthrough where available) and with
  passthrough forced off (`--no-passthrough`, the daemon serves every byte) -- issue 29;
- the same files through images/ (calibrated: a new first IFD, so other bytes than the
  vendor's; served by the daemon whatever the data path);
- synthesized TIFFs of a zarr store vs reading the same planes with zarr directly in Python.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from backends.plates.convert import convert_plate
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.config import ZarrConfig

from vfsmount.passthrough import FAST_LANE_SWITCH, fastlane_supported

from .common import cat, drop_caches, mib_s, mounted, table

ROUNDS = 3


@contextlib.contextmanager
def _environ(env: dict):
    """The daemon started inside sees ``env`` (the switches of vfsmount/passthrough.py)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def data_path(mnt: Path) -> str:
    """What the mount says it uses (its state file, as `vfsmount list` shows it)."""
    return state(mnt).get("data_path", "?")


def state(mnt: Path) -> dict:
    """The daemon's state file: data path and request counters (rewritten within 0.2 s of a
    change)."""
    from vfsmount.control import state_path
    for _ in range(100):
        try:
            return json.loads(state_path(mnt).read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    return {}


def daemon_cpu(pid: int) -> float:
    """CPU seconds the daemon's threads have run (schedstat: ns, unlike the 10 ms ticks of
    /proc/PID/stat); 0 where unavailable."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return total / 1e9


REQUESTS = ("lookup", "getattr", "open", "flush", "release", "read", "write")
# opens answered by pyfuse3's fast lane (no request reaches the daemon's Python)
FAST_OPENS = "fastlane_opens"


class PerFile:
    """What each file costs the mount, measured around one run of a command: wall time
    beyond the baseline's, the daemon's CPU time and the requests it served (load moves the
    first, hardly the others)."""

    def __init__(self) -> None:
        self.extra_us: list[float] = []
        self.cpu_us: list[float] = []
        self.requests: dict[str, list[float]] = {r: [] for r in (*REQUESTS, FAST_OPENS)}

    def measure(self, mnt: Path, pid: int, n: int, fn, baseline_s: float) -> float:
        time.sleep(0.4)                      # the state file catches up
        before, cpu = state(mnt), daemon_cpu(pid)
        took = _time(fn)
        cpu = daemon_cpu(pid) - cpu
        time.sleep(0.4)
        after = state(mnt)
        self.extra_us.append((took - baseline_s) / n * 1e6)
        self.cpu_us.append(cpu / n * 1e6)
        for r in (*REQUESTS, FAST_OPENS):
            key = r if r == FAST_OPENS else f"{r}_requests"
            self.requests[r].append((after.get(key, 0) - before.get(key, 0)) / n)
        return took

    def row(self, what: str) -> tuple:
        med = statistics.median
        reqs = " / ".join(f"{med(self.requests[r]):.1f}" for r in (*REQUESTS, FAST_OPENS))
        return (what, f"{med(self.extra_us):,.0f}", f"{med(self.cpu_us):,.0f}", reqs)


PER_FILE_HEADERS = ("what", "extra wall per file, us (median)", "daemon CPU per file, us",
                    "requests per file: " + " / ".join(r.upper() for r in REQUESTS)
                    + " / fast-lane OPEN")


def read_rounds(real: list[Path], virt: list[Path], mnt: Path, pid: int,
                per_file: dict[str, PerFile]) -> dict[str, list[float]]:
    """Cold and warm `cat` of the real files and of the mount's, side by side, ROUNDS times."""
    t: dict[str, list[float]] = {"cat_cold": [], "mnt_cold": [], "cat_warm": [], "mnt_warm": []}
    n = len(virt)
    for _ in range(ROUNDS):
        drop_caches(real + virt)
        t["cat_cold"].append(_time(lambda: cat(real)))
        drop_caches(real + virt)
        t["mnt_cold"].append(per_file["cold"].measure(mnt, pid, n, lambda: cat(virt),
                                                      t["cat_cold"][-1]))
        cat(real)
        cat(virt)
        t["cat_warm"].append(_time(lambda: cat(real)))
        t["mnt_warm"].append(per_file["warm"].measure(mnt, pid, n, lambda: cat(virt),
                                                      t["cat_warm"][-1]))
    return t


def run(args) -> None:
    n_wells = 2 if args.quick else 4        # 8 files of 8 MiB per well: 32 files, 256 MiB
    spec = PlateSpec(wells=tuple(f"A{i:02d}" for i in range(1, n_wells + 1)), sites=2, channels=2,
                     z=2, shape=(2048, 2048))
    base = Path(tempfile.mkdtemp(prefix="vfsbench-read-"))
    try:
        plate_dir = make_imagexpress_plate(base / "plate", spec, thumbnails=False, projections=False)
        plate = Plate.open(plate_dir)
        mapping = plate.entry("workspace")["workspace_mapping"]
        names = list(mapping)
        real = [plate_dir / mapping[n] for n in names]
        nbytes = sum(p.stat().st_size for p in real)
        size = f"{len(names)} x {nbytes / len(names) / 2**20:.0f} MiB"
        rows, ratio_rows, per_file_rows = [], [], []
        mnt = base / "mnt"
        for label, extra, env in (("default", [], {}),
                                  ("fast lane off", [], {FAST_LANE_SWITCH: "0"}),
                                  ("passthrough forced off", ["--no-passthrough"], {})):
            for folder in ("workspace", "images"):
                if folder == "images" and (extra or env):
                    continue        # images/ is served by the daemon either way
                if env and not fastlane_supported():
                    continue        # no fast lane in this pyfuse3: the default row is this one
                per_file = {"cold": PerFile(), "warm": PerFile()}
                with _environ(env), mounted(plate_dir, mnt, *extra) as pid:
                    path = data_path(mnt)
                    t = read_rounds(real, [mnt / folder / n for n in names], mnt, pid, per_file)
                for kind in ("cold", "warm"):
                    per_file_rows.append(per_file[kind].row(f"{folder}/, {kind}, {label}"))
                for kind, goal in (("cold", ">= 0.9"), ("warm", ">= 0.95")):
                    base_t, mnt_t = t[f"cat_{kind}"], t[f"mnt_{kind}"]
                    ratios = [b / m for b, m in zip(base_t, mnt_t)]
                    what = f"{folder}/, {kind}, {label} (data path: {path})"
                    if folder == "images":
                        what = f"images/ (calibrated: daemon), {kind}"
                    rows.append((what, size, mib_s(nbytes, statistics.median(base_t)),
                                 mib_s(nbytes, statistics.median(mnt_t)),
                                 statistics.median(ratios),
                                 f"{min(ratios):.2f}-{max(ratios):.2f}", goal))
        table(f"cat of {size} vendor TIFFs through the mount vs cat of the real files, {ROUNDS} "
              "rounds side by side (MiB/s medians; ratio = mount / cat throughput)", rows,
              ("what", "data", "cat MiB/s", "mount MiB/s", "ratio (median)", "ratio range",
               "bar (issue 29)"))
        by = {r[0]: r[4] for r in rows}
        for kind in ("cold", "warm"):
            on = next(v for k, v in by.items() if k.startswith(f"workspace/, {kind}, default"))
            off = next(v for k, v in by.items() if k.startswith(f"workspace/, {kind}, passthrough forced off"))
            ratio_rows.append((f"workspace/, {kind}", off, on, on / off))
        table("Passthrough vs forced off (ratios to cat of the same run)", ratio_rows,
              ("what", "forced off", "default", "default / forced off"))
        table(f"What each of the {len(names)} files costs the mount (medians of {ROUNDS} rounds; "
              "daemon CPU from schedstat; requests from the daemon's counters)", per_file_rows,
              PER_FILE_HEADERS)
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (2-core machine)")
        rows = []

        for strategy in (("file",) if args.quick else ("file", "well")):
            convert_plate(plate_dir, config=ZarrConfig(chunk_strategy=strategy), overwrite=True,
                          progress=False)
            zplate = Plate.open(plate_dir)
            backend = zplate.backend()
            import zarr
            refs = [backend.index.files[n] for n in names]     # the baseline reads zarr itself
            arrays = {}

            def zarr_direct() -> None:
                for ref in refs:
                    arr = arrays.get(ref.array)
                    if arr is None:
                        arr = arrays[ref.array] = zarr.open_array(plate_dir / "zarr" / ref.array, mode="r")
                    np.ascontiguousarray(arr[ref.index]).tobytes()

            chunk_files = [p for p in (plate_dir / "zarr").rglob("*") if p.is_file()]
            with mounted(plate_dir, mnt):
                virt = [mnt / "images" / n for n in names]
                tiff_bytes = sum(os.stat(p).st_size for p in virt)
                drop_caches(chunk_files + virt)
                t_direct = _time(zarr_direct)
                arrays.clear()
                drop_caches(chunk_files + virt)
                t_mount = _time(lambda: cat(virt))
            plane_bytes = sum(int(np.prod(spec.shape)) * 2 for _ in names)
            rows.append((f"zarr-backed TIFF ({strategy} chunks)", f"{tiff_bytes / 2**20:.0f} MiB",
                         mib_s(plane_bytes, t_direct), mib_s(tiff_bytes, t_mount),
                         t_direct / t_mount, ">= 0.7"))
        table("Sequential read through the mount (MiB/s; ratio = mount / baseline throughput)", rows,
              ("what", "data", "baseline MiB/s", "mount MiB/s", "ratio", "goal"))
        print("baselines: `cat` of the real files (pass-through); zarr.open_array()[t, c, z] "
              "in Python for every plane (zarr).")
    finally:
        for m in (base / "mnt",):
            subprocess.run(["fusermount3", "-u", "-z", str(m)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
