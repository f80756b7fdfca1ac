"""Three-step pipeline: blur, threshold, label with per-object measurements.

    vfsmount run cells PLATE                 # results in PLATE/outputs/cells/
    vfsmount run cells MOUNTPOINT            # through a --writable mount
    vfsmount mount PLATE MNT --pipeline cells   # MNT/processed/cells/, computed on read

(`cells` is this file, installed with vfsmount; `vfsmount examples --copy DIR` copies it to edit.)
"""
from compute.functions import gaussian_filter, label_with_measurements, threshold_otsu
from compute.pipeline import FunctionStep, Pipeline

pipeline = Pipeline([
    FunctionStep(gaussian_filter, sigma=2.0),
    FunctionStep(threshold_otsu),
    FunctionStep(label_with_measurements),
], name="cells")
