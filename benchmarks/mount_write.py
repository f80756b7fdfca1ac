"""Writing through the mount's outputs/ area against baselines measured in the same run.

- `cp -r` of a folder of TIFFs into outputs/ (`--materialize disk`) vs `cp -r` to local disk,
  both followed by `sync` (close() commits by rename without waiting for the disk), with the
  default data path (new files are written by kernel FUSE passthrough straight into their
  staging files) and with passthrough forced off (issue 29);
- the same with `--materialize zarr` vs writing the same planes with zarr directly in Python
  (decoded from the same TIFFs, one FILE chunk per plane, as the mount stores them).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from backends.naming import ParsedName, parse_virtual_name
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate, synthetic_image

from .common import drop_caches, mib_s, mounted, table
from .mount_read import PER_FILE_HEADERS, PerFile, data_path

PLANE = (1024, 1024)
ROUNDS = 3


def make_sources(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    bases = [synthetic_image(ParsedName("A01", 1, c + 1, 1), PLANE) for c in range(4)]
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        p = ParsedName(f"A{i // 64 + 1:02d}", i // 16 % 4 + 1, i // 8 % 2 + 1, i % 8 + 1)
        f = folder / p.virtual_name()
        tifffile.imwrite(f, bases[i % 4] + rng.integers(0, 24, PLANE, dtype=np.uint16))
        files.append(f)
    return files


def zarr_direct(files: list[Path], store: Path) -> None:
    """The baseline: decode each TIFF and assign it to a FILE-chunked array per field."""
    root = zarr.open_group(store, mode="w", zarr_format=2)
    arrays = {}
    for f in files:
        p = parse_virtual_name(f.name)
        key = (p.well, p.site)
        arr = arrays.get(key)
        if arr is None:
            arr = arrays[key] = root.create_array(f"{p.well}_{p.site}", shape=(1, 2, 8, *PLANE),
                                                  chunks=(1, 1, 1, *PLANE), dtype="uint16",
                                                  compressors=_blosc())
        arr[0, p.channel - 1, p.z - 1] = tifffile.imread(f)


def _blosc():
    import numcodecs
    return numcodecs.Blosc(cname="zstd", clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE)


SYNC_S: list[float] = []    # the `sync` part of each timed_cp (the rest is the copy itself)


def timed_cp(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    copied = time.perf_counter()
    subprocess.run(["sync"], check=True)
    SYNC_S.append(time.perf_counter() - copied)
    return time.perf_counter() - t


def run(args) -> None:
    n = 32 if args.quick else 128                 # 128 x 2 MiB = 256 MiB (issue 20)
    base = Path(tempfile.mkdtemp(prefix="vfsbench-write-"))
    try:
        plate = make_imagexpress_plate(base / "plate", PlateSpec(wells=("A01",), sites=1, channels=1,
                                                                 z=1, shape=(16, 16)),
                                       thumbnails=False, projections=False)
        src = base / "src"
        files = make_sources(src, n)
        nbytes = sum(f.stat().st_size for f in files)
        rows = []

        local, mount = {"default": [], "passthrough forced off": []}, {"default": [], "passthrough forced off": []}
        paths, per_file = {}, {label: PerFile() for label in local}
        syncs = {(side, label): [] for side in ("local", "mount") for label in local}
        for _ in range(ROUNDS):          # side by side: the machine's load drifts
            for label, extra in (("default", []), ("passthrough forced off", ["--no-passthrough"])):
                drop_caches(files)
                local[label].append(timed_cp(src, base / "local_copy"))
                syncs["local", label].append(SYNC_S[-1])
                shutil.rmtree(base / "local_copy")
                mnt = base / "mnt"
                with mounted(plate, mnt, "--writable", "--materialize", "disk", *extra) as pid:
                    paths[label] = data_path(mnt)
                    drop_caches(files)
                    mount[label].append(per_file[label].measure(
                        mnt, pid, n, lambda: timed_cp(src, mnt / "outputs" / "disk_copy"),
                        local[label][-1]))
                    syncs["mount", label].append(SYNC_S[-1])
                shutil.rmtree(plate / "outputs" / "disk_copy")
        ratio = {}
        for label in local:
            ratios = [a / b for a, b in zip(local[label], mount[label])]
            ratio[label] = statistics.median(ratios)
            rows.append((f"cp -r into outputs/ (disk) vs cp -r to local disk, {label} "
                         f"(data path: {paths[label]})", f"{nbytes / 2**20:.0f} MiB",
                         mib_s(nbytes, statistics.median(local[label])),
                         mib_s(nbytes, statistics.median(mount[label])), ratio[label],
                         f"{min(ratios):.2f}-{max(ratios):.2f}", ">= 0.7"))

        drop_caches(files)
        t = time.perf_counter()
        zarr_direct(files, base / "direct.zarr")
        subprocess.run(["sync"], check=True)
        t_direct = time.perf_counter() - t
        with mounted(plate, base / "mnt", "--writable", "--materialize", "zarr"):
            (base / "mnt" / "outputs" / "zcopy").mkdir()
            drop_caches(files)
            t = time.perf_counter()
            subprocess.run(f"cp {src}/*.tif {base / 'mnt' / 'outputs' / 'zcopy'}/", shell=True, check=True)
            subprocess.run(["sync"], check=True)
            t_zmount = time.perf_counter() - t
        rows.append(("cp into outputs/ (zarr) vs zarr written directly", f"{nbytes / 2**20:.0f} MiB",
                     mib_s(nbytes, t_direct), mib_s(nbytes, t_zmount), t_direct / t_zmount, "-",
                     ">= 0.6"))
        table(f"Writing {n} TIFFs of {PLANE[0]}x{PLANE[1]} uint16 through the mount, each `cp` "
              f"followed by `sync`, {ROUNDS} rounds (MiB/s medians; ratio = mount / baseline "
              "throughput)", rows,
              ("what", "data", "baseline MiB/s", "mount MiB/s", "ratio (median)", "ratio range",
               "goal"))
        table(f"What each of the {n} files costs the mount (cp -r into outputs/, disk; medians "
              f"of {ROUNDS} rounds)", [per_file[label].row(label) for label in per_file],
              PER_FILE_HEADERS)
        med = statistics.median
        table("Where the time of `cp -r` + `sync` goes (s, medians): the copy, then the `sync` "
              "that writes what the copy left dirty", [
                  (label, f"{med(local[label]) - med(syncs['local', label]):.2f}",
                   f"{med(syncs['local', label]):.2f}",
                   f"{med(mount[label]) - med(syncs['mount', label]):.2f}",
                   f"{med(syncs['mount', label]):.2f}") for label in local],
              ("what", "local: copy", "local: sync", "mount: copy", "mount: sync"))
        print(f"load average at the end: {os.getloadavg()[0]:.2f} (2-core machine)")
        table("Passthrough vs forced off (ratios to the local cp of the same run)",
              [("cp -r into outputs/ (disk)", ratio["passthrough forced off"], ratio["default"],
                ratio["default"] / ratio["passthrough forced off"])],
              ("what", "forced off", "default", "default / forced off"))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "mnt")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
