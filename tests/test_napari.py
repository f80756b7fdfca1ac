"""The napari plugin (issue 30), headless: the reader through npe2 into napari's ViewerModel
(layers, names, scale, translate, contrast limits, pixels equal to tifffile reads of the
mount's files) on a vendor plate, a converted plate and a foreign OME-Zarr plate; the widgets
in a real (offscreen) napari viewer; and `vfsmount run --stream napari` into a receiver in
another process."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from .conftest import REPO, run_cli

pytest.importorskip("napari", reason="the napari extra is not installed (pip install 'vfsmount[napari]')")
pytest.importorskip("zmq", reason="pyzmq (the napari extra) is not installed")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # npe2 on pydantic 2
MANIFEST = REPO / "vfsmount" / "napari" / "napari.yaml"


@pytest.fixture(scope="module")
def plugin():
    """The plugin as napari finds it: by its entry point when vfsmount is installed from this
    tree, else from the manifest file (a venv installed from an older checkout)."""
    import npe2
    pm = npe2.PluginManager.instance()
    pm.discover()
    if "vfsmount" not in pm._manifests:
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    return pm


def open_in_model(path, plugin):
    from napari.components import ViewerModel
    viewer = ViewerModel()
    viewer.open(str(path), plugin="vfsmount")
    return viewer


def by_name(viewer) -> dict:
    return {layer.name: layer for layer in viewer.layers}


def test_the_entry_point_and_an_optional_import():
    """The manifest is declared as napari finds plugins, and nothing else imports napari."""
    text = (REPO / "pyproject.toml").read_text()
    assert '[project.entry-points."napari.manifest"]' in text
    assert 'vfsmount = "vfsmount.napari:napari.yaml"' in text
    code = ("import sys, vfsmount.cli, compute.pipeline, backends.plates.plate, vfsmount.napari.reader;"
            "bad = [m for m in ('napari', 'zmq', 'qtpy') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.strip() == "[]"


def test_declines_what_is_not_a_plate_quickly(tmp_path, plugin):
    from vfsmount.napari.reader import get_reader
    (tmp_path / "notes.txt").write_text("hello")
    tifffile.imwrite(tmp_path / "A01_s001.tif", np.zeros((4, 4), np.uint8))   # not in a mount
    image = tmp_path / "image.zarr"                                           # not a plate
    import zarr
    zarr.open_group(image, mode="w").attrs["multiscales"] = [{"datasets": [{"path": "0"}]}]
    (tmp_path / "empty").mkdir()
    started = time.perf_counter()
    for p in ("notes.txt", "A01_s001.tif", "image.zarr", "empty", "missing"):
        assert get_reader(str(tmp_path / p)) is None, p
    assert time.perf_counter() - started < 1.0


# -- a vendor plate, mounted -------------------------------------------------------------------

def _check_field(layers: dict, names: list[str], image_set, well, site, images: Path):
    """Each channel layer's (t, z) planes equal tifffile's reads of the mount's files."""
    from vfsmount.napari.layers import fields_of
    f = fields_of(image_set)[(well, site)]
    assert list(layers) == names
    for c, layer in zip(f.channels, layers.values()):
        meta = layer.metadata["vfsmount"]
        assert (meta["well"], meta["site"]) == (well, site)
        for ti, t in enumerate(f.ts):
            for zi, z in enumerate(f.zs):
                name = f.name(c, z, t)
                want = tifffile.imread(images / name) if name else 0
                np.testing.assert_array_equal(np.asarray(layer.data[ti, zi]), want)


def test_vendor_plate_through_its_mount(copy_real_plate, mounts, plugin):
    plate = copy_real_plate("1well-3C-2S-Zmix-T")
    mnt = mounts.mount(plate)
    from backends.plates.plate import Plate
    image_set = Plate.open(plate).image_set()
    channels = ["FITC", "Cy3", "Texas Red"]
    px, dt = image_set.physics.pixel_size, image_set.physics.time_interval
    assert px and dt                                   # the plate records both; z it does not

    field = open_in_model(mnt / "hyperstacks" / "C07_s002.tif", plugin)
    layers = by_name(field)
    _check_field(layers, channels, image_set, "C07", 2, mnt / "images")
    cy3 = layers["Cy3"]
    assert tuple(cy3.scale) == pytest.approx((dt, 1.0, px, px))
    assert [str(u) for u in cy3.units] == ["second", "pixel", "micrometer", "micrometer"]
    assert tuple(cy3.translate) == (0, 0, 0, 0)
    assert cy3.metadata["vfsmount"]["plate"] == str(plate)
    lo, hi = cy3.contrast_limits
    assert hi > lo

    # a mount with no record here (another user's): read through its own images/ files
    from napari.components import ViewerModel
    from vfsmount.napari.layers import field_layers
    from vfsmount.napari.reader import _mount_files
    own = _mount_files(mnt)
    files = ViewerModel()
    for data, kwargs, kind in field_layers(own.plate.image_set(own.key), "C07", 1):
        files.add_image(data, **kwargs)
    _check_field(by_name(files), channels, own.plate.image_set(own.key), "C07", 1, mnt / "images")
    assert tuple(by_name(files)["FITC"].scale) == pytest.approx((dt, 1.0, px, px))

    whole = by_name(open_in_model(mnt, plugin))
    assert list(whole) == [f"{c} [plate]" for c in channels] + ["wells"]
    assert list(whole["wells"].features["well"]) == ["C07"]
    _check_plate_tiles(whole["FITC [plate]"], image_set, 1, mnt / "images")


