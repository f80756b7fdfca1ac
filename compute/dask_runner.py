"""Pipelines on a Dask cluster: one task per well and site.

``vfsmount run PIPELINE.py PLATE --dask tcp://scheduler:8786`` (or ``--dask local:N`` for a
local cluster of N single-threaded worker processes). Each task opens the plate's storage
itself (a local or shared plate directory, or an s3:// store), runs every stack of one field
(well + site) through the pipeline, and writes its results to the output sink -- files of its
own, a zarr array of its own (arrays are per field) -- then returns what it wrote. The client merges the zarr index and
writes the store's shared documents once, at the end, so no two processes ever write the same
object. A task whose worker dies is re-run elsewhere by Dask (``distributed.scheduler.
allowed-failures``); re-running a well rewrites the same files and arrays with the same bytes.

A pipeline loaded from a file travels as its source text and is run again on the worker:
functions defined in that file need not be importable there, only the libraries it imports.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

from natsort import natsorted

from .errors import PipelineError
from .execution import WellResult, process_well
from .steps import Pipeline
from .target import cached_reader

log = logging.getLogger(__name__)

_pipelines: dict[str, Any] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class PipelineSource:
    filename: str
    text: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def load(self, config):
        """The pipeline this file defines, built once per worker process."""
        with _lock:
            found = _pipelines.get(self.digest)
            if found is None:
                namespace: dict[str, Any] = {"__name__": "vfsmount_pipeline",
                                             "__file__": self.filename}
                exec(compile(self.text, self.filename, "exec"), namespace)
                found = namespace.get("pipeline")
                if found is None:
                    raise PipelineError(f"{self.filename}: defines no variable named 'pipeline'")
                if not isinstance(found, Pipeline):
                    found = Pipeline(list(found))
                _pipelines[self.digest] = found
        found.config = config
        return found


@dataclass(frozen=True)
class WellTask:
    """Everything a worker needs for one well; small and picklable."""

    pipeline: Any                   # a PipelineSource, or a Pipeline (pickled by cloudpickle)
    config: Any
    name: str
    reader: Any                     # compute.target.ReaderSpec
    sink: Any                       # compute.output_sink.OutputSink
    zarr: bool

    def __call__(self, well: str, groups: list):
        pipeline = (self.pipeline.load(self.config) if isinstance(self.pipeline, PipelineSource)
                    else self.pipeline)
        pipeline.name = self.name
        store = self.sink.open_zarr() if self.zarr else None
        result = process_well(pipeline, cached_reader(self.reader), self.sink, well, groups, store)
        if store is not None:
            result.zarr_index = store.index_document(store.written_arrays())
        return result


def connect(address: str):
    """A Client for ``address``, or for a new local cluster with ``local:N``."""
    from distributed import Client, LocalCluster
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        logging.getLogger("distributed").setLevel(logging.WARNING)   # no per-worker chatter
    if address.startswith("local:"):
        try:
            n = int(address.split(":", 1)[1])
        except ValueError:
            raise PipelineError(f"--dask {address!r}: use local:N with N a number of workers") \
                from None
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=":0")
        return Client(cluster), cluster
    try:
        return Client(address, timeout="20s"), None
    except (OSError, TimeoutError) as e:
        raise PipelineError(f"cannot reach the Dask scheduler at {address}: {e}") from e


def run_on_dask(pipeline, target, by_well: dict[str, list], address: str, bar, *, zarr: bool):
    """Submit one task per field (well + site); collect the WellResults (failures included)."""
    from distributed import as_completed
    if target.through_mount:
        raise PipelineError("--dask reads the plate's storage directly: give the plate "
                            "directory or its s3:// store, not a mountpoint")
    shipped = (PipelineSource(*pipeline.source) if getattr(pipeline, "source", None)
               else pipeline)
    task = WellTask(shipped, pipeline.config, pipeline.name, target.reader_spec, target.sink, zarr)
    client, cluster = connect(address)
    try:
        token = hashlib.sha1(repr(task).encode()).hexdigest()[:8]
        futures = {}
        for well in natsorted(by_well):
            fields: dict[Any, list] = {}
            for g in by_well[well]:
                fields.setdefault(g.components.get("site"), []).append(g)
            for site, groups in fields.items():
                key = f"vfsmount-{pipeline.name}-{well}-s{site}-{token}"
                futures[client.submit(task, well, groups, key=key, pure=False)] = (well, site,
                                                                                   len(groups))
        results: list[WellResult] = []
        for future in as_completed(futures):
            well, site, n = futures[future]
            try:
                results.append(future.result())
            except Exception as e:          # the task itself failed on every try (KilledWorker, ...)
                msg = (f"well {well}, site {site}: task failed on the cluster: "
                       f"{type(e).__name__}: {e}")
                log.error("%s", msg)
                results.append(WellResult(failures=[msg]))
            bar.update(n)
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
