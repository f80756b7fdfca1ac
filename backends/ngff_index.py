"""Reading a store's NGFF structure (ours or another tool's) into a plane index.

The index maps each flat plane name (``A01_s001_w1_z001_t001.tif``) to an array and the
integer position of the plane in it, and describes every array from its metadata alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr

from .errors import MetadataError
from .naming import ParsedName, normalize_well
from .zarr_ngff import decode_present

INDEX_KEY = "vfsmount"
AXES = ("t", "c", "z", "y", "x")


@dataclass
class ArrayInfo:
    path: str                       # store-relative array path, e.g. "A/01/0/0"
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]
    axes: tuple[str, ...]           # e.g. ("t", "c", "z", "y", "x") or ("c", "y", "x")
    pixel_size: float | None = None


@dataclass
class PlaneRef:
    array: str
    index: tuple[int, ...]          # one integer per non-(y, x) axis


def _ome(attrs: dict) -> dict:
    """NGFF 0.5 nests everything under "ome"; 0.4 keeps it at the top."""
    return attrs.get("ome", attrs)


class NgffIndexMixin:
    """Fills ``self._arrays`` and ``self._files`` of a ZarrStorageBackend."""

    def _load_own_index(self, own: dict) -> None:
        try:
            for path, a in own["arrays"].items():
                self._arrays[path] = ArrayInfo(path, tuple(a["shape"]), np.dtype(a["dtype"]),
                                               tuple(a["chunks"]), tuple(a["axes"]),
                                               a.get("pixel_size"))
            for name, (path, *index) in own["files"].items():
                info = self._arrays[path]
                if len(index) != len(info.shape) - 2 or any(
                        not 0 <= i < n for i, n in zip(index, info.shape)):
                    raise ValueError(f"{name}: index {index} outside array {path} {info.shape}")
                self._files[name] = PlaneRef(path, tuple(index))
        except (KeyError, TypeError, ValueError) as e:
            raise MetadataError("inconsistent vfsmount index in zarr store attributes",
                                backend=self.name, path=self.root, cause=e) from e

    def _load_foreign_index(self, root: zarr.Group, attrs: dict) -> None:
        plate = _ome(attrs).get("plate")
        if not isinstance(plate, dict) or not isinstance(plate.get("wells"), list):
            raise MetadataError("not an OME-Zarr HCS plate: root attributes have no 'plate' with 'wells'",
                                backend=self.name, path=self.root)
        for well in plate["wells"]:
            well_path = str(well.get("path", "")) if isinstance(well, dict) else ""
            parts = well_path.split("/")
            if len(parts) != 2:
                raise MetadataError(f"plate well path {well_path!r} is not 'row/column'",
                                    backend=self.name, path=self.root)
            well_name = normalize_well(parts[0] + parts[1].zfill(2))
            try:
                wg = root[well_path]
            except KeyError:
                raise MetadataError(f"plate lists well {well_path!r} but the store has no such group",
                                    backend=self.name, path=self.root) from None
            images = _ome(dict(wg.attrs)).get("well", {}).get("images", [])
            for site, image in enumerate(images, 1):
                image_path = f"{well_path}/{image['path']}"   # "path" may be an integer
                self._index_foreign_image(root, image_path, well_name, site)
        if not self._files:
            raise MetadataError("OME-Zarr plate has no images", backend=self.name, path=self.root)

    def _index_foreign_image(self, root: zarr.Group, image_path: str, well: str, site: int) -> None:
        try:
            ms = _ome(dict(root[image_path].attrs))["multiscales"][0]
        except (KeyError, IndexError, TypeError):
            raise MetadataError(f"image {image_path!r} has no multiscales metadata",
                                backend=self.name, path=self.root) from None
        axes = tuple((a["name"] if isinstance(a, dict) else a).lower() for a in ms.get("axes", []))
        ds = ms["datasets"][0]
        array_path = f"{image_path}/{ds['path']}"
        try:
            arr = root[array_path]
        except KeyError:
            raise MetadataError(f"dataset {array_path!r} listed in multiscales is missing",
                                backend=self.name, path=self.root) from None
        if not axes:
            axes = AXES[-arr.ndim:]
        if len(axes) != arr.ndim or axes[-2:] != ("y", "x"):
            raise MetadataError(f"array {array_path!r}: axes {axes} do not match its shape {arr.shape}"
                                " (need ... y, x last)", backend=self.name, path=self.root)
        pixel = None
        x_unit = (ms.get("axes") or [{}])[-1]
        for t in ds.get("coordinateTransformations", []):   # a unitless x counts pixels
            if t.get("type") == "scale" and (not isinstance(x_unit, dict) or x_unit.get("unit")):
                pixel = float(t["scale"][-1])
        info = ArrayInfo(array_path, tuple(arr.shape), np.dtype(arr.dtype), tuple(arr.chunks),
                         axes, pixel)
        self._arrays[array_path] = info
        lead = axes[:-2]
        record = dict(arr.attrs).get(INDEX_KEY)           # ours: the site, and holes if any
        record = record if isinstance(record, dict) else {}
        site = int(record.get("site", site))
        try:
            present = decode_present(record, arr.shape[:-2])
        except ValueError as e:
            raise MetadataError(f"array {array_path!r}: {e}", backend=self.name,
                                path=self.root) from None
        for index in zip(*np.nonzero(present)) if arr.ndim > 2 else [()]:
            index = tuple(int(i) for i in index)
            coords = dict(zip(lead, index))
            name = ParsedName(well, site, coords.get("c", 0) + 1, coords.get("z", 0) + 1,
                              coords.get("t", 0) + 1).virtual_name()
            self._files[name] = PlaneRef(array_path, tuple(index))
