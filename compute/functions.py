"""A small library of real image functions, each declared with its memory type.

All take and return a [Z, Y, X] stack. NumPy versions use SciPy/scikit-image; torch and
pyclesperanto variants exist for the filter and the threshold (their imports happen only
when they run).
"""
from __future__ import annotations

import numpy as np

from .decorators import numpy as numpy_function
from .decorators import pyclesperanto as cle_function
from .decorators import torch as torch_function
from .frameworks import framework
from .materialization import CsvOptions, MaterializationSpec, ROIOptions
from .special_io import special_inputs, special_outputs


@numpy_function
def gaussian_filter(stack: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Per-plane Gaussian blur (float32 out)."""
    from scipy import ndimage
    return ndimage.gaussian_filter(stack.astype(np.float32), sigma=(0, sigma, sigma), mode="nearest")


@numpy_function
def threshold_otsu(stack: np.ndarray) -> np.ndarray:
    """Binary mask (uint8 0/1) above the stack's Otsu threshold."""
    from skimage.filters import threshold_otsu as otsu
    return (stack > otsu(stack)).astype(np.uint8)


@numpy_function
def binary_opening(stack: np.ndarray, radius: int = 1) -> np.ndarray:
    """Per-plane binary opening with a disk of ``radius`` (uint8 0/1)."""
    from scipy import ndimage
    from skimage.morphology import disk
    footprint = disk(radius)[None]
    return ndimage.binary_opening(stack > 0, structure=footprint).astype(np.uint8)


@numpy_function
def max_projection(stack: np.ndarray) -> np.ndarray:
    """Maximum over z: a (1, Y, X) stack."""
    return stack.max(axis=0, keepdims=True)


# pixel columns of the measurement table and their micrometre twins (added when the plate's
# pixel size is known)
MEASUREMENT_UNITS = (("area", "area_um2", 2), ("centroid_y", "centroid_y_um", 1),
                     ("centroid_x", "centroid_x_um", 1))


@special_outputs(("measurements", MaterializationSpec(CsvOptions(
                    filename_suffix="_measurements.csv", physical=MEASUREMENT_UNITS))),
                 ("rois", MaterializationSpec(ROIOptions())))
@special_inputs("source")
@numpy_function
def label_with_measurements(stack: np.ndarray, source=None, connectivity: int = 2):
    """Label connected components per plane; measure area, centroid and mean intensity.

    Returns (labels as uint16 stack, list of per-object rows, label image for ROIs).
    ``source`` (the images as loaded, supplied by the pipeline) is what is measured;
    without it, the mask itself.
    """
    intensity = None if source is None else np.asarray(source)
    from skimage import measure
    labels = np.zeros(stack.shape, dtype=np.uint16)
    rows = []
    for z in range(stack.shape[0]):
        lab = measure.label(stack[z] > 0, connectivity=connectivity)
        labels[z] = lab
        ref = (intensity[z] if intensity is not None else stack[z]).astype(np.float64)
        for r in measure.regionprops(lab, intensity_image=ref):
            rows.append({"z": z + 1, "label": int(r.label), "area": int(r.area),
                         "centroid_y": float(r.centroid[0]), "centroid_x": float(r.centroid[1]),
                         "mean_intensity": float(r.intensity_mean)})
    return labels, rows, labels


@torch_function
def gaussian_filter_torch(stack, sigma: float = 2.0):
    """Per-plane Gaussian blur as two 1D convolutions (replicate padding, like mode='nearest')."""
    torch = framework("torch")
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=stack.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).to(torch.float32)
    img = stack.to(torch.float32)[:, None]                       # (Z, 1, Y, X)
    img = torch.nn.functional.pad(img, (radius, radius, radius, radius), mode="replicate")
    img = torch.nn.functional.conv2d(img, k.view(1, 1, 1, -1))
    img = torch.nn.functional.conv2d(img, k.view(1, 1, -1, 1))
    return img[:, 0]


@torch_function
def threshold_otsu_torch(stack):
    """Otsu threshold on a 256-bin histogram (as scikit-image computes it)."""
    torch = framework("torch")
    values = stack.to(torch.float64).flatten()
    lo, hi = values.min(), values.max()
    hist = torch.histc(values, bins=256, min=float(lo), max=float(hi))
    width = (hi - lo) / 256
    centers = lo + width * (torch.arange(256, dtype=torch.float64, device=stack.device) + 0.5)
    w1 = torch.cumsum(hist, 0)
    w2 = torch.cumsum(hist.flip(0), 0).flip(0)
    m1 = torch.cumsum(hist * centers, 0) / w1.clamp(min=1e-12)
    m2 = (torch.cumsum((hist * centers).flip(0), 0) / w2.flip(0).clamp(min=1e-12)).flip(0)
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    t = centers[:-1][torch.argmax(var)]
    return (stack.to(torch.float64) > t).to(torch.uint8)


@cle_function
def gaussian_filter_cle(stack, sigma: float = 2.0):
    cle = framework("pyclesperanto")
    return cle.gaussian_blur(stack, sigma_x=sigma, sigma_y=sigma, sigma_z=0)


@cle_function
def threshold_otsu_cle(stack):
    cle = framework("pyclesperanto")
    mask = cle.threshold_otsu(stack)
    out = cle.create(mask.shape, dtype=np.uint8)
    cle.copy(mask, out)
    return out
