"""An OME companion file (``plate.companion.ome``) of an image set: OME-XML (2016-06 schema)
that describes the plate and points at the flat TIFFs, so Bio-Formats, OMERO and QuPath
import the plate with its wells and fields (how IDR publishes plates of plain TIFFs).

- ``Plate`` (letter rows, number columns; ``Rows``/``Columns`` the instrument's plate format
  where it records one, else the extent of the wells present), a ``Well`` per well (row
  and column from 0) and a ``WellSample`` per field, each referring to its ``Image``;
- one ``Image`` per field, named ``{well}_s{site}``, whose ``Pixels`` are XYCZT over the image
  set's channels, z-planes and time points, with ``PhysicalSizeX/Y`` (pixel size),
  ``PhysicalSizeZ`` (z spacing) in µm and ``TimeIncrement`` in s only where the metadata knows
  them; ``Channel`` names, colours and wavelengths likewise;
- one ``TiffData`` per plane present (``PlaneCount="1"``, ``IFD="0"``), whose ``UUID``
  ``FileName`` is the plane's file under ``images/`` relative to the companion. The UUIDs are
  uuid5 of the plate's and the file's names, so a plate gives the same bytes on every mount.

Shapes and pixel types come from ``ImageSet.plane`` (a zarr array's metadata, a TIFF's
header): no plane is read.
"""
from __future__ import annotations

import functools
import hashlib
import uuid
from typing import TYPE_CHECKING, Sequence
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from .loaddata import plate_label, well_order
from ..naming import row_index, split_well

if TYPE_CHECKING:
    from .image_set import Field, ImageSet, Physics

OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
#: The namespace of every UUID a companion holds (uuid5 of plate and file names in it).
UUID_NAMESPACE = uuid.UUID("6b1e7c52-3d0f-5a8e-9c41-0f2b8d7a6e15")
_NAMESPACE_BYTES = UUID_NAMESPACE.bytes
PIXEL_TYPES = {"uint8": "uint8", "int8": "int8", "uint16": "uint16", "int16": "int16",
               "uint32": "uint32", "int32": "int32", "float32": "float", "float64": "double"}


def file_uuid(plate: str, name: str) -> str:
    """``urn:uuid:`` + uuid5(UUID_NAMESPACE, plate NUL name), the bytes ``uuid.uuid5`` gives,
    made without a UUID object (a companion holds one per plane: 100,000s)."""
    h = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{plate}\x00{name}".encode()).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50          # version 5
    h[8] = (h[8] & 0x3F) | 0x80          # RFC 4122 variant
    x = h.hex()
    return f"urn:uuid:{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def _a(**attrs) -> str:
    """XML attributes, leaving out those that are None."""
    return "".join(f" {k}={quoteattr(str(v))}" for k, v in attrs.items() if v is not None)


def _positive(value: float | None) -> str | None:
    """A PositiveFloat of the schema, or None (unknown; a bright-field channel's emission 0)."""
    return None if not value or value <= 0 else f"{float(value):g}"


def companion_xml(image_set: "ImageSet", *, fields: Sequence["Field"] | None = None,
                  image_dir: str = "images", creator: str = "vfsmount") -> bytes:
    """The companion of ``image_set``; file names are ``image_dir/<flat name>`` (relative to
    the companion file)."""
    fields = sorted(image_set.fields() if fields is None else fields,
                    key=lambda f: (well_order(f.well), f.site))
    plate = plate_label(image_set)
    physics = image_set.physics
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
           f'<OME xmlns="{OME_NS}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           f'xsi:schemaLocation="{OME_NS} {OME_NS}/ome.xsd"'
           f'{_a(UUID=file_uuid(plate, ""), Creator=creator)}>\n']
    out += _plate(fields, plate, image_set.plate_format)
    for index, f in enumerate(fields):
        out += _image(index, f, image_set, physics, plate, image_dir)
    out.append("</OME>\n")
    return "".join(out).encode("utf-8")


