"""Lazy imports of the optional array libraries, through their adapters.

Each adapter (compute/adapters/) holds its library's import-time settings, measured traps
included: TensorFlow is loaded with RTLD_LOCAL so that pocl's OpenCL does not segfault beside
it, and JAX gets 64-bit types (conversions keep dtypes exactly) and no up-front grab of the
GPU's memory.
"""
from __future__ import annotations

from types import ModuleType

from .adapters import adapter
from .errors import MemoryConversionError
from .memory_types import MemoryType


def framework(mt: MemoryType | str) -> ModuleType:
    """Import (once) and return the library behind a memory type."""
    return adapter(mt).module()


def available(mt: MemoryType | str) -> bool:
    """True if the library can be imported (imports it)."""
    try:
        framework(mt)
        return True
    except MemoryConversionError:
        return False
    except Exception:   # e.g. cupy installed without a CUDA driver
        return False


def cuda_available(mt: MemoryType | str) -> bool:
    """True if the library can be imported and sees a CUDA device (imports it)."""
    try:
        return adapter(mt).cuda_available()
    except Exception:
        return False
