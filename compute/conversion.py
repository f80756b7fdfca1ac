"""convert_memory: move an array between memory types with as few copies as possible.

Order of preference, per the reference design:
1. zero-copy: DLPack (torch, jax, tensorflow, cupy, numpy all speak it), or a NumPy
   view of a CPU tensor;
2. a single copy, where zero-copy is impossible or unsafe: pyclesperanto (OpenCL
   buffers have no DLPack), host <-> device, and inputs an importer rejects;
3. a CPU round trip between two GPU types, only with ``allow_cpu_roundtrip=True``.

What breaks zero-copy (measured on these machines) is handled by each library's adapter
(compute/adapters/) before the import rather than after a crash:
- ``torch.from_dlpack`` aborts the process on negative strides -> copy first;
- JAX and TensorFlow import only 64-byte aligned, C-contiguous buffers (otherwise
  they copy silently or fail) -> one aligned copy; TF rejects non-compact strides;
- a read-only NumPy array exports only through versioned DLPack: torch accepts it,
  JAX and TF do not -> one aligned copy for those;
- ``pyclesperanto.push`` casts to float32 -> buffers are created with the source dtype.
Dtypes and values are preserved exactly; a dtype a target cannot hold is refused.
This module only decides the route; the adapters do the work.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .adapters import ADAPTERS, Adapter, adapter, aligned_copy, aligned_empty
from .errors import MemoryConversionError
from .memory_types import MemoryType, detect_memory_type

SUPPORTED_DTYPES: dict[MemoryType, frozenset[str]] = {mt: a.dtypes for mt, a in ADAPTERS.items()}

__all__ = ["convert_memory", "to_numpy_view", "data_pointer", "device_of", "dtype_of",
           "aligned_copy", "aligned_empty", "SUPPORTED_DTYPES"]


def convert_memory(data: Any, source_type: MemoryType | str, target_type: MemoryType | str,
                   gpu_id: int | None = None, allow_cpu_roundtrip: bool = False) -> Any:
    src, dst = MemoryType(source_type), MemoryType(target_type)
    _check(data, src, dst)
    a_src, a_dst = adapter(src), adapter(dst)
    if src is dst:
        return _place(data, a_dst, gpu_id)
    if a_src.on_gpu(data) and a_dst.cuda_dlpack:
        try:
            return _place(a_dst.from_dlpack(data), a_dst, gpu_id)
        except Exception as e:
            if not allow_cpu_roundtrip:
                raise MemoryConversionError(src, dst, "dlpack (GPU to GPU)",
                                            f"{e}; pass allow_cpu_roundtrip=True to go through "
                                            "host memory") from e
            if gpu_id is None:          # the round trip ends on the device it started from
                gpu_id = int(a_src.device(data).rsplit(":", 1)[1])
    elif a_src.cpu_dlpack and a_dst.cpu_dlpack:
        direct = _direct_dlpack(data, a_src, a_dst)
        if direct is not None:
            return _place(direct, a_dst, gpu_id)
    try:
        out = a_dst.from_numpy(a_src.to_numpy(data))
    except MemoryConversionError:
        raise
    except Exception as e:
        raise MemoryConversionError(src, dst, "host view + import", f"{type(e).__name__}: {e}") from e
    return _place(out, a_dst, gpu_id)


def _check(data: Any, src: MemoryType, dst: MemoryType) -> None:
    actual = detect_memory_type(data)
    if actual is not src:
        raise MemoryConversionError(src, dst, "type check", f"data is {actual}, not {src}")
    dtype = dtype_of(data)
    if dtype.name not in SUPPORTED_DTYPES[dst]:
        raise MemoryConversionError(src, dst, "dtype check",
                                    f"{dst} cannot hold {dtype.name} arrays "
                                    f"(supported: {', '.join(sorted(SUPPORTED_DTYPES[dst]))})")


def _direct_dlpack(data: Any, a_src: Adapter, a_dst: Adapter) -> Any | None:
    """torch/JAX/TF -> torch/JAX/TF on the CPU straight through DLPack (no NumPy view, whose
    read-only flag would force a copy); None where the importer refuses the layout."""
    try:
        capsule = a_src.cpu_capsule(data)
        return None if capsule is None else a_dst.from_cpu_capsule(capsule)
    except Exception:
        return None


def _place(data: Any, a: Adapter, gpu_id: int | None) -> Any:
    """``data`` on CUDA device ``gpu_id``; where it is when ``gpu_id`` is None."""
    if gpu_id is None:
        return data
    if a.memory_type is not MemoryType.PYCLESPERANTO and not a.cuda_available():
        raise MemoryConversionError(a.memory_type, a.memory_type, f"to cuda:{gpu_id}",
                                    f"{a.memory_type} sees no CUDA device")
    return a.to_device(data, gpu_id)


def to_numpy_view(data: Any, mt: MemoryType) -> np.ndarray:
    """A NumPy array of the data: a view for CPU tensors, a copy from devices."""
    return adapter(mt).to_numpy(data)


def dtype_of(data: Any) -> np.dtype:
    return adapter(detect_memory_type(data)).dtype(data)


def data_pointer(data: Any) -> int | None:
    """Address of the first element, to tell whether two arrays share memory (None: no host/CUDA
    pointer, e.g. an OpenCL buffer)."""
    return adapter(detect_memory_type(data)).pointer(data)


def device_of(data: Any) -> str:
    """'cpu', 'cuda:N' or 'opencl:<device name>'."""
    return adapter(detect_memory_type(data)).device(data)
