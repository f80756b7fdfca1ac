"""The 3D [Z, Y, X] discipline: lists of 2D slices in, one stack out, and back."""
from __future__ import annotations

from typing import Any, Sequence

from .conversion import aligned_empty, convert_memory, to_numpy_view
from .errors import MemoryTypeError
from .memory_types import MemoryType, detect_memory_type


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def stack_slices(slices: Sequence[Any], memory_type: MemoryType | str,
                 gpu_id: int | None = None) -> Any:
    """2D slices (any memory types) -> one [Z, Y, X] array of ``memory_type``.

    The stack is assembled once in an aligned host buffer, so handing it to torch,
    JAX or TensorFlow afterwards is zero-copy.
    """
    if not len(slices):
        raise MemoryTypeError("stack_slices: no slices given")
    shapes = [_shape(s) for s in slices]
    for i, shape in enumerate(shapes):
        if len(shape) != 2:
            raise MemoryTypeError(f"stack_slices: slice {i} has shape {shape}; every slice must be 2D "
                                  "(Y, X)")
        if shape != shapes[0]:
            raise MemoryTypeError(f"stack_slices: slice {i} has shape {shape}, slice 0 has {shapes[0]}")
    hosts = [to_numpy_view(s, detect_memory_type(s)) for s in slices]
    dtypes = {h.dtype for h in hosts}
    if len(dtypes) > 1:
        raise MemoryTypeError(f"stack_slices: slices have different dtypes {sorted(map(str, dtypes))}")
    out = aligned_empty((len(hosts), *shapes[0]), hosts[0].dtype)
    for i, h in enumerate(hosts):
        out[i] = h
    return convert_memory(out, MemoryType.NUMPY, memory_type, gpu_id)


def unstack_slices(array: Any, memory_type: MemoryType | str, gpu_id: int | None = None) -> list[Any]:
    """One [Z, Y, X] array -> a list of Z 2D slices of ``memory_type`` (views where possible)."""
    shape = _shape(array)
    if len(shape) != 3:
        raise MemoryTypeError(f"unstack_slices: expected a 3D [Z, Y, X] array, got shape {shape}")
    converted = convert_memory(array, detect_memory_type(array), memory_type, gpu_id)
    return [converted[i] for i in range(shape[0])]
