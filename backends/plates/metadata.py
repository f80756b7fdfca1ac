"""openhcs_metadata.json: the one file that describes a plate.

Layout (all paths plate-relative, POSIX separators)::

    {"format_version": 1,
     "subdirectories": {
        "<key>": {                       # where the flat names appear (see below)
          "microscope_handler_name": "imagexpress",
          "source_filename_parser_name": "ImageXpressFilenameParser",
          "image_files": ["A01_s001_w1_z001_t001.tif", ...],
          "workspace_mapping": {"A01_s001_w1_z001_t001.tif": "TimePoint_1/ZStep_1/A01_s1_w1.tif"},
          "available_backends": {"virtual_workspace": true},
          "main": true,
          "grid_dimensions": [cols, rows] | null, "pixel_size": um | null,
          "channels": {"1": "DAPI" | null, ...},
          "wells": [...], "sites": [...], "z_indexes": [...], "timepoints": [...],
          "z_spacing": um | null, "time_interval": s | null,   # from the instrument, never guessed
          "channel_names": {"1": "DAPI" | null, ...},
          "channel_info": {"1": {"name", "emission_wavelength", "excitation_wavelength",
                                 "color", "window": [start, end]}, ...},
          "physics_unknown": {"z_spacing": "why it is not known", ...}}}}

Subdirectory keys: ``workspace`` (a vendor plate seen through its mapping),
``projection`` (vendor maximum projections kept apart from z-planes), ``zarr``
(the OME-Zarr store ``PLATE/zarr``), ``.`` (flat files in the plate root) and
``outputs/<name>`` for results written back. Mapping keys are the flat names
inside their subdirectory.

Writes are atomic (temporary file + fsync + rename) and serialized with an
flock on the directory that holds the file, so the plate gains no lock file.
If the plate is hands-off (read-only, owned by another account, or marked so: see
:func:`hands_off`), the file goes to a per-user cache:
``$XDG_CACHE_HOME/vfsmount/metadata/<name>-<hash of the plate's real path>/``, beside the
plate's settings (``settings.json``: ``hands_off``, ``outputs_dir``) and staging folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from ..storage.atomic import atomic_write_bytes
from ..errors import MetadataError, StorageError
from ..layout import METADATA_FILE, cache_root

METADATA_FILENAME = METADATA_FILE          # spelled once, in layout.py
FORMAT_VERSION = 1
BACKEND_PREFERENCE = ("zarr", "virtual_workspace", "disk")

_LIST_FIELDS = ("image_files", "wells", "sites", "z_indexes", "timepoints")


def cache_metadata_path(plate: Path) -> Path:
    real = os.path.realpath(plate)
    digest = hashlib.sha256(real.encode()).hexdigest()[:16]
    return cache_root() / "metadata" / f"{Path(real).name}-{digest}" / METADATA_FILENAME


def plate_is_writable(plate: Path) -> bool:
    """False for read-only storage and for directories without write bits.

    The mode bits are checked as well as access(): root may write anywhere, but a
    plate shipped read-only (r-x) must stay untouched even when root mounts it.
    """
    try:
        if not os.stat(plate).st_mode & 0o222 or not os.access(plate, os.W_OK):
            return False
    except OSError:
        return False
    try:
        return not (os.statvfs(plate).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# -- hands-off plates: nothing is ever written into them ------------------------------------------
#
# A plate is hands-off when it is read-only, when another account owns it (an instrument's
# acquisition account, a facility share: vfsmount cannot tell a share the lab must not change
# from a colleague's folder, and metadata in the cache costs nothing), or when the user said so
# (`--hands-off`, kept in the cache). Its metadata lives in the user's cache, and its outputs in
# a folder the user names (`--outputs-dir`), never in the plate.

SETTINGS_FILENAME = "settings.json"


def _settings_path(plate: str | os.PathLike) -> Path:
    return cache_metadata_path(Path(plate)).parent / SETTINGS_FILENAME


def plate_settings(plate: str | os.PathLike) -> dict:
    """What the user chose for this plate: ``hands_off`` (bool), ``outputs_dir`` (a path)."""
    try:
        doc = json.loads(_settings_path(plate).read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise MetadataError("cannot read this plate's settings", path=_settings_path(plate),
                            cause=e) from e
    return doc if isinstance(doc, dict) else {}


def save_plate_settings(plate: str | os.PathLike, **changes) -> None:
    path = _settings_path(plate)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        doc = {**plate_settings(plate), **changes}
        atomic_write_bytes(path, json.dumps(doc, indent=1).encode())


def hands_off(plate: str | os.PathLike) -> str | None:
    """Why nothing may be written into the plate folder, or None if vfsmount may write its
    metadata (and, with --writable, outputs/) there."""
    plate = Path(plate)
    if not plate_is_writable(plate):
        return "read-only"
    try:
        owner = os.stat(plate).st_uid
    except OSError:
        return "read-only"
    if owner != os.geteuid():
        return f"owned by {_user_name(owner)}, not by you"
    if plate_settings(plate).get("hands_off"):
        return "marked hands-off (--hands-off)"
    return None


def _user_name(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def outputs_dir(plate: str | os.PathLike) -> tuple[Path, bool]:
    """Where results written back go, and whether vfsmount may write there: the folder the
    user named for the plate (``--outputs-dir``), else ``PLATE/outputs`` -- which a hands-off
    plate only shows, read-only, as it is."""
    from ..layout import OUTPUTS_DIR
    named = plate_settings(plate).get("outputs_dir")
    if named:
        return Path(named), True
    return Path(plate).absolute() / OUTPUTS_DIR, hands_off(plate) is None


def staging_dir(plate: str | os.PathLike, outputs: Path) -> Path:
    """Where files written through a mount are staged until committed: on the outputs'
    file system (a commit is one rename). ``PLATE/.vfsmount-staging`` for outputs in the plate;
    for outputs elsewhere the user's cache, or, if that is another file system, a hidden
    folder beside the outputs folder -- never in the plate."""
    from ..layout import STAGING_DIR
    plate = Path(plate).absolute()
    outputs = Path(os.path.realpath(outputs))
    if outputs == Path(os.path.realpath(plate)) / "outputs":
        return plate / STAGING_DIR
    cache = cache_metadata_path(plate).parent / "staging"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        outputs.mkdir(parents=True, exist_ok=True)
        if os.stat(cache).st_dev == os.stat(outputs).st_dev:
            return cache
    except OSError:
        pass
    return outputs.parent / f".{outputs.name}{STAGING_DIR}"


def metadata_path(plate: str | os.PathLike, *, for_write: bool = False) -> Path:
    """Where the plate's metadata is read from (or written to)."""
    plate = Path(plate)
    in_plate, in_cache = plate / METADATA_FILENAME, cache_metadata_path(plate)
    if for_write:
        return in_cache if hands_off(plate) else in_plate
    candidates = [p for p in (in_plate, in_cache) if p.is_file()]
    if not candidates:
        return in_plate
    # A plate that turned read-only keeps its old file; the cache copy is then newer.
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def validate(doc: Any, source: str | Path = METADATA_FILENAME) -> dict:
    """Check types and invariants; raise MetadataError naming the file and the field."""
    def bad(msg: str) -> MetadataError:
        return MetadataError(f"malformed plate metadata: {msg}", path=source)

    if not isinstance(doc, dict):
        raise bad(f"top level must be an object, got {type(doc).__name__}")
    subdirs = doc.get("subdirectories")
    if not isinstance(subdirs, dict) or not subdirs:
        raise bad("'subdirectories' must be a non-empty object")
    mains = []
    for key, entry in subdirs.items():
        where = f"subdirectories[{key!r}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} must be an object")
        if not isinstance(entry.get("main", False), bool):
            raise bad(f"{where}.main must be true or false")
        if entry.get("main"):
            mains.append(key)
        for field in _LIST_FIELDS:
            if field in entry and not isinstance(entry[field], list):
                raise bad(f"{where}.{field} must be a list")
        mapping = entry.get("workspace_mapping", {})
        if not isinstance(mapping, dict) or not _all_str(mapping):
            raise bad(f"{where}.workspace_mapping must map names (strings) to paths (strings)")
        backends = entry.get("available_backends", {})
        if not isinstance(backends, dict) or not all(isinstance(v, bool) for v in backends.values()):
            raise bad(f"{where}.available_backends must map backend names to true/false")
        for number in ("pixel_size", "z_spacing", "time_interval"):
            value = entry.get(number)
            if value is not None and not isinstance(value, (int, float)):
                raise bad(f"{where}.{number} must be a number or null")
        grid = entry.get("grid_dimensions")
        if grid is not None and not (isinstance(grid, list) and all(isinstance(g, int) for g in grid)):
            raise bad(f"{where}.grid_dimensions must be a list of integers or null")
        for mapping_field in ("channels", "channel_names", "channel_info", "physics_unknown"):
            if not isinstance(entry.get(mapping_field, {}), dict):
                raise bad(f"{where}.{mapping_field} must be an object")
    if len(mains) > 1:
        raise bad(f"more than one subdirectory is marked main: {mains}")
    return doc