def _check_plate_tiles(layer, image_set, channel: int, images: Path | None, read=None):
    """Every field of every well sits in its slot, equal to a strided read of its file (or
    ``read(name)``: a pyramid level)."""
    from vfsmount.napari.layers import fields_of
    meta = layer.metadata["vfsmount"]
    k, scale = meta["factor"], layer.scale[-2:]
    fields = fields_of(image_set)
    assert sorted(meta["slots"]) == sorted(f"{w}_s{s:03d}" for w, s in fields)
    for (well, site), f in fields.items():
        name = f.name(channel, f.zs[0], f.ts[0])
        want = tifffile.imread(images / name)[::k, ::k] if read is None else read(name)
        y, x = (round(v / s) for v, s in zip(meta["slots"][f"{well}_s{site:03d}"], scale))
        got = np.asarray(layer.data[0, 0, y:y + want.shape[0], x:x + want.shape[1]])
        np.testing.assert_array_equal(got, want, err_msg=f"{well} s{site}")


# -- a converted plate -------------------------------------------------------------------------

def test_converted_plate_from_its_pyramid(tmp_path, mounts, plugin):
    from backends.plates.plate import Plate
    from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
    from vfsmount.napari.layers import fields_of, plate_layers
    from vfsmount.napari.widget import open_field
    spec = PlateSpec(wells=("A01", "B03"), sites=4, channels=2, z=2, t=1, shape=(64, 96))
    plate = make_imagexpress_plate(tmp_path / "P", spec, pixel_size=0.65, z_step=2.5)
    run_cli("convert", str(plate), "--levels", "2", "--no-progress")
    mnt = mounts.mount(plate)
    image_set = Plate.open(plate).image_set()
    assert image_set.serves_planes and image_set.physics.z_spacing == 2.5

    # three fields the fast path must not read: A01 s2's levels rewritten by zarr with other
    # chunks (another .zarray: zarr reads them); B03 s4's levels deleted and B03 s1's chunks
    # truncated (level 0 instead, strided; a truncated chunk refused before any decoder)
    import zarr
    store = zarr.open_group(plate / "zarr", mode="r+")
    group_of = {key: image_set.plane(f.name(1, f.zs[0], f.ts[0])).ref.array.rsplit("/", 1)[0]
                for key, f in fields_of(image_set).items()}
    for dataset in ("1", "2"):
        rechunked = store[f"{group_of['A01', 2]}/{dataset}"]
        data = rechunked[...]
        del store[rechunked.path]
        store.create_array(rechunked.path, data=data, chunks=(1,) * (data.ndim - 2) + (8, 8))
        shutil.rmtree(plate / "zarr" / group_of["B03", 4] / dataset)
        chunks = [c for c in (plate / "zarr" / group_of["B03", 1] / dataset).rglob("*")
                  if c.is_file() and not c.name.startswith(".")]
        assert chunks
        for chunk in chunks:
            chunk.write_bytes(chunk.read_bytes()[:len(chunk.read_bytes()) // 2])

    from napari.components import ViewerModel
    viewer = ViewerModel()
    for data, kwargs, kind in plate_layers(image_set, max_side=200):    # forces a small level
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    w1 = viewer.layers[0]
    meta = w1.metadata["vfsmount"]
    assert meta["factor"] >= 2 and len(meta["slots"]) == 8

    levels = min(meta["factor"], 4)          # --levels 2: factors 1, 2 and 4

    def level(name):          # the store's own level read with zarr, not through vfsmount
        ref = image_set.plane(name).ref
        group = ref.array.rsplit("/", 1)[0]
        if group in (group_of["B03", 4], group_of["B03", 1]):
            k = meta["factor"]
            return np.asarray(store[f"{group}/0"][tuple(ref.index)])[::k, ::k]
        step = meta["factor"] // levels
        return np.asarray(store[f"{group}/{levels.bit_length() - 1}"][tuple(ref.index)])[
            ::step, ::step]
    _check_plate_tiles(w1, image_set, 1, None, read=level)
    # the omero window the conversion wrote is the contrast
    omero = dict(store["A/01/0"].attrs)["omero"]["channels"][0]["window"]
    assert w1.contrast_limits == pytest.approx([omero["start"], omero["end"]])

    added = open_field(viewer, meta, "B03", 3)
    layers = {l.name.split(" ", 1)[1]: l for l in added}
    _check_field(layers, list(layers), image_set, "B03", 3, mnt / "images")
    first = added[0]
    assert tuple(first.translate[-2:]) == pytest.approx(meta["slots"]["B03_s003"])
    assert tuple(first.scale) == pytest.approx((1.0, 2.5, 0.65, 0.65))


# -- a foreign OME-Zarr plate --------------------------------------------------------------------

def test_foreign_plate(tmp_path, mounts, plugin):
    from tests.test_foreign_zarr import write_ome_zarr_py
    from backends.plates.plate import Plate
    written = write_ome_zarr_py(tmp_path / "plate.ome.zarr", "0.4")
    mnt = mounts.mount(written.store)
    whole = by_name(open_in_model(written.store, plugin))
    assert list(whole) == ["DAPI [plate]", "GFP [plate]", "wells"]
    assert sorted(whole["wells"].features["well"]) == ["AA12", "B03"]
    dapi = whole["DAPI [plate]"]
    assert dapi.contrast_limits == [0, 4000]                       # the store's omero window
    assert tuple(dapi.scale[-2:]) == pytest.approx((0.325 * dapi.metadata["vfsmount"]["factor"],) * 2)
    image_set = Plate.open(written.store).image_set()
    _check_plate_tiles(dapi, image_set, 1, mnt / "images")
    field = by_name(open_in_model(mnt / "hyperstacks" / "AA12_s002.tif", plugin))
    _check_field(field, ["DAPI", "GFP"], image_set, "AA12", 2, mnt / "images")


# -- streaming ------------------------------------------------------------------------------------

PIPELINE = """
from compute.pipeline import FunctionStep, Pipeline

def invert(stack):
    return stack.max() - stack

pipeline = Pipeline([FunctionStep(invert)], name="inverted")
"""

STEPS = """
from compute.pipeline import FunctionStep, Pipeline

def invert(stack):
    return stack.max() - stack

def halve(stack):
    return stack // 2

pipeline = Pipeline([FunctionStep(invert), FunctionStep(halve)], name="halved")
"""

RECEIVER = """
import sys, time, numpy as np
from napari.components import ViewerModel
from vfsmount.napari.stream import StreamReceiver, apply
receiver = StreamReceiver(sys.argv[1])
viewer = ViewerModel()
print("ready", flush=True)
expected, got, quiet_until = int(sys.argv[3]), 0, time.monotonic() + 60
while got < expected and time.monotonic() < quiet_until:
    message = receiver.receive(200)
    if message is not None:
        apply(viewer, *message)
        got += 1
out, seen = {}, {}
for i, layer in enumerate(viewer.layers):
    meta = layer.metadata["vfsmount"]
    for j, f in enumerate(meta["fields"]):
        for k, name in enumerate(f["names"]):
            seen[name] = seen.get(name, 0) + 1
            out[name + ":count"] = np.array(seen[name])
            out[name] = np.asarray(layer.data[j, k])
            out[name + ":scale"] = np.asarray(layer.scale)
            out[name + ":layer"] = np.array(layer.name)
np.savez(sys.argv[2], **out)
receiver.close()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_streams_every_output_once(tmp_path, small_spec):
    """Every written result and (--stream-steps) every step's, once, with name, scale, pixels."""
    from backends.naming import parse_virtual_name
    from backends.plates.plate import Plate
    from backends.plates.sample_plates import make_imagexpress_plate
    plate = make_imagexpress_plate(tmp_path / "P", small_spec)
    (tmp_path / "steps.py").write_text(STEPS)
    address = f"tcp://127.0.0.1:{_free_port()}"
    stacks = len(small_spec.wells) * small_spec.sites * small_spec.channels * small_spec.t
    script = tmp_path / "receiver.py"
    script.write_text(RECEIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    receiver = subprocess.Popen([sys.executable, str(script), address, str(tmp_path / "got.npz"),
                                 str(2 * stacks)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert receiver.stdout.readline().strip() == "ready"
        res = run_cli("run", str(tmp_path / "steps.py"), str(plate), "--stream",
                      f"napari:{address}", "--stream-steps", "--no-progress")
        receiver.wait(timeout=90)
    finally:
        receiver.kill() if receiver.poll() is None else None
    assert f"{2 * stacks} of {2 * stacks} results sent" in res.stdout
    got = np.load(tmp_path / "got.npz")
    outputs = sorted((plate / "outputs" / "halved").glob("*.tif"))
    assert len(outputs) == small_spec.n_images
    steps = [p.name[:-4] + "_invert.tif" for p in outputs]
    assert sorted(k for k in got.files if ":" not in k) == sorted([p.name for p in outputs] + steps)
    physics = Plate.open(plate).image_set().physics
    for p, step in zip(outputs, steps):
        assert int(got[p.name + ":count"]) == int(got[step + ":count"]) == 1   # each one, once
        written = tifffile.imread(p)
        np.testing.assert_array_equal(got[p.name], written)
        np.testing.assert_array_equal(got[step] // 2, written)                   # the step before
        assert tuple(got[p.name + ":scale"]) == pytest.approx((1.0, 2.5, 0.65, 0.65))
        label = physics.label(parse_virtual_name(p.name).channel)
        assert str(got[p.name + ":layer"]) == f"halved {label}"
        assert str(got[step + ":layer"]) == f"halved [invert] {label}"


def test_run_with_no_viewer_finishes_and_says_so_once(tmp_path, small_spec):
    from backends.plates.sample_plates import make_imagexpress_plate
    plate = make_imagexpress_plate(tmp_path / "P", small_spec)
    (tmp_path / "invert.py").write_text(PIPELINE)
    res = run_cli("run", str(tmp_path / "invert.py"), str(plate), "--stream",
                  f"napari:{_free_port()}", "--no-progress", timeout=120)
    assert len(list((plate / "outputs" / "inverted").glob("*.tif"))) == small_spec.n_images
    assert res.stderr.count("results are dropped") == 1
    assert "results sent" in res.stdout and "dropped" in res.stdout
    from compute.streaming import MAX_FRAMES
    queued = re.search(r"at most (\d+) queued", res.stdout)     # the run's queue stayed bounded
    assert queued and 0 <= int(queued[1]) <= MAX_FRAMES, res.stdout


def test_stream_address_forms():
    from compute.streaming import DEFAULT_ADDRESS, parse_target
    assert parse_target("napari") == DEFAULT_ADDRESS
    assert parse_target("napari:6000") == "tcp://127.0.0.1:6000"
    assert parse_target("napari:host:6000") == "tcp://host:6000"
    assert parse_target("napari:ipc:///tmp/v") == "ipc:///tmp/v"
    for bad in ("fiji", "napari:x"):
        with pytest.raises(ValueError):
            parse_target(bad)


# -- a real viewer, offscreen -------------------------------------------------------------------

def test_widgets_in_a_real_viewer(tmp_path):
    """tests/napari_qt_child.py (pytest-qt) in its own process under Xvfb: napari's canvas
    needs OpenGL, which Qt's offscreen platform gets only from an X server; a process of its
    own, so this session never holds a display that goes away."""
    pytest.importorskip("pytestqt", reason="pytest-qt is not installed")
    if shutil.which("xvfb-run") is None:
        pytest.skip("no xvfb-run (apt install xvfb xauth): napari's canvas needs OpenGL, "
                    "which Qt's offscreen platform gets only from an X server")
    problem = _qt_problem()
    if problem:
        pytest.skip(f"no Qt viewer here (PyQt5, offscreen platform under Xvfb): {problem}")
    env = {**os.environ, "PYTHONPATH": str(REPO), "QT_QPA_PLATFORM": "offscreen"}
    res = subprocess.run(["xvfb-run", "-a", sys.executable, "-m", "pytest", "-q", "-x",
                          "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "child"),
                          str(REPO / "tests" / "napari_qt_child.py")],
                         capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert res.returncode == 0 and " passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


def _qt_problem() -> str | None:
    """Why a Qt application cannot start here (asked in a child: a missing platform aborts)."""
    code = "from qtpy.QtWidgets import QApplication; QApplication([])"
    res = subprocess.run(["xvfb-run", "-a", sys.executable, "-c", code], capture_output=True,
                         text=True, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
                         timeout=120)
    return None if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1]
