"""One adapter per memory type (see base.Adapter); ``adapter(mt)`` finds it.

No adapter imports its library at import time: ``import compute`` loads NumPy only.
"""
from __future__ import annotations

from ..memory_types import MemoryType
from . import cupy, jax, numpy, pyclesperanto, tensorflow, torch
from .base import ALIGNMENT, Adapter, aligned_copy, aligned_empty

ADAPTERS: dict[MemoryType, Adapter] = {
    m.ADAPTER.memory_type: m.ADAPTER for m in (numpy, cupy, torch, tensorflow, jax, pyclesperanto)}


def adapter(mt: MemoryType | str) -> Adapter:
    return ADAPTERS[MemoryType(mt)]


__all__ = ["ADAPTERS", "ALIGNMENT", "Adapter", "adapter", "aligned_copy", "aligned_empty"]
