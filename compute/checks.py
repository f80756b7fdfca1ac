"""Checks before any image is processed.

Every function resolves for every group, every special input has a producer, no two outputs
collide, each step's materialization backend is known, and one dry run on a small synthetic
stack proves that each step returns a [Z, Y, X] array of its declared memory type.
"""
from __future__ import annotations

import numpy as np

from .errors import PipelineError
from .flow import StepFailure, run_steps, synthetic_planes
from .grouping import Group
from .materialization import OPTION_TYPES
from .steps import SOURCE_INPUT, FunctionStep, Pipeline


def check_pipeline(pipeline: Pipeline, groups: list[Group], dtype: np.dtype,
                   plane_shape: tuple[int, int]) -> None:
    produced: dict[str, str] = {SOURCE_INPUT: "(the loaded images)"}
    suffixes: dict[str, str] = {}
    for step in pipeline.steps:
        for g in groups:
            step.functions(g.components)             # every dict key resolves
        for name in sorted(step.special_inputs()):
            if name not in produced:
                raise PipelineError(f"step {step.name!r}: special input {name!r} is produced by "
                                    "no earlier step")
        for f in step.all_functions():
            for name, spec in getattr(f, "special_outputs", {}).items():
                if name in produced:
                    raise PipelineError(f"step {step.name!r}: special output {name!r} collides "
                                        f"with the one of step {produced[name]!r}")
                produced[name] = step.name
                if spec is not None:
                    _check_options(step, spec, suffixes)
        if pipeline.backend_for(step) not in ("disk", "zarr"):
            raise PipelineError(f"step {step.name!r}: materialization backend must be disk or zarr")
    if pipeline.intermediate_backend != "memory":
        raise PipelineError(f"intermediate backend {pipeline.intermediate_backend!r}: "
                            "intermediates are staged in the memory backend only")
    dry_run(pipeline, groups[0], dtype, plane_shape)


def _check_options(step: FunctionStep, spec, suffixes: dict[str, str]) -> None:
    """Known writer options, and no file suffix written by two steps."""
    for o in spec.options:
        if not isinstance(o, OPTION_TYPES):
            raise PipelineError(f"step {step.name!r}: unknown materialization option "
                                f"{type(o).__name__}")
        if o.filename_suffix in suffixes:
            raise PipelineError(f"step {step.name!r}: output file suffix {o.filename_suffix!r} "
                                f"collides with step {suffixes[o.filename_suffix]!r}")
        suffixes[o.filename_suffix] = step.name


def dry_run(pipeline: Pipeline, group: Group, dtype: np.dtype, plane_shape: tuple[int, int]) -> None:
    """Run every step on a small synthetic stack: wrong shapes or memory types show up here."""
    planes = synthetic_planes(dtype, (min(plane_shape[0], 64), min(plane_shape[1], 64)))
    try:
        run_steps(pipeline, group.components, group.stem, planes)
    except StepFailure as f:
        if isinstance(f.error, PipelineError):
            raise f.error from None
        shape = (len(planes), *planes[0].shape)
        raise PipelineError(f"step {f.step!r} fails on a test stack of shape {shape} "
                            f"{planes[0].dtype}: {type(f.error).__name__}: {f.error}") from f.error
