"""Bad data never takes the daemon down (issue 16): chunks are checked before any decoder
sees them, unchecked codecs are decoded in a worker process, and a corrupt chunk is one
CorruptDataError (EIO through the mount), never a crash."""
from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr

from backends.guards.chunk_formats import (ChunkFault, check_blosc, check_gzip, check_lz4, check_zlib,
                                    check_zstd)
from backends.guards.chunk import guard_store
from backends.plates.convert import convert_plate
from backends.errors import CorruptDataError
from backends.guards.isolated import DecoderCrashed, run_isolated
from backends.naming import parse_virtual_name
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate, synthetic_image
from backends.ngff.backend import ZarrStorageBackend
from backends.ngff.config import ZarrConfig
from vfsmount.tiff_layout import synthesize

SEED = int(os.environ.get("VFSMOUNT_FUZZ_SEED", "16"))


# -- the format checks on their own -------------------------------------------------------

def _payloads():
    rng = np.random.default_rng(SEED)
    yield np.zeros(5000, "<u2")
    yield rng.integers(0, 4096, 70001).astype("<u2")                    # a partial last block
    yield (np.arange(300_000) // 7).astype("<u4")
    yield rng.integers(0, 255, 333).astype("u1")


CODECS = {
    "blosc-zstd": (numcodecs.Blosc("zstd", 1, numcodecs.Blosc.BITSHUFFLE), check_blosc),
    "blosc-lz4": (numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE), check_blosc),
    "blosc-zlib": (numcodecs.Blosc("zlib", 1, numcodecs.Blosc.NOSHUFFLE), check_blosc),
    "blosc-blosclz": (numcodecs.Blosc("blosclz", 9, numcodecs.Blosc.SHUFFLE), check_blosc),
    "zstd": (numcodecs.Zstd(level=1), check_zstd),
    "zstd-checksum": (numcodecs.Zstd(level=3, checksum=True), check_zstd),
    "gzip": (numcodecs.GZip(1), check_gzip),
    "zlib": (numcodecs.Zlib(1), check_zlib),
    "lz4": (numcodecs.LZ4(), check_lz4),
}
TRUNCATION_SEEN = {"blosc-zstd", "blosc-lz4", "blosc-zlib", "blosc-blosclz", "zstd",
                   "zstd-checksum", "gzip"}      # zlib and LZ4 blocks have no length up front


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_format_checks_accept_valid_and_refuse_broken_chunks(codec):
    encoder, check = CODECS[codec]
    rng = random.Random(SEED)
    for data in _payloads():
        encoded = encoder.encode(data)
        check(memoryview(encoded), data.nbytes)                       # valid: accepted
        for bad in (b"", bytes(len(encoded))):                        # emptied, zeroed
            with pytest.raises(ChunkFault):
                check(memoryview(bad), data.nbytes)
        if codec != "zlib":                                           # zlib records no size
            with pytest.raises(ChunkFault):
                check(memoryview(encoded), data.nbytes + 2)
        if codec in TRUNCATION_SEEN:
            for cut in {rng.randrange(len(encoded)) for _ in range(40)}:
                with pytest.raises(ChunkFault):
                    check(memoryview(encoded[:cut]), data.nbytes)


def test_blosc_header_fields_are_checked():
    data = (np.arange(100_000) % 1000).astype("<u2")
    good = bytearray(numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE).encode(data))
    check_blosc(good, data.nbytes, 2)
    for offset, value, reason in ((0, 9, "unknown format"), (3, 4, "type size"),
                                  (8, 0, "block size"), (12, len(good) + 1000, "compressed bytes")):
        bad = bytearray(good)
        if offset < 8:
            bad[offset] = value
        else:
            bad[offset:offset + 4] = value.to_bytes(4, "little")
        with pytest.raises(ChunkFault, match=reason):
            check_blosc(bad, data.nbytes, 2)
    bad = bytearray(good)
    bad[16:20] = (len(good) + 5).to_bytes(4, "little")               # a block start past the end
    with pytest.raises(ChunkFault, match="outside the buffer"):
        check_blosc(bad, data.nbytes, 2)


