"""How one stack flows through the steps: intermediates in the memory backend.

As the reference design has it, what a later step reads is staged in the memory backend
(``FileManager``, ``Backend.MEMORY``): a step's image stack for the next step, a special
output for the steps that declare it with ``@special_inputs`` (the loaded stack too, as
``source``). Each entry is deleted once its last reader has run, and what no later step reads
-- the last step's image, special outputs nobody takes as input -- is never stored.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from backends import FileManager

from .stack_utils import stack_slices
from .steps import SOURCE_INPUT, FunctionStep, Pipeline

# called after each step with (step index, step, image stack, special outputs produced)
StepHook = Callable[[int, FunctionStep, Any, dict], None]


class StepFailure(Exception):
    """A step raised: which step, and the error itself (also the ``__cause__``)."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"step {step!r}: {type(error).__name__}: {error}")
        self.step = step
        self.error = error


class Intermediates:
    """One stack's staging area in the memory backend (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, stem: str) -> None:
        self.files = FileManager()          # its own memory backend: no sharing between stacks
        self.backend = pipeline.intermediate_backend
        self.root = f"/{pipeline.name}/{stem}"
        self.last_reader = pipeline.last_readers()
        self.stored: set[str] = set()

    def is_read(self, name: str, after: int) -> bool:
        return self.last_reader.get(name, -1) > after

    def put_image(self, data: Any) -> None:
        self.files.save(data, f"{self.root}/image", self.backend, overwrite=True)

    def take_image(self) -> Any:
        path = f"{self.root}/image"
        data = self.files.load(path, self.backend)
        self.files.delete(path, self.backend)
        return data

    def put_specials(self, index: int, produced: dict[str, Any]) -> None:
        for name, value in produced.items():
            if self.is_read(name, index):
                self.files.save(value, f"{self.root}/special/{name}", self.backend,
                                overwrite=True)
                self.stored.add(name)

    def special(self, name: str) -> Any:
        return self.files.load(f"{self.root}/special/{name}", self.backend)

    def release(self, index: int) -> None:
        """Delete what step ``index`` was the last to read."""
        for name in [n for n in self.stored if self.last_reader[n] <= index]:
            self.files.delete(f"{self.root}/special/{name}", self.backend)
            self.stored.discard(name)


def run_steps(pipeline: Pipeline, components: dict, stem: str, planes: Sequence[Any],
              after_step: StepHook | None = None) -> Any:
    """Every step on one stack built from ``planes``; the last step's image stack (in the
    memory type its function returned). A failing step raises StepFailure."""
    flow = Intermediates(pipeline, stem)
    if flow.is_read(SOURCE_INPUT, -1):
        flow.put_specials(-1, {SOURCE_INPUT: stack_slices(list(planes), "numpy")})
    data = stack_slices(list(planes), pipeline.first_memory_type)
    last = len(pipeline.steps) - 1
    for i, step in enumerate(pipeline.steps):
        if i:
            data = flow.take_image()
        try:
            data, produced = step.run(components, data, flow.special)
            if after_step is not None:
                after_step(i, step, data, produced)
        except Exception as e:
            raise StepFailure(step.name, e) from e
        flow.put_specials(i, produced)
        flow.release(i)
        if i < last:
            flow.put_image(data)
    return data


def synthetic_planes(dtype: np.dtype, plane_shape: tuple[int, int], planes: int = 2
                     ) -> list[np.ndarray]:
    """A reproducible stack with something to find, in the plate's dtype."""
    rng = np.random.default_rng(0)
    h, w = plane_shape
    base = rng.random((planes, h, w))
    base[:, h // 4:h // 2, w // 4:w // 2] += 2
    dtype = np.dtype(dtype)
    return list(base.astype(dtype) if dtype.kind == "f" else (base * 1000).astype(dtype))
