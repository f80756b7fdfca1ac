"""Memory-type declarations: ``@numpy``, ``@torch(oom_recovery=True)``, ``@memory_types(...)``.

A decorated function records its contract (``input_memory_type``,
``output_memory_type``) so a pipeline can plan conversions before running it, and
at call time:
- converts its first argument (the [Z, Y, X] stack) to the input type;
- runs it on a thread-local stream where the framework has streams (torch, cupy on CUDA);
- with ``oom_recovery``, on the framework's own out-of-memory error: frees that
  framework's caches and retries once, then (if ``cpu_fallback``) runs it on the CPU,
  logging both;
- checks the main output (the first element when special outputs are returned as a
  tuple) is of the output type, and raises MemoryTypeError naming the function if not.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable

from .adapters import adapter
from .conversion import convert_memory, to_numpy_view
from .errors import MemoryTypeError
from .gpu_cleanup import cleanup_gpu_memory_by_framework
from .memory_types import MemoryType, detect_memory_type

log = logging.getLogger(__name__)


def is_oom_error(exc: BaseException, mt: MemoryType | str) -> bool:
    """Is ``exc`` the out-of-memory error of framework ``mt``?"""
    return adapter(mt).is_oom(exc)


def memory_types(input_type: MemoryType | str = "numpy", output_type: MemoryType | str | None = None,
                 *, oom_recovery: bool = False, cpu_fallback: bool = True) -> Callable:
    in_t = MemoryType(input_type)
    out_t = MemoryType(output_type or input_type)

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def wrapper(image: Any, *args: Any, gpu_id: int | None = None, **kwargs: Any) -> Any:
            src = detect_memory_type(image)
            x = convert_memory(image, src, in_t, gpu_id)
            try:
                with adapter(in_t).stream(gpu_id):
                    result = func(x, *args, **kwargs)
            except Exception as e:
                if not (oom_recovery and is_oom_error(e, in_t)):
                    raise
                result = _recover(func, wrapper, e, x, image, src, args, kwargs, gpu_id)
            _check_output(func, result, out_t)
            return result

        wrapper.input_memory_type = in_t.value
        wrapper.output_memory_type = out_t.value
        wrapper.oom_recovery = oom_recovery
        wrapper.cpu_fallback = cpu_fallback
        wrapper.__wrapped_function__ = func
        return wrapper

    def _recover(func, wrapper, error, x, image, src, args, kwargs, gpu_id):
        log.warning("%s: out of memory on %s (%s); freeing %s caches and retrying",
                    func.__qualname__, in_t, error, in_t)
        cleanup_gpu_memory_by_framework(in_t, gpu_id)
        try:
            with adapter(in_t).stream(gpu_id):
                return func(x, *args, **kwargs)
        except Exception as e:
            if not is_oom_error(e, in_t) or not cpu_fallback or not adapter(in_t).runs_on_cpu:
                raise
            log.warning("%s: still out of memory; running it on the CPU", func.__qualname__)
            cleanup_gpu_memory_by_framework(in_t, gpu_id)
            # the same framework on its CPU device (a host copy: the input may be on the GPU)
            host = adapter(in_t).from_numpy(to_numpy_view(image, src))
            return func(host, *args, **kwargs)

    return decorate


def _check_output(func: Callable, result: Any, out_t: MemoryType) -> None:
    main = result[0] if isinstance(result, tuple) else result
    try:
        actual = detect_memory_type(main)
    except MemoryTypeError:
        raise MemoryTypeError(f"{func.__qualname__} declared output {out_t} but returned "
                              f"{type(main).__qualname__}") from None
    if actual is not out_t:
        raise MemoryTypeError(f"{func.__qualname__} declared output {out_t} but returned {actual}")


def _framework_decorator(mt: MemoryType, default_oom: bool):
    def decorator(func: Callable | None = None, *, input_type: MemoryType | str = mt,
                  output_type: MemoryType | str | None = None, oom_recovery: bool = default_oom,
                  cpu_fallback: bool = True):
        make = memory_types(input_type, output_type or mt, oom_recovery=oom_recovery,
                            cpu_fallback=cpu_fallback)
        return make(func) if func is not None else make
    decorator.__name__ = mt.value
    decorator.__doc__ = f"Declare a function that takes and returns {mt} arrays."
    return decorator


numpy = _framework_decorator(MemoryType.NUMPY, False)
cupy = _framework_decorator(MemoryType.CUPY, True)
torch = _framework_decorator(MemoryType.TORCH, True)
tensorflow = _framework_decorator(MemoryType.TENSORFLOW, True)
jax = _framework_decorator(MemoryType.JAX, True)
pyclesperanto = _framework_decorator(MemoryType.PYCLESPERANTO, True)
