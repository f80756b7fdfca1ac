"""Memory types: which array library holds the data, detected without importing any.

Detection looks at the class's module, so checking a NumPy array never imports
torch, and ``import compute`` imports no framework at all.
"""
from __future__ import annotations

from enum import Enum
from typing import Any

import numpy as np

from .errors import MemoryTypeError


class MemoryType(str, Enum):
    NUMPY = "numpy"
    CUPY = "cupy"
    TORCH = "torch"
    TENSORFLOW = "tensorflow"
    JAX = "jax"
    PYCLESPERANTO = "pyclesperanto"

    @property
    def gpu_capable(self) -> bool:
        return self is not MemoryType.NUMPY

    def __str__(self) -> str:
        return self.value


_MODULE_ROOTS = {
    "numpy": MemoryType.NUMPY,
    "cupy": MemoryType.CUPY,
    "torch": MemoryType.TORCH,
    "tensorflow": MemoryType.TENSORFLOW,
    "keras": MemoryType.TENSORFLOW,
    "jax": MemoryType.JAX,
    "jaxlib": MemoryType.JAX,
    "pyclesperanto_prototype": MemoryType.PYCLESPERANTO,
    "pyclesperanto": MemoryType.PYCLESPERANTO,
}


def detect_memory_type(data: Any) -> MemoryType:
    """The memory type of an array (NumPy scalars count as NumPy)."""
    if isinstance(data, (np.ndarray, np.generic)):
        return MemoryType.NUMPY
    for cls in type(data).__mro__:
        root = cls.__module__.split(".", 1)[0]
        if root in _MODULE_ROOTS:
            return _MODULE_ROOTS[root]
    raise MemoryTypeError(f"not an array of a known memory type: {type(data).__module__}."
                          f"{type(data).__qualname__}")


def device_of(data: Any) -> str:
    """'cpu', 'cuda:N' or 'opencl:<device name>'."""
    mt = detect_memory_type(data)
    if mt is MemoryType.NUMPY:
        return "cpu"
    if mt is MemoryType.TORCH:
        return str(data.device)
    if mt is MemoryType.CUPY:
        return f"cuda:{data.device.id}"
    if mt is MemoryType.JAX:
        dev = next(iter(data.devices()))
        return "cpu" if dev.platform == "cpu" else f"cuda:{dev.id}"
    if mt is MemoryType.TENSORFLOW:
        name = data.device.lower()
        return f"cuda:{name.rsplit(':', 1)[-1]}" if "gpu" in name else "cpu"
    return f"opencl:{data.queue.device.name.strip()}"


def is_on_gpu(data: Any) -> bool:
    return device_of(data).startswith("cuda")
