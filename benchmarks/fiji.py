"""Opening one field in ImageJ: hyperstacks/ (one file) vs an image sequence of images/.

One field of 3 channels x 10 z-planes of 2048x2048 uint16 (240 MiB), opened by headless
ImageJ 1.x: ``IJ.openImage(hyperstacks/A01_s001.tif)`` against File > Import > Image
Sequence with the filter ``A01_s001`` (``FolderOpener.open``) on ``images/``. Timed inside the
JVM (JVM start excluded). Cold = a fresh daemon and no kernel pages for the plate or the
mount; warm = the best of three more opens in the same JVM. Both for the vendor files as
mounted (uncompressed, then Deflate-compressed as ImageXpress writes them) and after
``vfsmount convert`` (zarr, FILE chunks); medians over 5 rounds.
"""
from __future__ import annotations

import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from backends.plates.convert import convert_plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.config import ZarrConfig

from .common import drop_caches, mounted, table

BENCH = r"""
import ij.IJ; import ij.ImagePlus; import ij.plugin.FolderOpener;
public class FijiBench { public static void main(String[] a) {
  for (int r = 0; r < Integer.parseInt(a[3]); r++) {
    long t0 = System.nanoTime();
    ImagePlus imp = a[0].equals("stack") ? IJ.openImage(a[1])
                                         : FolderOpener.open(a[1], "filter=" + a[2]);
    double s = (System.nanoTime() - t0) / 1e9;
    System.out.println("TIME " + s + " " + (imp == null ? 0 : imp.getStackSize()));
  }
  System.exit(0);
}}
"""
WARM_RUNS = 3


def imagej_open_times(mode: str, path: Path, flt: str, src: Path) -> tuple[float, float]:
    """(cold, best warm) seconds for ImageJ to open ``path`` as a stack or a filtered sequence."""
    res = subprocess.run(["java", "-Djava.awt.headless=true", "-cp", "/usr/share/java/ij.jar",
                          str(src), mode, str(path), flt, str(1 + WARM_RUNS)],
                         capture_output=True, text=True, timeout=900)
    runs = [line.split()[1:] for line in res.stdout.splitlines() if line.startswith("TIME ")]
    if len(runs) != 1 + WARM_RUNS or any(int(n) != 30 for _t, n in runs):
        raise RuntimeError(f"ImageJ did not open 30 planes of {path}:\n{res.stdout}\n{res.stderr}")
    times = [float(t) for t, _n in runs]
    return times[0], min(times[1:])


def measure(plate: Path, mnt: Path, src: Path, label: str, rounds: int) -> list[tuple]:
    """Median cold and warm times of each side over ``rounds`` rounds; the sides take turns
    going first, since this machine's load changes from minute to minute."""
    files = [p for p in plate.rglob("*") if p.is_file()]
    sides = {"sequence": "images", "stack": "hyperstacks/A01_s001.tif"}
    times: dict[str, list[tuple[float, float]]] = {mode: [] for mode in sides}
    for r in range(rounds):
        for mode in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            with mounted(plate, mnt):
                drop_caches(files + list((mnt / "images").iterdir()) +
                            list((mnt / "hyperstacks").iterdir()))
                times[mode].append(imagej_open_times(mode, mnt / sides[mode], "A01_s001", src))
    rows = []
    for i, state in enumerate(("cold", "warm")):
        seq = statistics.median(t[i] for t in times["sequence"])
        stack = statistics.median(t[i] for t in times["stack"])
        ratios = [h[i] / s[i] for h, s in zip(times["stack"], times["sequence"])]
        rows.append((f"{label}, {state}", seq, stack, stack / seq,
                     f"{min(ratios):.2f}-{max(ratios):.2f}", "<= 1.2"))
    return rows


def deflate(plate: Path) -> None:
    """Rewrite the plate's TIFFs Deflate-compressed, as ImageXpress stores them."""
    import tifffile
    for f in plate.rglob("*.tif"):
        with tifffile.TiffFile(f) as tif:
            data, description = tif.asarray(), tif.pages.first.description
        tifffile.imwrite(f, data, photometric="minisblack", description=description,
                         compression="zlib", rowsperstrip=8)


def run(args) -> None:
    size = 512 if args.quick else 2048
    spec = PlateSpec(wells=("A01",), sites=1, channels=3, z=10, shape=(size, size))
    base = Path(tempfile.mkdtemp(prefix="vfsbench-fiji-"))
    try:
        src = base / "FijiBench.java"
        src.write_text(BENCH)
        plate = make_imagexpress_plate(base / "plate", spec, thumbnails=False, projections=False)
        rounds = 1 if args.quick else 5
        rows = measure(plate, base / "mnt", src, "vendor TIFFs", rounds)
        deflate(plate)
        rows += measure(plate, base / "mnt", src, "vendor TIFFs, Deflate", rounds)
        convert_plate(plate, config=ZarrConfig(chunk_strategy="file"), progress=False)
        rows += measure(plate, base / "mnt", src, "zarr (FILE chunks)", rounds)
        table(f"Opening one field (3 ch x 10 z x {size}x{size} uint16) in ImageJ: image "
              f"sequence of images/ vs hyperstacks/ (median of {rounds} rounds, s; ratio = "
              "hyperstack / sequence)", rows,
              ("what", "sequence s", "hyperstack s", "ratio", "ratio range", "goal"))
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "mnt")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
