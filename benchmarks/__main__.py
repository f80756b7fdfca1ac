"""python -m benchmarks NAME [options] -- NAME is one of `list`, `all` or a benchmark module."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from .common import machine

BENCHMARKS = {
    "mapping": "virtual-workspace mapping for 1k/10k/100k files vs creating a symlink farm",
    "mount_read": "sequential reads through the mount vs cat (pass-through) and zarr direct (synthesized)",
    "mount_write": "cp into the writable outputs/ area vs cp to local disk, and vs zarr written directly",
    "mount_ls": "ls -l of 100k images of a nested plate vs 100k real files, default options and --xattrs",
    "mount_scale": "mount ready time and daemon RSS for 300k and a simulated 1M images",
    "zarr": "conversion vs cp -r, store size per compressor, WELL vs FILE reads, peak memory",
    "ngff_out": "convert with the default pyramid vs --levels 0; metadata bytes read to list one "
                "well of a 1,000,000-plane store vs the old per-plane root index",
    "memory": "memory-type conversions of a (16, 2048, 2048) stack vs np.copy",
    "gpu": "GPU conversions (cupy/torch/jax) vs a device-to-device copy; a pipeline on GPU vs CPU",
    "pipeline": "pipeline throughput vs the same functions in a plain loop",
    "fiji": "ImageJ opening one field from hyperstacks/ vs as an image sequence of images/",
    "chunk_guard": "cold sequential zarr reads with the chunk check (issue 16) vs without it",
    "remote": "S3 plate (SeaweedFS on loopback) mounted vs s3fs direct and vs local disk; "
              "Dask 2 workers vs 1 process",
    "foreign_zarr": "a foreign OME-Zarr plate (384 wells x 9 fields): plane index and mount + ls "
                    "vs zarr opening every field's array",
    "plate_views": "load_data.csv and plate.companion.ome of 384 wells x 9 sites x 4 channels: "
                   "ready after the mount, plane reads counted; vs ls images/",
    "napari": "napari: a 384-well x 9-field plate to the first draw (every field) vs "
              "napari-ome-zarr (first field per well); vfsmount run with and without --stream",
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks")
    p.add_argument("name", nargs="+", choices=["list", "all", *BENCHMARKS],
                   help="one or more benchmarks (run in that order)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    p.add_argument("--size-gb", type=float, default=1.0, help="zarr: synthetic plate size")
    p.add_argument("--memory-only", action="store_true",
                   help="zarr: only the conversion's peak memory (for plates larger than RAM/4)")
    args = p.parse_args(argv)
    if "list" in args.name:
        for name, text in BENCHMARKS.items():
            print(f"{name:12s} {text}")
        return 0
    print(f"# vfsmount benchmarks, {time.strftime('%Y-%m-%d %H:%M')}, {machine()}")
    for name in (BENCHMARKS if "all" in args.name else args.name):
        importlib.import_module(f"benchmarks.{name}").run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
