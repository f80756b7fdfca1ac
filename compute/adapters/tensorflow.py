"""TensorFlow: loaded with RTLD_LOCAL (see before_import), DLPack on the CPU and on CUDA,
``ResourceExhaustedError``."""
from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import Any

import numpy as np

from ..memory_types import MemoryType
from .base import Adapter, HostCapsule, aligned_copy, importable_by_xla


class TensorflowAdapter(Adapter):
    memory_type, import_name, extra = MemoryType.TENSORFLOW, "tensorflow", "tensorflow"
    cpu_dlpack = cuda_dlpack = True

    def before_import(self) -> None:
        # TF loads its libraries with RTLD_GLOBAL; with pocl's OpenCL (pyclesperanto) in the
        # same process that segfaults when pocl compiles a kernel. Hiding this module makes
        # TF load with RTLD_LOCAL.
        sys.modules.setdefault("tensorflow.python.pywrap_dlopen_global_flags", None)
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def _dlpack(self):
        return self.module().experimental.dlpack

    def to_numpy(self, data: Any) -> np.ndarray:
        if self.on_gpu(data):
            return data.numpy()
        return np.from_dlpack(HostCapsule(self._dlpack().to_dlpack(data)))

    def from_numpy(self, a: np.ndarray) -> Any:
        if not importable_by_xla(a):
            a = aligned_copy(a)
        return self._dlpack().from_dlpack(a.__dlpack__())

    def cpu_capsule(self, data: Any) -> Any | None:
        return self._dlpack().to_dlpack(data)

    def from_cpu_capsule(self, capsule: Any) -> Any:
        return self._dlpack().from_dlpack(capsule)

    def from_dlpack(self, data: Any) -> Any:
        return self._dlpack().from_dlpack(data.__dlpack__())

    def on_gpu(self, data: Any) -> bool:
        return "GPU" in data.device.upper()

    def device(self, data: Any) -> str:
        name = data.device.lower()
        return f"cuda:{name.rsplit(':', 1)[-1]}" if "gpu" in name else "cpu"

    def cuda_available(self) -> bool:
        return bool(self.module().config.list_physical_devices("GPU"))

    def to_device(self, data: Any, gpu_id: int) -> Any:
        tf = self.module()
        with tf.device(f"/GPU:{gpu_id}"):
            return tf.identity(data)

    def pointer(self, data: Any) -> int | None:
        if self.on_gpu(data):
            return None                  # TF exposes no device pointer
        return self.to_numpy(data).__array_interface__["data"][0]

    def dtype(self, data: Any) -> np.dtype:
        return np.dtype(data.dtype.as_numpy_dtype)

    def is_oom(self, exc: BaseException) -> bool:
        tf = self.loaded()
        return tf is not None and isinstance(exc, tf.errors.ResourceExhaustedError)

    def cleanup(self, module: ModuleType, device_id: int | None) -> bool:
        """Keras' global state; TF's allocator keeps its device memory for the process."""
        if not module.config.list_physical_devices("GPU"):
            return False
        module.keras.backend.clear_session()
        return True


ADAPTER = TensorflowAdapter()
