"""OME-Zarr conversion and reads, each against a baseline measured in the same run.

- conversion throughput vs `cp -r` of the source plate;
- store size vs source size for each compressor;
- `load_batch` of a whole well and random single-plane reads, WELL vs FILE chunking;
- peak memory of a conversion (a subprocess's max RSS) vs the plate's size.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from backends.naming import ParsedName, virtual_name
from backends.plates.plate import Plate
from backends.plates.sample_plates import synthetic_image

from .common import drop_caches, mib_s, table

PLANE = (1024, 1024)


def make_plate(root: Path, size_gb: float) -> tuple[int, list[str]]:
    """An ImageXpress-style plate (ZStep_N folders) of uint16 planes totalling ``size_gb``."""
    plane_bytes = PLANE[0] * PLANE[1] * 2
    n = max(64, int(size_gb * 2**30 / plane_bytes))
    sites, channels, zs = 4, 2, 8
    wells = -(-n // (sites * channels * zs))
    bases = [synthetic_image(ParsedName("A01", 1, c % 2 + 1, c + 1), PLANE) for c in range(8)]
    rng = np.random.default_rng(0)
    names = []
    made = 0
    for w in range(wells):
        well = f"{chr(65 + w // 12)}{w % 12 + 1:02d}"
        for s in range(1, sites + 1):
            for c in range(1, channels + 1):
                for z in range(1, zs + 1):
                    img = bases[(w + s + c + z) % 8] + rng.integers(0, 24, PLANE, dtype=np.uint16)
                    folder = root / f"ZStep_{z}"
                    folder.mkdir(parents=True, exist_ok=True)
                    tifffile.imwrite(folder / f"Bench_{well}_s{s}_w{c}.tif", img)
                    names.append(virtual_name(ParsedName(well, s, c, z, 1)))
                    made += 1
    return made * plane_bytes, names


def convert_subprocess(plate: Path, *args: str) -> tuple[float, int]:
    """Run `vfsmount convert` in a child; return (seconds, peak RSS bytes of the child)."""
    code = ("import resource, sys, time; from vfsmount.cli import main; t = time.perf_counter(); "
            "rc = main(['convert', *sys.argv[1:], '--no-progress']); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); "
            "sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, str(plate), *args], capture_output=True,
                         text=True, check=True)
    seconds, rss = res.stdout.strip().splitlines()[-1].split()
    return float(seconds), int(rss)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(args) -> None:
    size_gb = 0.25 if args.quick else args.size_gb
    base = Path(tempfile.mkdtemp(prefix="vfsbench-zarr-"))
    try:
        plate = base / "plate"
        raw_bytes, names = make_plate(plate, size_gb)
        Plate.open(plate)
        if getattr(args, "memory_only", False):
            seconds, peak = convert_subprocess(plate)
            table("Conversion peak memory", [(f"{raw_bytes / 2**30:.2f} GiB", f"{peak / 2**20:.0f} MiB",
                                              f"{peak / raw_bytes:.3f}", f"{mib_s(raw_bytes, seconds):.0f}")],
                  ("plate size", "peak RSS of `vfsmount convert`", "peak / plate", "MiB/s"))
            return
        source_bytes = du(plate)
        src_files = [p for p in plate.rglob("*.tif")]

        drop_caches(src_files)
        t = time.perf_counter()
        subprocess.run(["cp", "-r", str(plate), str(base / "copy")], check=True)
        t_cp = time.perf_counter() - t
        shutil.rmtree(base / "copy")

        conv_rows, size_rows = [], []
        for comp in ("zstd", "lz4", "zlib", "none"):
            drop_caches(src_files)
            seconds, rss = convert_subprocess(plate, "--overwrite", "--compressor", comp)
            store = du(plate / "zarr")
            size_rows.append((comp, f"{source_bytes / 2**20:.0f} MiB", f"{store / 2**20:.0f} MiB",
                              store / source_bytes))
            if comp == "zstd":
                conv_rows.append(("convert (WELL, zstd-1)", mib_s(raw_bytes, t_cp),
                                  mib_s(raw_bytes, seconds), t_cp / seconds))
                peak = rss

        read_rows = []
        by_well: dict[str, list[str]] = {}
        for n in names:
            by_well.setdefault(n[:3], []).append(n)
        wells = list(by_well)
        rnd = random.Random(1)
        singles = [rnd.choice(names) for _ in range(64)]
        results = {}
        for strategy in ("well", "file"):
            convert_subprocess(plate, "--overwrite", "--chunk-strategy", strategy)
            chunk_files = [p for p in (plate / "zarr").rglob("*") if p.is_file()]
            backend = Plate.open(plate).backend()
            drop_caches(chunk_files)
            t = time.perf_counter()
            for w in wells[:4]:
                backend.load_batch(by_well[w])
            t_batch = (time.perf_counter() - t) / min(4, len(wells))
            from backends.ngff.backend import ZarrStorageBackend
            fresh = ZarrStorageBackend(plate / "zarr", cache_bytes=0)   # no decoded-plane cache
            drop_caches(chunk_files)
            t = time.perf_counter()
            for n in singles:
                fresh.load(n)
            t_single = (time.perf_counter() - t) / len(singles)
            results[strategy] = (t_batch, t_single)
        well_planes = len(by_well[wells[0]])
        for strategy, (t_batch, t_single) in results.items():
            read_rows.append((strategy.upper(), f"{t_batch * 1000:.0f} ms", f"{t_single * 1000:.1f} ms"))
        read_rows.append(("FILE / WELL time", f"{results['file'][0] / results['well'][0]:.2f}x",
                          f"{results['file'][1] / results['well'][1]:.2f}x"))

        table(f"Conversion of a {raw_bytes / 2**30:.2f} GiB plate ({len(names)} planes of "
              f"{PLANE[0]}x{PLANE[1]} uint16) vs cp -r (MiB/s of pixel data)", conv_rows,
              ("what", "cp -r MiB/s", "convert MiB/s", "ratio"))
        table("Store size per compressor (Blosc, level 1, bitshuffle)", size_rows,
              ("compressor", "source TIFFs", "zarr store", "store / source"))
        table(f"Reads: load_batch of one well ({well_planes} planes) and one random plane, cold",
              read_rows, ("strategy", "load_batch(well)", "single plane"))
        table("Conversion peak memory", [(f"{raw_bytes / 2**30:.2f} GiB", f"{peak / 2**20:.0f} MiB",
                                          f"{peak / raw_bytes:.3f}")],
              ("plate size", "peak RSS of `vfsmount convert`", "peak / plate"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
