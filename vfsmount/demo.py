"""`vfsmount demo`: a sample ImageXpress plate, part of it converted to zarr, mounted."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from backends.plates.convert import convert_plate
from backends.layout import MAIN_ALIAS
from backends.plates.metadata import cache_root
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate

from .control import is_mounted, start_daemon, unmount

DEMO_SPEC = PlateSpec(wells=("A01", "A02", "B01"), sites=2, channels=2, z=3, t=2, shape=(256, 256))


def run_demo(base: Path | None = None, *, keep_mounted: bool = True) -> int:
    base = (base or cache_root() / "demo").absolute()
    plate_dir, mnt = base / "SamplePlate", base / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    if is_mounted(mnt):
        unmount(mnt)
    if not (plate_dir / "zarr").exists():
        shutil.rmtree(plate_dir, ignore_errors=True)
        print(f"1. generating a sample ImageXpress plate in {plate_dir}")
        make_imagexpress_plate(plate_dir, DEMO_SPEC, plate_name="SamplePlate")
        print("2. converting its z-planes to OME-Zarr (projections stay as vendor TIFFs)")
        convert_plate(plate_dir, progress=False)
    else:
        print(f"1-2. reusing the sample plate in {plate_dir}")
    plate = Plate.open(plate_dir)
    pid, log = start_daemon(plate_dir, mnt)
    print(f"3. mounted on {mnt} (daemon pid {pid}, log {log})\n")

    first = sorted(os.listdir(mnt / MAIN_ALIAS))[0]
    print(f"$ ls {mnt}")
    print("   " + "  ".join(sorted(os.listdir(mnt))))
    print(f"$ ls -l {mnt}/images | head -4")
    out = subprocess.run(["ls", "-l", str(mnt / MAIN_ALIAS)], capture_output=True, text=True).stdout
    print("\n".join("   " + line for line in out.splitlines()[:4]))
    import tifffile
    img = tifffile.imread(mnt / MAIN_ALIAS / first)
    direct = plate.backend().load(first)
    print(f"\ntifffile through the mount: {first} {img.shape} {img.dtype}, "
          f"identical to the zarr plane: {bool(np.array_equal(img, direct))}")
    from .fileinfo import file_facts
    print(f"source of {first} (`vfsmount info FILE`): {file_facts(mnt / 'images' / first)['source']}")
    n_zarr = len(os.listdir(mnt / "zarr"))
    n_ws = len(os.listdir(mnt / "workspace"))
    n_proj = len(os.listdir(mnt / "projection"))
    print(f"\n{n_zarr} zarr-backed TIFFs (images/, zarr/), {n_ws} pass-through vendor files "
          f"(workspace/), {n_proj} projections (projection/), the raw tree under original/.")
    if keep_mounted:
        exe = shutil.which("vfsmount") or str(Path(sys.executable).parent / "vfsmount")
        print(f"""
Try:
  tiffinfo {mnt}/images/{first}
  {exe} info {mnt}/images/{first}      # well, site, channel, z, t, source, pixel size
  imagej {mnt}/images/{first}          # or Fiji: File > Open
  {exe} info {plate_dir}
Write results back, and compute on read:
  {exe} umount {mnt} && {exe} mount {plate_dir} {mnt} --writable --pipeline cells
  {exe} run cells {mnt}               # -> {mnt}/outputs/cells/, stored in the plate
  ls {mnt}/processed/cells/            # computed when read
Unmount with:
  {exe} umount {mnt}""")
    else:
        print(f"\n{unmount(mnt)} {mnt}")
    return 0
