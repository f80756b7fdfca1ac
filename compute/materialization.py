"""Writer-based materialization of special outputs: the options' type picks the writer.

A function declares what it wants persisted::

    @special_outputs(("measurements", MaterializationSpec(CsvOptions(filename_suffix="_cells.csv"))),
                     ("rois", MaterializationSpec(ROIOptions())))

and the pipeline stages the values in the memory backend, hands them to later steps that
declare them with ``@special_inputs``, and finally writes them with these writers through
a FileManager (atomic writes; through a mount they land in the plate's outputs).
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class WriterOptions:
    """What every writer takes: the file name suffix, and which part of the output to write
    (``source``: a key of a dict-valued output; None: the whole value)."""

    filename_suffix: str = ""
    source: str | None = None


@dataclass(frozen=True)
class CsvOptions(WriterOptions):
    """``physical``: (pixel column, micrometre column, power) -- each such column gets a
    micrometre twin beside it when the plate's pixel size is known (power 2 for areas)."""

    filename_suffix: str = ".csv"
    fields: Sequence[str] | None = None      # column subset and order; None: every field
    physical: tuple[tuple[str, str, int], ...] = ()
    pixel_size: float | None = None          # um; filled in from the plate when written
    # the image's columns first in every row (Metadata_Plate, Metadata_Well, Metadata_Site, ...,
    # ImageNumber), filled in when written; a row with ``object_column`` is an object's row and
    # gets ObjectNumber = its value -- the columns CellProfiler and pycytominer join on
    image_columns: tuple[tuple[str, Any], ...] = ()
    object_column: str | None = "label"


@dataclass(frozen=True)
class JsonOptions(WriterOptions):
    filename_suffix: str = ".json"


@dataclass(frozen=True)
class ROIOptions(WriterOptions):
    filename_suffix: str = "_rois.zip"


@dataclass(frozen=True)
class TiffStackOptions(WriterOptions):
    filename_suffix: str = "_stack.tif"


@dataclass(frozen=True)
class TextOptions(WriterOptions):
    filename_suffix: str = ".txt"


class MaterializationError(ValueError):
    pass


@dataclass(frozen=True)
class MaterializationSpec:
    options: tuple = field(default=())
    primary: int = 0

    def __init__(self, *options, primary: int = 0) -> None:
        for o in options:
            if not isinstance(o, OPTION_TYPES):
                raise MaterializationError(
                    f"unknown materialization option {type(o).__name__}; use one of "
                    f"{', '.join(t.__name__ for t in OPTION_TYPES)}")
        if not options:
            raise MaterializationError("MaterializationSpec needs at least one options object")
        if not 0 <= primary < len(options):
            raise MaterializationError(f"primary={primary} but only {len(options)} options")
        object.__setattr__(self, "options", tuple(options))
        object.__setattr__(self, "primary", primary)

    def filenames(self, stem: str) -> list[str]:
        return [stem + o.filename_suffix for o in self.options]


def _select(value: Any, source: str | None) -> Any:
    if source is None:
        return value
    try:
        return value[source]
    except (KeyError, TypeError, IndexError) as e:
        raise MaterializationError(f"output has no {source!r} to materialize") from e


def _rows(value: Any, fields: Sequence[str] | None) -> list[dict]:
    if hasattr(value, "to_dict"):                       # a pandas DataFrame
        value = value.to_dict(orient="records")
    if isinstance(value, dict) and value and all(isinstance(v, (list, tuple, np.ndarray))
                                                 for v in value.values()):
        keys = list(value)
        value = [dict(zip(keys, row)) for row in zip(*(value[k] for k in keys))]
    rows = [dict(r) for r in value]
    if fields is not None:
        rows = [{k: r.get(k) for k in fields} for r in rows]
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in rows]


def _roi_zip(value: Any) -> bytes:
    """An ImageJ ROI zip (roifile) from ROI objects or label images / polygons."""
    import roifile
    import zipfile
    rois = value
    if isinstance(value, np.ndarray):                   # a label image: one polygon per label
        from skimage import measure
        rois = []
        labels = value if value.ndim == 2 else value.max(axis=0)
        for region in measure.regionprops(labels.astype(np.int32)):
            # contour of the object's own bounding box (padded), not of the whole image
            contour = measure.find_contours(np.pad(region.image, 1), 0.5)
            if contour:
                yx = max(contour, key=len) - 1 + np.array(region.bbox[:2])
                roi = roifile.ImagejRoi.frompoints(yx[:, ::-1])
                roi.name = f"label_{region.label}"
                rois.append(roi)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, roi in enumerate(rois):
            name = getattr(roi, "name", "") or f"roi_{i + 1}"
            # a fixed timestamp: the same ROIs give the same bytes, run after run
            zf.writestr(zipfile.ZipInfo(f"{name}.roi", date_time=(1980, 1, 1, 0, 0, 0)),
                        roi.tobytes())
    return buf.getvalue()


