"""convert_memory: move an array between memory types with as few copies as possible.

Order of preference, per the reference design:
1. zero-copy: DLPack (torch, jax, tensorflow, cupy, numpy all speak it), or a NumPy
   view of a CPU tensor;
2. a single copy, where zero-copy is impossible or unsafe: pyclesperanto (OpenCL
   buffers have no DLPack), host <-> device, and inputs an importer rejects;
3. a CPU round trip between two GPU types, only with ``allow_cpu_roundtrip=True``.

What breaks zero-copy (measured on these machines) and is handled before the
import rather than after a crash:
- ``torch.from_dlpack`` aborts the process on negative strides -> copy first;
- JAX and TensorFlow import only 64-byte aligned, C-contiguous buffers (otherwise
  they copy silently or fail) -> one aligned copy; TF rejects non-compact strides;
- a read-only NumPy array exports only through versioned DLPack: torch accepts it,
  JAX and TF do not -> one aligned copy for those;
- ``pyclesperanto.push`` casts to float32 -> buffers are created with the source dtype.
Dtypes and values are preserved exactly; a dtype a target cannot hold is refused.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import MemoryConversionError
from .frameworks import framework
from .memory_types import MemoryType, detect_memory_type

ALIGNMENT = 64

_ALL = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                  "float16", "float32", "float64"})
SUPPORTED_DTYPES: dict[MemoryType, frozenset[str]] = {
    MemoryType.NUMPY: _ALL,
    MemoryType.CUPY: _ALL,
    MemoryType.TORCH: _ALL,
    MemoryType.JAX: _ALL,
    MemoryType.TENSORFLOW: _ALL,
    # OpenCL buffers: no bool, no half precision in pyclesperanto-prototype
    MemoryType.PYCLESPERANTO: _ALL - {"bool", "float16"},
}


def convert_memory(data: Any, source_type: MemoryType | str, target_type: MemoryType | str,
                   gpu_id: int | None = None, allow_cpu_roundtrip: bool = False) -> Any:
    src, dst = MemoryType(source_type), MemoryType(target_type)
    actual = detect_memory_type(data)
    if actual is not src:
        raise MemoryConversionError(src, dst, "type check", f"data is {actual}, not {src}")
    dtype = dtype_of(data)
    if dtype.name not in SUPPORTED_DTYPES[dst]:
        raise MemoryConversionError(src, dst, "dtype check",
                                    f"{dst} cannot hold {dtype.name} arrays "
                                    f"(supported: {', '.join(sorted(SUPPORTED_DTYPES[dst]))})")
    if src is dst:
        return data if gpu_id is None else _to_device(data, dst, gpu_id)
    if _on_gpu(data, src) and dst not in (MemoryType.NUMPY, MemoryType.PYCLESPERANTO):
        try:
            return _to_device(_import_dlpack(data, dst), dst, gpu_id)
        except Exception as e:
            if not allow_cpu_roundtrip:
                raise MemoryConversionError(src, dst, "dlpack (GPU to GPU)",
                                            f"{e}; pass allow_cpu_roundtrip=True to go through "
                                            "host memory") from e
    if src in _DLPACK_CPU and dst in _DLPACK_CPU:
        direct = _direct_dlpack(data, src, dst)
        if direct is not None:
            return direct if gpu_id is None else _to_device(direct, dst, gpu_id)
    try:
        host = to_numpy_view(data, src)
        out = _from_numpy(host, dst)
    except MemoryConversionError:
        raise
    except Exception as e:
        raise MemoryConversionError(src, dst, "host view + import", f"{type(e).__name__}: {e}") from e
    return out if gpu_id is None else _to_device(out, dst, gpu_id)


_DLPACK_CPU = frozenset({MemoryType.TORCH, MemoryType.JAX, MemoryType.TENSORFLOW})


def _direct_dlpack(data: Any, src: MemoryType, dst: MemoryType) -> Any | None:
    """torch/JAX/TF -> torch/JAX/TF on the CPU straight through DLPack (no NumPy view, whose
    read-only flag would force a copy); None where the importer refuses the layout."""
    try:
        if src is MemoryType.TENSORFLOW:
            capsule = framework(src).experimental.dlpack.to_dlpack(data)
        elif src is MemoryType.TORCH:
            t = data.detach()
            if not t.is_contiguous() or t.data_ptr() % ALIGNMENT:
                return None                        # XLA importers would copy or refuse
            capsule = t.resolve_conj().resolve_neg().__dlpack__()
        else:
            capsule = data.__dlpack__()
        if dst is MemoryType.TORCH:
            return framework(dst).from_dlpack(capsule)
        if dst is MemoryType.JAX:
            return framework(dst).numpy.from_dlpack(_Capsule(capsule))
        return framework(dst).experimental.dlpack.from_dlpack(capsule)
    except Exception:
        return None


def dtype_of(data: Any) -> np.dtype:
    mt = detect_memory_type(data)
    if mt is MemoryType.TORCH:
        torch = framework(mt)
        try:
            return np.dtype(torch.empty(0, dtype=data.dtype).numpy().dtype)
        except TypeError:
            return np.dtype("V")   # bfloat16 and friends: no NumPy equivalent
    if mt is MemoryType.TENSORFLOW:
        return np.dtype(data.dtype.as_numpy_dtype)
    return np.dtype(data.dtype)


# -- host views ------------------------------------------------------------------------------

class _Capsule:
    """Wraps a bare DLPack capsule (TensorFlow's export) for np.from_dlpack."""

    def __init__(self, capsule) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)   # kDLCPU


