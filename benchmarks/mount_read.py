"""Sequential reads through the mount against baselines measured in the same run.

- pass-through (virtual-workspace) files vs `cat` of the same real files, cold and warm;
- synthesized TIFFs of a zarr store vs reading the same planes with zarr directly in Python.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from backends.convert import convert_plate
from backends.plate import Plate
from backends.sample_plates import PlateSpec, make_imagexpress_plate
from backends.zarr_config import ZarrConfig

from .common import cat, drop_caches, mib_s, mounted, table


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(args) -> None:
    n_wells = 2 if args.quick else 6
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
        rows = []
        mnt = base / "mnt"
        with mounted(plate_dir, mnt):
            virt = [mnt / "workspace" / n for n in names]
            drop_caches(real + virt)
            t_cat_cold = _time(lambda: cat(real))
            drop_caches(real + virt)
            t_mnt_cold = _time(lambda: cat(virt))
            t_cat_warm = min(_time(lambda: cat(real)) for _ in range(3))
            t_mnt_warm = min(_time(lambda: cat(virt)) for _ in range(3))
        rows.append(("pass-through, cold", f"{nbytes / 2**20:.0f} MiB", mib_s(nbytes, t_cat_cold),
                     mib_s(nbytes, t_mnt_cold), t_cat_cold / t_mnt_cold, ">= 0.5"))
        rows.append(("pass-through, warm re-read", f"{nbytes / 2**20:.0f} MiB",
                     mib_s(nbytes, t_cat_warm), mib_s(nbytes, t_mnt_warm), t_cat_warm / t_mnt_warm,
                     ">= 0.9"))

        for strategy in ("file", "well"):
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
