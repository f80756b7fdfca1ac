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

import json
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
    """The plate store. The first field is written by ome-zarr-py's metadata writers and zarr's
    arrays; every other field is that field's metadata files with its own pixels, encoded by
    the same codec (numcodecs, from the template's ``.zarray``): creating 13,824 arrays through
    zarr took 642 s on this machine under load, this a minute."""
    import json
    import numcodecs
    from concurrent.futures import ThreadPoolExecutor
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
    # noise in 8 x 8 blocks: the 1/8 level (what the plate view reads) is all noise, and level 0
    # compresses (3,456 fields x 1 MiB of pure noise would be 3 GB of disk)
    base = np.kron(rng.integers(0, 2000, size=(2, side // 8, side // 8), dtype=np.uint16),
                   np.ones((1, 8, 8), np.uint16))

    def pixels(i: int, level: int) -> np.ndarray:
        step = 2 ** level
        return np.ascontiguousarray(base[:, ::step, ::step] + np.uint16(i))

    template = root.require_group(f"{wells[0]}/0")
    datasets = []
    for level in range(LEVELS):
        template.create_array(str(level), data=pixels(0, level), chunks=pixels(0, level).shape)
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 0.325 * 2 ** level, 0.325 * 2 ** level]}]})
    write_multiscales_metadata(template, datasets, fmt=fmt, axes=axes)
    template.attrs["omero"] = omero
    src = path / wells[0] / "0"
    meta = {f: (src / f).read_bytes() for f in (".zgroup", ".zattrs")}
    arrays = {str(level): (src / str(level) / ".zarray").read_bytes() for level in range(LEVELS)}
    codec = numcodecs.get_codec(json.loads(arrays["0"])["compressor"])

    def write_well(i: int, w: str) -> None:
        well = root.require_group(w)
        write_well_metadata(well, [{"path": str(f)} for f in range(fields)], fmt=fmt)
        for f in range(fields):
            if i == f == 0:
                continue
            image = path / w / str(f)
            image.mkdir(parents=True, exist_ok=True)
            for name, data in meta.items():
                (image / name).write_bytes(data)
            for level, zarray in arrays.items():
                (image / level).mkdir(exist_ok=True)
                (image / level / ".zarray").write_bytes(zarray)
                (image / level / "0.0.0").write_bytes(codec.encode(pixels(i + f, int(level))))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write_well, range(len(wells)), wells))
    return len(wells) * fields


def first_draw_in_child(store: Path, reader: str, setup: str = "", tree: str | None = None) -> dict:
    """first_draw in a fresh process (no cache of an earlier open); napari and both readers'
    modules imported before the clock starts; ``setup``: code run before it. Its seconds,
    layers, and the parts: reader (the reader function: metadata, layer data built), add
    (the layers added to the ViewerModel: napari slices each), draw (every slice read).
    ``tree``: another checkout's code is measured (with this file as its benchmarks/napari.py)."""
    import os
    code = ("import json, napari.components, benchmarks.napari as b, vfsmount.napari.layers, "
            "backends.plates.plate, backends.ngff.backend, napari_ome_zarr, ome_zarr.reader, dask.array; "
            f"b.warm_up(); {setup or 'pass'}; "
            f"from pathlib import Path; "
            f"s, n = b.first_draw(b.{reader}(Path({str(store)!r}))); "
            "print(json.dumps({'seconds': s, 'layers': n, **b.PHASES}))")
    env = dict(os.environ)
    if tree:
        shutil.copy(__file__, Path(tree) / "benchmarks" / "napari.py")
        env["PYTHONPATH"] = tree
    # the child's folder: `python -c` imports from it before PYTHONPATH
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=tree or None).stdout.splitlines()
    return json.loads(out[-1])


def _parts(r: dict) -> str:
    return f"{r['reader']:.1f} / {r['add']:.1f} / {r['draw']:.1f}"


def warm_up() -> None:
    """napari's one-time costs (its unit registry, lazy imports of the layer machinery) before
    the clock starts: they are the same whichever reader runs first."""
    from napari.components import ViewerModel
    viewer = ViewerModel()
    viewer.add_image(np.zeros((2, 4, 4), np.uint16), channel_axis=0, units=("micrometer",) * 2)
    viewer.add_points(np.zeros((1, 2)), text={"string": "x"})


