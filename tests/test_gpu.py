"""The GPU paths of compute/, run for real on a CUDA device.

Every test here is marked ``cuda`` and skips, with the reason, where the framework it needs
is missing or sees no CUDA device (CI has none). ``scripts/gpu-check.sh`` runs them on a GPU
machine together with ``python -m benchmarks gpu``.

Out-of-memory tests make a plain allocation larger than the free device memory through the
framework's own allocator (cudaMalloc underneath), never managed memory.
"""
from __future__ import annotations

import gc
import itertools
import logging
import threading

import numpy as np
import pytest

from compute import (MemoryType, cleanup_all_gpu_frameworks, convert_memory, data_pointer,
                     detect_memory_type, device_of, memory_types, stack_slices, unstack_slices)
from compute import decorators as deco
from compute.frameworks import available, cuda_available, framework

pytestmark = pytest.mark.cuda

GPU_TYPES = [MemoryType.CUPY, MemoryType.TORCH, MemoryType.JAX]
DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "int32", "int64", "float16", "float32",
          "float64"]
ZERO_COPY_DTYPES = ["uint8", "uint16", "int32", "int64", "float32", "float64"]


def why_not(mt: MemoryType) -> str | None:
    """Why ``mt`` cannot run on a GPU here (None: it can)."""
    if not available(mt):
        return f"{mt} is not installed"
    if not cuda_available(mt):
        return f"no CUDA device: {mt} sees none"
    return None


def on_cuda(*types: MemoryType):
    reasons = [r for r in map(why_not, types) if r]
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons))


def gpu_params(types=GPU_TYPES):
    return [pytest.param(mt, id=str(mt), marks=on_cuda(mt)) for mt in types]


def pair_params():
    return [pytest.param(src, dst, id=f"{src}-{dst}", marks=on_cuda(src, dst))
            for src, dst in itertools.permutations(GPU_TYPES, 2)]


def sample(dtype: str, shape=(3, 64, 80)) -> np.ndarray:
    """Values over the dtype's whole range (its extremes included), so truncation would show."""
    rng = np.random.default_rng(7)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if dt.kind in "ui":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        a.flat[0], a.flat[1] = info.min, info.max
        return a
    a = (rng.standard_normal(shape) * 1000).astype(dt)
    a.flat[0], a.flat[1] = np.finfo(dt).max, np.finfo(dt).tiny
    return a


def host(data) -> np.ndarray:
    return convert_memory(data, detect_memory_type(data), "numpy")


# -- conversions ---------------------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", pair_params())
def test_zero_copy_between_gpu_frameworks(src, dst):
    for dtype in ZERO_COPY_DTYPES:
        expected = sample(dtype)
        data = convert_memory(expected, "numpy", src, gpu_id=0)
        assert device_of(data) == "cuda:0"
        for gpu_id in (None, 0):
            out = convert_memory(data, src, dst, gpu_id=gpu_id)
            assert detect_memory_type(out) is dst and device_of(out) == "cuda:0"
            assert data_pointer(out) == data_pointer(data), f"{src}->{dst} {dtype} copied"
            back = host(out)
            assert back.dtype == expected.dtype and np.array_equal(back, expected)


@pytest.mark.parametrize("src,dst", pair_params())
def test_dtype_and_value_fidelity_between_gpu_frameworks(src, dst):
    for dtype in DTYPES:
        expected = sample(dtype)
        data = convert_memory(expected, "numpy", src, gpu_id=0)
        out = convert_memory(data, src, dst, allow_cpu_roundtrip=True)
        assert device_of(out).startswith("cuda"), (src, dst, dtype)
        back = host(out)
        assert back.dtype == expected.dtype, (src, dst, dtype)
        assert np.array_equal(back, expected, equal_nan=True), (src, dst, dtype)


@pytest.mark.parametrize("mt", gpu_params())
def test_host_device_copies(mt):
    expected = sample("float32")
    source = expected.copy()
    on_gpu = convert_memory(source, "numpy", mt, gpu_id=0)
    assert device_of(on_gpu) == "cuda:0"
    assert data_pointer(on_gpu) != data_pointer(source)
    back = convert_memory(on_gpu, mt, "numpy")             # (the upload has completed)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    assert np.array_equal(back, expected)
    source[1, 2, 3] += 1                                   # a copy on the device, not a view
    assert np.array_equal(host(on_gpu), expected)
    assert data_pointer(back) != data_pointer(source)
    if mt is not MemoryType.CUPY:                          # cupy has no CPU arrays
        on_cpu = convert_memory(expected, "numpy", mt)
        assert device_of(on_cpu) == "cpu"
        moved = convert_memory(on_cpu, mt, mt, gpu_id=0)
        assert device_of(moved) == "cuda:0" and np.array_equal(host(moved), expected)


