"""The memory type system: conversions, decorators, stacks, OOM recovery, GPU cleanup.

Frameworks that are installed run for real on the CPU (pyclesperanto on pocl's OpenCL);
CUDA paths are skipped with a reason where no GPU exists.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from compute import (MemoryConversionError, MemoryType, MemoryTypeError, cleanup_all_gpu_frameworks,
                     cleanup_gpu_memory_by_framework, convert_memory, data_pointer, detect_memory_type,
                     memory_types, stack_slices, unstack_slices)
from compute import decorators as deco
from compute.conversion import SUPPORTED_DTYPES, aligned_copy
from compute.frameworks import available, cuda_available, framework

ALL_TYPES = [MemoryType.NUMPY, MemoryType.TORCH, MemoryType.JAX, MemoryType.TENSORFLOW,
             MemoryType.PYCLESPERANTO]
INSTALLED = [mt for mt in ALL_TYPES if available(mt)]
CPU_DLPACK = {MemoryType.NUMPY, MemoryType.TORCH, MemoryType.JAX, MemoryType.TENSORFLOW}
DTYPES = ["bool", "uint8", "uint16", "uint32", "int16", "int32", "int64", "float16", "float32",
          "float64"]
LAYOUTS = ["contiguous", "transposed", "sliced", "negative-stride", "read-only"]


def needs(mt: MemoryType):
    return pytest.mark.skipif(not available(mt), reason=f"{mt} is not installed "
                              f"(pip install 'vfsmount[{mt.value if mt != MemoryType.PYCLESPERANTO else 'cle'}]')")


def sample(dtype: str) -> np.ndarray:
    """A (4, 6, 10) array whose values use the dtype's range, so truncation would show."""
    rng = np.random.default_rng(3)
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.random((4, 6, 10)) > 0.5
    if dt.kind in "ui":
        info = np.iinfo(dt)
        a = rng.integers(info.min, info.max, size=(4, 6, 10), dtype=dt, endpoint=True)
        a.flat[0], a.flat[1] = info.min, info.max
        return a
    a = (rng.standard_normal((4, 6, 10)) * 1000).astype(dt)
    a.flat[0] = np.finfo(dt).max
    a.flat[1] = np.finfo(dt).tiny
    return a


def layout(a: np.ndarray, kind: str) -> np.ndarray:
    a = aligned_copy(a)
    if kind == "transposed":
        return a.transpose(0, 2, 1)
    if kind == "sliced":
        return a[:, ::2, 1:]
    if kind == "negative-stride":
        return a[:, ::-1, :]
    if kind == "read-only":
        a.setflags(write=False)
    return a


def expect_zero_copy(src: MemoryType, dst: MemoryType, kind: str) -> bool:
    """Pairs that must share memory: CPU DLPack frameworks, where the importer accepts the layout."""
    if src not in CPU_DLPACK or dst not in CPU_DLPACK or src is dst:
        return False
    if src is MemoryType.NUMPY:
        if dst is MemoryType.TORCH:
            return kind != "negative-stride"
        return kind == "contiguous"
    # the source tensor was made from a contiguous aligned buffer only for "contiguous"
    return kind == "contiguous"


@pytest.mark.parametrize("dst", INSTALLED, ids=str)
@pytest.mark.parametrize("src", INSTALLED, ids=str)
def test_conversion_matrix(src, dst):
    checked = zero_copies = 0
    for dtype in DTYPES:
        for kind in LAYOUTS:
            host = layout(sample(dtype), kind)
            expected = np.array(host)          # an independent copy of the values
            if dtype not in SUPPORTED_DTYPES[src]:
                continue
            data = host if src is MemoryType.NUMPY else convert_memory(host, "numpy", src)
            if dtype not in SUPPORTED_DTYPES[dst]:
                with pytest.raises(MemoryConversionError, match=f"cannot hold {dtype}"):
                    convert_memory(data, src, dst)
                continue
            out = convert_memory(data, src, dst)
            assert detect_memory_type(out) is dst
            back = convert_memory(out, dst, "numpy")
            assert back.dtype == expected.dtype, (src, dst, dtype, kind)
            assert back.shape == expected.shape
            assert np.array_equal(back, expected, equal_nan=True), (src, dst, dtype, kind)
            if expect_zero_copy(src, dst, kind):
                assert data_pointer(out) == data_pointer(data), f"{src}->{dst} {dtype} {kind} copied"
                zero_copies += 1
            checked += 1
    assert checked > 0
    if expect_zero_copy(src, dst, "contiguous"):
        assert zero_copies >= len(DTYPES)


