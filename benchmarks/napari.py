"""napari: opening a 384-well x 9-field OME-Zarr plate as a plate, and runs streamed to a viewer.

1. The plate is written with ome-zarr-py's metadata writers and zarr's arrays (NGFF 0.4, a
   pyramid of four levels, an omero block). Time to the first draw of the plate in napari's
   ViewerModel (no Qt): the reader, the layers added, and the pixels of the current (t, z)
   slice of every layer read. vfsmount's reader shows every field of every well; napari-ome-zarr
   (its own reader, the same store) shows each well's first field only.
2. `vfsmount run` throughput (an inverting pipeline over a synthetic ImageXpress plate): no
   stream; --stream with no viewer listening; --stream into a receiver in another process
   (vfsmount.napari.stream into a ViewerModel).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

from .common import table

ROWS = "ABCDEFGHIJKLMNOP"
LEVELS = 4                                 # 512, 256, 128, 64 px


def write_plate(path: Path, columns: int, fields: int, side: int = 512) -> int:
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscales_metadata, write_plate_metadata, write_well_metadata
    fmt = FormatV04()
    root = zarr.open_group(path, mode="w", zarr_format=2)
    cols = [str(c) for c in range(1, columns + 1)]
    wells = [f"{r}/{c}" for r in ROWS for c in cols]
    write_plate_metadata(root, list(ROWS), cols, wells, fmt=fmt, field_count=fields)
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "yx"]
    omero = {"channels": [{"label": n, "color": c, "window": {"min": 0, "max": 4095, "start": 0,
                                                              "end": 2000}}
                          for n, c in (("DAPI", "0000FF"), ("GFP", "00FF00"))]}
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2000, size=(2, side, side), dtype=np.uint16)

    def write_well(i: int, w: str) -> None:
        well = root.require_group(w)
        write_well_metadata(well, [{"path": str(f)} for f in range(fields)], fmt=fmt)
        for f in range(fields):
            image = well.require_group(str(f))
            datasets = []
            for level in range(LEVELS):
                step = 2 ** level
                data = base[:, ::step, ::step] + np.uint16(i + f)
                image.create_array(str(level), data=data, chunks=data.shape)
                datasets.append({"path": str(level), "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 0.325 * step, 0.325 * step]}]})
            write_multiscales_metadata(image, datasets, fmt=fmt, axes=axes)
            image.attrs["omero"] = omero
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write_well, range(len(wells)), wells))
    return len(wells) * fields


def first_draw_in_child(store: Path, reader: str) -> tuple[float, int]:
    """first_draw in a fresh process (no cache of an earlier open); napari and both readers'
    modules imported before the clock starts."""
    code = ("import napari.components, benchmarks.napari as b, vfsmount.napari.layers, "
            "backends.plates.plate, backends.ngff.backend, napari_ome_zarr, ome_zarr.reader, dask.array; "
            "b.warm_up(); "
            f"from pathlib import Path; "
            f"print(*b.first_draw(b.{reader}(Path({str(store)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    return float(out[-2]), int(out[-1])


def warm_up() -> None:
    """napari's one-time costs (its unit registry, lazy imports of the layer machinery) before
    the clock starts: they are the same whichever reader runs first."""
    from napari.components import ViewerModel
    viewer = ViewerModel()
    viewer.add_image(np.zeros((2, 4, 4), np.uint16), channel_axis=0, units=("micrometer",) * 2)
    viewer.add_points(np.zeros((1, 2)), text={"string": "x"})


def first_draw(open_layers) -> tuple[float, int]:
    """Seconds from nothing to every layer's current slice read, and the layers' count."""
    from napari.components import ViewerModel
    t = time.perf_counter()
    viewer = ViewerModel()
    for data, kwargs, kind in open_layers():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    for layer in viewer.layers:                 # what the canvas would draw
        if layer._type_string == "image":
            np.asarray(layer._slice.image.raw)
    return time.perf_counter() - t, len(viewer.layers)


def _ours(store: Path):
    from vfsmount.napari.reader import get_reader
    return lambda: get_reader(str(store))(str(store))


def _napari_ome_zarr(store: Path):
    from napari_ome_zarr import napari_get_reader
    return lambda: napari_get_reader(str(store))(str(store))


def open_plate(args, base: Path) -> None:
    columns, fields = (6, 4) if args.quick else (24, 9)
    store = base / "plate.ome.zarr"
    t = time.perf_counter()
    n = write_plate(store, columns, fields)
    print(f"wrote {n} fields in {time.perf_counter() - t:.0f} s", flush=True)
    ours, ours_layers = first_draw_in_child(store, "_ours")
    again, _ = first_draw_in_child(store, "_ours")         # the plate's metadata now cached
    theirs, their_layers = first_draw_in_child(store, "_napari_ome_zarr")
    rows = [("vfsmount reader (every field)", n, ours, again, ours_layers),
            ("napari-ome-zarr (first field per well)", len(ROWS) * columns, theirs, float("nan"),
             their_layers)]
    table(f"Opening a {len(ROWS) * columns}-well x {fields}-field OME-Zarr plate in napari's "
          "ViewerModel (seconds to the first draw)", rows,
          ("reader", "fields shown", "first open (s)", "second open (s)", "layers"))


PIPELINE = """
from compute.pipeline import FunctionStep, Pipeline

