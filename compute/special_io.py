"""``@special_outputs`` / ``@special_inputs``: side results a step produces and consumes.

A function with special outputs returns ``(main_image, out_1, out_2, ...)`` in declaration
order; each is staged in the memory backend and, if declared with a MaterializationSpec,
written to persistent storage. A later step that declares ``@special_inputs("name")``
receives it as the keyword argument ``name``.
"""
from __future__ import annotations

from typing import Callable

from .materialization import MaterializationError, MaterializationSpec


def special_outputs(*declarations) -> Callable:
    outputs: dict[str, MaterializationSpec | None] = {}
    for d in declarations:
        name, spec = (d, None) if isinstance(d, str) else d
        if not isinstance(name, str) or not name.isidentifier():
            raise MaterializationError(f"special output names must be identifiers, got {name!r}")
        if spec is not None and not isinstance(spec, MaterializationSpec):
            raise MaterializationError(f"special output {name!r}: expected a MaterializationSpec, "
                                       f"got {type(spec).__name__}")
        if name in outputs:
            raise MaterializationError(f"special output {name!r} declared twice")
        outputs[name] = spec

    def decorate(func: Callable) -> Callable:
        func.special_outputs = outputs
        return func
    return decorate


def special_inputs(*names: str) -> Callable:
    def decorate(func: Callable) -> Callable:
        func.special_inputs = tuple(names)
        return func
    return decorate
