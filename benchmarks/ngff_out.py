"""What NGFF validity and pyramids cost, and what listing a well of a huge store reads.

- `vfsmount convert` with the default pyramid (halve until a plane fits 1024 px) against
  `--levels 0` (the baseline): time and store size;
- metadata bytes read to list the planes of one well of a synthetic 1,000,000-plane store
  (384 wells x 9 fields x 4 channels x 72 z), through its NGFF structure and through
  vfsmount's reader (which opens every well), against the per-plane root index vfsmount
  wrote before (143 bytes a plane, all in one document).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from backends.naming import ParsedName, row_letters
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate

from .common import table
from .zarr import convert_subprocess, du

OLD_INDEX_BYTES_PER_PLANE = 143      # measured on the format-1 root index ("files" entries)


def pyramid_rows(base: Path, quick: bool) -> list[tuple]:
    spec = PlateSpec(wells=("A01", "A02"), sites=2, channels=2, z=2 if quick else 8,
                     shape=(2048, 2048))
    plate = make_imagexpress_plate(base / "plate", spec, thumbnails=False, projections=False)
    rows = {}
    for label, extra in (("--levels 0", ["--levels", "0"]), ("default pyramid", [])):
        seconds, _rss = convert_subprocess(plate, "--overwrite", *extra)
        rows[label] = (seconds, du(plate / "zarr"))
    t0, s0 = rows["--levels 0"]
    out = [(label, f"{t:.2f} s", f"{s / 2**20:.0f} MiB", f"{t / t0:.2f}x", f"{s / s0:.3f}x")
           for label, (t, s) in rows.items()]
    out.insert(0, (f"{spec.n_images} planes of 2048x2048 uint16", "", "", "", ""))
    return out


def make_million_plane_store(path: Path, wells: int = 384, fields: int = 9, channels: int = 4,
                             zs: int = 72) -> int:
    """The metadata of a store of wells x fields x channels x zs planes, written by the real
    writer (arrays, per-array records, NGFF metadata); no chunk is written."""
    from backends.ngff.backend import ZarrStorageBackend
    from backends.ngff.config import ZarrConfig
    from backends.ngff.write import compact_json
    store = ZarrStorageBackend(path, mode="w", config=ZarrConfig(chunk_strategy="file"))
    store.physics = {"pixel_size": 0.65, "z_spacing": 2.0}
    full = np.ones((1, channels, zs), dtype=bool)
    with compact_json():               # as save_batch() writes them
        _make_fields(store, wells, fields, (1, channels, zs), full)
    store.flush(plate_name="million")
    return wells * fields * channels * zs


def _make_fields(store, wells: int, fields: int, lead: tuple, full: np.ndarray) -> None:
    from backends.ngff.write import _planes_record
    for w in range(wells):
        row, col = row_letters(w // 24 + 1), w % 24 + 1
        for f in range(fields):
            path_ = f"{row}/{col:02d}/{f}/0"
            store._create_field_array(path_, lead + (64, 64), np.uint16)
            store._array(path_).attrs["vfsmount"] = _planes_record(f + 1, full)


class CountingReads:
    """Counts the bytes zarr's LocalStore hands out while active."""

    def __enter__(self):
        from zarr.storage import LocalStore
        self.bytes, self.calls = 0, 0
        self._get = LocalStore.get
        counter = self

        async def get(store, key, prototype, byte_range=None):
            buf = await counter._get(store, key, prototype, byte_range)
            if buf is not None:
                counter.bytes += len(buf)
                counter.calls += 1
            return buf
        LocalStore.get = get
        return self

    def __exit__(self, *exc):
        from zarr.storage import LocalStore
        LocalStore.get = self._get


def list_well_through_ngff(path: Path, well_path: str) -> int:
    """Plane names of one well from the plate, well, image and array documents alone."""
    import zarr

    from backends.ngff.documents import decode_present

    def ome(group) -> dict:
        attrs = dict(group.attrs)
        return attrs.get("ome", attrs)
    root = zarr.open_group(path, mode="r")
    assert any(w["path"] == well_path for w in ome(root)["plate"]["wells"])
    row, col = well_path.split("/")
    names = []
    for image in ome(root[well_path])["well"]["images"]:
        arr = root[f"{well_path}/{image['path']}/0"]
        record = dict(arr.attrs)["vfsmount"]
        for t, c, z in zip(*np.nonzero(decode_present(record, arr.shape[:-2]))):
            names.append(ParsedName(f"{row}{int(col):02d}", record["site"], int(c) + 1,
                                    int(z) + 1, int(t) + 1).virtual_name())
    return len(names)


def listing_rows(base: Path, quick: bool) -> list[tuple]:
    store = base / "million.zarr"
    sizes = dict(wells=24, fields=9, channels=4, zs=72) if quick else {}
    t = time.perf_counter()
    planes = make_million_plane_store(store, **sizes)
    t_make = time.perf_counter() - t
    with CountingReads() as ngff:
        n_ngff = list_well_through_ngff(store, "A/01")
    from backends.ngff.backend import ZarrStorageBackend
    with CountingReads() as ours:
        t = time.perf_counter()
        n_ours = len([n for n in ZarrStorageBackend(store).list_files() if n.startswith("A01_")])
        t_ours = time.perf_counter() - t
    old = planes * OLD_INDEX_BYTES_PER_PLANE
    return [
        (f"store of {planes:,} planes (metadata written in {t_make:.0f} s)", "", "", ""),
        ("format 1: root index of every plane (one document)", "all", f"{old / 2**20:.1f} MiB", "1.00"),
        (f"NGFF structure, one well ({n_ngff} planes)", f"{ngff.calls} documents",
         f"{ngff.bytes / 2**20:.3f} MiB", f"{ngff.bytes / old:.5f}"),
        (f"vfsmount reader, open + list ({n_ours} planes in the well; {t_ours:.1f} s)",
         f"{ours.calls} documents", f"{ours.bytes / 2**20:.1f} MiB", f"{ours.bytes / old:.4f}"),
    ]


def run(args) -> None:
    base = Path(tempfile.mkdtemp(prefix="vfsbench-ngff-"))
    try:
        table("Pyramid: convert with the default pyramid vs --levels 0 (WELL chunks, zstd-1)",
              pyramid_rows(base, args.quick), ("what", "convert time", "store size",
                                               "time ratio", "size ratio"))
        table("Metadata read to list one well", listing_rows(base, args.quick),
              ("how", "reads", "metadata bytes", "vs format 1"))
    finally:
        shutil.rmtree(base, ignore_errors=True)
