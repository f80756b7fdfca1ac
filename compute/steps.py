"""The pipeline model: steps, the pipeline, its configuration, and pipeline files.

A ``FunctionStep`` knows which functions it runs for a group of images and runs them on one
[Z, Y, X] stack; a ``Pipeline`` is the ordered steps plus where their results go. Nothing here
reads images or writes files (see compute.target and compute.execution).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import MemoryTypeError, PipelineError
from .memory_types import detect_memory_type

COMPONENTS = ("well", "site", "channel", "z", "t")
SOURCE_INPUT = "source"     # a special input every step may declare: the stack as loaded


@dataclass(frozen=True)
class VFSConfig:
    materialization_backend: str = "disk"      # "disk" or "zarr"
    intermediate_backend: str = "memory"      # staging between steps: only "memory" exists


GLOBAL_CONFIG = VFSConfig()


class FunctionStep:
    """One step: ``func`` is a callable, a (callable, kwargs) pair, a list (a chain), or a dict
    keyed by the value of ``group_by`` (default: channel), e.g. ``{"1": f, "2": g}``."""

    def __init__(self, func: Any, *, name: str | None = None,
                 variable_components: Sequence[str] = ("z",), group_by: str = "channel",
                 materialize: bool = False, materialization_backend: str | None = None,
                 **kwargs: Any) -> None:
        for c in variable_components:
            if c not in COMPONENTS:
                raise PipelineError(f"unknown variable component {c!r} (use {COMPONENTS})")
        if group_by not in COMPONENTS:
            raise PipelineError(f"unknown group_by component {group_by!r}")
        self.func = func
        self.name = name or _describe(func)
        self.variable_components = tuple(variable_components)
        self.group_by = group_by
        self.materialize = materialize
        self.materialization_backend = materialization_backend
        self.kwargs = kwargs

    def functions(self, components: dict) -> list[tuple[Callable, dict]]:
        """The (function, kwargs) chain this step runs for one group."""
        if isinstance(self.func, dict):
            key = str(components.get(self.group_by))
            chosen = [v for k, v in self.func.items() if str(k) == key]
            if not chosen:
                raise PipelineError(f"step {self.name!r}: no function for {self.group_by}={key} "
                                    f"(has {sorted(map(str, self.func))})")
            return _flatten(chosen[0], self.kwargs)
        return _flatten(self.func, self.kwargs)

    def all_functions(self) -> list[Callable]:
        return [f for f, _ in _flatten(self.func, {})]

    def special_inputs(self) -> set[str]:
        return {n for f in self.all_functions() for n in getattr(f, "special_inputs", ())}

    def special_outputs(self) -> dict[str, Any]:
        """Every special output this step can produce, with its MaterializationSpec (or None)."""
        return {n: s for f in self.all_functions()
                for n, s in getattr(f, "special_outputs", {}).items()}

    def run(self, components: dict, data: Any, special: Callable[[str], Any]) -> tuple[Any, dict]:
        """Run this step's chain on ``data``: (the image stack, the special outputs produced).
        ``special(name)`` supplies a special input produced by an earlier step."""
        produced: dict[str, Any] = {}
        for func, kwargs in self.functions(components):
            inputs = {n: produced[n] if n in produced else special(n)
                      for n in getattr(func, "special_inputs", ())}
            data, outputs = self._split(func, func(data, **kwargs, **inputs))
            produced.update(outputs)
            self._check_stack(func, data)
        return data, produced

    def _split(self, func: Callable, result: Any) -> tuple[Any, dict]:
        declared = getattr(func, "special_outputs", {})
        if not declared:
            return result, {}
        if not isinstance(result, tuple) or len(result) != 1 + len(declared):
            raise PipelineError(f"step {self.name!r}: {func.__name__} must return the image and "
                                f"{len(declared)} special output(s) {list(declared)}")
        return result[0], dict(zip(declared, result[1:]))

    def _check_stack(self, func: Callable, data: Any) -> None:
        try:
            detect_memory_type(data)
        except MemoryTypeError as e:
            raise PipelineError(f"step {self.name!r}: {func.__name__} returned "
                                f"{type(data).__name__}, not an array") from e
        shape = tuple(int(n) for n in data.shape)
        if len(shape) != 3:
            raise PipelineError(f"step {self.name!r}: {func.__name__} returned shape {shape}; "
                                "steps must return a [Z, Y, X] stack")

    def __repr__(self) -> str:
        return f"FunctionStep({self.name})"


def _describe(func: Any) -> str:
    if callable(func):
        return getattr(func, "__name__", type(func).__name__)
    if isinstance(func, tuple):
        return _describe(func[0])
    if isinstance(func, list):
        return "+".join(_describe(f) for f in func)
    if isinstance(func, dict):
        return "|".join(f"{k}:{_describe(v)}" for k, v in func.items())
    return repr(func)


def _flatten(func: Any, kwargs: dict) -> list[tuple[Callable, dict]]:
    if isinstance(func, tuple) and len(func) == 2 and callable(func[0]) and isinstance(func[1], dict):
        return [(func[0], {**kwargs, **func[1]})]
    if callable(func):
        return [(func, dict(kwargs))]
    if isinstance(func, list):
        return [item for f in func for item in _flatten(f, kwargs)]
    if isinstance(func, dict):
        return [item for f in func.values() for item in _flatten(f, kwargs)]
    raise PipelineError(f"not a function, (function, kwargs), list or dict: {func!r}")


class Pipeline:
    def __init__(self, steps: Sequence[FunctionStep], *, name: str = "pipeline",
                 config: VFSConfig | None = None) -> None:
        if not steps:
            raise PipelineError("a pipeline needs at least one step")
        self.steps = [s if isinstance(s, FunctionStep) else FunctionStep(s) for s in steps]
        self.name = name
        self.config = config
        self.source: tuple[str, str] | None = None      # (file, text) when loaded from a file

    def backend_for(self, step: FunctionStep) -> str:
        """Materialization backend, resolved step -> pipeline -> global."""
        return (step.materialization_backend
                or (self.config.materialization_backend if self.config else None)
                or GLOBAL_CONFIG.materialization_backend)

    @property
    def intermediate_backend(self) -> str:
        """Where intermediates are staged, resolved pipeline -> global."""
        return (self.config or GLOBAL_CONFIG).intermediate_backend

    @property
    def first_memory_type(self) -> str:
        """The memory type the loaded stack is built in: what the first function takes."""
        return getattr(self.steps[0].all_functions()[0], "input_memory_type", "numpy")

    def last_readers(self) -> dict[str, int]:
        """Special input name -> index of the last step that reads it."""
        return {name: i for i, step in enumerate(self.steps) for name in step.special_inputs()}


def load_pipeline_file(path: str | os.PathLike) -> Pipeline:
    """Run a pipeline file; it must define ``pipeline`` (a Pipeline or a list of FunctionSteps)."""
    import runpy
    namespace = runpy.run_path(str(path))
    found = namespace.get("pipeline")
    if found is None:
        raise PipelineError(f"{path}: defines no variable named 'pipeline'")
    if not isinstance(found, Pipeline):
        found = Pipeline(list(found), name=Path(path).stem)
    # kept so a Dask worker can run the same file instead of unpickling its functions
    found.source = (str(Path(path).absolute()), Path(path).read_text())
    return found
