"""The hand-written TIFF layout, checked against tifffile, libtiff, Pillow and ImageJ."""
from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from vfsmount.tiff_layout import (CalibratedLayout, FileTooLargeError, HyperstackLayout, TiffLayout,
                                 UnsupportedPlaneError, synthesize)

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


# -- multi-page hyperstacks and calibrated vendor files ------------------------------------------

def hyperstack(planes: np.ndarray, channels: int, pixel_size=0.5, labels=None, info="why"):
    from tifffile import imagej_description, imagej_metadata_tag
    n = planes.shape[0]
    desc = imagej_description((n // channels, channels, 1, 1), "ZCYX", unit="micron", spacing=2.0)
    labels = labels or [f"c{i % channels}" for i in range(n)]
    extra = tuple(t[:4] for t in imagej_metadata_tag({"Labels": labels, "Info": info}, "<"))
    return HyperstackLayout.build(planes.shape[1:], planes.dtype, n, desc.encode() + b"\0",
                                  pixel_size, extra)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_hyperstack_layout_is_an_imagej_stack_tifffile_reads(dtype):
    planes = np.stack([plane(dtype, (37, 53), seed=i) for i in range(6)])
    layout = hyperstack(planes, 2)
    data = layout.read(0, layout.size, lambda i, y0, y1: planes[i, y0:y1])
    assert len(data) == layout.size == layout.data_offset + planes.nbytes
    with tifffile.TiffFile(io.BytesIO(data)) as tif:
        assert tif.is_imagej and len(tif.pages) == 6 and not tif.is_bigtiff
        meta = tif.imagej_metadata
        assert (meta["images"], meta["channels"], meta["slices"]) == (6, 2, 3)
        assert meta["Labels"] == ["c0", "c1"] * 3 and meta["Info"] == "why"
        assert meta["unit"] == "micron" and meta["spacing"] == 2.0
        assert np.array_equal(tif.asarray().reshape(planes.shape), planes)
        # ImageJ 1.x reads the planes contiguously from the first strip offset
        offsets = [p.dataoffsets[0] for p in tif.pages]
        assert offsets == [layout.data_offset + i * planes[0].nbytes for i in range(6)]
        x = tif.pages[0].tags["XResolution"].value
        assert x[0] / x[1] == pytest.approx(2.0)


def test_hyperstack_random_ranges_match_the_whole_file():
    planes = np.stack([plane("uint16", (61, 47), seed=i) for i in range(5)])
    layout = hyperstack(planes, 5)
    whole = layout.read(0, layout.size, lambda i, y0, y1: planes[i, y0:y1])
    rng = np.random.default_rng(3)
    for _ in range(500):
        off, length = int(rng.integers(0, layout.size + 50)), int(rng.integers(0, 40_000))
        assert layout.read(off, length, lambda i, y0, y1: planes[i, y0:y1]) == \
            whole[off:off + length]


def test_hyperstack_past_4_gib_is_refused():
    with pytest.raises(FileTooLargeError):
        hyperstack(np.zeros((1, 4, 4), "uint16"), 1).build((2048, 2048), "uint16", 600, b"\0",
                                                           None)


def vendor_files(tmp_path):
    """Real vendor TIFFs (Deflate, LZW, uncompressed) and tifffile-written oddities:
    big-endian, horizontal predictor, tiles."""
    from .conftest import real_plate       # skips when the sample plates are not present
    out = sorted(real_plate("Projection-Mix").glob("ZStep_1/*_w1[0-9A-F]*.tif"))[:1]
    out += sorted(real_plate("1well-3C-2S-Zmix-T").glob("TimePoint_1/*.tif"))[:1]
    out += sorted(real_plate("Version1").glob("*.tiff"))[:1]
    a = plane("uint16", (300, 257), seed=9)
    for name, kw in [("be.tif", {"byteorder": ">"}),
                     ("pred.tif", {"compression": "zlib", "predictor": True, "rowsperstrip": 17}),
                     ("tiled.tif", {"compression": "lzw", "tile": (64, 64)}),
                     ("be-lzw.tif", {"byteorder": ">", "compression": "lzw"})]:
        tifffile.imwrite(tmp_path / name, a, resolution=(2.0, 2.0), resolutionunit="CENTIMETER",
                         **kw)
        out.append(tmp_path / name)
    return out


def calibrated(f: Path, pixel_size=0.598) -> bytes:
    raw = f.read_bytes()
    layout = CalibratedLayout(len(raw))
    return layout.read(0, layout.size, lambda o, n: raw[o:o + n], layout.patch(f, pixel_size))


def test_calibrated_layout_serves_vendor_pixels_with_a_calibrated_ifd(tmp_path):
    files = vendor_files(tmp_path)
    assert len(files) == 7, "the shared sample plates are missing"
    sizes = set()
    for f in files:
        raw = f.read_bytes()
        layout = CalibratedLayout(len(raw))               # from the size alone
        patch = layout.patch(f, 0.598)
        data = layout.read(0, layout.size, lambda o, n: raw[o:o + n], patch)
        assert len(data) == layout.size
        assert data[:4] == raw[:4] and data[8:len(raw)] == raw[8:]   # the vendor's bytes
        sizes.add(layout.size - len(raw) - len(raw) % 2)
        with tifffile.TiffFile(io.BytesIO(data)) as tif, tifffile.TiffFile(f) as ref:
            page, want = tif.pages[0], ref.pages[0]
            assert len(tif.pages) == len(ref.pages) and tif.is_imagej, f
            assert np.array_equal(page.asarray(), want.asarray()), f
            assert (page.compression, page.predictor) == (want.compression, want.predictor)
            x = page.tags["XResolution"].value
            assert x[0] / x[1] == pytest.approx(1 / 0.598, rel=1e-6)
            assert tif.imagej_metadata["unit"] == "micron"
        for off in (0, 5, len(raw) - 3, len(raw) + 11):   # any range
            assert layout.read(off, 1000, lambda o, n: raw[o:o + n], patch) == data[off:off + 1000]
    assert len(sizes) == 1                                 # the same few bytes added to each


def test_calibrated_layout_without_a_patch_serves_the_file_as_it_is(tmp_path):
    tifffile.imwrite(tmp_path / "b.tif", plane("uint16"), bigtiff=True)
    raw = (tmp_path / "b.tif").read_bytes()
    layout = CalibratedLayout(len(raw))
    with pytest.raises(UnsupportedPlaneError):
        layout.patch(tmp_path / "b.tif", 0.5)
    data = layout.read(0, layout.size, lambda o, n: raw[o:o + n], None)
    assert data[:len(raw)] == raw and data[len(raw):] == b"\0" * (layout.size - len(raw))
    assert np.array_equal(tifffile.imread(io.BytesIO(data)), plane("uint16"))


@pytest.mark.skipif(not imagej_available(), reason="Debian package imagej is not installed")
def test_imagej_reads_calibrated_big_endian_and_compressed_files(tmp_path):
    """ImageJ reads a calibrated file exactly as it reads the vendor's (ImageJ 1.53 itself
    misreads 16-bit Deflate with a predictor, and reads no tiled TIFF: not our concern)."""
    for f in vendor_files(tmp_path)[3:]:
        if f.name == "tiled.tif":
            continue
        out = tmp_path / f"cal-{f.name}"
        out.write_bytes(calibrated(f))
        got = imagej_open(out, tmp_path)
        assert got == imagej_open(f, tmp_path)
        if f.name.startswith("be"):
            assert got[:4] == (257, 300, 16, 1)
            assert got[4] == pytest.approx(float(tifffile.imread(f).mean()), rel=1e-6)
