"""Plates in object storage and pipelines on Dask, against baselines in the same run.

A SeaweedFS S3 server runs on 127.0.0.1 (so "network" here is loopback: the numbers show the
software's overhead, not a WAN's latency).

- remote mount, cold sequential read of every TIFF (fresh daemon, empty chunk cache) vs fetching
  the same chunk objects with s3fs, with the server's page cache warm and then dropped for both
  sides, and vs zarr reading the same planes from S3 in process (fetch + decode);
- remote mount, re-read served by the local chunk cache vs the same plate mounted from local
  disk (both after dropping the kernel's page cache; the plate is larger than the daemon's
  decoded-plane cache, so re-reads really come from the chunk cache / the disk);
- the three-step pipeline over the S3 plate: 2 Dask workers vs 1 process.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from backends.plates.convert import convert_plate
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.config import ZarrConfig

from .common import cat, drop_caches, mib_s, mounted, table
from .services import DaskCluster, SeaweedS3


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(args) -> None:
    base = Path(tempfile.mkdtemp(prefix="vfsbench-remote-"))
    saved = dict(os.environ)
    try:
        with SeaweedS3(base / "s3") as s3:
            os.environ.update(s3.env())
            os.environ["XDG_CACHE_HOME"] = str(base / "cache")
            _reads(args, base, s3)
            _pipeline(args, base, s3)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        for m in ("mnt-remote", "mnt-local", "mnt-remote-warm", "mnt-remote-cold"):
            subprocess.run(["fusermount3", "-u", "-z", str(base / m)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _reads(args, base: Path, s3: SeaweedS3) -> None:
    import s3fs
    n_wells = 2 if args.quick else 6
    spec = PlateSpec(wells=tuple(f"B{i:02d}" for i in range(1, n_wells + 1)), sites=2, channels=2,
                     z=2, shape=(2048, 2048))
    plate_dir = make_imagexpress_plate(base / "plate", spec, thumbnails=False, projections=False)
    config = ZarrConfig(chunk_strategy="file")
    url = s3.url("bench.zarr")
    t_up = _time(lambda: convert_plate(plate_dir, url, config=config, progress=False))
    local_dir = make_imagexpress_plate(base / "local", spec, thumbnails=False, projections=False)
    convert_plate(local_dir, config=config, progress=False)

    remote = Plate.open(url).backend()
    names = remote.list_files()
    keys = []
    for n in names:                      # the chunk object of each plane (FILE chunks: one each)
        ref = remote.index.files[n]           # the baseline fetches chunks itself
        keys.append(f"{url[5:]}/{ref.array}/" + "/".join(map(str, ref.index + (0, 0))))
    fs = s3fs.S3FileSystem()

    def fetch():
        return [fs.cat_file(k) for k in keys]
    chunk_bytes = sum(fs.size(k) for k in keys)

    # "Cold" is the mount's side: a fresh daemon (empty chunk cache) and no kernel pages for
    # its files. Both sides of a ratio see the S3 server in the same state: its page cache
    # warm, or dropped (kernel-wide) before each side.
    rows = []
    mnt_r, mnt_l = base / "mnt-remote", base / "mnt-local"
    for server in ("warm", "cold"):
        # sync: no writeback of the plates just made runs during a timed read
        drop_caches() if server == "cold" else os.sync()
        t_s3fs = _time(fetch)
        drop_caches() if server == "cold" else os.sync()
        mnt = base / f"mnt-remote-{server}"
        with mounted(url, mnt, "--chunk-cache-mb", "4096"):
            virt_r = [mnt / "images" / n for n in names]
            tiff_bytes = sum(os.stat(p).st_size for p in virt_r)
            t_cold = _time(lambda paths=virt_r: cat(paths))
        if server == "warm":
            t_zarr = _time(lambda: _zarr_read(url, remote, names))
            rows.append(("remote mount, cold read (server cache warm)", f"{len(names)} planes",
                         f"zarr reading the planes from S3 in process: {t_zarr:.2f} s",
                         f"{t_cold:.2f} s", t_zarr / t_cold, "-"))
        rows.append((f"remote mount, cold read (server cache {server})",
                     f"{len(names)} planes, {tiff_bytes / 2**20:.0f} MiB",
                     f"s3fs cat_file of the chunks: {t_s3fs:.2f} s", f"{t_cold:.2f} s",
                     t_s3fs / t_cold, ">= 0.7"))
    with mounted(url, mnt_r, "--chunk-cache-mb", "4096"), mounted(local_dir, mnt_l):
        virt_r = [mnt_r / "images" / n for n in names]
        virt_l = [mnt_l / "images" / n for n in names]
        cat(virt_r)                                        # fills the chunk cache
        cat(virt_l)                                        # both daemons have read everything once
        drop_caches(virt_r + virt_l)
        t_local = _time(lambda: cat(virt_l))
        drop_caches(virt_r + virt_l)
        t_cached = _time(lambda: cat(virt_r))
    rows.append(("remote mount, cached re-read", f"{tiff_bytes / 2**20:.0f} MiB",
                 f"local-disk zarr mount: {t_local:.2f} s", f"{t_cached:.2f} s",
                 t_local / t_cached, ">= 0.9"))
    table("Remote plate through the mount (ratio = baseline time / vfsmount time)", rows,
          ("what", "data", "baseline", "vfsmount", "ratio", "goal"))
    decode = _decode_time(remote, names)
    print(f"chunks on S3: {chunk_bytes / 2**20:.0f} MiB compressed; decoding them in process "
          f"takes {decode:.2f} s; remote mount cached {mib_s(tiff_bytes, t_cached):.0f} MiB/s; "
          f"upload (convert to S3) {t_up:.1f} s")


def _zarr_read(url: str, backend, names: list[str]) -> None:
    """Every plane read with zarr straight from S3 (fetch + decode), no chunk cache."""
    import zarr

    from backends.storage.remote import zarr_store
    group = zarr.open_group(zarr_store(url, read_only=True, cache_bytes=0), mode="r")
    arrays = {}
    for n in names:
        ref = backend.index.files[n]
        if ref.array not in arrays:
            arrays[ref.array] = group[ref.array]
        arrays[ref.array][ref.index]


def _decode_time(backend, names: list[str]) -> float:
    """Seconds to decode every plane's chunk from the local chunk cache's bytes, in process:
    the part of the mount's cold read that the fetch-only baseline does not do."""
    def decode_all():
        backend.cache.clear()
        for n in names:
            backend.read_rows(backend.index.files[n], n, 1, 1)
    decode_all()                        # fetches every chunk into this process's chunk cache
    return _time(decode_all)


