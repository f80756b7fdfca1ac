"""CuPy: CUDA only (no CPU device to fall back to), DLPack, per-thread streams, memory pools."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..memory_types import MemoryType
from .base import Adapter


class CupyAdapter(Adapter):
    memory_type, import_name, extra = MemoryType.CUPY, "cupy", "cupy"
    cuda_dlpack = True
    runs_on_cpu = False

    def to_numpy(self, data: Any) -> np.ndarray:
        return data.get()

    def from_numpy(self, a: np.ndarray) -> Any:
        return self.module().asarray(a)

    def from_dlpack(self, data: Any) -> Any:
        return self.module().from_dlpack(data)

    def on_gpu(self, data: Any) -> bool:
        return True

    def device(self, data: Any) -> str:
        return f"cuda:{data.device.id}"

    def cuda_available(self) -> bool:
        return self.module().cuda.runtime.getDeviceCount() > 0

    def to_device(self, data: Any, gpu_id: int) -> Any:
        cp = self.module()
        if data.device.id == gpu_id:
            return data
        with cp.cuda.Device(gpu_id):
            return cp.asarray(data)

    def pointer(self, data: Any) -> int | None:
        return data.data.ptr

    def is_oom(self, exc: BaseException) -> bool:
        cp = self.loaded()
        return cp is not None and isinstance(exc, cp.cuda.memory.OutOfMemoryError)

    def cleanup(self, module: ModuleType, device_id: int | None) -> bool:
        """The default and pinned memory pools' free blocks go back to the driver."""
        module.get_default_memory_pool().free_all_blocks()
        module.get_default_pinned_memory_pool().free_all_blocks()
        return True

    def new_stream(self, gpu_id: int) -> Any:
        cp = self.module()
        with cp.cuda.Device(gpu_id):
            return cp.cuda.Stream(non_blocking=True)

    def use_stream(self, stream: Any):
        return stream          # a CuPy stream is its own context manager


ADAPTER = CupyAdapter()
