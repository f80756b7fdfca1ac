"""NumPy: the host memory every other adapter converts through."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..memory_types import MemoryType
from .base import Adapter


class NumpyAdapter(Adapter):
    memory_type, import_name, extra = MemoryType.NUMPY, "numpy", "numpy"

    def to_numpy(self, data: Any) -> np.ndarray:
        return np.asarray(data)

    def from_numpy(self, a: np.ndarray) -> Any:
        return a

    def pointer(self, data: Any) -> int | None:
        return np.asarray(data).__array_interface__["data"][0]


ADAPTER = NumpyAdapter()
