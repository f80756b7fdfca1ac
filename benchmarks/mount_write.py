"""Writing through the mount's outputs/ area against baselines measured in the same run.

- `cp -r` of a folder of TIFFs into outputs/ (`--materialize disk`) vs `cp -r` to local disk,
  both followed by `sync` (close() commits by rename without waiting for the disk);
- the same with `--materialize zarr` vs writing the same planes with zarr directly in Python
  (decoded from the same TIFFs, one FILE chunk per plane, as the mount stores them).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import zarr

from backends.naming import ParsedName, parse_virtual_name
from backends.sample_plates import PlateSpec, make_imagexpress_plate, synthetic_image

from .common import drop_caches, mib_s, mounted, table

PLANE = (1024, 1024)


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


def timed_cp(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
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

        drop_caches(files)
        t_local = timed_cp(src, base / "local_copy")
        shutil.rmtree(base / "local_copy")
        with mounted(plate, base / "mnt", "--writable", "--materialize", "disk"):
            drop_caches(files)
            t_mount = timed_cp(src, base / "mnt" / "outputs" / "disk_copy")
        rows.append(("cp -r into outputs/ (disk) vs cp -r to local disk", f"{nbytes / 2**20:.0f} MiB",
                     mib_s(nbytes, t_local), mib_s(nbytes, t_mount), t_local / t_mount, ">= 0.7"))

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
                     mib_s(nbytes, t_direct), mib_s(nbytes, t_zmount), t_direct / t_zmount, ">= 0.6"))
        table(f"Writing {n} TIFFs of {PLANE[0]}x{PLANE[1]} uint16 through the mount "
              "(MiB/s; ratio = mount / baseline throughput)", rows,
              ("what", "data", "baseline MiB/s", "mount MiB/s", "ratio", "goal"))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "mnt")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