def _pipeline(args, base: Path, s3: SeaweedS3) -> None:
    from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu
    from compute.pipeline import FunctionStep, Pipeline, run_pipeline
    n_wells = 4 if args.quick else 8
    spec = PlateSpec(wells=tuple(f"C{i:02d}" for i in range(1, n_wells + 1)), sites=1, channels=2,
                     z=4, shape=(1024, 1024))
    plate_dir = make_imagexpress_plate(base / "pipeplate", spec, thumbnails=False,
                                       projections=False)
    url = s3.url("pipe.zarr")
    convert_plate(plate_dir, url, progress=False)
    pipeline_file = base / "cells.py"
    pipeline_file.write_text(
        "from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu\n"
        "from compute.pipeline import FunctionStep, Pipeline\n"
        "pipeline = Pipeline([FunctionStep(gaussian_filter, sigma=2.0), FunctionStep(threshold_otsu),"
        " FunctionStep(label_with_measurements)], name='cells')\n")
    from compute.pipeline import load_pipeline_file
    pipeline = load_pipeline_file(pipeline_file)
    t_one = _time(lambda: run_pipeline(pipeline, url, output="one", workers=1, progress=False))
    env = {**s3.env(), "XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"], "OMP_NUM_THREADS": "1"}
    with DaskCluster(base / "dask", n_workers=2, env=env) as cluster:
        # one warm-up run: worker processes import numpy/scipy/skimage once
        run_pipeline(pipeline, url, output="warm", progress=False, dask=cluster.address)
        t_two = _time(lambda: run_pipeline(pipeline, url, output="two", progress=False,
                                           dask=cluster.address))
    groups = n_wells * spec.channels
    table("Pipeline over the S3 plate (stacks/s; ratio = 2 workers / 1 process)",
          [(f"{groups} stacks of {spec.z}x{spec.shape[0]}x{spec.shape[1]}", groups / t_one,
            groups / t_two, t_one / t_two, f"{os.cpu_count()} cores")],
          ("what", "1 process", "2 Dask workers", "ratio", "machine"))
