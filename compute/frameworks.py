"""Lazy, safe imports of the optional array libraries.

Two measured traps are handled here, once:
- TensorFlow loads its libraries with RTLD_GLOBAL; with pocl's OpenCL (pyclesperanto)
  in the same process that segfaults when pocl compiles a kernel. Hiding TF's
  ``pywrap_dlopen_global_flags`` module makes it load with RTLD_LOCAL.
- JAX silently truncates int64/float64 to 32 bits unless x64 is enabled; conversions
  must keep dtypes exactly, so it is enabled when vfsmount imports JAX.
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .errors import MemoryConversionError
from .memory_types import MemoryType

_MODULES = {
    MemoryType.NUMPY: "numpy",
    MemoryType.CUPY: "cupy",
    MemoryType.TORCH: "torch",
    MemoryType.TENSORFLOW: "tensorflow",
    MemoryType.JAX: "jax",
    MemoryType.PYCLESPERANTO: "pyclesperanto_prototype",
}
_EXTRAS = {MemoryType.CUPY: "cupy", MemoryType.TORCH: "torch", MemoryType.TENSORFLOW: "tensorflow",
           MemoryType.JAX: "jax", MemoryType.PYCLESPERANTO: "cle"}


def framework(mt: MemoryType | str) -> ModuleType:
    """Import (once) and return the library behind a memory type."""
    mt = MemoryType(mt)
    name = _MODULES[mt]
    module = sys.modules.get(name)
    if module is not None:
        return module
    if mt is MemoryType.TENSORFLOW:
        sys.modules.setdefault("tensorflow.python.pywrap_dlopen_global_flags", None)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise MemoryConversionError("?", mt.value, "import", f"{name} is not installed "
                                    f"(pip install 'vfsmount[{_EXTRAS.get(mt, mt.value)}]'): {e}") from e
    if mt is MemoryType.JAX:
        module.config.update("jax_enable_x64", True)
    return module


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
    """True if the library sees a CUDA device (never imports a library that is not loaded yet
    unless asked about it)."""
    mt = MemoryType(mt)
    try:
        if mt is MemoryType.TORCH:
            return bool(framework(mt).cuda.is_available())
        if mt is MemoryType.CUPY:
            return framework(mt).cuda.runtime.getDeviceCount() > 0
        if mt is MemoryType.JAX:
            return any(d.platform == "gpu" for d in framework(mt).devices())
        if mt is MemoryType.TENSORFLOW:
            return bool(framework(mt).config.list_physical_devices("GPU"))
    except Exception:
        return False
    return False