def _plate(fields: Sequence["Field"], plate: str, plate_format: tuple[int, int] | None) -> list[str]:
    wells: dict[str, list[int]] = {}
    for index, f in enumerate(fields):
        wells.setdefault(f.well, []).append(index)
    positions = {w: (row_index(split_well(w)[0]) - 1, split_well(w)[1] - 1) for w in wells}
    rows, cols = plate_format or (0, 0)
    rows = max([rows] + [r + 1 for r, _ in positions.values()]) or None   # no wells: not said
    cols = max([cols] + [c + 1 for _, c in positions.values()]) or None
    out = [f'  <Plate{_a(ID="Plate:0", Name=plate, RowNamingConvention="letter", ColumnNamingConvention="number", Rows=rows, Columns=cols)}>\n']
    for w, (well, images) in enumerate(wells.items()):
        r, c = positions[well]
        out.append(f'    <Well{_a(ID=f"Well:{w}", Row=r, Column=c)}>\n')
        for i in images:
            out.append(f'      <WellSample{_a(ID=f"WellSample:{i}", Index=i)}>'
                       f'<ImageRef{_a(ID=f"Image:{i}")}/></WellSample>\n')
        out.append("    </Well>\n")
    out.append("  </Plate>\n")
    return out


def _image(index: int, f: "Field", image_set: "ImageSet", physics: "Physics", plate: str,
           image_dir: str) -> list[str]:
    first = next(f.planes[k] for k in f.coordinates() if k in f.planes)
    source = image_set.plane(first)
    dtype = np.dtype(source.dtype).newbyteorder("=")
    kind = PIXEL_TYPES.get(dtype.name)
    if kind is None or len(source.shape) != 2:
        raise ValueError(f"{first}: {dtype.name} planes of shape {source.shape} have no OME "
                         "pixel type")
    height, width = source.shape
    z_step = _positive(physics.z_spacing) if len(f.zs) > 1 else None
    t_step = _positive(physics.time_interval) if len(f.ts) > 1 else None
    xy = _positive(physics.pixel_size)
    pixels = (f' ID="Pixels:{index}" DimensionOrder="XYCZT" Type="{kind}" SizeX="{width}" '
              f'SizeY="{height}" SizeC="{len(f.channels)}" SizeZ="{len(f.zs)}" '
              f'SizeT="{len(f.ts)}"' + _physical(xy, z_step, t_step) +
              f' SignificantBits="{dtype.itemsize * 8}"')
    out = [f'  <Image ID="Image:{index}" Name="{f.well}_s{f.site}">\n',   # parsed names: safe
           f"    <Pixels{pixels}>\n"]
    out += [f'      <Channel ID="Channel:{index}:{ci}"{_channel(c, physics)}/>\n'
            for ci, c in enumerate(f.channels)]
    folder = escape(f"{image_dir}/", {'"': "&quot;"})   # flat names need no escaping
    cs, zs, ts = ({v: i for i, v in enumerate(axis)} for axis in (f.channels, f.zs, f.ts))
    for (c, z, t), name in sorted(f.planes.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        out.append(f'      <TiffData FirstC="{cs[c]}" FirstZ="{zs[z]}" FirstT="{ts[t]}" IFD="0" '
                   f'PlaneCount="1"><UUID FileName="{folder}{name}">{file_uuid(plate, name)}'
                   '</UUID></TiffData>\n')
    out.append("    </Pixels>\n  </Image>\n")
    return out


@functools.lru_cache(maxsize=64)
def _physical(xy: str | None, z: str | None, t: str | None) -> str:
    """The physical sizes that are known (made once per plate: the same for every image)."""
    return _a(PhysicalSizeX=xy, PhysicalSizeXUnit="µm" if xy else None,
              PhysicalSizeY=xy, PhysicalSizeYUnit="µm" if xy else None,
              PhysicalSizeZ=z, PhysicalSizeZUnit="µm" if z else None,
              TimeIncrement=t, TimeIncrementUnit="s" if t else None)


@functools.lru_cache(maxsize=1024)
def _channel_attrs(name: str | None, color: str | None, excitation: float | None,
                   emission: float | None) -> str:
    return _a(Name=name, SamplesPerPixel=1, Color=_rgba(color) if color else None,
              ExcitationWavelength=_positive(excitation),
              ExcitationWavelengthUnit="nm" if _positive(excitation) else None,
              EmissionWavelength=_positive(emission),
              EmissionWavelengthUnit="nm" if _positive(emission) else None)


def _channel(c: int, physics: "Physics") -> str:
    """A channel's attributes but its ID (the same for every image: made once)."""
    info = physics.channel_info.get(c) or {}
    return _channel_attrs(physics.channel_names.get(c) or None, info.get("color"),
                          info.get("excitation_wavelength"), info.get("emission_wavelength"))


def _rgba(hex_rgb: str) -> int:
    """OME's Color: RGBA as a signed 32-bit integer."""
    value = (int(hex_rgb, 16) << 8) | 0xFF
    return value - (1 << 32) if value >= 1 << 31 else value