def _tiff_stack(value: Any) -> bytes:
    import tifffile
    from .conversion import to_numpy_view
    from .memory_types import detect_memory_type
    return calibrated_tiff(to_numpy_view(value, detect_memory_type(value)))


def calibrated_tiff(arr: np.ndarray, pixel_size: float | None = None) -> bytes:
    """A TIFF ImageJ opens (an ImageJ hyperstack where the dtype allows) with the pixel size
    in microns, when it is known."""
    import tifffile
    imagej = arr.dtype in (np.uint8, np.uint16, np.float32)
    calibration: dict = {}
    if pixel_size and imagej:       # ImageJ's own unit field: pixels per micron
        calibration = {"resolution": (1 / pixel_size, 1 / pixel_size), "metadata": {"unit": "um"}}
    elif pixel_size:                # plain TIFF: pixels per centimetre
        calibration = {"resolution": (1e4 / pixel_size, 1e4 / pixel_size),
                       "resolutionunit": "CENTIMETER"}
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, imagej=imagej, photometric="minisblack", **calibration)
    return buf.getvalue()


def _in_micrometers(rows: list[dict], options: CsvOptions) -> list[dict]:
    """Each physical column followed by its micrometre twin (rows unchanged without a pixel size)."""
    if not options.pixel_size or not options.physical:
        return rows
    twins = {px: (um, power) for px, um, power in options.physical}
    out = []
    for r in rows:
        row = {}
        for k, v in r.items():
            row[k] = v
            if k in twins and isinstance(v, (int, float)):
                um, power = twins[k]
                row[um] = round(v * options.pixel_size ** power, 6)
        out.append(row)
    return out


def _with_image_columns(rows: list[dict], options: CsvOptions) -> list[dict]:
    if not options.image_columns:
        return rows
    lead, obj = dict(options.image_columns), options.object_column
    return [{**lead, **({"ObjectNumber": r[obj]} if obj in r else {}), **r} for r in rows]


def _csv(value: Any, options: CsvOptions) -> str:
    import csv
    rows = _in_micrometers(_rows(_select(value, options.source), options.fields), options)
    rows = _with_image_columns(rows, options)
    out = io.StringIO()
    if rows:
        w = csv.DictWriter(out, fieldnames=list(dict.fromkeys(k for r in rows for k in r)),
                           lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out.getvalue()


def _json(value: Any, options: JsonOptions) -> str:
    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serializable")
    return json.dumps(_select(value, options.source), indent=2, default=default)


# options type -> (encoder to bytes)
WRITERS: dict[type, Callable[[Any, Any], bytes]] = {
    CsvOptions: lambda v, o: _csv(v, o).encode(),
    JsonOptions: lambda v, o: _json(v, o).encode(),
    ROIOptions: lambda v, o: _roi_zip(_select(v, o.source)),
    TiffStackOptions: lambda v, o: _tiff_stack(_select(v, o.source)),
    TextOptions: lambda v, o: str(_select(v, o.source)).encode(),
}
OPTION_TYPES = tuple(WRITERS)   # the writer is chosen by the options' type


def materialize(value: Any, spec: MaterializationSpec, stem: str, write: Callable[[str, bytes], None],
                *, pixel_size: float | None = None,
                image_columns: dict[str, Any] | None = None) -> list[str]:
    """Encode ``value`` once per option and hand (file name, bytes) to ``write``; return names,
    the primary one first. ``pixel_size`` (um) adds micrometre columns to CSV tables;
    ``image_columns`` (Metadata_Plate, ..., ImageNumber) lead every row of them."""
    names = []
    for options in spec.options:
        if isinstance(options, CsvOptions) and pixel_size and not options.pixel_size:
            options = replace(options, pixel_size=pixel_size)
        if isinstance(options, CsvOptions) and image_columns and not options.image_columns:
            options = replace(options, image_columns=tuple(image_columns.items()))
        name = stem + options.filename_suffix
        write(name, WRITERS[type(options)](value, options))
        names.append(name)
    primary = names.pop(spec.primary)
    return [primary, *names]
