"""The cost of checking every chunk before decoding (issue 16), against the same read without it.

A plate of 1080x1080 uint16 planes is converted with the defaults (WELL chunks, Blosc-zstd)
and with Blosc-lz4 and FILE chunks; every plane is then read in order, cold (page cache
dropped), through the zarr backend's plane reader (what the mount serves from: each chunk
decoded once into the plane cache). Runs with and without the check alternate, so both see
the same disk and cache state; the best of the rounds is kept. The check's own time over
every chunk of the store is measured apart as well.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from backends.guards.chunk import GuardedStore
from backends.plates.convert import convert_plate
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.backend import ZarrStorageBackend
from backends.ngff.config import ZarrConfig

from .common import drop_caches, mib_s, table

PLANE = (1080, 1080)


def _read_all(store: Path, names: list[str], guarded: bool) -> float:
    backend = ZarrStorageBackend(store)
    reader = backend
    if not guarded:                                  # the same reader on the bare store
        from backends.ngff.read import ZarrReader
        reader = ZarrReader(backend._store.wrapped, backend.index, where=str(store))
    drop_caches([p for p in store.rglob("*") if p.is_file()])
    t = time.perf_counter()
    for name in names:
        plane = reader.plane(name)
        plane.read_rows(0, plane.shape[0])
    return time.perf_counter() - t


def _check_only(store: Path) -> float:
    """Seconds the checks take over every chunk file of the store (bytes already in memory)."""
    import asyncio
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    guard = GuardedStore(zarr.storage.LocalStore(store, read_only=True), str(store))
    keys = [p.relative_to(store).as_posix() for p in store.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json"]

    async def run() -> float:
        blobs = [await guard.wrapped.get(k, default_buffer_prototype()) for k in keys]
        for k in keys:
            await guard._guard_for(k)                # metadata lookups are not the check
        t = time.perf_counter()
        for k, b in zip(keys, blobs):
            await guard._check(await guard._guard_for(k), k, memoryview(b.as_numpy_array()), None)
        return time.perf_counter() - t
    return asyncio.run(run())


def run(args) -> None:
    rounds = 2 if args.quick else 5
    spec = PlateSpec(wells=("A01", "A02") if args.quick else ("A01", "A02", "B01", "B02"),
                     sites=2, channels=2, z=3 if args.quick else 4, shape=PLANE)
    base = Path(tempfile.mkdtemp(prefix="vfsbench-guard-"))
    rows = []
    try:
        for label, config in (("WELL, Blosc-zstd (default)", ZarrConfig()),
                              ("FILE, Blosc-lz4", ZarrConfig(compressor="lz4",
                                                             chunk_strategy="file"))):
            root = make_imagexpress_plate(base / label.split(",")[0], spec, thumbnails=False,
                                          projections=False)
            store = Path(convert_plate(root, config=config, progress=False))
            names = Plate.open(root).image_files()
            raw = len(names) * PLANE[0] * PLANE[1] * 2
            times = {True: [], False: []}
            for _ in range(rounds):
                for guarded in (False, True):
                    times[guarded].append(_read_all(store, names, guarded))
            bare, checked = min(times[False]), min(times[True])
            check = _check_only(store)
            rows.append((label, f"{len(names)} planes", mib_s(raw, bare), mib_s(raw, checked),
                         f"{(checked / bare - 1) * 100:+.1f} %", f"{check * 1000:.1f} ms",
                         f"{check / bare * 100:.2f} %"))
            shutil.rmtree(root, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    table(f"Chunk check vs none: cold sequential read of every plane (MiB/s of pixels, best of "
          f"{rounds})", rows, ("store", "size", "no check MiB/s", "checked MiB/s",
                               "read time change", "check alone", "check / read"))
