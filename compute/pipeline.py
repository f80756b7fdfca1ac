"""Pipelines of memory-typed functions over a plate: the public names, in one import.

    pipeline = Pipeline([
        FunctionStep(gaussian_filter, sigma=2),
        FunctionStep(threshold_otsu),
        FunctionStep(label_with_measurements),
    ], name="cells")
    run_pipeline(pipeline, "/data/MyPlate")            # or a --writable mountpoint

The work is split by concern; each module says more:

- ``compute.steps``: the model -- FunctionStep, Pipeline, VFSConfig, pipeline files;
- ``compute.target``: where images are read from and where results go (plate or mount);
- ``compute.grouping``: images grouped into [Z, Y, X] stacks;
- ``compute.checks``: everything checked before any image is processed, with a dry run;
- ``compute.flow``: one stack through the steps, intermediates in the memory backend;
- ``compute.execution``: per stack and per well -- load, run, write;
- ``compute.runners`` and ``compute.dask_runner``: wells in threads, or on a Dask cluster.

Materialization configuration resolves step -> pipeline -> global
(``VFSConfig.materialization_backend``): ``PLATE/outputs/<name>/`` on disk, or
``PLATE/outputs/<name>.zarr`` for images with zarr; through a mount, everything is written
into ``MNT/outputs/<name>/`` exactly as another program would.
"""
from __future__ import annotations

from .checks import check_pipeline, dry_run
from .errors import PipelineError
from .execution import WellResult, compute_group, output_layout, process_well
from .grouping import Group, group_images, groups_by_well
from .runners import RunResult, run_pipeline
from .steps import (COMPONENTS, GLOBAL_CONFIG, SOURCE_INPUT, FunctionStep, Pipeline, VFSConfig,
                    load_pipeline_file)
from .target import ReaderSpec, Target, cached_reader, is_vfsmount

__all__ = ["FunctionStep", "Pipeline", "VFSConfig", "PipelineError", "RunResult", "run_pipeline",
           "load_pipeline_file", "group_images", "groups_by_well", "Group", "compute_group",
           "output_layout", "check_pipeline", "dry_run", "process_well", "WellResult", "Target",
           "ReaderSpec", "cached_reader", "is_vfsmount", "COMPONENTS", "GLOBAL_CONFIG",
           "SOURCE_INPUT"]
