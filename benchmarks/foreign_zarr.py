"""Opening a foreign OME-Zarr plate: 384 wells x 9 fields, mounted and listed, vs zarr itself;
and the mount of a foreign-layout store of 1,000,000 planes (ready time, daemon RSS).

The plate is written with ome-zarr-py's metadata writers (plate, well and multiscales
documents) and zarr's own arrays, at NGFF 0.4 (zarr v2) and 0.5 (zarr v3). vfsmount builds
its plane index from metadata documents only; the baseline is zarr opening every field's
level-0 array in process (what any reader must do at least to learn the shapes).

The large store (:func:`write_large_plate`) holds metadata documents only (no chunk: the
mount reads none to list or to get ready, and zarr itself is imported at the first plane
read, which the table times too), written directly as JSON so that making 14,000
of them costs seconds: 1536 wells x 4 fields x (4 channels x 41 z) = 1,007,616 planes.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import zarr

from .common import mounted, table

ROWS = "ABCDEFGHIJKLMNOP"
FIELD_SHAPE = (2, 3, 64, 64)          # c, z, y, x: 6 planes per field


def write_plate(path: Path, version: str, columns: int, fields: int) -> int:
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscales_metadata, write_plate_metadata, write_well_metadata
    fmt = FormatV04() if version == "0.4" else FormatV05()
    root = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    cols = [str(c) for c in range(1, columns + 1)]
    wells = [f"{r}/{c}" for r in ROWS for c in cols]
    write_plate_metadata(root, list(ROWS), cols, wells, fmt=fmt, field_count=fields)
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    scale = [{"type": "scale", "scale": [1.0, 2.0, 0.325, 0.325]}]
    for w in wells:
        well = root.require_group(w)
        write_well_metadata(well, [{"path": str(f)} for f in range(fields)], fmt=fmt)
        for f in range(fields):
            image = well.require_group(str(f))
            image.create_array("0", shape=FIELD_SHAPE, chunks=(1, 1, 64, 64), dtype="uint16")
            write_multiscales_metadata(image, [{"path": "0", "coordinateTransformations": scale}],
                                       fmt=fmt, axes=axes)
    return len(wells) * fields


def write_large_plate(path: Path, rows: int = 32, columns: int = 48, fields: int = 4,
                      lead: tuple[int, int] = (4, 41), shape: tuple[int, int] = (2048, 2048)) -> int:
    """An NGFF 0.4 plate's documents (plate, wells, images, level-0 arrays; no chunk), in the
    layout ome-zarr-py writes; returns its plane count."""
    def doc(p: Path, name: str, content: dict) -> None:
        p.mkdir(parents=True, exist_ok=True)
        (p / name).write_text(json.dumps(content))
    row_names = [chr(65 + r // 26 - 1) + chr(65 + r % 26) if r >= 26 else chr(65 + r)
                 for r in range(rows)]
    wells = [f"{r}/{c}" for r in row_names for c in range(1, columns + 1)]
    group = {"zarr_format": 2}
    doc(path, ".zgroup", group)
    doc(path, ".zattrs", {"plate": {
        "version": "0.4", "field_count": fields,
        "rows": [{"name": r} for r in row_names],
        "columns": [{"name": str(c)} for c in range(1, columns + 1)],
        "wells": [{"path": w, "rowIndex": i // columns, "columnIndex": i % columns}
                  for i, w in enumerate(wells)]}})
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    image = {"multiscales": [{"version": "0.4", "axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 2.0, 0.325, 0.325]}]}]}]}
    array = {"zarr_format": 2, "shape": [*lead, *shape], "chunks": [1, 1, *shape],
             "dtype": "<u2", "compressor": None, "fill_value": 0, "filters": None,
             "order": "C", "dimension_separator": "/"}
    for w in wells:
        doc(path / w, ".zgroup", group)
        doc(path / w, ".zattrs", {"well": {"version": "0.4", "images": [
            {"path": str(f)} for f in range(fields)]}})
        for f in range(fields):
            doc(path / w / str(f), ".zgroup", group)
            doc(path / w / str(f), ".zattrs", image)
            doc(path / w / str(f) / "0", ".zarray", array)
    return len(wells) * fields * lead[0] * lead[1]


def mount_ready(store: Path, mnt: Path) -> dict:
    """One mount of ``store``: seconds from starting the daemon to the mount being live, the
    daemon's CPU seconds and RSS (MB) then; then the first listing of ``images/`` (seconds
    to its first entry, to its last, how many), a full ``ls -l`` after it, the daemon's RSS
    after that; the first plane read (the store opened with zarr then); and ``info STORE``'s
    seconds to its first well line and to its end."""
    import psutil

    from vfsmount.control import start_daemon, unmount
    mnt.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    pid, _log = start_daemon(store, mnt, log_level="WARNING")
    out = {"ready": time.perf_counter() - t0}
    try:
        proc = psutil.Process(pid)
        out["cpu"], out["rss"] = sum(proc.cpu_times()[:2]), proc.memory_info().rss / 2**20
        t = time.perf_counter()
        with os.scandir(mnt / "images") as it:
            next(it)
            out["first_entry"] = time.perf_counter() - t
            out["listed"] = 1 + sum(1 for _ in it)
        out["listing"] = time.perf_counter() - t
        out["rss_listed"] = proc.memory_info().rss / 2**20
        t = time.perf_counter()
        lines = subprocess.run(["ls", "-l", str(mnt / "images")], capture_output=True,
                               text=True, check=True).stdout.count("\n")
        out["ls_l"] = time.perf_counter() - t
        assert lines == out["listed"] + 1, (lines, out["listed"])     # + the "total" line
        out["rss_after"] = proc.memory_info().rss / 2**20
        out["cpu_after"] = sum(proc.cpu_times()[:2])
        t = time.perf_counter()        # the first plane read opens the store (imports zarr)
        with open(mnt / "images" / first_name(mnt / "images"), "rb") as f:
            out["read_bytes"] = len(f.read())
        out["first_read"] = time.perf_counter() - t
        out["rss_read"] = proc.memory_info().rss / 2**20
    finally:
        unmount(mnt)
    out.update(info_streams(store))
    return out


def first_name(folder: Path) -> str:
    with os.scandir(folder) as it:
        return next(it).name


def info_streams(store: Path) -> dict:
    """Seconds from starting ``vfsmount info STORE`` to its first well line, and to its end."""
    import sys
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vfsmount", "info", str(store)],
                            stdout=subprocess.PIPE, text=True)
    first = None
    for line in proc.stdout:
        if first is None and line.startswith("  ") and line.rstrip().endswith("images"):
            first = time.perf_counter() - t
    proc.wait()
    return {"info_first": first, "info_total": time.perf_counter() - t}


def full_index(path: Path) -> int:
    """vfsmount's plane index of every well (a read-only store reads its wells lazily)."""
    from backends.ngff.backend import ZarrStorageBackend
    return len(ZarrStorageBackend(path).list_files())