# -- the guarded store, in process ------------------------------------------------------------

def _write(path: Path, **kw) -> tuple[zarr.Array, np.ndarray]:
    data = (np.arange(4 * 64 * 80).reshape(4, 64, 80) % 3001).astype("<u2")
    arr = zarr.create_array(path, shape=data.shape, dtype=data.dtype, **kw)
    arr[...] = data
    return arr, data


STORES = {
    "v2-blosc-zstd": dict(chunks=(1, 64, 80), zarr_format=2, compressors=numcodecs.Blosc("zstd")),
    "v2-zstd": dict(chunks=(1, 64, 80), zarr_format=2, compressors=numcodecs.Zstd(level=1)),
    "v2-gzip": dict(chunks=(1, 64, 80), zarr_format=2, compressors=numcodecs.GZip(1)),
    "v2-lz4": dict(chunks=(1, 64, 80), zarr_format=2, compressors=numcodecs.LZ4()),
    "v3-blosc": dict(chunks=(1, 64, 80), compressors=zarr.codecs.BloscCodec(cname="lz4")),
    "v3-sharded": dict(chunks=(1, 64, 80), shards=(2, 64, 80),
                       compressors=zarr.codecs.BloscCodec(cname="zstd")),
    "v2-delta-blosc": dict(chunks=(1, 64, 80), zarr_format=2, filters=[numcodecs.Delta("<u2")],
                           compressors=numcodecs.Blosc("lz4")),
    "v2-lzma (worker)": dict(chunks=(1, 64, 80), zarr_format=2, compressors=numcodecs.LZMA()),
}


def _chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.name != "zarr.json")