@needs(MemoryType.TORCH)
def test_numpy_to_torch_shares_mutation_and_survives_negative_strides():
    a = aligned_copy(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    t = convert_memory(a, "numpy", "torch")
    t[0, 0, 0] = 99
    assert a[0, 0, 0] == 99                       # really the same memory
    neg = a[:, ::-1]
    t2 = convert_memory(neg, "numpy", "torch")    # would abort the process without a copy
    assert np.array_equal(t2.numpy(), neg)


@needs(MemoryType.PYCLESPERANTO)
def test_pyclesperanto_keeps_dtype():
    a = np.arange(60, dtype=np.uint16).reshape(3, 4, 5) * 1000
    c = convert_memory(a, "numpy", "pyclesperanto")
    assert c.dtype == np.uint16                   # cle.push would have made float32
    assert np.array_equal(convert_memory(c, "pyclesperanto", "numpy"), a)


@pytest.mark.parametrize("mt", INSTALLED, ids=str)
def test_each_memory_type_is_one_adapter(mt):
    from compute import device_of
    from compute.adapters import ADAPTERS, adapter
    assert set(ADAPTERS) == set(MemoryType) and adapter(mt).memory_type is mt
    a = adapter(mt)
    ones = np.ones((2, 3, 4), np.float32)
    data = a.from_numpy(ones)
    assert detect_memory_type(data) is mt and a.dtype(data) == np.float32
    assert np.array_equal(a.to_numpy(data), ones)
    assert device_of(data).startswith("opencl:" if mt is MemoryType.PYCLESPERANTO else "cpu")
    assert not a.on_gpu(data)


def test_wrong_source_type_is_reported():
    with pytest.raises(MemoryConversionError, match="data is numpy, not torch") as e:
        convert_memory(np.zeros(3), "torch", "numpy")
    assert e.value.source_type == "torch" and e.value.method == "type check"
    with pytest.raises(ValueError):
        convert_memory(np.zeros(3), "numpy", "no-such-type")


def test_importing_compute_loads_no_framework():
    code = ("import sys, compute; print([m for m in ('torch', 'jax', 'tensorflow', 'cupy', "
            "'pyclesperanto_prototype', 'pyopencl') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs(MemoryType.TENSORFLOW)
@needs(MemoryType.PYCLESPERANTO)
def test_tensorflow_and_pyclesperanto_in_one_process():
    code = """
import numpy as np
from compute import convert_memory
from compute.frameworks import framework
tf = framework("tensorflow")                      # TF first: the order that used to segfault
x = tf.constant(np.ones((8, 8), np.float32)) * 2
cle = framework("pyclesperanto")
img = convert_memory(x, "tensorflow", "pyclesperanto")
blurred = cle.gaussian_blur(img, sigma_x=1, sigma_y=1)   # pocl compiles a kernel here
print(float(cle.pull(blurred).mean()))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) == pytest.approx(2.0, rel=1e-4)


@pytest.mark.skipif(not all(available(m) for m in ALL_TYPES), reason="needs every CPU framework")
def test_chained_pipeline_matches_numpy():
    @deco.numpy
    def scale(x):
        return x * np.float32(2)

    @deco.torch
    def shift(x):
        return x + 3

    @deco.jax
    def absolute(x):
        return framework("jax").numpy.abs(x - 50)

    @deco.tensorflow
    def clip(x):
        return framework("tensorflow").minimum(x, 120.0)

    @deco.pyclesperanto
    def double(x):
        return framework("pyclesperanto").multiply_image_and_scalar(x, scalar=2.0)

    stack = np.random.default_rng(0).integers(0, 100, size=(5, 32, 48)).astype(np.float32)
    out = stack
    for f in (scale, shift, absolute, clip, double):
        out = f(out)
    result = convert_memory(out, detect_memory_type(out), "numpy")
    reference = np.minimum(np.abs(stack * 2 + 3 - 50), 120) * 2
    assert result.dtype == np.float32 and result.shape == stack.shape
    assert np.array_equal(result, reference)


# -- decorators ------------------------------------------------------------------------------

def test_decorator_records_contract_and_validates_output():
    @memory_types(input_type="numpy", output_type="numpy")
    def ok(x):
        return x + 1

    assert ok.input_memory_type == "numpy" and ok.output_memory_type == "numpy"
    assert np.array_equal(ok(np.zeros((1, 2, 2))), np.ones((1, 2, 2)))

    @deco.numpy
    def liar(x):
        return [1, 2, 3]

    with pytest.raises(MemoryTypeError, match="liar declared output numpy but returned list"):
        liar(np.zeros((1, 2, 2)))


@needs(MemoryType.TORCH)
def test_decorator_converts_input_and_checks_special_outputs():
    torch = framework("torch")

    @deco.torch
    def with_specials(x):
        return x * 2, {"count": 3}

    out, special = with_specials(np.ones((1, 2, 2), np.float32))
    assert isinstance(out, torch.Tensor) and special == {"count": 3}

    @deco.torch(output_type="numpy")
    def wrong(x):
        return x

    with pytest.raises(MemoryTypeError, match="declared output numpy but returned torch"):
        wrong(np.ones((1, 2, 2)))


def _oom_errors():
    """Each installed framework's own out-of-memory exception."""
    out = []
    if available(MemoryType.TORCH):
        torch = framework("torch")
        out.append((MemoryType.TORCH, lambda: torch.OutOfMemoryError("CUDA out of memory (injected)")))
    if available(MemoryType.TENSORFLOW):
        tf = framework("tensorflow")
        out.append((MemoryType.TENSORFLOW,
                    lambda: tf.errors.ResourceExhaustedError(None, None, "OOM when allocating (injected)")))
    if available(MemoryType.JAX):
        jax = framework("jax")
        out.append((MemoryType.JAX, lambda: jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate (injected)")))
    if available(MemoryType.PYCLESPERANTO):
        import pyopencl as cl
        out.append((MemoryType.PYCLESPERANTO, lambda: cl.MemoryError(
            "clEnqueueNDRangeKernel failed: MEM_OBJECT_ALLOCATION_FAILURE (injected)")))
    return out


@pytest.mark.parametrize("mt,make_error", _oom_errors(), ids=lambda v: str(v) if isinstance(v, MemoryType) else "")
def test_oom_recovery_retries_then_falls_back(mt, make_error, caplog):
    assert deco.is_oom_error(make_error(), mt)
    assert not deco.is_oom_error(ValueError("nope"), mt)
    calls = []

    def flaky(x, failures):
        calls.append(detect_memory_type(x))
        if len(calls) <= failures:
            raise make_error()
        return x

    decorated = memory_types(mt, mt, oom_recovery=True)(flaky)
    stack = np.ones((2, 4, 4), np.float32)
    with caplog.at_level(logging.WARNING, logger="compute.decorators"):
        out = decorated(stack, 1)                              # fails once, retried
    assert len(calls) == 2 and detect_memory_type(out) is mt
    assert "out of memory" in caplog.text and "retrying" in caplog.text
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="compute.decorators"):
        decorated(stack, 2)                                    # fails twice: CPU fallback
    assert len(calls) == 3 and "running it on the CPU" in caplog.text
    calls.clear()
    no_fallback = memory_types(mt, mt, oom_recovery=True, cpu_fallback=False)(flaky)
    with pytest.raises(Exception) as e:
        no_fallback(stack, 2)
    assert deco.is_oom_error(e.value, mt)
    calls.clear()
    no_recovery = memory_types(mt, mt, oom_recovery=False)(flaky)
    with pytest.raises(Exception):
        no_recovery(stack, 1)
    assert len(calls) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not available(MemoryType.TORCH) or not cuda_available(MemoryType.TORCH),
                    reason="no CUDA device on this machine: CUDA paths run only where a GPU exists")
def test_cuda_paths():
    torch = framework("torch")
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    t = convert_memory(a, "numpy", "torch", gpu_id=0)
    assert t.device.type == "cuda"
    assert np.array_equal(convert_memory(t, "torch", "numpy"), a)
    if available(MemoryType.CUPY):
        c = convert_memory(t, "torch", "cupy")
        assert c.data.ptr == t.data_ptr()                     # zero-copy on the GPU
    _ = torch


# -- stacks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mt", INSTALLED, ids=str)
def test_stack_and_unstack(mt):
    slices = [np.full((5, 7), i, np.uint16) for i in range(3)]
    stack = stack_slices(slices, mt)
    assert detect_memory_type(stack) is mt and tuple(stack.shape) == (3, 5, 7)
    back = unstack_slices(stack, "numpy")
    assert len(back) == 3 and all(np.array_equal(b, s) for b, s in zip(back, slices))
    again = unstack_slices(stack, mt)
    assert all(detect_memory_type(s) is mt and tuple(s.shape) == (5, 7) for s in again)
    mixed = [slices[0]] + [convert_memory(s, "numpy", mt) for s in slices[1:]]
    assert np.array_equal(convert_memory(stack_slices(mixed, "numpy"), "numpy", "numpy"),
                          np.stack(slices))


def test_stack_errors():
    with pytest.raises(MemoryTypeError, match="no slices"):
        stack_slices([], "numpy")
    with pytest.raises(MemoryTypeError, match=r"slice 1 has shape \(1, 4, 4\); every slice must be 2D"):
        stack_slices([np.zeros((3, 3)), np.zeros((1, 4, 4))], "numpy")
    with pytest.raises(MemoryTypeError, match=r"slice 0 has shape \(3,\)"):
        stack_slices([np.zeros(3)], "numpy")
    with pytest.raises(MemoryTypeError, match=r"slice 1 has shape \(4, 4\), slice 0 has \(3, 3\)"):
        stack_slices([np.zeros((3, 3)), np.zeros((4, 4))], "numpy")
    with pytest.raises(MemoryTypeError, match="different dtypes"):
        stack_slices([np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint16)], "numpy")
    with pytest.raises(MemoryTypeError, match=r"expected a 3D \[Z, Y, X\] array, got shape \(3, 3\)"):
        unstack_slices(np.zeros((3, 3)), "numpy")
    with pytest.raises(MemoryTypeError, match=r"got shape \(1, 2, 3, 4\)"):
        unstack_slices(np.zeros((1, 2, 3, 4)), "numpy")


def test_gpu_cleanup_is_safe_everywhere():
    report = cleanup_all_gpu_frameworks(0)
    assert set(report) == {"cupy", "torch", "tensorflow", "jax", "pyclesperanto"}
    if not any(cuda_available(m) for m in (MemoryType.TORCH, MemoryType.TENSORFLOW, MemoryType.JAX)):
        assert report["torch"] is False and report["tensorflow"] is False and report["jax"] is False
    assert cleanup_gpu_memory_by_framework("cupy") is False or available(MemoryType.CUPY)
    code = ("import sys; from compute import cleanup_all_gpu_frameworks; cleanup_all_gpu_frameworks(); "
            "print([m for m in ('torch', 'jax', 'tensorflow', 'cupy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"            # never imports a framework just to clean it
