"""Load LoadData CSVs with CellProfiler's own LoadData module, headless; print what it loaded.

Run by the Python of CellProfiler's own environment (scripts/cellprofiler-env.sh), not ours:
``python cellprofiler_loaddata.py A.csv [B.csv ...]`` prints one JSON document: per CSV, the
number of image sets and, per image set, its metadata and per image the file CellProfiler
opened, its shape, and the sum and a position-weighted sum of its raw pixel values (the
loaded intensities times CellProfiler's scale), which the test compares with the flat files.
"""
import json
import logging
import os
import sys

import numpy as np

logging.basicConfig(level=logging.ERROR)

import cellprofiler_core.preferences as preferences  # noqa: E402

preferences.set_headless()

from cellprofiler_core.reader import fill_readers, filter_active_readers  # noqa: E402

fill_readers(check_config=False)
# Only ImageIO: CellProfiler's Bio-Formats reader fetches its jars from Maven at start.
filter_active_readers(["imageio_reader", "imageio_reader_v3"])

from cellprofiler_core.measurement import Measurements  # noqa: E402
from cellprofiler_core.modules.loaddata import LoadData  # noqa: E402
from cellprofiler_core.object import ObjectSet  # noqa: E402
from cellprofiler_core.pipeline import Pipeline  # noqa: E402
from cellprofiler_core.preferences import ABSOLUTE_FOLDER_NAME  # noqa: E402
from cellprofiler_core.workspace import Workspace  # noqa: E402

METADATA = ("Plate", "Well", "Site", "PlaneID", "TimepointID")


def weighted(raw: np.ndarray) -> tuple[int, int]:
    flat = raw.astype(np.int64).ravel()
    return int(flat.sum()), int((flat * (np.arange(flat.size) % 7919)).sum())


def load(csv_path: str) -> dict:
    module = LoadData()
    module.set_module_num(1)
    module.csv_directory.dir_choice = ABSOLUTE_FOLDER_NAME
    module.csv_directory.custom_path = os.path.dirname(csv_path)
    module.csv_file_name.value = os.path.basename(csv_path)
    pipeline = Pipeline()
    pipeline.add_module(module)
    m = Measurements()
    workspace = Workspace(pipeline, module, m, ObjectSet(), m, None)
    if not pipeline.prepare_run(workspace):
        raise SystemExit(f"prepare_run failed for {csv_path}")
    names = sorted(module.other_providers("imagegroup"))
    sets = []
    for number in range(1, m.image_set_count + 1):
        m.next_image_set(number)
        w = Workspace(pipeline, module, m, ObjectSet(), m, None)
        module.run(w)
        images = {}
        for name in names:
            image = m.get_image(name)
            raw = np.rint(image.pixel_data * image.scale)
            total, wsum = weighted(raw)
            images[name] = {"file": os.path.normpath(os.path.join(image.path_name,
                                                                  image.file_name)),
                            "shape": list(image.pixel_data.shape), "sum": total, "wsum": wsum}
        meta = {k: str(m["Image", f"Metadata_{k}"]) for k in METADATA}
        sets.append({"metadata": meta, "images": images})
    return {"image_sets": m.image_set_count, "names": names, "sets": sets}


if __name__ == "__main__":
    result = {path: load(path) for path in sys.argv[1:]}
    print("RESULT " + json.dumps(result))   # the last line: CellProfiler prints on stdout too
