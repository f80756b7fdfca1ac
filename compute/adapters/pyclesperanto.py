"""pyclesperanto (OpenCL): one host copy each way (no DLPack), buffers made with the source
dtype (``push`` would cast to float32), no bool or float16, OpenCL's allocation errors."""
from __future__ import annotations

import gc
import sys
from types import ModuleType
from typing import Any

import numpy as np

from ..memory_types import MemoryType
from .base import ALL_DTYPES, Adapter, aligned_empty


class PyclesperantoAdapter(Adapter):
    memory_type, import_name, extra = MemoryType.PYCLESPERANTO, "pyclesperanto_prototype", "cle"
    dtypes = ALL_DTYPES - {"bool", "float16"}

    def to_numpy(self, data: Any) -> np.ndarray:
        # into an aligned buffer, so JAX/TF can then take it without a second copy
        return data.get(ary=aligned_empty(data.shape, data.dtype))

    def from_numpy(self, a: np.ndarray) -> Any:
        cle = self.module()
        out = cle.create(a.shape, dtype=a.dtype)   # not push(): push casts to float32
        out.set(np.ascontiguousarray(a))
        return out

    def device(self, data: Any) -> str:
        return f"opencl:{data.queue.device.name.strip()}"

    def to_device(self, data: Any, gpu_id: int) -> Any:
        return data          # the OpenCL device is chosen with cle.select_device

    def is_oom(self, exc: BaseException) -> bool:
        cl = sys.modules.get("pyopencl")
        text = str(exc)
        return cl is not None and (isinstance(exc, cl.MemoryError)
                                   or "MEM_OBJECT_ALLOCATION_FAILURE" in text
                                   or "OUT_OF_RESOURCES" in text)

    def cleanup(self, module: ModuleType, device_id: int | None) -> bool:
        """OpenCL buffers are freed when their Python objects go."""
        gc.collect()
        return True


ADAPTER = PyclesperantoAdapter()
