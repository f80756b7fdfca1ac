"""``images/``: the main image set under one name whatever the plate, calibrated for
ImageJ and Bio-Formats.

A set of planes is shown as it is (its synthesized TIFFs carry the pixel size already). A
set of vendor files is shown with each TIFF behind a calibrated first IFD, appended after the
vendor's bytes (``tiff_layout.CalibratedLayout``): the plate's pixel size, and its z spacing
as ImageJ's ``spacing=`` so an Image Sequence import gets the instrument's step. Its size
comes from the vendor file's size alone, so ``ls -l`` reads nothing. A file that cannot get
one (BigTIFF, not a TIFF) is served as it is, padded with zeros to that size, with one log
line. Calibrated files are other bytes than the plain folder's, so they have other inodes
(the kernel's page cache would mix the two).
"""
from __future__ import annotations

import logging
import os

import numpy as np

from backends.plates.image_set import ImageSet, Physics
from backends.layout import MAIN_ALIAS, is_tiff_name

from ..listing import Columns, ImageDir, ListedFile, ListedImages, NamedRows, reserve_inodes
from ..nodes import DirNode, PassthroughFile
from ..tiff_layout import CalibratedLayout
from .base import Mount
from .flat import SetFiles, folder

log = logging.getLogger(__name__)


def images_folder(mount: Mount):
    """``images/``, unless the main set is not shown or a subdirectory has that name."""
    main = mount.main()
    if main is None or mount.taken(MAIN_ALIAS):
        return ()
    return [(MAIN_ALIAS, calibrated(main, folder(mount, main)))]


def calibrated(images: ImageSet, plain: DirNode) -> DirNode:
    """``plain`` (the folder of ``images``) with its vendor TIFFs calibrated."""
    physics = images.physics
    if images.serves_planes or not physics.pixel_size:
        return plain.alias() if images.stats_in_bulk or images.streams_wells else _shared(plain)
    if images.stats_in_bulk:
        return ImageDir(plain.mtime_ns, CalibratedView(plain.images, physics))
    return DirNode(plain.mtime_ns, lambda d: _fill(d, plain, images))


def _shared(plain: DirNode) -> DirNode:
    return DirNode(plain.mtime_ns, lambda d: d.share_children(plain))


def _fill(directory: DirNode, plain: DirNode, images: ImageSet) -> None:
    """``plain``'s files, its TIFFs calibrated (other files are the same nodes)."""
    files = SetFiles(images)
    for name, node in plain.children():
        tiff = is_tiff_name(os.fsdecode(name))
        directory.add(name, CalibratedTiff(os.fsdecode(name), files, images.physics)
                      if tiff else node)


class Calibration:
    """The calibrated bytes of one vendor file: the layout from the vendor file's size, and
    the new IFD, read from the vendor's first IFD once (``patch``; False: none possible)."""

    __slots__ = ("physics", "patch")

    def __init__(self, physics: Physics) -> None:
        self.physics = physics
        self.patch: tuple[bytes, bytes] | bool | None = None

    def layout(self, vendor_size: int) -> CalibratedLayout | None:
        layout = CalibratedLayout(vendor_size, self.physics.z_spacing)
        return layout if layout.fits else None          # past 4 GiB: served as it is

    def size(self, vendor_size: int) -> int:
        layout = self.layout(vendor_size)
        return layout.size if layout else vendor_size

    def read(self, plain, vendor_size: int, handle, offset: int, length: int,
             vendor_read) -> bytes:
        """Bytes of ``plain`` (a pass-through node of ``vendor_size`` bytes) calibrated;
        ``vendor_read(handle, o, n)`` reads the vendor's bytes."""
        layout = self.layout(vendor_size)
        if layout is None:
            return vendor_read(handle, offset, length)
        return layout.read(offset, length, lambda o, n: vendor_read(handle, o, n),
                           self._patch_for(layout, plain))

    def inline(self, vendor_size: int, offset: int, length: int) -> bool:
        """True if the range is the vendor's bytes at their own offsets (after its header)."""
        layout = self.layout(vendor_size)
        return layout is None or (offset >= 8 and offset + length <= layout.vendor_size)

    def _patch_for(self, layout: CalibratedLayout, plain) -> tuple[bytes, bytes] | None:
        if self.patch is None:
            try:
                self.patch = layout.patch(plain.path(), self.physics.pixel_size)
            except FileNotFoundError:
                raise
            except Exception as e:      # tifffile's errors have no common type
                log.warning("%s: served without calibration: %s", plain.name, e)
                self.patch = False
        return self.patch or None


