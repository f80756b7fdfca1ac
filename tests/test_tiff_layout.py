"""The hand-written TIFF layout, checked against tifffile, libtiff, Pillow and ImageJ."""
from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import tifffile
from PIL import Image

from vfsmount.tiff_layout import TiffLayout, UnsupportedPlaneError, synthesize

from .conftest import imagej_available, imagej_open

DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]


def plane(dtype, shape=(37, 53), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 200).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bigtiff", [False, True])
def test_tifffile_reads_pixels_and_tags(dtype, bigtiff):
    a = plane(dtype)
    data = synthesize(a, 0.65, force_bigtiff=bigtiff)
    layout = TiffLayout.for_plane(a.shape, a.dtype, 0.65, force_bigtiff=bigtiff)
    assert len(data) == layout.size            # size known before any pixel
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.is_bigtiff == bigtiff
        page = tif.pages[0]
        got = page.asarray()
        assert got.dtype == a.dtype and np.array_equal(got, a)
        assert page.compression == 1 and not page.is_tiled
        assert tif.is_imagej and tif.imagej_metadata["unit"] == "micron"
        # the same tags tifffile writes for an ImageJ file of this data
        ref_buf = io.BytesIO()
        tifffile.imwrite(ref_buf, a, imagej=dtype in ("uint8", "uint16", "float32"),
                         resolution=(1 / 0.65, 1 / 0.65), photometric="minisblack")
        ref = tifffile.TiffFile(io.BytesIO(ref_buf.getvalue())).pages[0]
        for attr in ("imagewidth", "imagelength", "bitspersample", "sampleformat",
                     "photometric", "samplesperpixel", "dtype"):
            assert getattr(page, attr) == getattr(ref, attr), attr
        x, y = page.tags["XResolution"].value, ref.tags["XResolution"].value
        assert x[0] / x[1] == pytest.approx(y[0] / y[1], rel=1e-6)
        assert page.dataoffsets[0] == layout.data_offset
        assert sum(page.databytecounts) == a.nbytes


@pytest.mark.parametrize("dtype", DTYPES)
def test_libtiff_prints_no_warnings(tmp_path, dtype):
    f = tmp_path / "p.tif"
    f.write_bytes(synthesize(plane(dtype, (300, 301)), 1.5))
    res = subprocess.run(["tiffinfo", "-D", str(f)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    assert "Image Width: 301 Image Length: 300" in res.stdout


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "float32"])
def test_pillow_reads_pixels(dtype):
    a = plane(dtype, (64, 80))
    got = np.array(Image.open(io.BytesIO(synthesize(a))))
    assert np.array_equal(got.astype(a.dtype), a)


def test_random_ranges_match_the_whole_file():
    a = plane("uint16", (517, 389), seed=3)
    whole = synthesize(a, 0.3)
    layout = TiffLayout.for_plane(a.shape, a.dtype, 0.3)
    calls = []

    def rows(y0, y1):
        calls.append((y0, y1))
        return a[y0:y1]

    rng = np.random.default_rng(7)
    for _ in range(1000):
        off = int(rng.integers(0, layout.size + 100))
        length = int(rng.integers(0, 200_000))
        assert layout.read(off, length, rows) == whole[off:off + length]
    # reads only the rows a range covers
    calls.clear()
    off = layout.data_offset + 10 * layout.row_bytes + 3
    layout.read(off, 5, rows)
    assert calls == [(10, 11)]


def test_header_only_reads_touch_no_pixels():
    layout = TiffLayout.for_plane((100, 100), "uint16", None)

    def fail(y0, y1):
        raise AssertionError("pixels read for a header-only range")
    assert len(layout.read(0, layout.data_offset, fail)) == layout.data_offset


def test_large_planes_switch_to_bigtiff():
    small = TiffLayout.for_plane((40_000, 40_000), "uint16")        # 3.2 GB: classic
    big = TiffLayout.for_plane((50_000, 50_000), "uint16")          # 5 GB: BigTIFF
    assert not small.bigtiff and big.bigtiff
    assert big.size == big.data_offset + 50_000 * 50_000 * 2
    assert big.header[:4] == b"II+\x00"


def test_unsupported_planes():
    with pytest.raises(UnsupportedPlaneError):
        TiffLayout.for_plane((4, 4), np.complex64)
    with pytest.raises(UnsupportedPlaneError):
        TiffLayout.for_plane((4, 4, 3), np.uint8)


@pytest.mark.skipif(not imagej_available(), reason="Debian package imagej is not installed")
@pytest.mark.parametrize("dtype,bits", [("uint8", 8), ("uint16", 16), ("float32", 32)])
def test_imagej_opens_synthesized_tiff(tmp_path, dtype, bits):
    a = plane(dtype, (120, 170), seed=5)
    f = tmp_path / f"{dtype}.tif"
    f.write_bytes(synthesize(a, 0.65))
    w, h, b, slices, mean = imagej_open(f, tmp_path)
    assert (w, h, b, slices) == (170, 120, bits, 1)
    assert mean == pytest.approx(float(a.astype(np.float64).mean()), rel=1e-5)
