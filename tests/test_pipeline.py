"""Pipelines: end to end on plates and through a mount, mixed memory types, bad input."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends.plates.convert import convert_plate
from backends.plates.metadata import read_metadata
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from compute import (CsvOptions, MaterializationSpec, PipelineError, special_inputs, special_outputs)
from compute import numpy as numpy_function
from compute.frameworks import available
from compute.functions import (gaussian_filter, gaussian_filter_torch, label_with_measurements,
                               threshold_otsu, threshold_otsu_cle)
from compute.materialization import MaterializationError
from compute.pipeline import FunctionStep, Pipeline, VFSConfig, run_pipeline

from .conftest import imagej_available, imagej_open, run_cli

REPO = Path(__file__).resolve().parents[1]
SPEC = PlateSpec(wells=("A01", "B02"), sites=1, channels=2, z=3, shape=(96, 128))


def three_steps(**config) -> Pipeline:
    return Pipeline([FunctionStep(gaussian_filter, sigma=2.0), FunctionStep(threshold_otsu),
                     FunctionStep(label_with_measurements)], name="cells",
                    config=VFSConfig(**config) if config else None)


def reference_rows(stack: np.ndarray) -> list[dict]:
    """The same analysis computed independently with SciPy and scikit-image."""
    from scipy import ndimage
    from skimage import filters, measure
    blurred = ndimage.gaussian_filter(stack.astype(np.float32), sigma=(0, 2, 2), mode="nearest")
    mask = blurred > filters.threshold_otsu(blurred)
    rows = []
    for z in range(stack.shape[0]):
        lab = measure.label(mask[z], connectivity=2)
        for r in measure.regionprops(lab, intensity_image=stack[z].astype(np.float64)):
            rows.append({"z": z + 1, "label": r.label, "area": r.area, "centroid_y": r.centroid[0],
                         "centroid_x": r.centroid[1], "mean_intensity": r.intensity_mean})
    return rows


def check_csv(path: Path, stack: np.ndarray) -> int:
    with open(path) as f:
        got = list(csv.DictReader(f))
    want = reference_rows(stack)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert int(g["z"]) == w["z"] and int(g["label"]) == w["label"] and int(g["area"]) == w["area"]
        for k in ("centroid_y", "centroid_x", "mean_intensity"):
            assert float(g[k]) == pytest.approx(w[k], rel=1e-9)
    return len(got)


def stack_of(plate: Path, well: str, channel: int, key: str | None = None) -> np.ndarray:
    p = Plate.open(plate)
    backend = p.backend(key)
    names = [n for n in p.image_files(key) if n.startswith(f"{well}_s001_w{channel}_")]
    return np.stack(backend.load_batch(names))


@pytest.mark.parametrize("backend", ["disk", "zarr"])
def test_three_step_pipeline_on_a_synthetic_plate(tmp_path, backend):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    result = run_pipeline(three_steps(materialization_backend=backend), plate, progress=False)
    assert result.groups == 4 and result.images_written == 12
    out = plate / "outputs" / "cells"
    for well in ("A01", "B02"):
        for c in (1, 2):
            check_csv(out / f"{well}_s001_w{c}_t001_measurements.csv", stack_of(plate, well, c))
            assert (out / f"{well}_s001_w{c}_t001_rois.zip").is_file()
    entry = read_metadata(plate)["subdirectories"]["outputs/cells"]
    assert entry["available_backends"] == {backend: True} and len(entry["image_files"]) == 12
    labels = Plate.open(plate).backend("outputs/cells").load("A01_s001_w1_z002_t001.tif")
    assert labels.dtype == np.uint16 and labels.max() >= 1
    if backend == "zarr":
        assert (plate / "outputs" / "cells.zarr").is_dir()
        assert not (out / "A01_s001_w1_z002_t001.tif").exists()


def test_pipeline_on_a_converted_real_plate(copy_real_plate):
    plate = copy_real_plate("1well-3C-2S-Zmix-T")
    convert_plate(plate, progress=False)
    run_cli("run", str(REPO / "examples" / "cells.py"), str(plate), "--no-progress")
    out = plate / "outputs" / "cells"
    # z is 1 here: each stack is a single plane per site, channel and time point
    p = Plate.open(plate)
    name = "C07_s002_w3_z001_t002.tif"
    stack = p.backend().load(name)[None]
    n = check_csv(out / "C07_s002_w3_t002_measurements.csv", stack)
    assert n > 0
    assert len([f for f in os.listdir(out) if f.endswith("_measurements.csv")]) == 12


def test_run_through_a_writable_mount(tmp_path, mounts):
    import roifile
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    mnt = mounts.mount(plate, "--writable", "--materialize", "zarr")
    res = run_cli("run", str(REPO / "examples" / "cells.py"), str(mnt), "--no-progress")
    assert "12 images and 8 files" in res.stdout
    mnt2 = mounts.remount(plate, mnt)
    listed = sorted(os.listdir(mnt2 / "outputs" / "cells"))
    assert "A01_s001_w1_z001_t001.tif" in listed and "B02_s001_w2_t001_measurements.csv" in listed
    img = tifffile.imread(mnt2 / "outputs" / "cells" / "A01_s001_w1_z002_t001.tif")
    assert img.dtype == np.uint16 and img.shape == (96, 128) and img.max() >= 1
    assert (plate / "outputs" / "cells.zarr").is_dir()           # images went to zarr
    rois = roifile.roiread(mnt2 / "outputs" / "cells" / "A01_s001_w1_t001_rois.zip")
    assert len(rois) >= 1 and rois[0].coordinates().shape[1] == 2
    check_csv(mnt2 / "outputs" / "cells" / "A01_s001_w2_t001_measurements.csv",
              stack_of(plate, "A01", 2))
    if imagej_available():
        w, h, bits, slices, mean = imagej_open(mnt2 / "outputs" / "cells" / "A01_s001_w1_z002_t001.tif",
                                               tmp_path)
        assert (w, h, bits, slices) == (128, 96, 16, 1)
        assert mean == pytest.approx(float(img.mean()), rel=1e-6)


def test_read_only_mount_is_refused(tmp_path, mounts):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    mnt = mounts.mount(plate)
    res = run_cli("run", str(REPO / "examples" / "cells.py"), str(mnt), check=False)
    assert res.returncode == 1 and "--writable" in res.stderr


@pytest.mark.skipif(not (available("torch") and available("pyclesperanto")),
                    reason="needs torch and pyclesperanto")
def test_mixed_memory_types_match_numpy(tmp_path):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    run_pipeline(Pipeline([FunctionStep(gaussian_filter, sigma=2.0), FunctionStep(threshold_otsu),
                           FunctionStep(label_with_measurements)], name="numpy"), plate, progress=False)
    run_pipeline(Pipeline([FunctionStep(gaussian_filter_torch, sigma=2.0),      # torch
                           FunctionStep(threshold_otsu_cle),                      # pyclesperanto
                           FunctionStep(label_with_measurements)], name="mixed"),  # numpy
                 plate, progress=False)
    p = Plate.open(plate)
    for name in p.image_files():
        a = p.backend("outputs/numpy").load(name) > 0
        b = p.backend("outputs/mixed").load(name) > 0
        # documented tolerance: masks agree on >= 99.5 % of pixels (float32 blur kernels differ
        # in truncation and summation order; thresholds differ by histogram binning)
        assert (a == b).mean() >= 0.995, name
    for f in (plate / "outputs" / "numpy").glob("*_measurements.csv"):
        n_numpy = sum(1 for _ in open(f)) - 1
        n_mixed = sum(1 for _ in open(plate / "outputs" / "mixed" / f.name)) - 1
        assert abs(n_numpy - n_mixed) <= max(1, n_numpy // 20), f.name


def test_failure_in_one_well_keeps_the_others(tmp_path):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)

    calls = []

    @numpy_function
    def fragile(stack):
        calls.append(1)
        if len(calls) in (3, 4):       # call 1 is the dry run; two of the four stacks fail
            raise RuntimeError("boom")
        return stack

    with pytest.raises(PipelineError, match=r"step 'fragile': RuntimeError: boom") as e:
        run_pipeline(Pipeline([FunctionStep(fragile)], name="fragile"), plate, workers=1,
                     progress=False)
    assert "well " in str(e.value)
    written = os.listdir(plate / "outputs" / "fragile")
    assert written                                   # the stacks that worked are kept


def test_failing_stack_does_not_stop_the_other_stacks_of_its_well(tmp_path):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    broken = Plate.open(plate).backend().load("A01_s001_w1_z001_t001.tif")

    @numpy_function
    def fragile(stack):
        if stack.shape[1:] == broken.shape and np.array_equal(stack[0], broken):
            raise RuntimeError("this stack is broken on purpose")
        return stack

    with pytest.raises(PipelineError) as e:
        run_pipeline(Pipeline([FunctionStep(fragile)], name="fragile"), plate, workers=1,
                     progress=False)
    assert str(e.value).startswith("1 stack(s) failed")
    assert "well A01, A01_s001_w1_t001, step 'fragile'" in str(e.value)
    written = set(os.listdir(plate / "outputs" / "fragile"))
    # A01's first stack failed; A01's second stack, after it in the same well, still ran
    assert {f"A01_s001_w2_z00{z}_t001.tif" for z in (1, 2, 3)} <= written
    assert not any(n.startswith("A01_s001_w1_") for n in written)
    assert len(written) == 9


def test_intermediates_flow_through_the_memory_backend(tmp_path, monkeypatch):
    """What a later step reads is staged in the memory backend and deleted after its last
    reader; what nothing reads (the last image, unread special outputs) is never stored."""
    from backends.storage.memory import MemoryStorageBackend
    saved, deleted = [], []
    real_save, real_delete = MemoryStorageBackend.save, MemoryStorageBackend.delete
    monkeypatch.setattr(MemoryStorageBackend, "save",
                        lambda self, data, path, **kw: (saved.append(str(path)),
                                                        real_save(self, data, path, **kw))[1])
    monkeypatch.setattr(MemoryStorageBackend, "delete",
                        lambda self, path, **kw: (deleted.append(str(path)),
                                                  real_delete(self, path, **kw))[1])

    @special_outputs("mask_sum", "unread")
    @numpy_function
    def produce(stack):
        return stack, int(stack.sum()), "nobody reads this"

    @special_inputs("mask_sum")
    @numpy_function
    def consume(stack, mask_sum=None):
        assert mask_sum is not None
        return stack + 0 * mask_sum

    @numpy_function
    def last(stack):
        return stack

    from compute.pipeline import compute_group, group_images
    pipeline = Pipeline([FunctionStep(produce), FunctionStep(consume), FunctionStep(last)], name="f")
    group = group_images([f"A01_s001_w1_z00{z}_t001.tif" for z in (1, 2)], ("z",))[0]
    planes = [np.full((4, 5), z, np.uint16) for z in (1, 2)]
    out = compute_group(pipeline, group, planes)
    assert np.array_equal(out, np.stack(planes))
    stem = "/f/A01_s001_w1_t001"
    assert saved == [f"{stem}/special/mask_sum", f"{stem}/image", f"{stem}/image"]
    assert sorted(deleted) == sorted(saved)                    # nothing left behind


# -- refused before any image is processed -------------------------------------------------------

def refused(tmp_path, pipeline, match):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    with pytest.raises((PipelineError, MaterializationError), match=match):
        run_pipeline(pipeline, plate, progress=False)
    assert not (plate / "outputs").exists()


def test_wrong_shape_is_refused(tmp_path):
    @numpy_function
    def flatten(stack):
        return stack.max(axis=0)                    # 2D: breaks the [Z, Y, X] discipline
    refused(tmp_path, [FunctionStep(flatten)], r"step 'flatten'.*shape \(\d+, \d+\)")


def test_wrong_memory_type_is_refused(tmp_path):
    @numpy_function
    def listy(stack):
        return stack.tolist()
    refused(tmp_path, [FunctionStep(listy)], r"step 'listy'.*declared output numpy but returned list")


def test_missing_special_input_is_refused(tmp_path):
    @special_inputs("cell_mask")
    @numpy_function
    def needs_mask(stack, cell_mask=None):
        return stack
    refused(tmp_path, [FunctionStep(needs_mask)],
            r"step 'needs_mask': special input 'cell_mask' is produced by no earlier step")


def test_colliding_outputs_are_refused(tmp_path):
    def producer(suffix):
        @special_outputs(("stats", MaterializationSpec(CsvOptions(filename_suffix=suffix))))
        @numpy_function
        def stats(stack):
            return stack, [{"n": 1}]
        return stats
    refused(tmp_path, [FunctionStep(producer("_a.csv"), name="first"),
                       FunctionStep(producer("_b.csv"), name="second")],
            r"step 'second': special output 'stats' collides with the one of step 'first'")


def test_unknown_intermediate_backend_is_refused(tmp_path):
    refused(tmp_path, Pipeline([FunctionStep(threshold_otsu)], name="x",
                               config=VFSConfig(intermediate_backend="disk")),
            r"intermediate backend 'disk': intermediates are staged in the memory backend only")


def test_unknown_option_type_is_refused():
    class ParquetOptions:
        filename_suffix = ".parquet"
    with pytest.raises(MaterializationError, match="unknown materialization option ParquetOptions"):
        MaterializationSpec(ParquetOptions())


def test_dict_pattern_per_channel(tmp_path):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)

    @numpy_function
    def double(stack):
        return stack * 2

    @numpy_function
    def negate(stack):
        return -stack.astype(np.int32)

    run_pipeline(Pipeline([FunctionStep({"1": double, "2": [(negate, {})]}, name="per_channel")],
                          name="dict"), plate, progress=False)
    p = Plate.open(plate)
    src = p.backend()
    out = p.backend("outputs/dict")
    assert np.array_equal(out.load("A01_s001_w1_z001_t001.tif"),
                          src.load("A01_s001_w1_z001_t001.tif") * 2)
    assert np.array_equal(out.load("A01_s001_w2_z001_t001.tif"),
                          -src.load("A01_s001_w2_z001_t001.tif").astype(np.int32))
    with pytest.raises(PipelineError, match=r"no function for channel=2"):
        run_pipeline(Pipeline([FunctionStep({"1": double})], name="dict2"), plate, progress=False)


# -- compute on read ------------------------------------------------------------------------------

COUNTING_PIPELINE = '''
import os
import numpy as np
from compute import numpy as numpy_function
from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu
from compute.pipeline import FunctionStep, Pipeline

@numpy_function
def count_and_check(stack):
    with open({counter!r}, "a") as f:     # one "x" per stack computed
        f.write("x")
    return stack

@numpy_function
def fail_on_b02(stack):
    if os.environ.get("VFSMOUNT_TEST_FAIL") and stack.shape[0] == 3 and stack[0, 0, 0] == {marker}:
        raise RuntimeError("this stack is broken on purpose")
    return stack

pipeline = Pipeline([FunctionStep(count_and_check), FunctionStep(fail_on_b02),
                     FunctionStep(gaussian_filter, sigma=2.0), FunctionStep(threshold_otsu),
                     FunctionStep(label_with_measurements)], name="cells")
'''


def test_compute_on_read(tmp_path, mounts):
    plate = make_imagexpress_plate(tmp_path / "p", SPEC, thumbnails=False, projections=False)
    run_pipeline(three_steps(), plate, progress=False)              # the reference outputs
    counter = tmp_path / "counter"
    marker = int(Plate.open(plate).backend().load("B02_s001_w2_z001_t001.tif")[0, 0])
    pipeline_file = tmp_path / "counting.py"
    pipeline_file.write_text(COUNTING_PIPELINE.format(counter=str(counter), marker=marker))
    os.environ["VFSMOUNT_TEST_FAIL"] = "1"      # inherited by the daemon
    try:
        mnt = mounts.mount(plate, "--pipeline", str(pipeline_file))
    finally:
        del os.environ["VFSMOUNT_TEST_FAIL"]
    folder = mnt / "processed" / "cells"
    names = sorted(os.listdir(folder))   # the computed planes, and their LoadData CSV
    assert names == sorted([*Plate.open(plate).image_files(), "load_data.csv"])
    size_before = os.stat(folder / "A01_s001_w1_z002_t001.tif").st_size
    runs_at_mount = len(counter.read_text())                         # the sizing dry run(s)
    data = (folder / "A01_s001_w1_z002_t001.tif").read_bytes()
    assert len(data) == size_before                                  # exact size before reading
    want = tifffile.imread(plate / "outputs" / "cells" / "A01_s001_w1_z002_t001.tif")
    got = tifffile.imread(folder / "A01_s001_w1_z002_t001.tif")
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert len(counter.read_text()) == runs_at_mount + 1            # one stack computed
    for name in ("A01_s001_w1_z002_t001.tif", "A01_s001_w1_z003_t001.tif"):
        with open(folder / name, "rb") as f:                         # page cache dropped: the
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)   # daemon must serve it
            assert tifffile.imread(f).shape == (96, 128)
    assert len(counter.read_text()) == runs_at_mount + 1            # served from the cache
    with pytest.raises(OSError) as e:                                # the function raises: EIO
        (folder / "B02_s001_w2_z001_t001.tif").read_bytes()
    assert e.value.errno == 5
    assert "this stack is broken on purpose" in mounts.log(mnt)
    assert tifffile.imread(folder / "B02_s001_w1_z001_t001.tif").shape == (96, 128)   # alive
