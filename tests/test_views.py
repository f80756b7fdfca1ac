"""What the views serve beyond bytes (issue 31): modes a copy can keep, and the z spacing an
Image Sequence import of images/ needs."""
from __future__ import annotations

import errno
import os
import shutil
import stat

import pytest
import tifffile

from backends.plates.convert import convert_plate
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.config import ZarrConfig

SPEC = PlateSpec(wells=("A01",), sites=1, channels=2, z=3, t=1, shape=(32, 40))


@pytest.fixture
def vendor(tmp_path):
    return make_imagexpress_plate(tmp_path / "plate", SPEC, pixel_size=0.65, z_step=2.5)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_carry_their_own_modes_and_copies_are_editable(vendor, mounts, tmp_path):
    """Issue 31 #5: a vendor file shows its own mode, a file made by the mount 0644, a folder
    0755; writing through the mount is still refused (EROFS)."""
    plate = Plate.open(vendor)
    mapping = plate.entry("workspace")["workspace_mapping"]
    name = "A01_s001_w2_z002_t001.tif"
    os.chmod(vendor / mapping[name], 0o640)
    convert_plate(vendor, config=ZarrConfig(chunk_strategy="file"), progress=False)
    mnt = mounts.mount(vendor, "--subdir", "workspace")
    assert _mode(mnt / "workspace" / name) == 0o640           # listed in columns: readdir
    assert {_mode(e.path) for e in os.scandir(mnt / "workspace")} == {0o640, 0o644}
    assert _mode(mnt / "images" / name) == 0o640               # calibrated, the vendor's mode
    assert _mode(mnt / "zarr" / name) == 0o644                 # synthesized
    assert _mode(mnt / "hyperstacks" / "A01_s001.tif") == 0o644
    assert _mode(mnt / "original" / mapping[name]) == 0o640
    assert _mode(mnt / "images") == 0o755
    for action in (lambda: open(mnt / "zarr" / name, "r+b"),
                   lambda: (mnt / "images" / "new.tif").write_bytes(b"x"),
                   lambda: os.unlink(mnt / "zarr" / name)):
        with pytest.raises(OSError) as e:
            action()
        assert e.value.errno == errno.EROFS
    copy = tmp_path / "copy"
    shutil.copytree(mnt / "zarr", copy)                        # cp -r
    (copy / name).write_bytes(b"edited")                       # the copy is the user's
    (copy / "new.txt").write_text("a note")


def test_calibrated_images_carry_the_plates_z_spacing(vendor, mounts):
    """Issue 31 #9: images/ of a vendor plate tells ImageJ the z step (``spacing=``), so an
    Image Sequence import gets a voxel depth of 2.5 um, not the pixel width."""
    mnt = mounts.mount(vendor)
    for name in ("A01_s001_w1_z001_t001.tif", "A01_s001_w2_z003_t001.tif"):
        with tifffile.TiffFile(mnt / "images" / name) as tif:
            meta = tif.imagej_metadata
            assert meta["unit"] == "micron" and meta["spacing"] == pytest.approx(2.5)
            x = tif.pages[0].tags["XResolution"].value
            assert x[1] / x[0] == pytest.approx(0.65, rel=1e-6)
        size = os.stat(mnt / "images" / name).st_size
        assert size == len((mnt / "images" / name).read_bytes())   # the size stat gave


def test_real_plate_z_step_reaches_images(copy_real_plate, mounts):
    """The README's Image Sequence recipe on a real ImageXpress z-series: the instrument's
    step, as the plate's metadata records it."""
    root = copy_real_plate("Projection-Mix")
    z = Plate.open(root).image_set().physics.z_spacing
    assert z
    mnt = mounts.mount(root)
    name = next(n for n in sorted(os.listdir(mnt / "images")) if "_z002_" in n)
    with tifffile.TiffFile(mnt / "images" / name) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(z)
