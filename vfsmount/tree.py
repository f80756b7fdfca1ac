"""The mounted tree: the root, and the views that fill it.

    MOUNT/
      images/                  the main image set, calibrated          views/images.py
      hyperstacks/             one ImageJ hyperstack per field         views/hyperstacks.py
      <key>/                   one folder per image set: workspace/,   views/flat.py
                               projection/, zarr/, root/ (key "."), outputs/<name>/ ...
      original/                the plate's real tree, read-only        views/original.py
      outputs/                 results written back (outputs area)     views/outputs.py
      processed/<pipeline>/    computed on read                        views/processed.py
      openhcs_metadata.json    the plate's metadata, read-only         views/metadata_file.py

Each view turns the plate's image sets (``backends.plates.image_set.ImageSet``) into root entries
from what they can serve; a new view is a module in ``views/`` and one line in ``VIEWS``.
Folders fill themselves on first use, so mounting a 100,000-image plate only reads its
metadata.
"""
from __future__ import annotations

from natsort import natsorted

from backends.plates.plate import Plate

from .listing import release_freed_memory
from .nodes import DirNode
from .views.base import Mount
from .views.documents import plate_documents
from .views.flat import flat_folders
from .views.hyperstacks import hyperstacks_folder
from .views.images import images_folder
from .views.metadata_file import metadata_file
from .views.original import original_folder
from .views.outputs import outputs_folder
from .views.processed import processed_folder

ROOT_INODE = 1

#: The views, each ``view(mount) -> [(name, node), ...]``; the root lists their entries in
#: natural order, whatever the order here.
VIEWS = (
    flat_folders,
    images_folder,
    hyperstacks_folder,
    original_folder,
    outputs_folder,
    processed_folder,
    metadata_file,
    plate_documents,
)


def build_tree(plate: Plate, outputs=None, computed=(), documents=None) -> DirNode:
    """The mount's root; ``outputs`` (an OutputsArea) serves outputs/ and every
    ``outputs/...`` image set of the metadata; each of ``computed`` (ComputedPlanes)
    becomes ``processed/<pipeline name>/``; ``documents`` (views.documents.PlateViews) makes
    the LoadData CSVs and the OME companion."""
    mount = Mount(plate, outputs, tuple(computed), documents=documents)
    entries = [entry for view in VIEWS for entry in view(mount)]
    root = DirNode(mount.mtime_ns, inode=ROOT_INODE)
    for name, node in natsorted(entries, key=lambda e: e[0]):
        root.add(name, node)
    release_freed_memory()       # what parsing the metadata left behind
    return root