def _all_str(mapping: dict) -> bool:
    """Keys and values all strings: the types gathered in C first (a million entries in tens
    of milliseconds), isinstance one by one only if some other type turns up."""
    if {*map(type, mapping), *map(type, mapping.values())} <= {str}:
        return True
    return all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())


def read_metadata(plate: str | os.PathLike) -> dict | None:
    """The plate's metadata document, or None if it has none yet."""
    path = metadata_path(plate)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MetadataError("cannot read plate metadata", path=path, cause=e) from e
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise MetadataError("plate metadata is not valid JSON", path=path, cause=e) from e
    return validate(doc, path)


def update_metadata(plate: str | os.PathLike, subdirectories: dict[str, dict], *,
                    main: str | None = None, remove: tuple[str, ...] = ()) -> Path:
    """Merge ``subdirectories`` into the plate's metadata, atomically and under a lock.

    ``main`` names the subdirectory to mark main (all others become non-main);
    without it the previous main is kept, or the first given one is chosen.
    Returns the path written.
    """
    plate = Path(plate)
    path = metadata_path(plate, for_write=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent):
        doc = read_metadata(plate) or {}
        subdirs = dict(doc.get("subdirectories", {}))
        for key in remove:
            subdirs.pop(key, None)
        subdirs.update(subdirectories)
        if main is None:
            current = [k for k, v in subdirs.items() if v.get("main")]
            main = current[0] if current else next(iter(subdirectories), None)
        for key, entry in subdirs.items():
            subdirs[key] = {**entry, "main": key == main}
        doc = {"format_version": FORMAT_VERSION, **{k: v for k, v in doc.items()
                                                     if k not in ("subdirectories", "format_version")},
               "subdirectories": subdirs}
        validate(doc, path)
        try:
            atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
        except OSError as e:
            raise StorageError("cannot write plate metadata; the previous file is intact",
                               path=path, cause=e) from e
    return path