def zarr_open_every_field(path: Path) -> int:
    """The baseline: zarr opens the plate and every field's level-0 array."""
    root = zarr.open_group(path, mode="r")
    attrs = dict(root.attrs)
    n = 0
    for well in attrs.get("ome", attrs)["plate"]["wells"]:
        wattrs = dict(root[well["path"]].attrs)
        for image in wattrs.get("ome", wattrs)["well"]["images"]:
            n += root[f"{well['path']}/{image['path']}/0"].shape[0]
    return n


def mount_and_list(store: Path, mnt: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with mounted(store, mnt):
        out = subprocess.run(["ls", str(mnt / "images")], capture_output=True, text=True,
                             check=True).stdout
        elapsed = time.perf_counter() - t
    return elapsed, len(out.split())


def best_of(n: int, fn, *args) -> tuple[float, float]:
    """Best wall and best CPU seconds of ``n`` runs (CPU time is steadier on a busy machine)."""
    walls, cpus = [], []
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        fn(*args)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def run(args) -> None:
    from backends.ngff.backend import ZarrStorageBackend
    columns, fields = (6, 4) if args.quick else (24, 9)
    base = Path(tempfile.mkdtemp(prefix="vfsbench-foreign-"))
    rows = []
    try:
        for version in ("0.4", "0.5"):
            store = base / f"plate-{version}.ome.zarr"
            n_fields = write_plate(store, version, columns, fields)
            t_index, c_index = best_of(3, full_index, store)
            t_zarr, c_zarr = best_of(3, zarr_open_every_field, store)
            mounts = [mount_and_list(store, base / f"mnt-{version}-{i}") for i in range(3)]
            listed = mounts[0][1]
            assert listed == len(ZarrStorageBackend(store).list_files()) == n_fields * 6
            rows.append((f"NGFF {version}: {n_fields} fields, {listed} planes", t_zarr, t_index,
                         t_zarr / t_index, c_zarr, c_index, min(m[0] for m in mounts)))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    table("Opening a foreign OME-Zarr plate (384 wells x 9 fields unless --quick; best of 3)", rows,
          ("plate", "zarr opens every field array (s)", "vfsmount plane index (s)", "speed-up",
           "zarr CPU (s)", "index CPU (s)", "mount + ls images/ (s)"))
    large(args)


def large(args) -> None:
    """Mount ready time and RSS for a foreign-layout store of about 1,000,000 planes
    (--quick: 96 wells, about 63,000)."""
    base = Path(tempfile.mkdtemp(prefix="vfsbench-foreign-large-"))
    try:
        store = base / "large.ome.zarr"
        planes = write_large_plate(store, rows=8 if args.quick else 32,
                                   columns=12 if args.quick else 48)
        os.sync()
        m = mount_ready(store, base / "mnt")
        assert m["listed"] == planes, (m["listed"], planes)
        rows = [(f"{planes:,}", m["ready"], m["cpu"], f"{m['rss']:.0f} MB", "< 2 s, < 300 MB")]
        listing = [(f"{planes:,}", m["first_entry"], m["listing"], f"{m['rss_listed']:.0f} MB",
                    m["ls_l"], f"{m['rss_after']:.0f} MB", m["cpu_after"], m["first_read"],
                    f"{m['rss_read']:.0f} MB", m["info_first"], m["info_total"])]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    table("Mount of a foreign-layout NGFF store (ready = daemon started to mount live)", rows,
          ("planes", "ready (s)", "daemon CPU until ready (s)", "daemon RSS when ready", "goal"))
    table("First listing of its images/ (streamed well by well) and info", listing,
          ("planes", "first entry (s)", "whole listing (s)", "daemon RSS", "ls -l after (s)",
           "daemon RSS after ls -l", "daemon CPU in all (s)", "first plane read (s)",
           "daemon RSS after it", "info: first well line (s)", "info: all (s)"))