class CalibratedTiff(PassthroughFile):
    """A calibrated pass-through file of an ordinary directory (its own inode)."""

    __slots__ = ("calibration",)

    def __init__(self, name: str, files: SetFiles, physics: Physics) -> None:
        super().__init__(name, files)
        self.calibration = Calibration(physics)

    @property
    def size(self) -> int:
        return self.calibration.size(super().size)

    def refresh(self) -> bool:
        changed = super().refresh()
        if changed:
            self.calibration.patch = None
        return changed

    def bytes_are_source(self) -> bool:
        return self.calibration.layout(super().size) is None    # past 4 GiB: vendor bytes as they are

    def read(self, handle, offset: int, length: int) -> bytes:
        return self.calibration.read(self, super().size, handle, offset, length, super().read)

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        if self.calibration.inline(super().size, offset, length):
            return super().read_nowait(handle, offset, length)
        return None


class CalibratedListedFile(ListedFile):
    """A listed vendor TIFF behind a calibrated first IFD."""

    __slots__ = ("calibration",)

    def __init__(self, images: ListedImages, row: int, physics: Physics) -> None:
        super().__init__(images, row)
        self.calibration = Calibration(physics)

    @property
    def size(self) -> int:
        return self.calibration.size(super().size)

    def refresh(self) -> bool:
        changed = super().refresh()
        if changed:
            self.calibration.patch = None
        return changed

    def bytes_are_source(self) -> bool:
        return self.calibration.layout(super().size) is None    # past 4 GiB: vendor bytes as they are

    def read(self, handle, offset: int, length: int) -> bytes:
        return self.calibration.read(self, super().size, handle, offset, length, super().read)

    def read_nowait(self, handle, offset: int, length: int) -> bytes | None:
        if self.calibration.inline(super().size, offset, length):
            return super().read_nowait(handle, offset, length)
        return None


class CalibratedView(NamedRows):
    """The rows of a ListedImages under their own inode range, TIFFs calibrated."""

    def __init__(self, images: ListedImages, physics: Physics) -> None:
        self.images, self.physics = images, physics
        self.names = images.names
        self.first_inode = 0
        self._tiff: np.ndarray | None = None       # which rows are TIFFs (served calibrated)

    def load(self) -> None:
        self.images.load()
        with self.images.lock:
            if not self.first_inode:
                self.first_inode = reserve_inodes(self)

    @property
    def complete(self) -> bool:
        return self.images.complete

    def wait_rows(self, stop: int) -> None:
        self.images.wait_rows(stop)

    def row_of(self, name: str) -> int | None:
        return self.images.row_of(name)

    def columns(self) -> Columns:
        """As ListedImages.columns, with the sizes the calibrated files are served with."""
        if self._tiff is None:
            self._tiff = np.fromiter(map(is_tiff_name, self.names), dtype=bool,
                                     count=len(self.names))
        images = self.images
        sizes = _ServedSizes(images.sizes, self._tiff, self.physics.z_spacing)
        return Columns(self.first_inode, self.names, sizes, images.mtimes, images.ready,
                       images.modes)

    def node(self, row: int) -> ListedFile:
        self.images.wait_rows(row + 1)          # its size is the stat-ed vendor size's
        if is_tiff_name(self.names[row]):
            node = CalibratedListedFile(self.images, row, self.physics)
        else:
            node = ListedFile(self.images, row)
        node.inode = self.first_inode + row
        return node


class _ServedSizes:
    """The sizes of a CalibratedView's files, computed a slice at a time from the vendor
    sizes (readdir slices a reply's worth): no second column to keep in step with them."""

    __slots__ = ("vendor", "tiff", "z_spacing")

    def __init__(self, vendor, tiff: np.ndarray, z_spacing: float | None) -> None:
        self.vendor, self.tiff, self.z_spacing = vendor, tiff, z_spacing

    def __len__(self) -> int:
        return len(self.vendor)

    def __getitem__(self, rows: slice) -> list[int]:
        vendor = np.frombuffer(self.vendor[rows], dtype=np.int64)
        calibrated = self.tiff[rows] & (vendor >= 0)     # a missing source stays negative
        served = CalibratedLayout.served_sizes(vendor, self.z_spacing)
        return np.where(calibrated, served, vendor).tolist()
