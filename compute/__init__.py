"""compute/: memory-typed functions over plate images.

Importing this package imports no array framework besides NumPy; torch, JAX,
TensorFlow, CuPy and pyclesperanto are loaded the first time data is converted
to or from them.
"""
from .conversion import convert_memory, data_pointer, device_of
from .decorators import cupy, jax, memory_types, numpy, pyclesperanto, tensorflow, torch
from .errors import MemoryConversionError, MemoryTypeError, PipelineError
from .materialization import (CsvOptions, JsonOptions, MaterializationSpec, ROIOptions, TextOptions,
                              TiffStackOptions)
from .special_io import special_inputs, special_outputs
from .gpu_cleanup import cleanup_all_gpu_frameworks, cleanup_gpu_memory_by_framework
from .memory_types import MemoryType, detect_memory_type
from .stack_utils import stack_slices, unstack_slices

__all__ = [
    "MemoryType", "detect_memory_type", "device_of", "convert_memory", "data_pointer",
    "MemoryConversionError", "MemoryTypeError", "memory_types", "numpy", "cupy", "torch",
    "tensorflow", "jax", "pyclesperanto", "stack_slices", "unstack_slices",
    "cleanup_gpu_memory_by_framework", "cleanup_all_gpu_frameworks", "PipelineError",
    "MaterializationSpec", "CsvOptions", "JsonOptions", "ROIOptions", "TiffStackOptions",
    "TextOptions", "special_outputs", "special_inputs",
]
# Pipelines (compute.pipeline) and the function library (compute.functions) import
# backends/scipy/scikit-image and are imported from their modules.
