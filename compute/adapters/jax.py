"""JAX: 64-bit types on (it truncates int64/float64 to 32 bits otherwise), no up-front grab
of 75 % of the GPU (other libraries share the device), DLPack on the CPU and on CUDA."""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from ..memory_types import MemoryType
from .base import Adapter, HostCapsule, aligned_copy, importable_by_xla


class JaxAdapter(Adapter):
    memory_type, import_name, extra = MemoryType.JAX, "jax", "jax"
    cpu_dlpack = cuda_dlpack = True

    def before_import(self) -> None:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    def after_import(self, module: ModuleType) -> None:
        module.config.update("jax_enable_x64", True)

    def _device_of(self, data: Any):
        return next(iter(data.devices()))

    def to_numpy(self, data: Any) -> np.ndarray:
        if self._device_of(data).platform != "cpu":
            return np.asarray(self.module().device_get(data))
        return np.from_dlpack(data)

    def from_numpy(self, a: np.ndarray) -> Any:
        if not importable_by_xla(a):
            a = aligned_copy(a)
        return self.module().numpy.from_dlpack(a)

    def cpu_capsule(self, data: Any) -> Any | None:
        return data.__dlpack__()

    def from_cpu_capsule(self, capsule: Any) -> Any:
        return self.module().numpy.from_dlpack(HostCapsule(capsule))

    def from_dlpack(self, data: Any) -> Any:
        return self.module().numpy.from_dlpack(data)

    def on_gpu(self, data: Any) -> bool:
        return self._device_of(data).platform == "gpu"

    def device(self, data: Any) -> str:
        dev = self._device_of(data)
        return "cpu" if dev.platform == "cpu" else f"cuda:{dev.id}"

    def cuda_available(self) -> bool:
        return bool(_gpus(self.module()))

    def to_device(self, data: Any, gpu_id: int) -> Any:
        return self.module().device_put(data, _gpus(self.module())[gpu_id])

    def pointer(self, data: Any) -> int | None:
        return data.unsafe_buffer_pointer()

    def is_oom(self, exc: BaseException) -> bool:
        name = type(exc).__name__
        return "RESOURCE_EXHAUSTED" in str(exc) and ("XlaRuntimeError" in name
                                                     or "JaxRuntimeError" in name)

    def cleanup(self, module: ModuleType, device_id: int | None) -> bool:
        """Compiled-function caches; arrays free their device memory when they are deleted."""
        if not _gpus(module):
            return False
        module.clear_caches()
        return True


def _gpus(jax: ModuleType) -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:          # no GPU backend
        return []


ADAPTER = JaxAdapter()
