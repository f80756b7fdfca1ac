"""Three-step pipeline: blur, threshold, label with per-object measurements.

    vfsmount run examples/cells.py PLATE            # results in PLATE/outputs/cells/
    vfsmount run examples/cells.py MOUNTPOINT       # through a --writable mount
"""
from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu
from compute.pipeline import FunctionStep, Pipeline

pipeline = Pipeline([
    FunctionStep(gaussian_filter, sigma=2.0),
    FunctionStep(threshold_otsu),
    FunctionStep(label_with_measurements),
], name="cells")