PHASES: dict[str, float] = {}       # the last first_draw's parts (seconds)


def first_draw(open_layers) -> tuple[float, int]:
    """Seconds from nothing to every layer's current slice read, and the layers' count."""
    from napari.components import ViewerModel
    t = time.perf_counter()
    viewer = ViewerModel()
    layers = open_layers()
    t_read = time.perf_counter()
    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    t_add = time.perf_counter()
    for layer in viewer.layers:                 # what the canvas would draw
        if layer._type_string == "image":
            np.asarray(layer._slice.image.raw)
    end = time.perf_counter()
    PHASES.update(reader=t_read - t, add=t_add - t_read, draw=end - t_add)
    return end - t, len(viewer.layers)


def _ours(store: Path):
    from vfsmount.napari.reader import get_reader
    return lambda: get_reader(str(store))(str(store))


def _napari_ome_zarr(store: Path):
    from napari_ome_zarr import napari_get_reader
    return lambda: napari_get_reader(str(store))(str(store))


def evict(folder: Path) -> int:
    """Drop ``folder``'s files from the page cache (theirs only: the machine is shared);
    the bytes evicted."""
    import os
    total = 0
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def open_vendor_plate(args, base: Path) -> None:
    """A plate of vendor files, no pyramid: every field is level 0, read strided (1/8)."""
    from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
    columns, fields = (6, 4) if args.quick else (24, 9)
    wells = tuple(f"{r}{c:02d}" for r in ROWS for c in range(1, columns + 1))
    spec = PlateSpec(wells=wells, sites=fields, channels=2, z=1, t=1, shape=(512, 512))
    t = time.perf_counter()
    plate = make_imagexpress_plate(base / "vendor", spec, write_pixels=False, thumbnails=False,
                                   projections=False)
    print(f"wrote {spec.n_images} TIFFs in {time.perf_counter() - t:.0f} s", flush=True)
    first = first_draw_in_child(plate, "_ours")           # indexes the plate
    layers = first["layers"]
    rows = [("first open (indexes the plate; files in the page cache)", first["seconds"],
             _parts(first))]
    evict(plate)
    for cache in ("cold", "warm"):
        r = first_draw_in_child(plate, "_ours")
        rows.append((f"{cache} page cache (the plate indexed)", r["seconds"], _parts(r)))
    size = spec.n_images * 512 * 512 * 2
    table(f"vfsmount reader, an ImageXpress plate of {len(wells)} wells x {fields} fields x 2 "
          f"channels, 512 x 512 uint16 uncompressed TIFFs ({size / 2**30:.1f} GiB), every field "
          f"shown at 1/8, {layers} layers (seconds to the first draw)", rows,
          ("read", "seconds", "reader / add / draw"))


def open_plate(args, base: Path) -> None:
    import os
    columns, fields = (6, 4) if args.quick else (24, 9)
    store = base / "plate.ome.zarr"
    t = time.perf_counter()
    n = write_plate(store, columns, fields)
    print(f"wrote {n} fields in {time.perf_counter() - t:.0f} s", flush=True)
    ours = first_draw_in_child(store, "_ours")
    again = first_draw_in_child(store, "_ours")            # the plate's metadata now cached
    theirs = first_draw_in_child(store, "_napari_ome_zarr")
    before = os.environ.get("VFSMOUNT_BENCH_BEFORE")     # a checkout of the code to compare
    old = first_draw_in_child(store, "_ours", tree=before) if before else None
    rows = [("vfsmount reader (every field)", n, ours["seconds"], _parts(ours), again["seconds"],
             _parts(again), ours["layers"]),
            ("napari-ome-zarr (first field per well)", len(ROWS) * columns, theirs["seconds"],
             _parts(theirs), float("nan"), "", theirs["layers"])]
    if old:
        rows.append((f"vfsmount reader of {before} (every field)", n, old["seconds"],
                     _parts(old), float("nan"), "", old["layers"]))
    table(f"Opening a {len(ROWS) * columns}-well x {fields}-field OME-Zarr plate in napari's "
          "ViewerModel (seconds to the first draw; parts: reader / add / draw)", rows,
          ("reader", "fields shown", "first open (s)", "parts", "second open (s)", "parts",
           "layers"))


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
        open_vendor_plate(args, base)
        stream_throughput(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