@pytest.mark.parametrize("kind", sorted(STORES))
def test_guarded_store_refuses_corrupt_chunks_by_array_and_key(tmp_path, kind):
    _arr, data = _write(tmp_path / "a.zarr", **STORES[kind])
    chunk = _chunk_files(tmp_path / "a.zarr")[0]
    raw = chunk.read_bytes()
    # an LZ4 block records no length: its truncation is seen by the (safe) decoder, not here
    chunk.write_bytes(bytes(len(raw)) if kind == "v2-lz4" else raw[:len(raw) // 2])
    arr = zarr.open_array(guard_store(zarr.storage.LocalStore(tmp_path / "a.zarr"), "a.zarr"),
                          mode="r")
    with pytest.raises(CorruptDataError) as e:
        arr[...]
    key = chunk.relative_to(tmp_path / "a.zarr").as_posix()
    assert f"chunk {key}" in str(e.value) and "a.zarr" in str(e.value)
    others = slice(2, 4) if kind == "v3-sharded" else slice(1, 4)
    assert np.array_equal(arr[others], data[others])                 # the rest still reads
    assert np.array_equal(arr[3], data[3])                           # a part of a shard
    if kind == "v3-sharded":                                         # its index, then one chunk
        with pytest.raises(CorruptDataError, match=f"chunk {key}"):
            arr[1]
    chunk.write_bytes(raw)
    assert np.array_equal(arr[...], data)


def test_worker_crash_is_contained():
    with pytest.raises(DecoderCrashed, match="crashed"):
        run_isolated(os.abort)
    assert run_isolated(int, "7") == 7                                  # a fresh worker


# -- through the mount ----------------------------------------------------------------------

FUZZ_SPEC = PlateSpec(wells=("A01", "B02"), sites=3, channels=1, z=2, shape=(384, 384))


def _recode(store: Path, zarr_format: int, **create) -> None:
    """Rewrite every field array of a vfsmount store with other codecs (what other tools write)."""
    backend = ZarrStorageBackend(store)
    for path in backend.arrays():
        old = zarr.open_array(store / path, mode="r")
        data, attrs = old[...], dict(old.attrs)
        extra = {"chunk_key_encoding": {"name": "v2", "separator": "/"}} if zarr_format == 2 else {}
        new = zarr.create_array(store / path, shape=data.shape, dtype=data.dtype, overwrite=True,
                                zarr_format=zarr_format, **extra, **create)
        new[...] = data
        new.attrs.update(attrs)


def _z(root: Path) -> float | None:
    """The plate's z spacing, which the served TIFFs carry in their ImageJ calibration."""
    plate = Plate.open(root)
    return plate.entry(plate.main).get("z_spacing")


def _fuzz_plate(root: Path, codec: str) -> Path:
    make_imagexpress_plate(root, FUZZ_SPEC, thumbnails=False, projections=False)
    compressor = codec.removeprefix("blosc-") if codec.startswith("blosc-") else "zstd"
    sharded = codec == "sharded"        # index chunks per plane: planes are read piecewise
    config = ZarrConfig(compressor=compressor, ngff_version="0.5" if sharded else "0.4",
                        chunk_strategy="file" if sharded else "well")
    store = convert_plate(root, config=config, progress=False)
    if codec == "zstd":
        _recode(store, 2, chunks="auto", compressors=numcodecs.Zstd(level=1))
    elif codec == "gzip":
        _recode(store, 2, chunks="auto", compressors=numcodecs.GZip(1))
    elif codec == "sharded":
        z, y, x = FUZZ_SPEC.z, *FUZZ_SPEC.shape
        _recode(store, 3, chunks=(1, 1, 1, y, x), shards=(1, 1, z, y, x),
                compressors=zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle"))
    return store


def _corrupt(path: Path, how: str, rng: random.Random) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncate":
        raw = raw[:rng.randrange(len(raw))]
    elif how == "bitflip":
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif how == "zero":
        raw = bytearray(len(raw))
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))


def _corrupt_fields(store: Path, rng: random.Random) -> dict[str, str]:
    """Four of the six fields get one kind of damage each: field array path -> damage."""
    arrays = sorted(ZarrStorageBackend(store).arrays())
    damaged = dict(zip(rng.sample(arrays, 4), ["truncate", "bitflip", "zero", "empty"]))
    for array, how in damaged.items():
        for chunk in _chunk_files(store / array):
            _corrupt(chunk, how, rng)
    return damaged


FUZZ_CODECS = ("blosc-zstd", "blosc-lz4", "blosc-zlib", "zstd", "gzip", "sharded")


def _read(path: Path) -> bytes | int:
    try:
        return path.read_bytes()
    except OSError as e:
        return e.errno


def test_fuzz_six_codecs_six_readers(tmp_path, mounts):
    rng = random.Random(SEED)
    targets = []            # (file in the mount, expected bytes, damage or None)
    for codec in FUZZ_CODECS:
        root = tmp_path / codec
        store = _fuzz_plate(root, codec)
        damaged = _corrupt_fields(store, rng)
        backend = ZarrStorageBackend(store)
        mnt = mounts.mount(root, name=f"mnt-{codec}")
        for name in backend.list_files():
            want = synthesize(synthetic_image(parse_virtual_name(name), FUZZ_SPEC.shape,
                                              FUZZ_SPEC.dtype), 0.65, z_spacing=_z(root))
            targets.append((mnt / "images" / name, want, damaged.get(backend.plane(name).ref.array),
                            codec))
    failures: list[str] = []
    outcomes: dict[str, set] = {}
    stop = time.monotonic() + float(os.environ.get("VFSMOUNT_FUZZ_SECONDS", "6"))

    def reader(i: int) -> None:
        local = random.Random(SEED + i)
        while time.monotonic() < stop:
            path, want, damage, codec = local.choice(targets)
            got = _read(path)
            ok_eio = got == errno.EIO
            outcomes.setdefault(f"{codec}/{damage}", set()).add("EIO" if ok_eio else "bytes")
            if damage is None and got != want:
                failures.append(f"{path}: intact plane read {got if isinstance(got, int) else 'wrong bytes'}")
            elif damage in ("truncate", "zero", "empty") and not ok_eio:
                failures.append(f"{path}: {damage} chunk read gave {got!r:.40}, not EIO")
            elif damage == "bitflip" and not (ok_eio or (isinstance(got, bytes) and len(got) == len(want))):
                failures.append(f"{path}: bit-flipped chunk read gave {got!r:.40}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, (f"seed {SEED}", len(failures),
                          sorted({f.split(": ", 1)[1][:70] for f in failures}))
    for codec in FUZZ_CODECS:               # every kind of damage was read, and intact planes too
        assert outcomes.get(f"{codec}/None") == {"bytes"}, (SEED, outcomes)
        for how in ("truncate", "zero", "empty"):
            assert outcomes.get(f"{codec}/{how}") == {"EIO"}, (SEED, outcomes)
    for mnt, pid in mounts.pids.items():   # every daemon is alive and serves a file again
        os.kill(pid, 0)
        assert os.path.ismount(mnt)
    log = "".join(mounts.log(m) for m in mounts.mountpoints)
    assert "Segmentation fault" not in log and "CorruptDataError" in log


READER = r"""
import errno, hashlib, json, sys
corrupt, good, want, n = sys.argv[1].split(","), sys.argv[2].split(","), sys.argv[3], int(sys.argv[4])
seen = {"eio": 0, "good": 0, "other": []}
for i in range(n):
    try:
        open(corrupt[i % len(corrupt)], "rb").read()
        seen["other"].append("corrupt plane read without error")
    except OSError as e:
        if e.errno == errno.EIO:
            seen["eio"] += 1
        else:
            seen["other"].append(f"corrupt plane: errno {e.errno}")
    try:
        digest = hashlib.sha256(open(good[i % len(good)], "rb").read()).hexdigest()
        if digest == want.split(":")[i % len(good)]:
            seen["good"] += 1
        else:
            seen["other"].append("good plane: wrong bytes")
    except OSError as e:
        seen["other"].append(f"good plane: errno {e.errno}")
print(json.dumps(seen))
"""


def test_issue_16_reproduction_half_chunk_two_processes(tmp_path, mounts):
    """1080x1080 planes, default WELL chunks, one field's chunk cut to half, two processes
    reading at once, 100 times: EIO on that field's planes, the right bytes elsewhere."""
    import hashlib
    spec = PlateSpec(wells=("A01",), sites=2, channels=2, z=2, shape=(1080, 1080))
    root = make_imagexpress_plate(tmp_path / "plate", spec, thumbnails=False, projections=False)
    store = convert_plate(root, progress=False)
    chunk = store / "A" / "01" / "0" / "0" / "0" / "0" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:chunk.stat().st_size // 2])
    mnt = mounts.mount(root)
    names = Plate.open(root).image_files()
    corrupt = [str(mnt / "images" / n) for n in names if "_s001_" in n]
    good = [n for n in names if "_s002_" in n]
    want = [hashlib.sha256(synthesize(synthetic_image(parse_virtual_name(n), spec.shape,
                                                      spec.dtype), 0.65,
                                      z_spacing=_z(root))).hexdigest()
            for n in good]
    args = [",".join(corrupt), ",".join(str(mnt / "images" / n) for n in good), ":".join(want), "100"]
    procs = [subprocess.Popen([sys.executable, "-c", READER, *args], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    import json
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    for r in results:
        assert r == {"eio": 100, "good": 100, "other": []}, r
    os.kill(mounts.pids[mnt], 0)                                      # the daemon is alive
    log = mounts.log(mnt)
    assert "A/01/0/0/0/0/0/0/0" in log and "truncated" in log and "Segmentation" not in log


# -- vendor TIFFs: checked before decoding, other compressions in a worker ---------------------

TIFF_KINDS = {"none": dict(rowsperstrip=8), "lzw": dict(compression="lzw"),
              "deflate": dict(compression="zlib", rowsperstrip=16),
              "zstd (worker)": dict(compression="zstd")}


@pytest.mark.parametrize("kind", sorted(TIFF_KINDS))
def test_vendor_tiff_strips_checked_against_the_file(tmp_path, kind):
    import tifffile
    from backends.storage.disk import DiskStorageBackend
    data = (np.arange(96 * 128).reshape(96, 128) * 7 % 4093).astype(np.uint16)
    path = tmp_path / "A01_s1_w1.tif"
    tifffile.imwrite(path, data, photometric="minisblack", **TIFF_KINDS[kind])
    disk = DiskStorageBackend(tmp_path)
    assert np.array_equal(disk.load(path.name), data)
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) * 2 // 3])           # the IFD is at the start, strips cut
    with pytest.raises(CorruptDataError, match="past the end of the file") as e:
        disk.load(path.name)
    assert path.name in str(e.value)


PASSTHROUGH_PIPELINE = '''
from compute import numpy as numpy_function
from compute.pipeline import FunctionStep, Pipeline

@numpy_function
def same(stack):
    return stack

pipeline = Pipeline([FunctionStep(same)], name="same")
'''


def test_corrupt_vendor_tiff_under_compute_on_read_is_eio(tmp_path, mounts):
    spec = PlateSpec(wells=("A01", "B02"), sites=1, channels=1, z=2, shape=(96, 128))
    root = make_imagexpress_plate(tmp_path / "plate", spec, thumbnails=False, projections=False)
    plate = Plate.open(root)
    bad = root / plate.entry()["workspace_mapping"]["B02_s001_w1_z002_t001.tif"]
    raw = bad.read_bytes()
    bad.write_bytes(raw[:len(raw) // 2])
    pipeline_file = tmp_path / "same.py"
    pipeline_file.write_text(PASSTHROUGH_PIPELINE)
    mnt = mounts.mount(root, "--pipeline", str(pipeline_file))
    folder = mnt / "processed" / "same"
    for _ in range(3):
        with pytest.raises(OSError) as e:
            (folder / "B02_s001_w1_z001_t001.tif").read_bytes()
        assert e.value.errno == errno.EIO
    got = (folder / "A01_s001_w1_z002_t001.tif").read_bytes()
    want = synthetic_image(parse_virtual_name("A01_s001_w1_z002_t001.tif"), spec.shape, spec.dtype)
    import tifffile
    assert np.array_equal(tifffile.imread(folder / "A01_s001_w1_z002_t001.tif"), want) and got
    os.kill(mounts.pids[mnt], 0)
    log = mounts.log(mnt)
    assert bad.name in log and "past the end of the file" in log


def test_unchecked_codec_through_the_mount_uses_the_worker(tmp_path, mounts):
    """LZMA has no up-front check: the daemon trial-decodes its chunks in a worker process."""
    spec = PlateSpec(wells=("A01", "B02"), sites=1, channels=1, z=2, shape=(64, 96))
    root = make_imagexpress_plate(tmp_path / "plate", spec, thumbnails=False, projections=False)
    store = convert_plate(root, progress=False)
    _recode(store, 2, chunks="auto", compressors=numcodecs.LZMA(preset=1))
    for chunk in _chunk_files(store / "B" / "02" / "0" / "0"):
        chunk.write_bytes(chunk.read_bytes()[:40])
    mnt = mounts.mount(root)
    name = "A01_s001_w1_z002_t001.tif"
    want = synthesize(synthetic_image(parse_virtual_name(name), spec.shape, spec.dtype), 0.65,
                      z_spacing=_z(root))
    assert (mnt / "images" / name).read_bytes() == want
    with pytest.raises(OSError) as e:
        (mnt / "images" / "B02_s001_w1_z001_t001.tif").read_bytes()
    assert e.value.errno == errno.EIO
    os.kill(mounts.pids[mnt], 0)
    assert "cannot be decoded: LZMAError" in mounts.log(mnt)
