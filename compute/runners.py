"""Running a pipeline over a whole plate: wells in threads (with a tqdm bar), or on Dask.

Before any image is processed the pipeline is checked (compute.checks). Each well runs as
one task; a failing stack is reported with well, stack and step while everything else is
kept, and the run then raises PipelineError listing the failures.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from natsort import natsorted

from .checks import check_pipeline
from .dask_runner import run_on_dask
from .errors import PipelineError
from .execution import WellResult, process_well
from .grouping import Group, group_images, groups_by_well
from .steps import FunctionStep, Pipeline
from .target import Target


@dataclass
class RunResult:
    groups: int = 0
    images_written: int = 0
    images: list[str] = field(default_factory=list)     # names of the images written
    files_written: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    output: str = ""                # where the results are
    stream: str = ""                # what the stream to a viewer did (streaming.StreamReport)


def run_pipeline(pipeline: Pipeline | Sequence[FunctionStep], target: str | os.PathLike, *,
                 output: str | None = None, workers: int = 2, progress: bool = True,
                 dask: str | None = None, stream: str | None = None,
                 stream_steps: bool = False) -> RunResult:
    """Run ``pipeline`` over every well of ``target``, in threads, or on a Dask cluster when
    ``dask`` is a scheduler address or ``local:N`` (see compute.dask_runner). ``stream``: a
    viewer's ZeroMQ address (compute.streaming) that gets every written result as well (and
    every step's, with ``stream_steps``), never waited on."""
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline(list(pipeline))
    out = Target(target, output or pipeline.name)
    if not out.names:
        raise PipelineError(f"{out.path}: no images to process")
    groups = group_images(out.names, pipeline.steps[0].variable_components)
    first = out.load(groups[0].names[:1])[0]
    check_pipeline(pipeline, groups, first.dtype, first.shape)
    by_well = groups_by_well(groups)
    if stream:
        from dataclasses import replace
        from .streaming import sender
        out.sink = replace(out.sink, stream=stream, stream_steps=stream_steps)
        sender(stream)                    # connects now: the viewer is found before results come
    uses_zarr = not out.sink.through_mount and any(
        pipeline.backend_for(s) == "zarr" for s in pipeline.steps)
    zarr_store = out.sink.open_zarr() if uses_zarr else None
    from tqdm import tqdm
    bar = tqdm(total=len(groups), desc=f"{pipeline.name}", unit="stack", disable=not progress)
    try:
        if dask:
            well_results = run_on_dask(pipeline, out, by_well, dask, bar, zarr=uses_zarr)
        else:
            well_results = _run_in_threads(pipeline, out, by_well, zarr_store, bar, workers)
    finally:
        bar.close()
        report = _finish_stream(stream)
    result = _collect(well_results, zarr_store, RunResult(groups=len(groups),
                                                          output=out.sink.folder), out.sink)
    result.stream = report
    out.record(pipeline.backend_for(pipeline.steps[-1]), result.images, result.files_written)
    if result.failures:
        raise PipelineError(f"{len(result.failures)} stack(s) failed (outputs of the others are "
                            "kept):\n" + "\n".join(result.failures))
    return result


def _finish_stream(stream: str | None) -> str:
    if not stream:
        return ""
    from .streaming import finish
    report = finish(stream)
    return report.line() if report is not None else ""


def _run_in_threads(pipeline: Pipeline, out: Target, by_well: dict[str, list[Group]], zarr_store,
                    bar, workers: int) -> list[WellResult]:
    def run_well(well: str) -> WellResult:
        try:
            return process_well(pipeline, out.reader, out.sink, well, by_well[well], zarr_store)
        finally:
            bar.update(len(by_well[well]))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(run_well, natsorted(by_well)))


def _collect(well_results: list[WellResult], zarr_store, result: RunResult, sink) -> RunResult:
    """Merge the wells' results; the zarr store's shared documents are written once, last."""
    for wr in well_results:
        result.images += wr.images
        result.files_written += wr.files
        result.failures += wr.failures
        if zarr_store is not None and wr.zarr_index:
            zarr_store.adopt(wr.zarr_index)
    if zarr_store is not None:
        sink.finish_zarr(zarr_store)      # the shared documents (with the plate's physics)
    result.images_written = len(result.images)
    return result
