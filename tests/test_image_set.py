"""The image-set contract (backends/plates/image_set.py) every view builds on: what a set serves,
its fields and physics, and its reads, checked against tifffile and zarr directly, for a
vendor plate, a converted zarr plate and a foreign OME-Zarr plate."""
from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
import zarr

from backends.plates.convert import convert_plate
from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from backends.ngff.config import ZarrConfig

from .conftest import real_plate

SPEC = PlateSpec(wells=("A01", "B02"), sites=2, channels=2, z=3, t=1, shape=(40, 48))


@pytest.fixture
def vendor(tmp_path):
    return make_imagexpress_plate(tmp_path / "plate", SPEC, pixel_size=0.65, z_step=2.5)


def _assert_fields(images, spec: PlateSpec) -> None:
    fields = images.fields()
    assert [(f.well, f.site) for f in fields] == [(w, s) for w in spec.wells
                                                  for s in range(1, spec.sites + 1)]
    for f in fields:
        assert f.channels == tuple(range(1, spec.channels + 1))
        assert f.zs == tuple(range(1, spec.z + 1)) and f.ts == tuple(range(1, spec.t + 1))
        assert f.complete
        assert f.name(2, 3, 1) == f"{f.well}_s{f.site:03d}_w2_z003_t001.tif"
        assert list(f.coordinates())[:3] == [(1, 1, 1), (2, 1, 1), (1, 2, 1)]   # C fastest


def test_vendor_plate_serves_its_files(vendor):
    plate = Plate.open(vendor)
    images = plate.image_set()
    assert images is plate.image_set("workspace")           # made once, shared by every view
    assert images.serves_files and images.stats_in_bulk and not images.serves_planes
    assert len(images.names) == SPEC.n_images
    _assert_fields(images, SPEC)
    physics = images.physics
    assert physics.pixel_size == pytest.approx(0.65) and physics.z_spacing == pytest.approx(2.5)
    assert physics.time_interval is None                     # one time point: not known
    name = "B02_s002_w2_z003_t001.tif"
    real = images.real_path(name)
    assert real.is_file() and real.is_relative_to(vendor) and "ZStep_3" in str(real)
    assert images.source_rel(name) == os.path.relpath(real, vendor)
    assert np.array_equal(images.read(name), tifffile.imread(real))
    plane = images.plane(name)
    assert tuple(plane.shape) == SPEC.shape and plane.pixel_size == pytest.approx(0.65)
    fd = images.open_fd(name)
    try:
        assert os.pread(fd, 1 << 20, 0) == real.read_bytes()
    finally:
        os.close(fd)
    assert images.source_stat(name).st_size == real.stat().st_size


def test_converted_plate_serves_planes_with_the_vendors_physics(vendor):
    convert_plate(vendor, config=ZarrConfig(chunk_strategy="file"), progress=False)
    plate = Plate.open(vendor)
    images, files = plate.image_set(), plate.image_set("workspace")
    assert images.key == "zarr" and images.serves_planes and not images.serves_files
    assert not images.stats_in_bulk
    _assert_fields(images, SPEC)
    # the store's entry may not repeat what the vendor's knows: the set finds it there
    assert images.physics.z_spacing == pytest.approx(files.physics.z_spacing)
    assert images.physics.pixel_size == pytest.approx(0.65)
    for name in ("A01_s001_w1_z001_t001.tif", "B02_s002_w2_z003_t001.tif"):
        assert np.array_equal(images.read(name), tifffile.imread(files.real_path(name)))
        assert "zarr" in images.source(name)
    with pytest.raises(TypeError):
        images.real_path("A01_s001_w1_z001_t001.tif")


def test_foreign_ome_zarr_plate(tmp_path):
    pytest.importorskip("ngff_zarr")
    from .test_foreign_zarr import LABELS, PIXEL, Z_STEP, write_ngff_zarr
    written = write_ngff_zarr(tmp_path / "foreign.zarr", "0.4")
    plate = Plate.open(written.store)
    assert plate.url == str(written.store.resolve())            # a store given directly
    images = plate.image_set()
    assert images.serves_planes and not images.serves_files
    assert sorted(images.names) == sorted(written.planes)
    physics = images.physics
    assert physics.pixel_size == pytest.approx(PIXEL) and physics.z_spacing == pytest.approx(Z_STEP)
    assert [physics.label(c) for c in (1, 2)] == LABELS
    fields = images.fields()
    assert len(fields) == 6 and all(f.complete and f.zs == (1, 2, 3) for f in fields)
    root = zarr.open_group(written.store, mode="r")
    for name in sorted(written.planes)[::5]:
        array, index = written.planes[name]
        assert np.array_equal(images.read(name), root[array][index])


def test_real_vendor_plate_physics_and_reads(copy_real_plate):
    """An Opera Phenix export: channel names and pixel size from its index, pixels as
    tifffile reads the vendor's files."""
    src = real_plate("Version1")
    plate = Plate.open(copy_real_plate("Version1"))
    images = plate.image_set()
    assert images.serves_files
    assert images.physics.pixel_size == pytest.approx(0.598, rel=1e-3)
    assert all(images.physics.channel_names.get(f.channels[0]) for f in images.fields())
    for name in images.names[:3]:
        real = images.real_path(name)
        assert np.array_equal(images.read(name), tifffile.imread(src / real.name))
