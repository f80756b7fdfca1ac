"""The plate views of a 384 wells x 9 sites x 4 channels plate: how soon after the mount is
ready ``load_data.csv``, ``load_data_with_illum.csv`` and ``plate.companion.ome`` can be read,
and proof that making and reading them reads no plane.

The plate is an OME-Zarr store written directly with zarr (arrays and NGFF metadata, no pixel
written). The daemon runs under a counter (this module's ``--daemon`` entry): every plane read
(``ZarrPlane.read_rows``, ``ZarrStorageBackend.load``, ``TiffFilePlane.read_rows``) and every
chunk key fetched from the store is counted and written to a file when the daemon exits. The
baseline is the cheapest thing a user's own script would have to do to write the same CSV:
list ``MOUNT/images``.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import table
from .foreign_zarr import ROWS

SITES, CHANNELS, PLANE = 9, 4, (1080, 1080)
DOCS = ("load_data.csv", "load_data_with_illum.csv", "plate.companion.ome")
METADATA_KEYS = (".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json")
READY = re.compile(r"(\S+) ready in ([\d.]+) s \(([\d.]+) s CPU\)")


def write_plate(path: Path, columns: int = 24, sites: int = SITES) -> int:
    """An NGFF 0.4 plate, one (c, z, y, x) array per field, no chunk written. zarr and
    ome-zarr-py's writers make the plate, one well and its fields; every other well and field
    gets copies of those metadata documents (writing 3,456 arrays one by one takes minutes)."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata, write_plate_metadata, write_well_metadata
    fmt = FormatV04()
    root = zarr.open_group(path, mode="w", zarr_format=2)
    cols = [str(c) for c in range(1, columns + 1)]
    wells = [f"{r}/{c}" for r in ROWS for c in cols]
    write_plate_metadata(root, list(ROWS), cols, wells, fmt=fmt, field_count=sites)
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [1.0, 1.0, 0.65, 0.65]}]
    omero = {"channels": [{"label": n, "color": "FFFFFF", "window": {"start": 0, "end": 4095,
                                                                     "min": 0, "max": 65535}}
                          for n in ("DNA", "ER", "AGP", "Mito")[:CHANNELS]]}
    well = root.require_group(wells[0])
    write_well_metadata(well, [{"path": str(f)} for f in range(sites)], fmt=fmt)
    image = well.require_group("0")
    image.create_array("0", shape=(CHANNELS, 1, *PLANE), chunks=(1, 1, *PLANE), dtype="uint16")
    write_multiscales_metadata(image, [{"path": "0", "coordinateTransformations": scale}],
                               fmt=fmt, axes=axes)
    image.attrs["omero"] = omero
    template = path / wells[0]
    for w in wells:
        for f in range(sites):
            if (w, f) != (wells[0], 0):
                shutil.copytree(template / "0", path / w / str(f))
        if w != wells[0]:
            for doc in (".zgroup", ".zattrs"):
                shutil.copy(template / doc, path / w / doc)
    return len(wells) * sites * CHANNELS


# -- the daemon, counting plane reads ---------------------------------------------------------

def _counting_daemon(count_file: str, argv: list[str]) -> int:
    """vfsmount's daemon with every plane read and chunk fetch counted (written at exit)."""
    import atexit
    from backends.guards.chunk import GuardedStore
    from backends.storage.tiff_planes import TiffFilePlane
    from backends.ngff.read import ZarrPlane
    from backends.ngff.backend import ZarrStorageBackend
    counts = {"plane reads": 0, "chunk fetches": 0}

    def counted(fn, what):
        def wrapper(*args, **kw):
            counts[what] += 1
            return fn(*args, **kw)
        return wrapper
    ZarrPlane.read_rows = counted(ZarrPlane.read_rows, "plane reads")
    ZarrStorageBackend.load = counted(ZarrStorageBackend.load, "plane reads")
    TiffFilePlane.read_rows = counted(TiffFilePlane.read_rows, "plane reads")
    get = GuardedStore.get

    async def counting_get(self, key, *args, **kw):
        if not key.endswith(METADATA_KEYS):
            counts["chunk fetches"] += 1
        return await get(self, key, *args, **kw)
    GuardedStore.get = counting_get
    atexit.register(lambda: Path(count_file).write_text(repr(counts)))
    from vfsmount.daemon import main
    return main(argv)


