"""The plate layout: every folder and file name that vfsmount gives a meaning to, in one place.

Both the mount (``vfsmount/``) and pipelines (``compute/``) import these names, so that a
folder is spelled once. ``backends`` owns the module because it is the lowest layer.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Where results are written back, inside the plate and in the mounted tree.
OUTPUTS_DIR = "outputs"
#: Staging area for writes through the mount: on the plate's own file system, so that a
#: commit is one rename.
STAGING_DIR = ".vfsmount-staging"
#: The mounted alias of the plate's main subdirectory.
MAIN_ALIAS = "images"
#: The plate's real tree, read-only in the mount.
ORIGINAL_DIR = "original"
#: Compute-on-read results: ``processed/<pipeline name>/``.
PROCESSED_DIR = "processed"
#: The store ``vfsmount convert`` writes by default: ``PLATE/zarr``.
ZARR_DIR = "zarr"
#: Suffix of the OME-Zarr store an output folder materialized as zarr lives in.
ZARR_SUFFIX = ".zarr"
#: The mounted alias of subdirectory "." (a plate of flat files in its root).
ROOT_ALIAS = "root"
#: One ImageJ hyperstack per field of the main subdirectory.
HYPERSTACKS_DIR = "hyperstacks"
#: The plate's metadata file, in the plate and at the mount's root.
METADATA_FILE = "openhcs_metadata.json"
#: Extended attributes served with ``--xattrs``: ``user.vfsmount.well`` and so on.
XATTR_PREFIX = "user.vfsmount."
#: What makes a file name a TIFF: its extension, in any case (see ``is_tiff_name``).
TIFF_EXTENSIONS = (".tif", ".tiff")
#: The file-system type the kernel reports for our mounts (``/proc/self/mountinfo``).
FS_TYPE = "fuse.vfsmount"
FS_SUBTYPE = "vfsmount"


def cache_root() -> Path:
    """The per-user cache folder (``$XDG_CACHE_HOME/vfsmount``): metadata of hands-off plates,
    logs, chunk caches, demo plates."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vfsmount"


def output_key(folder: str) -> str:
    """The metadata key of an output folder: ``outputs/<folder>`` (``outputs`` for the top)."""
    folder = folder.strip("/")
    return f"{OUTPUTS_DIR}/{folder}" if folder else OUTPUTS_DIR


def is_tiff_name(name: str) -> bool:
    """The one TIFF-extension rule: ``.tif``/``.tiff`` in any case (``A01.TIF`` is a TIFF)."""
    return name.lower().endswith(TIFF_EXTENSIONS)


def display_name(key: str) -> str:
    """The mounted folder of metadata subdirectory ``key`` ("." is ``root/``)."""
    return ROOT_ALIAS if key in (".", "") else key


#: Plate views in the mount's root (and ``processed/<pipeline>/``): CellProfiler's LoadData
#: CSVs (``backends/plates/loaddata.py``) and the OME companion (``backends/plates/companion.py``).
LOADDATA_CSV = "load_data.csv"
LOADDATA_ILLUM_CSV = "load_data_with_illum.csv"
COMPANION_FILE = "plate.companion.ome"
#: Where an illumination-correction pipeline writes its functions (pe2loaddata's convention):
#: ``outputs/illum/<plate>_Illum<X>.npy``.
ILLUM_DIR = "illum"
