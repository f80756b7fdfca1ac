"""Building the virtual-workspace mapping vs creating the equivalent symlink farm.

The plate is a synthetic ImageXpress export (TimePoint_N/ZStep_M/ folders, GUID
names, thumbnails) of empty files: mapping never reads pixels.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from backends.plates.handlers.imagexpress import ImageXpressHandler
from backends.plates.metadata import update_metadata

from .common import table


def make_tree(root: Path, n: int) -> None:
    """n images (+ n thumbnails) across 2 time points x 10 z-steps, 384 wells, 4 channels."""
    per_folder = max(1, n // 20)
    made = 0
    for t in (1, 2):
        for z in range(1, 11):
            folder = root / f"TimePoint_{t}" / f"ZStep_{z}"
            folder.mkdir(parents=True)
            for i in range(per_folder):
                if made >= n:
                    return
                well = f"{chr(65 + (i // 4 // 24) % 16)}{(i // 4) % 24 + 1:02d}"
                site, ch = (i // 384 // 4) + 1, i % 4 + 1
                g = uuid.uuid4().hex.upper()
                guid = f"{g[:8]}-{g[8:12]}-{g[12:16]}-{g[16:20]}-{g[20:]}"
                open(folder / f"Plate_{well}_s{site}_w{ch}{guid}.tif", "wb").close()
                open(folder / f"Plate_{well}_s{site}_w{ch}_thumb{guid}.tif", "wb").close()
                made += 1


def symlink_farm(plate: Path, sources: dict[str, str], dest: Path) -> None:
    dest.mkdir()
    for name, rel in sources.items():
        os.symlink(plate / rel, dest / name)


def run(args) -> None:
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    rows = []
    for n in sizes:
        base = Path(tempfile.mkdtemp(prefix="vfsbench-map-"))
        try:
            plate = base / "plate"
            make_tree(plate, n)
            os.sync()
            handler = ImageXpressHandler()
            handler.scan(plate)                        # warm the dentry cache like the farm gets
            t0 = time.perf_counter()
            scan = handler.scan(plate)
            t_map = time.perf_counter() - t0
            t0 = time.perf_counter()
            update_metadata(plate, scan.metadata_entries(), main="workspace")
            t_meta = time.perf_counter() - t0
            sources = scan.image_sets[0].sources
            assert len(sources) == n, (len(sources), n)
            t0 = time.perf_counter()
            symlink_farm(plate, sources, base / "farm")
            t_farm = time.perf_counter() - t0
            rows.append((n, t_map, t_meta, t_map + t_meta, t_farm, t_farm / (t_map + t_meta)))
        finally:
            shutil.rmtree(base)
    table("Virtual-workspace mapping vs symlink farm (seconds)", rows,
          ("files", "scan+map", "write metadata", "total", "symlink farm", "farm / total"))
