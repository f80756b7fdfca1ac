"""Free cached GPU memory per framework. Safe without the framework or without a GPU:
a framework that is not imported yet is never imported just to be cleaned.

What each frees (see its adapter's ``cleanup``): torch, the caching allocator's unused blocks
(``memory_reserved`` drops); CuPy, the free blocks of its default and pinned memory pools;
JAX, compiled-function caches (its arrays free their memory when deleted); TensorFlow, Keras'
global state; pyclesperanto, OpenCL buffers that only garbage still held.
"""
from __future__ import annotations

import gc
import logging

from .adapters import ADAPTERS, adapter
from .memory_types import MemoryType

log = logging.getLogger(__name__)


def cleanup_gpu_memory_by_framework(memory_type: MemoryType | str,
                                    device_id: int | None = None) -> bool:
    """Release the framework's cached device memory; True if something was released."""
    a = adapter(memory_type)
    module = a.loaded()
    if module is None or a.memory_type is MemoryType.NUMPY:
        return False
    try:
        return a.cleanup(module, device_id)
    except Exception as e:  # cleanup must never be the thing that fails
        log.warning("GPU cleanup for %s failed: %s", a.memory_type, e)
        return False


def cleanup_all_gpu_frameworks(device_id: int | None = None) -> dict[str, bool]:
    """Every loaded framework's cleanup, after a garbage collection (so arrays that only
    reference cycles still held are freed first)."""
    gc.collect()
    return {mt.value: cleanup_gpu_memory_by_framework(mt, device_id)
            for mt in ADAPTERS if mt is not MemoryType.NUMPY}
