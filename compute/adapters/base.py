"""What every memory-type adapter provides, with the defaults of a CPU-only library.

An adapter is everything vfsmount knows about one array library: how to import it, to and
from NumPy, DLPack import, device placement, data pointers, dtypes, its out-of-memory error,
per-thread CUDA streams and freeing its cached GPU memory. ``compute.conversion`` and the
decorators only dispatch to adapters, so adding a framework is one module in this package
(plus its name in ``MemoryType``).
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import threading
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import MemoryConversionError
from ..memory_types import MemoryType

ALIGNMENT = 64
ALL_DTYPES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
                        "int64", "float16", "float32", "float64"})

_thread = threading.local()        # this thread's CUDA streams, by (memory type, device)


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


def importable_by_xla(a: np.ndarray) -> bool:
    """JAX and TensorFlow import zero-copy only aligned, C-contiguous, writable buffers."""
    return (a.flags.c_contiguous and a.flags.writeable and a.ctypes.data % ALIGNMENT == 0
            and a.dtype.isnative)


class HostCapsule:
    """Wraps a bare CPU DLPack capsule (TensorFlow's export) for the ``from_dlpack`` importers
    that want an object with ``__dlpack__``."""

    def __init__(self, capsule) -> None:
        self._capsule = capsule

    def __dlpack__(self, **_):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)   # kDLCPU


class Adapter:
    memory_type: MemoryType
    import_name: str                 # the module to import
    extra: str                       # pip install 'vfsmount[<extra>]'
    dtypes: frozenset[str] = ALL_DTYPES
    cpu_dlpack = False               # exchanges CPU tensors zero-copy with the others that do
    cuda_dlpack = False              # imports CUDA arrays zero-copy through DLPack
    runs_on_cpu = True               # has a CPU device to fall back to
    _ready = False

    # -- the library ---------------------------------------------------------------------------
    def module(self) -> ModuleType:
        """Import (once) and return the library, with this adapter's import-time settings."""
        module = sys.modules.get(self.import_name)
        if module is None:
            self.before_import()
            try:
                module = importlib.import_module(self.import_name)
            except ImportError as e:
                raise MemoryConversionError(
                    "?", self.memory_type.value, "import",
                    f"{self.import_name} is not installed (pip install 'vfsmount[{self.extra}]'): "
                    f"{e}") from e
        if not self._ready:
            self.after_import(module)
            self._ready = True
        return module

    def loaded(self) -> ModuleType | None:
        """The library if something imported it already (cleanup never imports one)."""
        return sys.modules.get(self.import_name)

    def before_import(self) -> None:
        pass

    def after_import(self, module: ModuleType) -> None:
        pass

    # -- host memory ---------------------------------------------------------------------------
    def to_numpy(self, data: Any) -> np.ndarray:
        """A NumPy array of the data: a view for CPU memory, a copy from a device."""
        raise NotImplementedError

    def from_numpy(self, a: np.ndarray) -> Any:
        """The array in this library, zero-copy where the library can share host memory."""
        raise NotImplementedError

    def cpu_capsule(self, data: Any) -> Any | None:
        """A DLPack capsule of a CPU array for the cpu_dlpack importers; None: no export."""
        return None

    def from_cpu_capsule(self, capsule: Any) -> Any:
        raise NotImplementedError

    # -- devices -------------------------------------------------------------------------------
    def from_dlpack(self, data: Any) -> Any:
        """Zero-copy import of another library's CUDA array."""
        raise NotImplementedError

    def on_gpu(self, data: Any) -> bool:
        return False

    def device(self, data: Any) -> str:
        """'cpu', 'cuda:N' or 'opencl:<device name>'."""
        return "cpu"

    def cuda_available(self) -> bool:
        return False

    def to_device(self, data: Any, gpu_id: int) -> Any:
        """``data`` on CUDA device ``gpu_id`` (as is if it is there already)."""
        raise MemoryConversionError(self.memory_type, self.memory_type, f"to cuda:{gpu_id}",
                                    f"{self.memory_type} has no CUDA devices")

    def pointer(self, data: Any) -> int | None:
        """Address of the first element (None: no host or CUDA pointer)."""
        return None

    def dtype(self, data: Any) -> np.dtype:
        return np.dtype(data.dtype)

    # -- GPU resources -------------------------------------------------------------------------
    def is_oom(self, exc: BaseException) -> bool:
        """Is ``exc`` this library's out-of-memory error? (False while it is not imported.)"""
        return False

    def cleanup(self, module: ModuleType, device_id: int | None) -> bool:
        """Free the library's cached device memory; True if there was a device to clean."""
        return False

    def new_stream(self, gpu_id: int) -> Any | None:
        return None

    def use_stream(self, stream: Any):
        return contextlib.nullcontext()

    def stream(self, gpu_id: int | None):
        """A context running work on this thread's own CUDA stream of device ``gpu_id`` (made
        on first use, kept for the thread's life); a no-op without streams or a GPU."""
        if gpu_id is None or not self.cuda_available():
            return contextlib.nullcontext()
        streams = getattr(_thread, "streams", None)
        if streams is None:
            streams = _thread.streams = {}
        key = (self.memory_type, gpu_id)
        if key not in streams:
            streams[key] = self.new_stream(gpu_id)
        return contextlib.nullcontext() if streams[key] is None else self.use_stream(streams[key])
