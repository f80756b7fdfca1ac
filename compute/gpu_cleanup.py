"""Free cached GPU memory per framework. Safe without the framework or without a GPU:
a framework that is not imported yet is never imported just to be cleaned."""
from __future__ import annotations

import gc
import logging
import sys

from .memory_types import MemoryType

log = logging.getLogger(__name__)


def cleanup_gpu_memory_by_framework(memory_type: MemoryType | str,
                                    device_id: int | None = None) -> bool:
    """Release the framework's cached device memory; True if something was released."""
    mt = MemoryType(memory_type)
    try:
        if mt is MemoryType.TORCH and "torch" in sys.modules:
            torch = sys.modules["torch"]
            if torch.cuda.is_available():
                with torch.cuda.device(device_id or 0):
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                return True
        elif mt is MemoryType.CUPY and "cupy" in sys.modules:
            cp = sys.modules["cupy"]
            cp.get_default_memory_pool().free_all_blocks()
            cp.get_default_pinned_memory_pool().free_all_blocks()
            return True
        elif mt is MemoryType.TENSORFLOW and "tensorflow" in sys.modules:
            tf = sys.modules["tensorflow"]
            if tf.config.list_physical_devices("GPU"):
                tf.keras.backend.clear_session()
                return True
        elif mt is MemoryType.JAX and "jax" in sys.modules:
            jax = sys.modules["jax"]
            if any(d.platform == "gpu" for d in jax.devices()):
                jax.clear_caches()
                return True
        elif mt is MemoryType.PYCLESPERANTO and "pyclesperanto_prototype" in sys.modules:
            gc.collect()   # OpenCL buffers are freed when their Python objects go
            return True
    except Exception as e:  # cleanup must never be the thing that fails
        log.warning("GPU cleanup for %s failed: %s", mt, e)
    return False


def cleanup_all_gpu_frameworks(device_id: int | None = None) -> dict[str, bool]:
    gc.collect()
    return {mt.value: cleanup_gpu_memory_by_framework(mt, device_id)
            for mt in MemoryType if mt is not MemoryType.NUMPY}