def to_numpy_view(data: Any, mt: MemoryType) -> np.ndarray:
    """A NumPy array of the data: a view for CPU tensors, a copy from devices."""
    if mt is MemoryType.NUMPY:
        return np.asarray(data)
    if mt is MemoryType.TORCH:
        t = data.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.resolve_conj().resolve_neg().numpy()
    if mt is MemoryType.JAX:
        jax = framework(mt)
        if next(iter(data.devices())).platform != "cpu":
            return np.asarray(jax.device_get(data))
        return np.from_dlpack(data)
    if mt is MemoryType.TENSORFLOW:
        tf = framework(mt)
        if "GPU" in data.device.upper():
            return data.numpy()
        return np.from_dlpack(_Capsule(tf.experimental.dlpack.to_dlpack(data)))
    if mt is MemoryType.PYCLESPERANTO:
        # into an aligned buffer, so JAX/TF can then take it without a second copy
        return data.get(ary=aligned_empty(data.shape, data.dtype))
    if mt is MemoryType.CUPY:
        return data.get()
    raise MemoryConversionError(mt, "numpy", "host view", "unknown memory type")


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    offset = (-raw.ctypes.data) % ALIGNMENT
    return raw[offset:offset + nbytes].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


def _importable_by_xla(a: np.ndarray) -> bool:
    """JAX and TensorFlow import zero-copy only aligned, C-contiguous, writable buffers."""
    return (a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGNMENT == 0
            and a.dtype.isnative)


def _from_numpy(a: np.ndarray, dst: MemoryType) -> Any:
    if dst is MemoryType.NUMPY:
        return a
    if dst is MemoryType.TORCH:
        torch = framework(dst)
        if any(s < 0 for s in a.strides) or any(s % a.itemsize for s in a.strides) \
                or not a.dtype.isnative:
            a = np.ascontiguousarray(a)      # torch.from_dlpack would abort the process
        return torch.from_dlpack(a)
    if dst is MemoryType.JAX:
        jnp = framework(dst).numpy
        if not _importable_by_xla(a):
            a = aligned_copy(a)
        return jnp.from_dlpack(a)
    if dst is MemoryType.TENSORFLOW:
        tf = framework(dst)
        if not _importable_by_xla(a):
            a = aligned_copy(a)
        return tf.experimental.dlpack.from_dlpack(a.__dlpack__())
    if dst is MemoryType.PYCLESPERANTO:
        cle = framework(dst)
        out = cle.create(a.shape, dtype=a.dtype)   # not push(): push casts to float32
        out.set(np.ascontiguousarray(a))
        return out
    if dst is MemoryType.CUPY:
        return framework(dst).asarray(a)
    raise MemoryConversionError("numpy", dst, "import", "unknown memory type")


# -- devices -------------------------------------------------------------------------------

def _on_gpu(data: Any, mt: MemoryType) -> bool:
    if mt is MemoryType.CUPY:
        return True
    if mt is MemoryType.TORCH:
        return data.device.type == "cuda"
    if mt is MemoryType.JAX:
        return next(iter(data.devices())).platform == "gpu"
    if mt is MemoryType.TENSORFLOW:
        return "GPU" in data.device.upper()
    return False


def _import_dlpack(data: Any, dst: MemoryType) -> Any:
    """Zero-copy GPU -> GPU through DLPack."""
    if dst is MemoryType.TORCH:
        return framework(dst).from_dlpack(data)
    if dst is MemoryType.CUPY:
        return framework(dst).from_dlpack(data)
    if dst is MemoryType.JAX:
        return framework(dst).numpy.from_dlpack(data)
    if dst is MemoryType.TENSORFLOW:
        return framework(dst).experimental.dlpack.from_dlpack(data.__dlpack__())
    raise MemoryConversionError("gpu", dst, "dlpack", "no DLPack import")


def _to_device(data: Any, mt: MemoryType, gpu_id: int) -> Any:
    """Place ``data`` on CUDA device ``gpu_id`` (no-op if it is there already)."""
    from .frameworks import cuda_available
    if not cuda_available(mt) and mt is not MemoryType.PYCLESPERANTO:
        raise MemoryConversionError(mt, mt, f"to cuda:{gpu_id}", f"{mt} sees no CUDA device")
    if mt is MemoryType.TORCH:
        return data.to(f"cuda:{gpu_id}")
    if mt is MemoryType.CUPY:
        cp = framework(mt)
        with cp.cuda.Device(gpu_id):
            return data if data.device.id == gpu_id else cp.asarray(data)
    if mt is MemoryType.JAX:
        jax = framework(mt)
        return jax.device_put(data, [d for d in jax.devices() if d.platform == "gpu"][gpu_id])
    if mt is MemoryType.TENSORFLOW:
        tf = framework(mt)
        with tf.device(f"/GPU:{gpu_id}"):
            return tf.identity(data)
    return data   # pyclesperanto: the device is chosen with cle.select_device


def data_pointer(data: Any) -> int | None:
    """Address of the first element, to tell whether two arrays share memory (None: no host/CUDA
    pointer, e.g. an OpenCL buffer)."""
    mt = detect_memory_type(data)
    if mt is MemoryType.NUMPY:
        return np.asarray(data).__array_interface__["data"][0]
    if mt is MemoryType.TORCH:
        return data.data_ptr()
    if mt is MemoryType.JAX:
        return data.unsafe_buffer_pointer()
    if mt is MemoryType.TENSORFLOW:
        return to_numpy_view(data, mt).__array_interface__["data"][0]
    if mt is MemoryType.CUPY:
        return data.data.ptr
    return None
