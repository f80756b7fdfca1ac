"""Pipelines of memory-typed functions over a plate, and the runner that executes them.

    pipeline = Pipeline([
        FunctionStep(gaussian_filter, sigma=2),
        FunctionStep(threshold_otsu),
        FunctionStep(label_with_measurements),
    ], name="cells")
    run_pipeline(pipeline, "/data/MyPlate")            # or a --writable mountpoint

Reading goes through the plate's primary backend (zarr > virtual_workspace > disk) or, for a
mountpoint, through ``MNT/images/``. Images with the same well, site, channel and time point
are stacked over z (``variable_components``) into one [Z, Y, X] array, which flows through the
steps; each decorated function converts it to its own memory type, so data changes type only
where consecutive steps disagree. Intermediates and special outputs are staged in the
memory backend. The last step (and any step with ``materialize=True``) is written to the
materialization backend -- configuration resolved step -> pipeline -> global
(``VFSConfig.materialization_backend``): ``PLATE/outputs/<name>/`` on disk, or
``PLATE/outputs/<name>.zarr`` for images with zarr; through a mount, everything is written
into ``MNT/outputs/<name>/`` exactly as another program would.

Before any image is processed the pipeline is checked: every function resolves for every
group, every special input has a producer, no two outputs collide, and one dry run on a
small synthetic stack proves each step returns a 3D array of its declared memory type.
Wells run in parallel threads; a failure in one well is reported with well and step and the
other wells' outputs are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from natsort import natsorted

from backends import Backend, FileManager
from backends.disk import DiskStorageBackend
from backends.mountinfo import mount_type
from backends.naming import ParsedName, natural_key, parse_virtual_name, try_parse_virtual_name
from backends.remote import is_url

from .conversion import to_numpy_view
from .errors import MemoryTypeError, PipelineError
from .materialization import OPTION_TYPES
from .memory_types import MemoryType, detect_memory_type
from .stack_utils import stack_slices, unstack_slices

log = logging.getLogger(__name__)

COMPONENTS = ("well", "site", "channel", "z", "t")


@dataclass(frozen=True)
class VFSConfig:
    materialization_backend: str = "disk"      # "disk" or "zarr"
    intermediate_backend: str = "memory"


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

    def functions(self, group: dict) -> list[tuple[Callable, dict]]:
        """The (function, kwargs) chain this step runs for one group."""
        return _resolve(self.func, self.kwargs, group, self)

    def all_functions(self) -> list[Callable]:
        return [f for f, _ in _flatten(self.func, {})]

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


def _resolve(func: Any, kwargs: dict, group: dict, step: FunctionStep) -> list[tuple[Callable, dict]]:
    if isinstance(func, dict):
        key = str(group.get(step.group_by))
        if key not in {str(k) for k in func}:
            raise PipelineError(f"step {step.name!r}: no function for {step.group_by}={key} "
                                f"(has {sorted(map(str, func))})")
        chosen = next(v for k, v in func.items() if str(k) == key)
        return _flatten(chosen, kwargs)
    return _flatten(func, kwargs)


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


# -- where images come from and where results go ---------------------------------------------

@dataclass(frozen=True)
class ReaderSpec:
    """How any process (a Dask worker too) opens the images: a plate location and subdirectory,
    or (``key`` None) the ``images/`` folder of a mount."""

    location: str
    key: str | None = None
    token: str = ""                 # changes when the plate's image set does (worker cache key)

    def open(self):
        if self.key is None:
            return DiskStorageBackend(self.location)
        from backends.plate import Plate
        return Plate.open(self.location).backend(self.key)


_worker_readers: dict[ReaderSpec, Any] = {}
_worker_lock = threading.Lock()


def _cached_reader(spec: ReaderSpec):
    """One reader per worker process and plate: opening a plate reads its metadata and index."""
    with _worker_lock:
        reader = _worker_readers.get(spec)
        if reader is None:
            reader = _worker_readers[spec] = spec.open()
        return reader


class Target:
    """A plate (directory or s3:// store) or a vfsmount mountpoint: image names, a reader, and
    the sink where results go."""

    def __init__(self, path: str | os.PathLike, output: str) -> None:
        from compute.output_sink import (OutputSink, local_outputs_root, mount_physics,
                                         output_physics, remote_outputs_root)
        self.output = output
        self.remote = is_url(path)
        self.path: Path | str = os.fspath(path) if self.remote else Path(path).absolute()
        self.through_mount = not self.remote and is_vfsmount(self.path)
        if self.through_mount:
            self.names = natsorted(n for n in os.listdir(self.path / "images")
                                   if n.lower().endswith((".tif", ".tiff")))
            self.reader_spec = ReaderSpec(str(self.path / "images"))
            self.sink = OutputSink(str(self.path / "outputs"), output, through_mount=True,
                                   physics=mount_physics(self.path))
            if not os.access(self.path / "outputs", os.W_OK):
                raise PipelineError(f"{self.path} is a read-only mount: mount it with --writable")
            self.plate = None
        else:
            from backends.plate import Plate
            self.plate = Plate.open(self.path)
            self.names = self.plate.image_files()
            digest = hashlib.sha256(json.dumps(self.plate.entry(), sort_keys=True).encode())
            self.reader_spec = ReaderSpec(self.plate.location, self.plate.main,
                                          digest.hexdigest()[:16])
            root = (remote_outputs_root(self.plate.url) if self.plate.url
                    else local_outputs_root(self.plate.path))
            self.sink = OutputSink(root, output, physics=output_physics(self.plate.entry()))
        # the plate is open already: its backend, not a second Plate.open through the spec
        self.reader = self.plate.backend() if self.plate else self.reader_spec.open()

    def load(self, names: Sequence[str]) -> list[np.ndarray]:
        return self.reader.load_batch(list(names))

    def record(self, backend: str, images: Iterable[str]) -> None:
        """Add the output folder to the plate's metadata (a mount does this itself)."""
        if self.through_mount:
            return
        from backends.metadata import record_output_folder
        extra = {"path": self.sink.zarr_location} if backend == "zarr" else {}
        record_output_folder(self.plate.path, self.output, sorted(set(images)), backend, **extra)


def is_vfsmount(path: Path) -> bool:
    """True if ``path`` is the root of a vfsmount FUSE mount (without importing vfsmount)."""
    return mount_type(path) == "fuse.vfsmount"


# -- grouping -------------------------------------------------------------------------------------

@dataclass
class Group:
    key: tuple
    components: dict
    names: list[str]                  # ordered along the variable components
    coords: list[ParsedName]

    @property
    def stem(self) -> str:
        c = self.components
        parts = [c["well"]]
        for comp, prefix, width in (("site", "s", 3), ("channel", "w", 0), ("z", "z", 3), ("t", "t", 3)):
            if comp in c:
                parts.append(f"{prefix}{c[comp]:0{width}d}" if width else f"{prefix}{c[comp]}")
        return "_".join(parts)


def group_images(names: Iterable[str], variable: Sequence[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for name in names:
        p = parse_virtual_name(name)
        comps = {c: getattr(p, c) for c in COMPONENTS if c not in variable}
        key = tuple(comps.values())
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(key, comps, [], [])
        g.names.append(name)
        g.coords.append(p)
    for g in groups.values():
        order = sorted(range(len(g.names)), key=lambda i: natural_key(g.coords[i]))
        g.names = [g.names[i] for i in order]
        g.coords = [g.coords[i] for i in order]
    return sorted(groups.values(), key=lambda g: natural_key(g.coords[0]))


# -- checking before running ------------------------------------------------------------------

SOURCE_INPUT = "source"     # a special input every step may declare: the stack as loaded


def check_pipeline(pipeline: Pipeline, groups: list[Group], dtype: np.dtype,
                   plane_shape: tuple[int, int]) -> None:
    produced: dict[str, str] = {SOURCE_INPUT: "(the loaded images)"}
    suffixes: dict[str, str] = {}
    for step in pipeline.steps:
        for g in groups:
            step.functions(g.components)             # every dict key resolves
        for f in step.all_functions():
            for name in getattr(f, "special_inputs", ()):
                if name not in produced:
                    raise PipelineError(f"step {step.name!r}: special input {name!r} is produced by "
                                        "no earlier step")
            for name, spec in getattr(f, "special_outputs", {}).items():
                if name in produced:
                    raise PipelineError(f"step {step.name!r}: special output {name!r} collides with "
                                        f"the one of step {produced[name]!r}")
                produced[name] = step.name
                if spec is not None:
                    for o in spec.options:
                        if not isinstance(o, OPTION_TYPES):
                            raise PipelineError(f"step {step.name!r}: unknown materialization "
                                                f"option {type(o).__name__}")
                        if o.filename_suffix in suffixes:
                            raise PipelineError(
                                f"step {step.name!r}: output file suffix {o.filename_suffix!r} "
                                f"collides with step {suffixes[o.filename_suffix]!r}")
                        suffixes[o.filename_suffix] = step.name
        if pipeline.backend_for(step) not in ("disk", "zarr"):
            raise PipelineError(f"step {step.name!r}: materialization backend must be disk or zarr")
    _dry_run(pipeline, groups[0], dtype, plane_shape)


def _dry_run(pipeline: Pipeline, group: Group, dtype: np.dtype, plane_shape: tuple[int, int]) -> None:
    """Run every step on a small synthetic stack: wrong shapes or memory types show up here."""
    rng = np.random.default_rng(0)
    h, w = min(plane_shape[0], 64), min(plane_shape[1], 64)
    base = rng.random((2, h, w))
    base[:, h // 4:h // 2, w // 4:w // 2] += 2      # something to find
    stack = base.astype(dtype) if dtype.kind == "f" else (base * 1000).astype(dtype)
    data: Any = stack
    specials: dict[str, Any] = {SOURCE_INPUT: stack}
    for step in pipeline.steps:
        try:
            data = _run_step(step, group, data, specials)
        except PipelineError:
            raise
        except Exception as e:
            raise PipelineError(f"step {step.name!r} fails on a test stack of shape {stack.shape} "
                                f"{stack.dtype}: {type(e).__name__}: {e}") from e


def _run_step(step: FunctionStep, group: Group, data: Any, specials: dict[str, Any]) -> Any:
    for func, kwargs in step.functions(group.components):
        inputs = {n: specials[n] for n in getattr(func, "special_inputs", ())}
        result = func(data, **kwargs, **inputs)
        declared = getattr(func, "special_outputs", {})
        if declared:
            if not isinstance(result, tuple) or len(result) != 1 + len(declared):
                raise PipelineError(f"step {step.name!r}: {func.__name__} must return the image and "
                                    f"{len(declared)} special output(s) {list(declared)}")
            data = result[0]
            specials.update(zip(declared, result[1:]))
        else:
            data = result
        try:
            detect_memory_type(data)
        except MemoryTypeError as e:
            raise PipelineError(f"step {step.name!r}: {func.__name__} returned {type(data).__name__}, "
                                "not an array") from e
        shape = tuple(int(n) for n in data.shape)
        if len(shape) != 3:
            raise PipelineError(f"step {step.name!r}: {func.__name__} returned shape {shape}; "
                                "steps must return a [Z, Y, X] stack")
    return data


def compute_group(pipeline: Pipeline, group: Group, planes: Sequence[np.ndarray]) -> np.ndarray:
    """Run every step on one group's planes; the last step's image stack, as NumPy."""
    first_type = getattr(pipeline.steps[0].all_functions()[0], "input_memory_type", "numpy")
    data = stack_slices(list(planes), first_type)
    specials: dict[str, Any] = {SOURCE_INPUT: stack_slices(list(planes), "numpy")}
    for step in pipeline.steps:
        data = _run_step(step, group, data, specials)
    return np.ascontiguousarray(to_numpy_view(data, detect_memory_type(data)))


def output_layout(pipeline: Pipeline, group: Group, dtype: np.dtype, plane_shape: tuple[int, int]
                  ) -> tuple[bool, tuple[int, int], np.dtype]:
    """(keeps z, output plane shape, output dtype), learnt from one run on a synthetic stack of
    the real plane size -- so sizes are known before any real image is computed."""
    rng = np.random.default_rng(0)
    base = rng.random((2, *plane_shape))
    stack = base.astype(dtype) if np.dtype(dtype).kind == "f" else (base * 1000).astype(dtype)
    out = compute_group(pipeline, group, list(stack))
    return out.shape[0] == 2, tuple(out.shape[1:]), out.dtype


# -- running ---------------------------------------------------------------------------------

@dataclass
class RunResult:
    groups: int = 0
    images_written: int = 0
    files_written: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    output: str = ""                # where the results are


@dataclass
class WellResult:
    images: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    zarr_index: dict | None = None      # the zarr arrays this well wrote (see OutputSink)


def process_well(pipeline: Pipeline, reader, sink, well: str, groups: Sequence[Group],
                 zarr_store=None) -> WellResult:
    """Every stack of one well through every step, results written to ``sink`` (the last step
    and any ``materialize=True`` step; images to ``zarr_store`` when their backend is zarr).
    A failure stops this well only, and is reported with well, stack and step."""
    fm = FileManager()     # the memory backend stages intermediates and special outputs
    result = WellResult()
    first_type = getattr(pipeline.steps[0].all_functions()[0], "input_memory_type", "numpy")
    for g in groups:
        step_name = "load"
        try:
            planes = reader.load_batch(list(g.names))
            data = stack_slices(planes, first_type)
            specials: dict[str, Any] = {SOURCE_INPUT: stack_slices(planes, "numpy")}
            for i, step in enumerate(pipeline.steps):
                step_name = step.name
                data = _run_step(step, g, data, specials)
                last = i == len(pipeline.steps) - 1
                stage = f"/{pipeline.name}/{g.stem}/{i}_{step.name}"
                fm.save(data, f"{stage}/image", Backend.MEMORY, overwrite=True)
                if last or step.materialize:
                    result.images += _write_images(sink, zarr_store, g, data,
                                                   pipeline.backend_for(step),
                                                   None if last else step.name)
                for fn in step.all_functions():
                    for name, spec in getattr(fn, "special_outputs", {}).items():
                        if name in specials:
                            fm.save(specials[name], f"{stage}/special/{name}", Backend.MEMORY,
                                    overwrite=True)
                            if spec is not None:
                                result.files += sink.materialize(specials[name], spec, g,
                                                                 zarr_store, name)
                fm.delete(stage, Backend.MEMORY, recursive=True)
        except Exception as e:
            msg = f"well {well}, {g.stem}, step {step_name!r}: {type(e).__name__}: {e}"
            log.error("%s", msg)
            result.failures.append(msg)
            return result
    return result


def run_pipeline(pipeline: Pipeline | Sequence[FunctionStep], target: str | os.PathLike, *,
                 output: str | None = None, workers: int = 2, progress: bool = True,
                 dask: str | None = None) -> RunResult:
    """Run ``pipeline`` over every well of ``target``, in threads, or on a Dask cluster when
    ``dask`` is a scheduler address or ``local:N`` (see compute.dask_runner)."""
    if not isinstance(pipeline, Pipeline):
        pipeline = Pipeline(list(pipeline))
    out = Target(target, output or pipeline.name)
    if not out.names:
        raise PipelineError(f"{out.path}: no images to process")
    variable = pipeline.steps[0].variable_components
    groups = group_images(out.names, variable)
    first = out.load(groups[0].names[:1])[0]
    check_pipeline(pipeline, groups, first.dtype, first.shape)

    by_well: dict[str, list[Group]] = {}
    for g in groups:
        by_well.setdefault(g.components.get("well", ""), []).append(g)
    image_backend = pipeline.backend_for(pipeline.steps[-1])
    uses_zarr = not out.sink.through_mount and any(
        pipeline.backend_for(s) == "zarr" for s in pipeline.steps)
    zarr_store = out.sink.open_zarr() if uses_zarr else None
    result = RunResult(groups=len(groups), output=out.sink.folder)
    from tqdm import tqdm
    bar = tqdm(total=len(groups), desc=f"{pipeline.name}", unit="stack", disable=not progress)
    try:
        if dask:
            from .dask_runner import run_on_dask
            well_results = run_on_dask(pipeline, out, by_well, dask, bar, zarr=uses_zarr)
        else:
            def run_well(well: str) -> WellResult:
                try:
                    return process_well(pipeline, out.reader, out.sink, well, by_well[well],
                                        zarr_store)
                finally:
                    bar.update(len(by_well[well]))
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                well_results = list(pool.map(run_well, natsorted(by_well)))
    finally:
        bar.close()
    images: list[str] = []
    for wr in well_results:
        images += wr.images
        result.files_written += wr.files
        result.failures += wr.failures
        if zarr_store is not None and wr.zarr_index:
            zarr_store.adopt(wr.zarr_index)
    if zarr_store is not None:
        out.sink.finish_zarr(zarr_store)    # the shared documents, written once, last
    result.images_written = len(images)
    out.record(image_backend, images)
    if result.failures:
        raise PipelineError(f"{len(result.failures)} stack(s) failed (outputs of the others are kept):\n"
                            + "\n".join(result.failures))
    return result


def _write_images(sink, zarr_store, g: Group, data: Any, backend: str,
                  suffix: str | None) -> list[str]:
    planes = unstack_slices(data, "numpy")
    coords = g.coords if len(planes) == len(g.coords) else [
        ParsedName(g.coords[0].well, g.coords[0].site, g.coords[0].channel, z + 1, g.coords[0].t)
        for z in range(len(planes))]
    names = []
    for plane, p in zip(planes, coords):
        name = p.virtual_name()
        if suffix:                            # an intermediate step kept beside the result
            name = name[:-4] + f"_{suffix}.tif"
        plane = np.ascontiguousarray(to_numpy_view(plane, MemoryType.NUMPY))
        if backend == "zarr" and zarr_store is not None:
            zarr_store.save_batch([plane], [name], flush=False)
        else:
            # through a mount, the mount's --materialize decides whether this becomes zarr
            sink.write_image_file(name, plane)
        names.append(name)
    return names


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


__all__ = ["FunctionStep", "Pipeline", "VFSConfig", "PipelineError", "RunResult", "run_pipeline",
           "load_pipeline_file", "group_images"]
