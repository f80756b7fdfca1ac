"""The plate views in the mount (the view ``plate_documents``): ``load_data.csv``, ``load_data_with_illum.csv`` and
``plate.companion.ome`` in the root, ``load_data.csv`` in each ``processed/<pipeline>/``.

Their bytes come from ``backends/plates/loaddata.py`` and ``backends/plates/companion.py`` (the command
line writes the same bytes without a mount). They are made once, from names and metadata only
(no plane is read), in one background thread started when the tree is built, so mounting does
not wait for them; a ``stat`` or read that comes first waits until they are ready (0.4 s of
CPU for 384 wells x 9 sites x 4 channels: ``python -m benchmarks plate_views``). Past
``EAGER_PLANES`` they are made on first use instead (that first ``stat`` waits seconds). One that
cannot be made (a config naming a channel the plate lacks, a pixel type OME has no name for)
is listed with size 0, reads fail with EIO, and the daemon logs why.
"""
from __future__ import annotations

import errno
import logging
import os
import queue
import stat as stat_mod
import threading
import time
from concurrent.futures import Future
from functools import cached_property
from typing import Callable

from backends.layout import (COMPANION_FILE, ILLUM_DIR, LOADDATA_CSV, LOADDATA_ILLUM_CSV,
                             MAIN_ALIAS, OUTPUTS_DIR, PROCESSED_DIR)

from ..nodes import SYNTHESIZED_MODE, FileNode

log = logging.getLogger(__name__)

#: Up to this many planes the views are made when mounting (~0.4 s of CPU and 8 MB for 13,824
#: planes); a larger plate's are made when first used, so a mount of a million images spends
#: neither the seconds nor the memory (~0.5 KB a plane) unless someone reads them.
EAGER_PLANES = 200_000


def plate_documents(mount) -> list:
    """The root's plate views, where the mount has them (``processed/`` adds its own)."""
    views = mount.documents
    if views is None:
        return []
    return [(LOADDATA_CSV, views.loaddata()), (LOADDATA_ILLUM_CSV, views.loaddata_with_illum()),
            (COMPANION_FILE, views.companion())]


class GeneratedFile(FileNode):
    """A read-only file whose bytes a background job makes once; ``size`` waits for them."""

    __slots__ = ("label", "_future", "_wanted")
    cheap = True          # once made, reads are slices of bytes in memory

    def __init__(self, label: str, future: Future, mtime_ns: int,
                 wanted: threading.Event) -> None:
        super().__init__(stat_mod.S_IFREG | SYNTHESIZED_MODE, mtime_ns)
        self.label, self._future, self._wanted = label, future, wanted

    @property
    def data(self) -> bytes:
        self._wanted.set()            # a large plate's views are made on first use
        return self._future.result()

    @property
    def size(self) -> int:
        return len(self.data)

    def size_known(self) -> bool:
        return self._future.done()

    def read(self, handle, offset: int, length: int) -> bytes:
        return self.data[offset:offset + length]


class PlateViews:
    """The plate views of one mount: the main image set served at ``MOUNT/images``."""

    def __init__(self, plate, mountpoint: str, loaddata_config: str | None = None) -> None:
        self.plate = plate
        self.mount = os.path.abspath(mountpoint)
        self.config_path = loaddata_config
        self.mtime_ns = time.time_ns()
        self._fields = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._wanted = threading.Event()
        try:                          # (a store read well by well: its size is not known)
            eager = not self.image_set.streams_wells and len(self.image_set.names) <= EAGER_PLANES
        except Exception:             # made (and their error logged) when first used
            eager = False
        if eager:
            self._wanted.set()
        threading.Thread(target=self._run, name="plate-views", daemon=True).start()

    # -- the nodes build_tree adds ------------------------------------------------------
    def loaddata(self) -> GeneratedFile:
        return self._node("load_data.csv", lambda: self._loaddata(illum=False))

    def loaddata_with_illum(self) -> GeneratedFile:
        return self._node("load_data_with_illum.csv", lambda: self._loaddata(illum=True))

    def companion(self) -> GeneratedFile:
        def make() -> bytes:              # imported in the job: not before the mount is ready
            from backends.plates.companion import companion_xml
            return companion_xml(self.image_set, fields=self.fields(), image_dir=MAIN_ALIAS)
        return self._node("plate.companion.ome", make)

    def computed_loaddata(self, factory) -> GeneratedFile:
        """``processed/<pipeline>/load_data.csv``: the planes the pipeline computes on read."""
        from backends.plates.image_set import fields_of
        from backends.plates.loaddata import loaddata_csv, plate_label
        from backends.naming import parse_virtual_name
        folder = os.path.join(self.mount, PROCESSED_DIR, factory.pipeline.name)

        def make() -> bytes:
            fields = fields_of((n, parse_virtual_name(n)) for n in factory.names())
            return loaddata_csv(fields, self.image_set.physics, plate=plate_label(self.image_set),
                                images_dir=folder, config=self.config)
        return self._node(f"{PROCESSED_DIR}/{factory.pipeline.name}/load_data.csv", make)

    # -- making them --------------------------------------------------------------------
    @property
    def image_set(self):
        return self.plate.image_set()

    @cached_property
    def config(self):
        from backends.plates.loaddata import LoadDataConfig
        return LoadDataConfig.read(self.config_path) if self.config_path else None

    def fields(self):
        if self._fields is None:          # one parse of the names for every view
            self._fields = self.image_set.fields()
        return self._fields

    def _loaddata(self, *, illum: bool) -> bytes:
        return self.table.csv(illum=illum)

    @cached_property
    def table(self):
        """One table for both CSVs (with and without the illumination columns)."""
        from backends.plates.loaddata import loaddata_table, plate_label
        return loaddata_table(self.fields(), self.image_set.physics,
                              plate=plate_label(self.image_set),
                              images_dir=os.path.join(self.mount, MAIN_ALIAS), config=self.config,
                              illum_dir=os.path.join(self.mount, OUTPUTS_DIR, ILLUM_DIR))

    def _node(self, label: str, make: Callable[[], bytes]) -> GeneratedFile:
        future: Future = Future()
        self._jobs.put((label, future, make))
        return GeneratedFile(label, future, self.mtime_ns, self._wanted)

    def _run(self) -> None:
        """Make each view as it is asked for, in order, in this one thread."""
        self._wanted.wait()
        while True:
            label, future, make = self._jobs.get()
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                future.set_result(make())
                log.info("%s ready in %.3f s (%.3f s CPU)", label, time.perf_counter() - started,
                         time.thread_time() - cpu)
            except Exception as e:
                log.error("%s: cannot be made: %s", label, e)
                future.set_exception(OSError(errno.EIO, f"{label}: {e}"))
