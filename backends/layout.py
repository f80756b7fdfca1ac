"""The plate layout: every folder and file name that vfsmount gives a meaning to, in one place.

Both the mount (``vfsmount/``) and pipelines (``compute/``) import these names, so that a
folder is spelled once. ``backends`` owns the module because it is the lowest layer.
"""
from __future__ import annotations

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
#: The file-system type the kernel reports for our mounts (``/proc/self/mountinfo``).
FS_TYPE = "fuse.vfsmount"
FS_SUBTYPE = "vfsmount"


def output_key(folder: str) -> str:
    """The metadata key of an output folder: ``outputs/<folder>`` (``outputs`` for the top)."""
    folder = folder.strip("/")
    return f"{OUTPUTS_DIR}/{folder}" if folder else OUTPUTS_DIR

#: Plate views in the mount's root (and ``processed/<pipeline>/``): CellProfiler's LoadData
#: CSVs (``backends/loaddata.py``) and the OME companion (``backends/companion.py``).
LOADDATA_CSV = "load_data.csv"
LOADDATA_ILLUM_CSV = "load_data_with_illum.csv"
COMPANION_FILE = "plate.companion.ome"
#: Where an illumination-correction pipeline writes its functions (pe2loaddata's convention):
#: ``outputs/illum/<plate>_Illum<X>.npy``.
ILLUM_DIR = "illum"
