"""Memory types: which array library holds the data, detected without importing any.

What vfsmount knows about each library lives in its adapter (compute/adapters/).

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