def main_subdirectory(doc: dict) -> tuple[str, dict]:
    subdirs = doc["subdirectories"]
    for key, entry in subdirs.items():
        if entry.get("main"):
            return key, entry
    key = next(iter(subdirs))
    return key, subdirs[key]


def primary_backend(entry: dict) -> str:
    """zarr > virtual_workspace > disk, among the backends the subdirectory has."""
    available = {k for k, v in entry.get("available_backends", {}).items() if v}
    for name in BACKEND_PREFERENCE:
        if name in available:
            return name
    raise MetadataError(f"subdirectory has no usable backend (available: {sorted(available)})")


def get_primary_backend(plate: str | os.PathLike) -> str:
    doc = read_metadata(plate)
    if doc is None:
        raise MetadataError("plate has no metadata yet; run `vfsmount info PLATE` first",
                            path=metadata_path(plate))
    return primary_backend(main_subdirectory(doc)[1])


def image_set_entry(names, backend: str, **extra) -> dict:
    """A subdirectory entry for flat normalized image names (outputs written back, results)."""
    from natsort import natsorted

    from ..naming import parse_virtual_name
    coords = [parse_virtual_name(n) for n in names]
    return {
        "microscope_handler_name": "openhcs",
        "source_filename_parser_name": "OpenHCSFilenameParser",
        "image_files": natsorted(names),
        "available_backends": {backend: True},
        "main": False,
        "grid_dimensions": None,
        "pixel_size": None,
        "channels": {str(c): None for c in sorted({p.channel for p in coords})},
        "wells": natsorted({p.well for p in coords}),
        "sites": sorted({p.site for p in coords}),
        "z_indexes": sorted({p.z for p in coords}),
        "timepoints": sorted({p.t for p in coords}),
        **extra,
    }


def record_output_folder(plate: str | os.PathLike, folder: str, names, backend: str,
                         **extra) -> dict:
    """Record one output folder (``outputs/<folder>``) in the plate's metadata.

    The one place that does it, and the one rule: used by the mount's outputs area and by
    pipelines alike. Every output folder that holds a file is recorded; its images are the
    files named like plate images (``A01_s001_w1_z001_t001.tif``: wells, sites, channels, z
    and t are theirs, and ``Plate.backend("outputs/<folder>")`` reads them); every other file
    (``A01_s001_w4_smooth.tif``, tables, ROI zips) is counted in ``other_files``. ``names``:
    every file of the folder (a zarr folder: the store's planes, its other files in
    ``extra["files"]``). Returns the entry written (nothing for a folder without files).
    """
    from ..layout import OUTPUTS_DIR, output_key
    from ..naming import try_parse_virtual_name
    names = list(names)
    if not names:
        return {}
    images = [n for n in names if try_parse_virtual_name(n)]
    if backend == "disk" and "path" not in extra:   # a hands-off plate's folder, outside it
        root = outputs_dir(plate)[0]
        if root != Path(plate).absolute() / OUTPUTS_DIR:
            extra["path"] = str(root / folder)
    # a zarr folder's images are the store's planes; its other files come as ``files``
    others = len(extra["files"]) if "files" in extra else len(names) - len(images)
    entry = image_set_entry(images, backend, other_files=others, **extra)
    update_metadata(plate, {output_key(folder): entry})
    return entry