# -- decorators: streams and out-of-memory recovery ----------------------------------------------

def current_stream(mt: MemoryType) -> int:
    if mt is MemoryType.TORCH:
        return framework(mt).cuda.current_stream(0).cuda_stream
    return framework(mt).cuda.get_current_stream().ptr


@pytest.mark.parametrize("mt", gpu_params([MemoryType.TORCH, MemoryType.CUPY]))
def test_each_thread_runs_on_its_own_stream(mt):
    seen: dict[str, list[int]] = {}
    both_inside = threading.Barrier(2, timeout=60)

    @memory_types(mt, mt)
    def record(x):
        seen.setdefault(threading.current_thread().name, []).append(current_stream(mt))
        return x

    def work():
        record(np.ones((1, 8, 8), np.float32), gpu_id=0)
        both_inside.wait()                  # both threads alive: streams cannot be reused
        record(np.ones((1, 8, 8), np.float32), gpu_id=0)

    threads = [threading.Thread(target=work, name=f"t{i}") for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == ["t0", "t1"]
    first, second = seen["t0"], seen["t1"]
    assert first[0] == first[1] and second[0] == second[1]      # one stream per thread, kept
    assert first[0] != second[0]                                 # and the threads' differ
    assert 0 not in (first[0], second[0])                        # neither is the null stream
    assert current_stream(mt) not in (first[0], second[0])       # the caller's is untouched


def free_bytes(mt: MemoryType) -> int:
    if mt is MemoryType.TORCH:
        return framework(mt).cuda.mem_get_info(0)[0]
    if mt is MemoryType.CUPY:
        return framework(mt).cuda.runtime.memGetInfo()[0]
    stats = framework(mt).devices("gpu")[0].memory_stats()
    return stats["bytes_limit"] - stats["bytes_in_use"]


def cached_unused(mt: MemoryType) -> int:
    """Bytes the framework holds from the driver without using them (what cleanup frees)."""
    if mt is MemoryType.TORCH:
        cuda = framework(mt).cuda
        return cuda.memory_reserved(0) - cuda.memory_allocated(0)
    return framework(mt).get_default_memory_pool().free_bytes()


def allocate_too_much(x, mt: MemoryType) -> None:
    """A plain device allocation 1 GiB larger than what is free (fails at once)."""
    n = free_bytes(mt) + 2**30
    if mt is MemoryType.TORCH:
        framework(mt).empty(n, dtype=framework(mt).uint8, device=x.device)
    elif mt is MemoryType.CUPY:
        framework(mt).empty(n, dtype=np.uint8)
    else:
        device = next(iter(x.devices()))
        framework(mt).numpy.zeros(n, dtype=np.uint8, device=device).block_until_ready()


@pytest.mark.parametrize("mt", gpu_params())
def test_oom_recovery_on_a_real_out_of_memory(mt, monkeypatch, caplog):
    calls, cleanups = [], []
    real_cleanup = deco.cleanup_gpu_memory_by_framework

    def spy_cleanup(memory_type, device_id=None):
        freed = real_cleanup(memory_type, device_id)
        cleanups.append((freed, cached_unused(mt) if mt is not MemoryType.JAX else 0))
        return freed
    monkeypatch.setattr(deco, "cleanup_gpu_memory_by_framework", spy_cleanup)

    @memory_types(mt, mt, oom_recovery=True)
    def greedy(x):
        calls.append(device_of(x))
        if device_of(x).startswith("cuda"):
            allocate_too_much(x, mt)
        return x * 2

    stack = sample("float32", (2, 256, 256))
    if mt is not MemoryType.JAX:
        convert_memory(np.zeros(2**28, np.uint8), "numpy", mt, gpu_id=0)   # fill the cache
        assert cached_unused(mt) >= 2**28
    with caplog.at_level(logging.WARNING, logger="compute.decorators"):
        if mt is MemoryType.CUPY:                      # no CPU to fall back to: retried, raised
            with pytest.raises(Exception) as e:
                greedy(stack, gpu_id=0)
            assert deco.is_oom_error(e.value, mt)
            assert calls == ["cuda:0", "cuda:0"]
            assert [freed for freed, _ in cleanups] == [True]
            assert cleanups[0][1] < 2**25                  # the 256 MiB cache was emptied
            return
        out = greedy(stack, gpu_id=0)
    assert calls == ["cuda:0", "cuda:0", "cpu"]          # tried, retried, then on the CPU
    assert [freed for freed, _ in cleanups] == [True, True]
    assert all(unused < 2**25 for _, unused in cleanups)  # the 256 MiB cache was emptied
    assert "retrying" in caplog.text and "running it on the CPU" in caplog.text
    assert device_of(out) == "cpu" and np.array_equal(host(out), stack * 2)


# -- stacks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mt", gpu_params())
def test_stack_and_unstack_on_a_gpu(mt):
    planes = [np.full((40, 56), i * 1000, np.uint16) for i in range(4)]
    stack = stack_slices(planes, mt, gpu_id=0)
    assert detect_memory_type(stack) is mt and device_of(stack) == "cuda:0"
    assert tuple(stack.shape) == (4, 40, 56) and np.array_equal(host(stack), np.stack(planes))
    slices = unstack_slices(stack, mt, gpu_id=0)
    assert len(slices) == 4
    assert all(device_of(s) == "cuda:0" and tuple(s.shape) == (40, 56) for s in slices)
    assert all(np.array_equal(host(s), p) for s, p in zip(slices, planes))
    assert all(np.array_equal(s, p) for s, p in zip(unstack_slices(stack, "numpy"), planes))
    again = stack_slices(slices, "numpy")                       # GPU slices in, host stack out
    assert isinstance(again, np.ndarray) and np.array_equal(again, np.stack(planes))


# -- the torch functions of compute/functions.py --------------------------------------------------

@on_cuda(MemoryType.TORCH)
def test_torch_functions_on_the_gpu_equal_the_cpu():
    from compute.functions import gaussian_filter_torch, threshold_otsu_torch
    rng = np.random.default_rng(1)
    stack = (rng.random((4, 256, 320)) * 1000).astype(np.uint16)
    stack[:, 64:128, 80:160] += 2000                           # something to find
    cpu = host(gaussian_filter_torch(stack, sigma=2.0))
    gpu = gaussian_filter_torch(stack, sigma=2.0, gpu_id=0)
    assert device_of(gpu) == "cuda:0"
    # documented tolerance: cuDNN may run float32 convolutions in TF32 (10-bit mantissa)
    np.testing.assert_allclose(host(gpu), cpu, rtol=5e-3, atol=5e-3 * float(cpu.max()))
    mask_cpu = host(threshold_otsu_torch(cpu))
    mask_gpu = threshold_otsu_torch(cpu, gpu_id=0)
    assert device_of(mask_gpu) == "cuda:0"
    # documented tolerance: the threshold may move by one of the 256 histogram bins (GPU and
    # CPU histc may bin a value on an edge differently), flipping at most that bin's pixels
    assert mask_cpu.any() and (host(mask_gpu) == mask_cpu).mean() >= 0.99


# -- cleanup -------------------------------------------------------------------------------------

def _held_only_by_a_cycle(make):
    """An array that only a reference cycle keeps alive: freed by gc.collect(), not by del."""
    holder: dict = {"array": make()}
    holder["self"] = holder
    return holder


@on_cuda(MemoryType.TORCH)
def test_cleanup_frees_torch_cached_memory():
    torch = framework("torch")
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda:0")
    del x
    reserved = torch.cuda.memory_reserved(0)
    assert reserved - torch.cuda.memory_allocated(0) >= 2**30      # cached, unused
    report = cleanup_all_gpu_frameworks(0)
    assert report["torch"] is True
    assert torch.cuda.memory_reserved(0) <= reserved - 2**30        # back to the driver


@on_cuda(MemoryType.CUPY)
def test_cleanup_frees_the_cupy_pool():
    cp = framework("cupy")
    pool = cp.get_default_memory_pool()
    x = cp.empty(2**30, dtype=cp.uint8)
    del x
    assert pool.free_bytes() >= 2**30
    before = pool.total_bytes()
    assert cleanup_all_gpu_frameworks(0)["cupy"] is True
    assert pool.total_bytes() <= before - 2**30 and pool.free_bytes() < 2**30


@on_cuda(MemoryType.JAX)
def test_cleanup_frees_jax_arrays_that_only_garbage_holds():
    jax = framework("jax")
    dev = jax.devices("gpu")[0]
    gc.collect()
    gc.disable()                       # only cleanup_all_gpu_frameworks may collect the cycle
    try:
        base = dev.memory_stats()["bytes_in_use"]
        cycle = _held_only_by_a_cycle(
            lambda: jax.device_put(np.ones(2**28, np.uint8), dev).block_until_ready())
        del cycle
        assert dev.memory_stats()["bytes_in_use"] >= base + 2**28    # still held by the cycle
        assert cleanup_all_gpu_frameworks(0)["jax"] is True
        assert dev.memory_stats()["bytes_in_use"] < base + 2**28
    finally:
        gc.enable()
