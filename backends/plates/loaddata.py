"""CellProfiler's LoadData CSV of an image set, as pe2loaddata and the Cell Painting Gallery
write it and as CellProfiler's own LoadData module reads it.

One row per complete image set (well, site, z, t): every channel's plane present. Rows in
plate order: well row-major (A01, A02, ..., B01, ..., AA01), site, t, z. Columns:

- ``FileName_<X>``, ``PathName_<X>`` per channel (channel order), where ``<X>`` is
  ``Orig`` + the channel's name with only ASCII letters and digits kept (``Alexa 488`` ->
  ``OrigAlexa488``), ``OrigW<n>`` for a channel without a name. Channels whose names clean
  to the same ``<X>`` all get their channel number appended (three ``FITC_05`` channels 1, 2, 4
  -> ``OrigFITC05W1``, ``OrigFITC05W2``, ``OrigFITC05W4``), so no name depends on which
  channel comes first. A pe2loaddata ``config.yml`` (:class:`LoadDataConfig`) names the
  columns instead and picks the channels;
- ``Metadata_Plate`` (the instrument's plate barcode, else the plate folder's name),
  ``Metadata_Well``, ``Metadata_Site``, ``Metadata_Row``, ``Metadata_Col`` (numbers from 1,
  as Harmony and pe2loaddata write them), ``Metadata_PlaneID`` (z), ``Metadata_TimepointID`` (t);
- per-channel facts the plate records, in pe2loaddata's naming: ``Metadata_ChannelID_<X>``,
  ``Metadata_ChannelName_<X>``, ``Metadata_MainEmissionWavelength_<X>``,
  ``Metadata_MainExcitationWavelength_<X>`` (a column only where some channel has the fact;
  an empty cell where a channel lacks it);
- with ``illum_dir``, pe2loaddata's illumination columns last: ``FileName_Illum<Y>``
  (``<plate>_Illum<Y>.npy``) and ``PathName_Illum<Y>``, ``<Y>`` being ``<X>`` without ``Orig``.

UTF-8 without a byte-order mark, ``\\n`` line ends, quoted only where a value needs it.
Built from names and metadata only: no plane is read.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from ..errors import MetadataError
from ..naming import row_index, split_well

if TYPE_CHECKING:
    from .image_set import Field, ImageSet, Physics

#: A column suffix CellProfiler takes as an image name.
_IMAGE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: (pe2loaddata's metadata key, key in the image set's channel_info)
CHANNEL_FACTS = (("MainEmissionWavelength", "emission_wavelength"),
                 ("MainExcitationWavelength", "excitation_wavelength"))
STORE_SUFFIXES = (".ome.zarr", ".zarr")


@dataclass(frozen=True)
class LoadDataConfig:
    """pe2loaddata's ``config.yml``: ``channels: {HOECHST 33342: OrigDNA, ...}`` maps the
    instrument's channel names to column suffixes; only those channels get columns. Names
    match with spaces ignored, as pe2loaddata matches them; ``w<n>`` also names channel n.
    Its ``metadata:`` section (Harmony per-image keys) is not used."""

    channels: dict[str, str]
    path: str = ""

    @classmethod
    def read(cls, path: str | Path) -> "LoadDataConfig":
        import yaml
        try:
            doc = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise MetadataError("cannot read the LoadData config", path=path, cause=e) from e
        if isinstance(doc, list) and doc:        # pe2loaddata accepts a one-item list too
            doc = doc[0]
        channels = doc.get("channels") if isinstance(doc, dict) else None
        if not isinstance(channels, dict) or not channels:
            raise MetadataError("not a pe2loaddata config: no 'channels:' mapping of channel "
                                "names to column names (e.g. 'HOECHST 33342: OrigDNA')", path=path)
        bad = [v for v in channels.values() if not isinstance(v, str) or not _IMAGE_NAME.match(v)]
        if bad:
            raise MetadataError(f"column names must be letters, digits and '_', starting with a "
                                f"letter: {bad}", path=path)
        if len(set(channels.values())) != len(channels):
            raise MetadataError(f"two channels get the same column name: {list(channels.values())}",
                                path=path)
        return cls({str(k): v for k, v in channels.items()}, str(path))


def clean(name: str) -> str:
    """Only the ASCII letters and digits of ``name``."""
    return "".join(ch for ch in name if ch.isascii() and ch.isalnum())


def channel_columns(channels: Sequence[int], physics: "Physics",
                    config: LoadDataConfig | None = None) -> dict[int, str]:
    """Channel number -> column suffix (``OrigDNA``), in channel order; with ``config`` only the
    channels it names."""
    if config is not None:
        return _configured_columns(channels, physics, config)
    base = {c: "Orig" + (clean(physics.channel_names.get(c) or "") or f"W{c}") for c in channels}
    out = dict(base)
    while len(set(out.values())) < len(out):          # equal names: each gets its number
        seen: dict[str, int] = {}
        for x in out.values():
            seen[x] = seen.get(x, 0) + 1
        out = {c: f"{x}W{c}" if seen[x] > 1 else x for c, x in out.items()}
    return out


def _configured_columns(channels: Sequence[int], physics: "Physics",
                        config: LoadDataConfig) -> dict[int, str]:
    def key(text: str) -> str:
        return text.replace(" ", "")
    wanted = {key(k): v for k, v in config.channels.items()}
    out, found = {}, set()
    for c in channels:
        for k in (key(physics.channel_names.get(c) or ""), f"w{c}"):
            if k in wanted:
                out[c] = wanted[k]
                found.add(k)
                break
    missing = [k for k in config.channels if key(k) not in found]
    if missing:
        have = ", ".join(f"w{c}={physics.channel_names.get(c) or '(no name)'}" for c in channels)
        raise MetadataError(f"the plate has no channel named {missing} (it has {have})",
                            path=config.path or None)
    return out


def well_order(well: str) -> tuple[int, int]:
    """Row-major: A01, A02, ..., B01, ..., Z48, AA01."""
    row, col = split_well(well)
    return row_index(row), col


def plate_label(image_set: "ImageSet") -> str:
    """Metadata_Plate: the instrument's plate barcode, else the plate folder's (or store's) name."""
    if image_set.plate_id:
        return image_set.plate_id
    name = image_set.plate.name
    for suffix in STORE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def image_sets(fields: Sequence["Field"], columns: dict[int, str]
               ) -> Iterator[tuple["Field", int, int, list[str] | None]]:
    """(field, z, t, the columns' plane names or None where one is missing) for every (z, t)
    of every field that has a plane there, in plate order (well row-major, site, t, z)."""
    for f in sorted(fields, key=lambda f: (well_order(f.well), f.site)):
        for t in f.ts:
            for z in f.zs:
                names = [f.planes.get((c, z, t)) for c in columns]
                if any(names):
                    yield f, z, t, names if all(names) else None
                elif any((c, z, t) in f.planes for c in f.channels):
                    yield f, z, t, None       # only channels the columns leave out


def count_image_sets(fields: Sequence["Field"], physics: "Physics",
                     config: LoadDataConfig | None = None) -> tuple[int, int]:
    """(complete image sets, incomplete ones left out of the CSV)."""
    channels = sorted({c for f in fields for c in f.channels})
    complete = incomplete = 0
    for _f, _z, _t, names in image_sets(fields, channel_columns(channels, physics, config)):
        if names is None:
            incomplete += 1
        else:
            complete += 1
    return complete, incomplete


@dataclass
class LoadDataTable:
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    incomplete: int = 0
    illum: int = 0                  # how many columns at the end are the illumination ones

    def csv(self, *, illum: bool = True) -> bytes:
        """The CSV; ``illum=False`` leaves the illumination columns out."""
        end = len(self.header) - (0 if illum else self.illum)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")     # QUOTE_MINIMAL: only where needed
        writer.writerow(self.header[:end])
        writer.writerows(row[:end] for row in self.rows)
        return out.getvalue().encode("utf-8")


def loaddata_table(fields: Sequence["Field"], physics: "Physics", *, plate: str, images_dir: str,
                   config: LoadDataConfig | None = None,
                   illum_dir: str | None = None) -> LoadDataTable:
    """The LoadData table of ``fields``, whose files are in ``images_dir`` (an absolute path)."""
    channels = sorted({c for f in fields for c in f.channels})
    columns = channel_columns(channels, physics, config)
    facts = _channel_facts(columns, physics)
    header = [f"{kind}_{x}" for x in columns.values() for kind in ("FileName", "PathName")]
    header += ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_Row",
               "Metadata_Col", "Metadata_PlaneID", "Metadata_TimepointID", *facts]
    illum: list[str] = []
    if illum_dir is not None:
        for x in columns.values():
            y = x[4:] if x.startswith("Orig") and len(x) > 4 else x
            header += [f"FileName_Illum{y}", f"PathName_Illum{y}"]
            illum += [f"{plate}_Illum{y}.npy", illum_dir]
    table = LoadDataTable(header, illum=len(illum))
    fact_values = list(facts.values())
    for f, z, t, names in image_sets(fields, columns):
        if names is None:
            table.incomplete += 1
            continue
        row_letters, col = split_well(f.well)
        row = [v for name in names for v in (name, images_dir)]
        row += [plate, f.well, str(f.site), str(row_index(row_letters)), str(col), str(z), str(t)]
        table.rows.append(row + fact_values + illum)
    return table


def loaddata_csv(fields: Sequence["Field"], physics: "Physics", **kw) -> bytes:
    return loaddata_table(fields, physics, **kw).csv()


def _channel_facts(columns: dict[int, str], physics: "Physics") -> dict[str, str]:
    """Column -> value of the per-channel facts the plate records (pe2loaddata's names)."""
    out: dict[str, str] = {}
    out.update({f"Metadata_ChannelID_{x}": str(c) for c, x in columns.items()})
    if any(physics.channel_names.get(c) for c in columns):
        out.update({f"Metadata_ChannelName_{x}": physics.channel_names.get(c) or ""
                    for c, x in columns.items()})
    for key, info_key in CHANNEL_FACTS:
        values = {c: (physics.channel_info.get(c) or {}).get(info_key) for c in columns}
        if any(v is not None for v in values.values()):
            out.update({f"Metadata_{key}_{x}": _number(values[c]) for c, x in columns.items()})
    return out


def _number(value) -> str:
    return "" if value is None else f"{float(value):g}"
