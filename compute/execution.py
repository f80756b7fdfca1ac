"""Per-stack and per-well execution: load, run the steps, write what is asked for.

The last step's images (and those of any ``materialize=True`` step) go to the step's
materialization backend: TIFF files in the output folder, or the output zarr store; through
a mount the mount decides. Special outputs with a MaterializationSpec are written beside them.
A failing stack is reported with well, stack and step; the other stacks go on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .conversion import to_numpy_view
from .flow import StepFailure, run_steps, synthetic_planes
from .grouping import Group
from .memory_types import MemoryType, detect_memory_type
from .stack_utils import unstack_slices
from .steps import FunctionStep, Pipeline

log = logging.getLogger(__name__)


def compute_group(pipeline: Pipeline, group: Group, planes: Sequence[np.ndarray]) -> np.ndarray:
    """Run every step on one group's planes; the last step's image stack, as NumPy."""
    try:
        data = run_steps(pipeline, group.components, group.stem, planes)
    except StepFailure as f:
        raise f.error from None       # the function's own error, for the caller to report
    return np.ascontiguousarray(to_numpy_view(data, detect_memory_type(data)))


def output_layout(pipeline: Pipeline, group: Group, dtype: np.dtype, plane_shape: tuple[int, int]
                  ) -> tuple[bool, tuple[int, int], np.dtype]:
    """(keeps z, output plane shape, output dtype), learnt from one run on a synthetic stack of
    the real plane size -- so sizes are known before any real image is computed."""
    out = compute_group(pipeline, group, synthetic_planes(dtype, plane_shape))
    return out.shape[0] == 2, tuple(out.shape[1:]), out.dtype


@dataclass
class WellResult:
    images: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    zarr_index: dict | None = None      # the zarr arrays this well wrote (see OutputSink)


class _Writer:
    """Writes one stack's results as the steps produce them (a run_steps hook)."""

    def __init__(self, pipeline: Pipeline, sink, zarr_store, group: Group, result: WellResult):
        self.pipeline, self.sink, self.zarr_store = pipeline, sink, zarr_store
        self.group, self.result = group, result

    def __call__(self, index: int, step: FunctionStep, data: Any, produced: dict) -> None:
        last = index == len(self.pipeline.steps) - 1
        if last or step.materialize:
            self.result.images += self.images(data, self.pipeline.backend_for(step),
                                              None if last else step.name)
        elif self.sink.stream and self.sink.stream_steps:
            self.stream(unstack_slices(data, "numpy"), step.name)
        specs = step.special_outputs()
        for name, value in produced.items():
            if specs.get(name) is not None:
                self.result.files += self.sink.materialize(value, specs[name], self.group,
                                                           self.zarr_store, name)

    def images(self, data: Any, backend: str, suffix: str | None) -> list[str]:
        planes = unstack_slices(data, "numpy")
        names = []
        for plane, p in zip(planes, self.group.plane_names(len(planes))):
            name = p.virtual_name()
            if suffix:                            # an intermediate step kept beside the result
                name = name[:-4] + f"_{suffix}.tif"
            plane = np.ascontiguousarray(to_numpy_view(plane, MemoryType.NUMPY))
            if backend == "zarr" and self.zarr_store is not None:
                self.zarr_store.save_batch([plane], [name], flush=False)
            else:
                # through a mount, the mount's --materialize decides whether this becomes zarr
                self.sink.write_image_file(name, plane)
            names.append(name)
        if self.sink.stream:
            self.stream(planes, suffix, names)
        return names

    def stream(self, planes: list, step: str | None, names: list[str] | None = None) -> None:
        """A stack of results to the viewer the run streams to (never waits on it)."""
        from .streaming import publish
        coords = self.group.plane_names(len(planes))
        names = names or [p.virtual_name()[:-4] + f"_{step}.tif" for p in coords]
        publish(self.sink, self.group, names, coords, np.stack([np.asarray(p) for p in planes]),
                step)


def process_well(pipeline: Pipeline, reader, sink, well: str, groups: Sequence[Group],
                 zarr_store=None) -> WellResult:
    """Every stack of one well through every step, results written to ``sink`` (images to
    ``zarr_store`` when their backend is zarr). A failing stack is reported with well, stack
    and step, and the well's other stacks still run."""
    result = WellResult()
    for g in groups:
        try:
            planes = reader.load_batch(list(g.names))
            run_steps(pipeline, g.components, g.stem, planes,
                      _Writer(pipeline, sink, zarr_store, g, result))
        except StepFailure as f:
            _failed(result, well, g, f.step, f.error)
        except Exception as e:          # reading the planes or stacking them
            _failed(result, well, g, "load", e)
    return result


def _failed(result: WellResult, well: str, group: Group, step: str, error: BaseException) -> None:
    msg = f"well {well}, {group.stem}, step {step!r}: {type(error).__name__}: {error}"
    log.error("%s", msg)
    result.failures.append(msg)