def mount_counted(store: Path, mnt: Path, count_file: Path,
                  log: Path) -> tuple[subprocess.Popen, float]:
    """Start the counting daemon; (process, seconds until the mount is ready)."""
    mnt.mkdir(parents=True, exist_ok=True)
    r, w = os.pipe()
    t = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.plate_views", "--daemon",
                                 str(count_file), str(store), str(mnt), "--ready-fd", str(w),
                                 "--log-level", "INFO"], pass_fds=(w,), stdin=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 300)
    line = os.read(r, 4096).decode().strip() if ready else ""
    os.close(r)
    if line != "ok":
        proc.kill()
        raise RuntimeError(f"daemon did not mount: {line!r}")
    return proc, time.perf_counter() - t


def measure(store: Path, mnt: Path, count_file: Path) -> dict:
    from vfsmount.control import unmount
    log = count_file.with_suffix(".log")
    proc, mount_s = mount_counted(store, mnt, count_file, log)
    try:
        t = time.perf_counter()
        sizes = {d: os.stat(mnt / d).st_size for d in DOCS}      # waits until they are made
        stat_s = time.perf_counter() - t
        data = {d: (mnt / d).read_bytes() for d in DOCS}
        read_s = time.perf_counter() - t
        t = time.perf_counter()
        listed = len(os.listdir(mnt / "images"))
        ls_s = time.perf_counter() - t
    finally:
        unmount(mnt)
        proc.wait(timeout=60)
    assert all(len(data[d]) == sizes[d] for d in DOCS)
    counts = eval(count_file.read_text())            # noqa: S307 (our own repr of a dict)
    made = READY.findall(log.read_text())            # the daemon's plate-views thread
    assert sorted(m[0] for m in made) == sorted(DOCS), made
    return {"mount_s": mount_s, "stat_s": stat_s, "read_s": read_s, "ls_s": ls_s,
            "made_s": sum(float(m[1]) for m in made), "cpu_s": sum(float(m[2]) for m in made),
            "listed": listed, "rows": data["load_data.csv"].count(b"\n") - 1,
            "bytes": sum(sizes.values()), **counts}


def run(args) -> None:
    columns, sites = (6, 3) if args.quick else (24, SITES)
    base = Path(tempfile.mkdtemp(prefix="vfsbench-views-"))
    try:
        store = base / "plate.ome.zarr"
        planes = write_plate(store, columns, sites)
        results = [measure(store, base / f"mnt{i}", base / f"counts{i}") for i in range(3)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rows = []
    for i, r in enumerate(results):
        assert r["listed"] == planes and r["rows"] == planes // CHANNELS
        rows.append((f"run {i + 1}: {planes} planes, {r['rows']} rows", r["mount_s"], r["stat_s"],
                     r["read_s"], r["made_s"], r["cpu_s"], r["bytes"], r["ls_s"],
                     r["read_s"] / r["ls_s"], r["plane reads"], r["chunk fetches"]))
    table(f"Plate views of {len(ROWS) * columns} wells x {sites} sites x {CHANNELS} channels "
          "(zarr store, 1080x1080 uint16 planes)", rows,
          ("mount", "mount ready (s)", "3 docs stat-ed after ready (s)", "... and read (s)",
           "daemon making them (s)", "... CPU (s)", "doc bytes", "baseline: ls images/ (s)",
           "ratio", "plane reads", "chunk fetches"))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--daemon":
        sys.exit(_counting_daemon(sys.argv[2], sys.argv[3:]))
    sys.exit("run as: python -m benchmarks plate_views")