def invert(stack):
    return stack.max() - stack

pipeline = Pipeline([FunctionStep(invert)], name="inverted")
"""


def _run(pipeline: Path, plate: Path, *stream: str) -> tuple[float, str]:
    """Seconds of the whole command, and its stream line (sent / dropped)."""
    shutil.rmtree(plate / "outputs", ignore_errors=True)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "vfsmount", "run", str(pipeline), str(plate),
                          "--no-progress", *stream], check=True, capture_output=True,
                         text=True).stdout
    line = next((l.split(": ", 1)[1] for l in out.splitlines() if l.startswith("stream ")), "")
    return time.perf_counter() - t, line


def stream_throughput(args, base: Path) -> None:
    from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
    wells = ("A01", "A02", "B01", "B02") if args.quick else tuple(
        f"{r}{c:02d}" for r in "ABCD" for c in range(1, 7))
    spec = PlateSpec(wells=wells, sites=4, channels=2, z=3, t=1, shape=(512, 512))
    plate = make_imagexpress_plate(base / "P", spec)
    pipeline = base / "invert.py"
    pipeline.write_text(PIPELINE)
    port = 5599
    _run(pipeline, plate)                                      # metadata indexed, caches warm
    plain = min(_run(pipeline, plate) for _ in range(2))
    no_viewer = min(_run(pipeline, plate, "--stream", f"napari:{port}") for _ in range(2))
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, f"tcp://127.0.0.1:{port}"],
                                stdout=subprocess.PIPE, text=True)
    try:
        receiver.stdout.readline()
        viewer = min(_run(pipeline, plate, "--stream", f"napari:{port}") for _ in range(2))
    finally:
        receiver.terminate()
        receiver.wait()
    stacks = len(wells) * spec.sites * spec.channels
    rows = [(what, s, stacks / s, line) for what, (s, line) in (
        ("no --stream", plain), ("--stream, no viewer listening", no_viewer),
        ("--stream into a viewer (ViewerModel)", viewer))]
    table(f"vfsmount run, {stacks} stacks of 3 x 512 x 512 uint16 (best of 2, whole command)",
          rows, ("run", "seconds", "stacks/s", "the run's stream line"))


RECEIVER = """
import sys
from napari.components import ViewerModel
from vfsmount.napari.stream import StreamReceiver, apply
receiver, viewer = StreamReceiver(sys.argv[1]), ViewerModel()
print("ready", flush=True)
while True:
    message = receiver.receive(1000)
    if message is not None:
        apply(viewer, *message)
"""


def run(args) -> None:
    base = Path(tempfile.mkdtemp(prefix="vfsbench-napari-"))
    try:
        open_plate(args, base)
        stream_throughput(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
