"""PyTorch: zero-copy with NumPy and the CPU DLPack libraries, DLPack on CUDA, per-thread
CUDA streams, ``torch.OutOfMemoryError``."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..memory_types import MemoryType
from .base import ALIGNMENT, Adapter


class TorchAdapter(Adapter):
    memory_type, import_name, extra = MemoryType.TORCH, "torch", "torch"
    cpu_dlpack = cuda_dlpack = True

    def to_numpy(self, data: Any) -> np.ndarray:
        t = data.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        return t.resolve_conj().resolve_neg().numpy()

    def from_numpy(self, a: np.ndarray) -> Any:
        if any(s < 0 for s in a.strides) or any(s % a.itemsize for s in a.strides) \
                or not a.dtype.isnative:
            a = np.ascontiguousarray(a)      # torch.from_dlpack would abort the process
        return self.module().from_dlpack(a)

    def cpu_capsule(self, data: Any) -> Any | None:
        t = data.detach()
        if not t.is_contiguous() or t.data_ptr() % ALIGNMENT:
            return None                        # XLA importers would copy or refuse
        return t.resolve_conj().resolve_neg().__dlpack__()

    def from_cpu_capsule(self, capsule: Any) -> Any:
        return self.module().from_dlpack(capsule)

    def from_dlpack(self, data: Any) -> Any:
        return self.module().from_dlpack(data)

    def on_gpu(self, data: Any) -> bool:
        return data.device.type == "cuda"

    def device(self, data: Any) -> str:
        return str(data.device)

    def cuda_available(self) -> bool:
        return bool(self.module().cuda.is_available())

    def to_device(self, data: Any, gpu_id: int) -> Any:
        return data.to(f"cuda:{gpu_id}")

    def pointer(self, data: Any) -> int | None:
        return data.data_ptr()

    def dtype(self, data: Any) -> np.dtype:
        try:
            return np.dtype(self.module().empty(0, dtype=data.dtype).numpy().dtype)
        except TypeError:
            return np.dtype("V")   # bfloat16 and friends: no NumPy equivalent

    def is_oom(self, exc: BaseException) -> bool:
        torch = self.loaded()
        return torch is not None and isinstance(
            exc, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))

    def cleanup(self, module: ModuleType, device_id: int | None) -> bool:
        """The caching allocator's unused blocks go back to the driver (memory_reserved)."""
        if not module.cuda.is_available():
            return False
        with module.cuda.device(device_id or 0):
            module.cuda.synchronize()
            module.cuda.empty_cache()
        return True

    def new_stream(self, gpu_id: int) -> Any:
        return self.module().cuda.Stream(device=gpu_id)

    def use_stream(self, stream: Any):
        return self.module().cuda.stream(stream)


ADAPTER = TorchAdapter()
