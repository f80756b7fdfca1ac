"""The ``vfsmount`` command line: info, convert, mount, umount, list, run, examples, napari,
loaddata, companion, demo.

Each subcommand is a handler, ``_cmd_<name>``, and one row of COMMANDS: its help and the table
of its arguments. An option that only makes sense with another says so in ``requires`` (or
``conflicts``); its default is applied after that check, so a default never counts as given.

Every user mistake ends as one line, ``vfsmount CMD: error: ...`` (exit 1; 2 for a malformed
command line); a traceback is printed only with ``--log-level debug``.
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .config import MountConfig

log = logging.getLogger("vfsmount.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")
INFO_SCHEMA = 1   # `info --json`: bumped when a key changes meaning or goes away
# The extras in pyproject.toml, by the module each brings: a missing one is named with its
# install line.
EXTRAS = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow", "cupy": "cupy",
          "pyclesperanto_prototype": "cle", "pyopencl": "cle", "s3fs": "s3",
          "distributed": "dask", "napari": "napari", "zmq": "napari"}


class UserError(Exception):
    """A mistake the user can fix, told as one line."""


# -- info --------------------------------------------------------------------------------------

def _cmd_info(args) -> int:
    if _is_file_of_a_mount(args.plate):
        return _file_info(args)
    if Path(args.plate).is_file():
        from backends.plates.handlers import refuse_unsupported
        refuse_unsupported(Path(args.plate))        # an .nd2, .czi, ... file: by its name
        raise UserError(f"{args.plate} is a file not inside a vfsmount mount: `info FILE` is "
                        "for files of a mount; for a plate, give its folder")
    from backends.plates.plate import Plate
    _apply_plate_settings(args, args.plate)
    if not args.json and _is_store(args.plate):
        return _stream_store_info(Plate.open(args.plate, lazy=True))
    return _report(args, info_report(Plate.open(args.plate, rescan=not args.no_rescan)),
                   _print_info)


def _is_store(location: str) -> bool:
    """An OME-Zarr store given directly (local or object storage): read well by well."""
    from backends.plates.handlers.ome_zarr import is_zarr_store
    return _is_remote(location) or is_zarr_store(location)


def _stream_store_info(plate) -> int:
    """`info STORE` as text, printed as it reads: the plate, then one line per well as each
    well's metadata is read (in natural order, a few wells at a time), then the totals. A store
    of any size starts printing at once and keeps no name in memory (``--json`` prints one
    document, when everything is read)."""
    report = {"plate": plate.location, "format": plate.handler_name,
              **where_writes_go(plate.location), "main": plate.main,
              "primary_backend": plate.primary_backend()}
    _print_header(report)
    for key, e in plate.subdirectories.items():
        images = plate.image_set(key)
        if images.streams_wells:
            s = _streamed_subdirectory(plate, key, e)
        else:
            s = _subdirectory_report(plate, key, e)
        _print_subdirectory(key, s)
    return 0


STREAM_BATCH = 16     # wells read at once by a streamed `info` (one concurrent pass each)


def _streamed_subdirectory(plate, key: str, e: dict) -> dict:
    """What `_subdirectory_report` gives, from the wells read one batch at a time (a line
    printed per well): counts, sites, channels, z, t and complete image sets over every well."""
    from collections import Counter
    images = plate.image_set(key)
    wells = images.well_order()
    star = " (main)" if e.get("main") else ""
    print(f"\n[{key}]{star}  reading {len(wells)} wells, a line each as read:", flush=True)
    total, sites, channels, zs, ts, combos = 0, set(), set(), set(), set(), Counter()
    listed, plane = [], None
    for start in range(0, len(wells), STREAM_BATCH):
        for wp in images.read_wells(wells[start:start + STREAM_BATCH]):
            by_set: dict[tuple, set] = {}
            for site, c, z, t in wp.coordinates():
                by_set.setdefault((site, z, t), set()).add(c)
            well_sites = {k[0] for k in by_set}
            total += wp.count
            if wp.count:
                listed.append(wp.well)
            sites |= well_sites
            for (_site, z, t), cs in by_set.items():
                channels |= cs
                zs.add(z)
                ts.add(t)
                combos[frozenset(cs)] += 1
            if plane is None and wp.count:
                _rows, shape, dtype, _px, _dz = wp.formats()[0]
                plane = (int(shape[-1]), int(shape[-2]), str(dtype),
                         int(shape[-1]) * int(shape[-2]) * dtype.itemsize)
            print(f"  {wp.well}: {len(well_sites)} sites, {wp.count} images" if wp.count else
                  f"  {wp.well}: no images (see the problems below)", flush=True)
    every = frozenset(channels)
    complete = sum(n for cs, n in combos.items() if cs == every)
    names = {str(k): v for k, v in (e.get("channels") or {}).items()}
    return {
        **_subdirectory_report_keys(e), "images": total, "wells": listed,
        "sites": sorted(sites), "channels": {str(c): names.get(str(c)) for c in sorted(channels)},
        "z_indexes": sorted(zs), "timepoints": sorted(ts),
        "problems": list(images.backend.index.problems),
        **dict(zip(("width", "height", "dtype", "bytes_per_plane"), plane or (None,) * 4)),
        "image_sets": {"complete": complete, "incomplete": sum(combos.values()) - complete},
    }


def _subdirectory_report_keys(e: dict) -> dict:
    """The keys of a subdirectory's report that its metadata entry gives as they are."""
    return {"pixel_size_um": e.get("pixel_size"), "grid_dimensions": e.get("grid_dimensions"),
            "z_spacing_um": e.get("z_spacing"), "time_interval_s": e.get("time_interval"),
            "unknown": e.get("physics_unknown", {}), "unit": e.get("unit"),
            "other_files": e.get("other_files"),
            "available_backends": [k for k, v in e.get("available_backends", {}).items() if v],
            "main": e.get("main", False)}


def _report(args, data, print_text: Callable[[Any], None]) -> int:
    """``data`` as JSON with ``--json``, else as text."""
    if args.json:
        _print_json(data)
    else:
        print_text(data)
    return 0


def info_report(plate) -> dict:
    """What `info` reports; the same keys whatever the flags (null where not known)."""
    scan = plate.scan   # None with --no-rescan: what the last scan left unmapped is not known
    return {
        "schema": INFO_SCHEMA,
        "plate": plate.location,
        "format": plate.handler_name,
        **where_writes_go(plate.location),     # metadata_file, hands_off, outputs_dir
        "main": plate.main,
        "primary_backend": plate.primary_backend(),
        "subdirectories": {key: _subdirectory_report(plate, key, e)
                           for key, e in plate.subdirectories.items()},
        "unparsed_tiffs": None if scan is None else scan.unparsed,
        "ignored_thumbnails": None if scan is None else scan.ignored,
    }


def where_writes_go(location: str) -> dict:
    """For `info` and `list`: the plate's metadata file, why nothing is written into the plate
    folder (``hands_off``, null if vfsmount may), and where results written back go
    (``outputs_dir``; null while a hands-off plate has none named)."""
    from backends.plates.handlers.ome_zarr import is_zarr_store
    from backends.plates.metadata import METADATA_FILENAME, hands_off, metadata_path, outputs_dir
    from backends.plates.plate import store_plate_dir
    from compute.output_sink import remote_outputs_root
    remote = _is_remote(location)
    if remote or is_zarr_store(location):   # never written into; results beside it
        where = location if remote else os.path.realpath(location)
        return {"metadata_file": str(store_plate_dir(where, remote) / METADATA_FILENAME),
                "hands_off": "a store given directly", "outputs_dir": remote_outputs_root(where)}
    root, may_write = outputs_dir(location)
    return {"metadata_file": str(metadata_path(location)), "hands_off": hands_off(Path(location)),
            "outputs_dir": str(root) if may_write else None}


def _subdirectory_report(plate, key: str, e: dict) -> dict:
    return {
        **_subdirectory_report_keys(e),
        "images": len(e.get("image_files", [])),
        "wells": e.get("wells", []), "sites": e.get("sites", []),
        "channels": e.get("channels", {}), "z_indexes": e.get("z_indexes", []),
        "timepoints": e.get("timepoints", []),
        "problems": e.get("problems", []),
        **_plane_format(plate, key, e),
        "image_sets": _image_set_counts(plate, key),
    }


def _plane_format(plate, key: str, e: dict) -> dict:
    """Width, height, dtype and bytes of one plane, from the subdirectory's first image."""
    names = e.get("image_files") or []
    try:
        plane = plate.backend(key).load(names[0]) if names else None
    except Exception as exc:   # a damaged first image: report the rest, say why this is missing
        log.warning("[%s] cannot read %s for the plane size: %s", key, names[0], exc)
        plane = None
    if plane is None:
        return {"width": None, "height": None, "dtype": None, "bytes_per_plane": None}
    height, width = plane.shape[:2] if plane.ndim == 3 and plane.shape[-1] in (3, 4) \
        else plane.shape[-2:]
    return {"width": int(width), "height": int(height), "dtype": str(plane.dtype),
            "bytes_per_plane": int(plane.nbytes)}


def _image_set_counts(plate, key: str) -> dict:
    """Complete image sets (well, site, z, t with every channel: a row of load_data.csv) and
    the incomplete ones load_data.csv leaves out."""
    from backends.plates.loaddata import count_image_sets
    try:
        image_set = plate.image_set(key)
        complete, incomplete = count_image_sets(image_set.fields(), image_set.physics)
    except Exception as exc:     # a subdirectory that cannot be listed: report the rest
        log.warning("[%s] cannot count image sets: %s", key, exc)
        complete = incomplete = None
    return {"complete": complete, "incomplete": incomplete}


def _print_info(report: dict) -> None:
    _print_header(report)
    for key, s in report["subdirectories"].items():
        _print_subdirectory(key, s)
    if report["unparsed_tiffs"]:
        print(f"\n{len(report['unparsed_tiffs'])} TIFF names did not parse and are not mapped:")
        for rel in report["unparsed_tiffs"][:10]:
            print(f"  {rel}")
    if report["ignored_thumbnails"]:
        print(f"\n{report['ignored_thumbnails']} thumbnails ignored")


def _print_header(report: dict) -> None:
    print(f"plate:     {report['plate']}")
    print(f"format:    {report['format']}")
    print(f"metadata:  {report['metadata_file']}")
    print(f"outputs:   {report['outputs_dir'] or 'none yet: name a folder with --outputs-dir DIR'}")
    if report["hands_off"]:
        print(f"hands-off: {report['hands_off']}: nothing is written into the plate folder")
    print(f"main:      {report['main']} (read through {report['primary_backend']})", flush=True)


def _print_subdirectory(key: str, s: dict) -> None:
    star = " (main)" if s["main"] else ""
    print(f"\n[{key}]{star}  {s['images']} images via {', '.join(s['available_backends'])}")
    wells = s["wells"]
    more = " ..." if len(wells) > 24 else ""
    print(f"  wells:     {len(wells)}: {' '.join(wells[:24])}{more}")
    print(f"  sites:     {s['sites']}")
    chans = ", ".join(f"w{c}" + (f"={n}" if n else "") for c, n in s["channels"].items())
    print(f"  channels:  {chans}")
    print(f"  z:         {s['z_indexes']}, spacing " + (
        f"{s['z_spacing_um']} um" if s["z_spacing_um"] else
        f"unknown ({s['unknown'].get('z_spacing', 'not recorded')})"))
    print(f"  t:         {s['timepoints']}")
    plane = "unknown" if s["width"] is None else \
        f"{s['width']} x {s['height']} {s['dtype']}, {s['bytes_per_plane']} bytes"
    print(f"  plane:     {plane}")
    sets = s["image_sets"]
    if sets["complete"] is not None:
        print(f"  image sets: {sets['complete']} complete" + (
            f", {sets['incomplete']} incomplete left out of load_data.csv"
            if sets["incomplete"] else ""))
    pixel = "unknown" if s["pixel_size_um"] is None else f"{s['pixel_size_um']} um"
    grid = f", grid {s['grid_dimensions']}" if s["grid_dimensions"] else ""
    print(f"  pixel:     {pixel}{grid}" + (f" (stored in {s['unit']})" if s["unit"] else ""))
    if s["other_files"]:
        n = s["other_files"]
        print(f"  other:     {n} file{'s' if n > 1 else ''} not named like a plate image")
    for problem in s["problems"]:
        print(f"  problem:   {problem}")


def _is_file_of_a_mount(path: str) -> bool:
    """`info FILE` is for a file of a vfsmount mount; any other file is taken as a plate
    (and refused by name if it is an .nd2, .czi, ... file)."""
    from .fileinfo import mount_root
    if not Path(path).is_file():     # (an s3:// URL is no file either)
        return False
    try:
        mount_root(Path(path).absolute().parent)
    except ValueError:
        return False
    return True


def _file_info(args) -> int:
    """`vfsmount info FILE`: one file of a mount (what --xattrs would serve)."""
    from .fileinfo import file_facts, print_facts
    return _report(args, file_facts(args.plate), print_facts)


# -- convert -----------------------------------------------------------------------------------

def _cmd_convert(args) -> int:
    from backends.plates.convert import convert_plate
    from backends.ngff.config import ZarrConfig
    if args.output is None:
        _refuse_hands_off(args.plate, "give --output DIR for the OME-Zarr store")
    _refuse_mounted(args.plate)
    config = ZarrConfig(chunk_strategy=args.chunk_strategy, compressor=args.compressor,
                        compression_level=args.level, ngff_version=args.ngff_version,
                        pyramid_levels=args.levels)
    out = convert_plate(args.plate, args.output, config=config, overwrite=args.overwrite,
                        progress=_progress(args))
    print(f"wrote {out} ({config.chunk_strategy.value} chunks, {config.compressor.value}, "
          f"NGFF {config.ngff_version}); it is now the plate's main subdirectory")
    return 0


# -- mount, umount, list -----------------------------------------------------------------------

def _cmd_mount(args) -> int:
    from .control import check_mountpoint, check_not_nested, start_daemon
    if _local_folder(args.plate) is None and not _is_remote(args.plate):
        from backends.plates.plate import Plate
        Plate.open(args.plate)   # says what is wrong with it (not there, an .nd2 file, ...)
    check_mountpoint(args.mountpoint, nonempty=args.nonempty)
    check_not_nested(args.plate, args.mountpoint)
    _apply_plate_settings(args, args.plate)
    if args.writable:
        _refuse_hands_off(args.plate, "mount it without --writable, or name a folder for the "
                          "results: --outputs-dir DIR", outputs=True)
    if args.pipeline:
        args.pipeline = _pipeline_path(args.pipeline)
        _load_pipeline(args.pipeline)   # its mistakes as file:line, before a daemon starts
    if args.loaddata_config:            # its mistakes before a daemon starts; the daemon's cwd
        args.loaddata_config = os.path.abspath(args.loaddata_config)
        _loaddata_config(args.plate, args.loaddata_config)
    cfg = MountConfig.from_args(args)
    if args.foreground:
        return _mount_foreground(args, cfg)
    pid, log_file = start_daemon(args.plate, args.mountpoint, log_level=_daemon_log_level(args),
                                 log_file=args.log_file, extra_args=cfg.to_argv()[2:])
    print(f"mounted {args.plate} on {args.mountpoint} (daemon pid {pid}, log {log_file})")
    return 0


def _daemon_log_level(args) -> str:
    return (args.log_level or "info").upper()


def _mount_foreground(args, cfg: MountConfig) -> int:
    from .control import MountRecord, forget_mount, plate_location, record_mount
    from .daemon import serve
    logging.getLogger().setLevel(_daemon_log_level(args))
    record_mount(MountRecord(args.mountpoint, plate_location(args.plate), os.getpid(),
                             ["--foreground"] + cfg.to_argv()[2:], None))
    try:
        return serve(cfg)
    finally:
        forget_mount(args.mountpoint)


def _cmd_umount(args) -> int:
    from .control import MountError, active_mounts, unmount_checked
    if args.all == (args.mountpoint is not None):
        raise UserError("give a MOUNTPOINT or --all (not both)")
    if not args.all:
        print(f"{args.mountpoint}: {unmount_checked(args.mountpoint, lazy=args.lazy)}")
        return 0
    mounts = active_mounts()
    if not mounts:
        print("no vfsmount mounts")
    failed = 0
    for m in mounts:
        try:
            print(f"{m.mountpoint}: {unmount_checked(m.mountpoint, lazy=args.lazy)}")
        except MountError as e:   # one busy mount must not keep the others mounted
            print(f"vfsmount umount: error: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _cmd_list(args) -> int:
    from .control import active_mounts
    rows = [{**asdict(m), "alive": m.alive, "state": m.state(), **where_writes_go(m.plate)}
            for m in active_mounts()]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no vfsmount mounts")
        return 0
    table = [("MOUNTPOINT", "PLATE", "PID", "DATA PATH", "OPTIONS", "METADATA", "OUTPUTS", "LOG")] + [
        (r["mountpoint"], r["plate"], str(r["pid"]) + ("" if r["alive"] else " (dead)"),
         (r["state"] or {}).get("data_path", "?"), " ".join(r["options"]) or "-",
         r["metadata_file"] or "-", r["outputs_dir"] or "-", r["log_file"] or "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(7)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[7])
    for r in rows:      # why each mount has the data path it has
        state = r["state"] or {}
        print(f"{r['mountpoint']}: data path {state.get('data_path', '?')}: "
              f"{state.get('reason', 'unknown (daemon from before data paths were recorded)')}")
    return 0


# -- plate views: loaddata, companion --------------------------------------------------------

def _loaddata_config(plate: str, path: str):
    """pe2loaddata's config.yml, checked against the plate's channels."""
    from backends.plates.loaddata import LoadDataConfig, count_image_sets
    from backends.plates.plate import Plate
    config = LoadDataConfig.read(path)
    image_set = Plate.open(plate).image_set()
    count_image_sets(image_set.fields(), image_set.physics, config)   # names every channel?
    return config


def _absolute_mountpoint(path: str) -> str:
    if not os.path.isabs(path):
        raise UserError(f"--mountpoint {path}: give the absolute path where the plate is "
                        "mounted (the file is read there, maybe on other machines)")
    return os.path.normpath(path)


def _write_output(data: bytes, output: str | None) -> None:
    """To ``output`` atomically, or to stdout."""
    if output is None:
        sys.stdout.buffer.write(data)
        return
    from backends.storage.atomic import atomic_write_bytes
    atomic_write_bytes(output, data)


def _cmd_loaddata(args) -> int:
    from backends.layout import ILLUM_DIR, MAIN_ALIAS, OUTPUTS_DIR
    from backends.plates.loaddata import loaddata_table, plate_label
    from backends.plates.plate import Plate
    mount = _absolute_mountpoint(args.mountpoint)
    config = _loaddata_config(args.plate, args.config) if args.config else None
    image_set = Plate.open(args.plate).image_set()
    table = loaddata_table(image_set.fields(), image_set.physics, plate=plate_label(image_set),
                           images_dir=os.path.join(mount, MAIN_ALIAS), config=config,
                           illum_dir=os.path.join(mount, OUTPUTS_DIR, ILLUM_DIR)
                           if args.illum else None)
    _write_output(table.csv(), args.output)
    if args.output:
        print(f"wrote {args.output}: {len(table.rows)} image sets" +
              (f" ({table.incomplete} incomplete left out)" if table.incomplete else ""))
    return 0


def _cmd_companion(args) -> int:
    from backends.plates.companion import companion_xml
    from backends.layout import MAIN_ALIAS
    from backends.plates.plate import Plate
    image_dir = MAIN_ALIAS
    if args.mountpoint:
        if not args.output:
            raise UserError("--mountpoint needs -o FILE: file names are relative to the companion")
        image_dir = os.path.relpath(os.path.join(_absolute_mountpoint(args.mountpoint), MAIN_ALIAS),
                                    os.path.dirname(os.path.abspath(args.output)))
    _write_output(companion_xml(Plate.open(args.plate).image_set(), image_dir=image_dir),
                  args.output)
    if args.output:
        print(f"wrote {args.output}")
    return 0


# -- run, demo ---------------------------------------------------------------------------------

def _cmd_run(args) -> int:
    from backends.storage.mountinfo import mount_type
    from compute.pipeline import VFSConfig, run_pipeline
    pipeline = _load_pipeline(_pipeline_path(args.pipeline))
    if mount_type(args.target) is None:
        _apply_plate_settings(args, args.target)
        _refuse_hands_off(args.target, "name a folder for the results: --outputs-dir DIR",
                          outputs=True)
    if args.materialize:
        pipeline.config = VFSConfig(materialization_backend=args.materialize)
    stream = _stream_address(args.stream) if args.stream else None
    result = run_pipeline(pipeline, args.target, output=args.output, workers=args.workers,
                          progress=_progress(args), dask=args.dask, stream=stream,
                          stream_steps=args.stream_steps)
    print(f"{pipeline.name}: {result.groups} stacks, {result.images_written} images and "
          f"{len(result.files_written)} files written to {result.output}")
    if result.stream:
        print(result.stream)
    return 0


def _cmd_examples(args) -> int:
    from .examples import example_files, summary
    files = example_files()
    if args.copy is None:
        for name, path in files.items():
            print(f"{name:12s}{summary(path)}")
        print(f"\n(in {next(iter(files.values())).parent}; `vfsmount run NAME PLATE` runs one, "
              "`vfsmount examples --copy DIR` copies them to edit)")
        return 0
    dest = Path(args.copy)
    dest.mkdir(parents=True, exist_ok=True)
    for name, path in files.items():
        target = dest / path.name
        if target.exists():
            raise UserError(f"{target} exists: vfsmount never overwrites your files")
        target.write_bytes(path.read_bytes())
        print(f"copied {target}")
    return 0


def _stream_address(text: str) -> str:
    from compute.streaming import parse_target
    try:
        return parse_target(text)
    except ValueError as e:
        raise UserError(str(e)) from None


def _cmd_napari(args) -> int:
    """A napari viewer that opens PATHs with the vfsmount reader and listens for runs."""
    from .napari.app import run_viewer
    return run_viewer(args.path, _stream_address(args.listen))


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(Path(args.dir) if args.dir else None, keep_mounted=not args.unmount)


# -- shared checks -----------------------------------------------------------------------------

def _is_remote(location: str) -> bool:
    """Whether a command line's PLATE (or target, or output) names object storage: the one
    place the command line asks (Plate.open decides again for what it opens)."""
    from backends.storage.remote import is_url
    return is_url(location)


def _local_folder(location: str) -> Path | None:
    """The local folder a PLATE argument names, or None (object storage, a file, nothing)."""
    return None if _is_remote(location) or not Path(location).is_dir() else Path(location)


def _refuse_hands_off(plate: str, how: str, *, outputs: bool = False) -> None:
    """Hands-off plates (read-only, another account's, or marked) are never written into, by
    any command (root included); with ``outputs``, a folder named for their results will do."""
    from backends.plates.metadata import hands_off, outputs_dir
    if _local_folder(plate) is None:
        return
    why = hands_off(Path(plate))
    if why and not (outputs and outputs_dir(Path(plate))[1]):
        raise UserError(f"{plate} is hands-off ({why}) and vfsmount never writes into it: {how}")


def _apply_plate_settings(args, plate: str) -> None:
    """``--hands-off`` and ``--outputs-dir``, kept for the plate in the user's cache, so that
    every later command (and the mount daemon) follows them."""
    from backends.plates.metadata import hands_off, save_plate_settings
    marked, named = getattr(args, "hands_off", False), getattr(args, "outputs_dir", None)
    if _local_folder(plate) is None or not (marked or named):
        return
    changes: dict = {"hands_off": True} if marked else {}
    if named:
        real, inside = os.path.realpath(named), os.path.realpath(plate)
        if (marked or hands_off(Path(plate))) and (real + "/").startswith(inside + "/"):
            raise UserError(f"--outputs-dir {named} is inside the plate, which is hands-off: "
                            "name a folder outside it")
        changes["outputs_dir"] = real
    save_plate_settings(plate, **changes)


def _refuse_mounted(plate: str) -> None:
    """A mount shows the plate as it was when mounted: converting under it would leave it
    serving the old view without a word, so convert waits until the plate is unmounted."""
    from .control import active_mounts
    if _local_folder(plate) is None:
        return
    real = os.path.realpath(plate)
    for m in active_mounts():      # (a URL's "real path" is never a plate folder's)
        if os.path.realpath(m.plate) == real:
            raise UserError(f"{plate} is mounted on {m.mountpoint}, and a mount keeps showing "
                            "the plate as it was when mounted: unmount it (vfsmount umount "
                            f"{m.mountpoint}), convert, then mount it again")


def _pipeline_path(text: str) -> str:
    """A pipeline file as given, or else the packaged example it names (`cells`, or
    `examples/cells.py` run outside the checkout)."""
    from .examples import example_files, find_example
    if Path(text).is_file():
        return text
    example = find_example(text)
    if example is None:
        raise UserError(f"{text}: no such pipeline file (packaged examples, by name: "
                        f"{', '.join(example_files())}; `vfsmount examples` lists them)")
    return str(example)


def _load_pipeline(path: str):
    """A pipeline file; a mistake in it is reported as file:line, like a compiler would."""
    from compute.errors import PipelineError
    from compute.pipeline import load_pipeline_file
    try:
        return load_pipeline_file(path)
    except SyntaxError as e:
        raise UserError(f"{e.filename}:{e.lineno}: {type(e).__name__}: {e.msg}") from e
    except PipelineError:
        raise
    except Exception as e:
        target = os.path.realpath(path)
        lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                 if os.path.realpath(f.filename) == target]
        where = f"{path}:{lines[-1]}" if lines else path
        raise UserError(f"{where}: {describe_error(e)}") from e


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=2)
    print()


def _progress(args) -> bool:
    """Progress bars only on a terminal: a redirected log gets no carriage-return frames."""
    return not args.no_progress and sys.stderr.isatty()


def _require_extras(args) -> None:
    """s3:// locations and --dask need an extra: say which, before anything starts."""
    import importlib.util
    needs = [("s3fs", "an s3:// location") for name in ("plate", "target", "output")
             if _is_remote(getattr(args, name, None) or "")]
    if getattr(args, "dask", None):
        needs.append(("distributed", "--dask"))
    for module, what in needs:
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{what} needs {module}: pip install 'vfsmount[{EXTRAS[module]}]'")


def describe_error(e: BaseException) -> str:
    from backends.errors import StorageError
    from compute.errors import PipelineError
    from .control import MountError
    if isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] in EXTRAS:
        return f"{e} (pip install 'vfsmount[{EXTRAS[e.name.split('.')[0]]}]')"
    if isinstance(e, (UserError, StorageError, PipelineError, MountError, OSError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e} (run with --log-level debug for the traceback)"


# -- the parser, as tables ---------------------------------------------------------------------

@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    kw: dict
    requires: str | None = None            # dest of the option this one needs
    conflicts: str | None = None           # dest of an option this one cannot go with
    default: Any = None                    # applied after the requires/conflicts check

    @property
    def dest(self) -> str:
        return self.kw.get("dest") or self.flags[-1].lstrip("-").replace("-", "_")


def arg(*flags: str, requires: str | None = None, conflicts: str | None = None,
        default: Any = None, **kw) -> Arg:
    return Arg(flags, kw, requires, conflicts, default)


@dataclass(frozen=True)
class Command:
    handler: Callable[[argparse.Namespace], int]
    help: str
    args: list[Arg] = field(default_factory=list)


PLATE = arg("plate", help="plate directory, or s3://bucket/plate.zarr")
S3 = arg("--s3-endpoint", help="S3-compatible endpoint URL for s3:// locations (default: "
         "$AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL); credentials come from "
         "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY or $AWS_PROFILE")
NO_PROGRESS = arg("--no-progress", action="store_true",
                  help="no progress bar (there is none anyway when stderr is not a terminal)")

HANDS_OFF = arg("--hands-off", action="store_true",
                help="never write into this plate folder (kept for the plate): metadata in your "
                     "cache, results in --outputs-dir; the default for a plate you do not own")
OUTPUTS_DIR_ARG = arg("--outputs-dir", metavar="DIR",
                      help="where results written back go for this plate (kept for it; default "
                           "PLATE/outputs, and required for a hands-off plate)")

COMMANDS: dict[str, Command] = {
    "info": Command(_cmd_info, "detect a plate's format, map it, write its metadata, report; "
                    "or, given a file of a mount, its coordinates and source", [
        arg("plate", help="plate directory, s3://bucket/plate.zarr, or a file of a mount"),
        arg("--json", action="store_true", help="machine-readable output (\"schema\": 1)"),
        arg("--no-rescan", action="store_true", help="report the existing metadata as is"),
        HANDS_OFF, S3]),
    "convert": Command(_cmd_convert, "convert a plate to OME-Zarr (PLATE/zarr by default)", [
        arg("plate", help="plate directory"),
        arg("--output", metavar="DIR", help="store path or s3://bucket/key.zarr (default: "
            "PLATE/zarr; required for a read-only plate)"),
        arg("--chunk-strategy", choices=["well", "file"], default="well",
            help="one chunk per field image (well) or per plane (file); default well"),
        arg("--compressor", choices=["zstd", "lz4", "zlib", "none"], default="zstd",
            help="Blosc codec of the chunks; default zstd"),
        arg("--level", type=int, default=1, help="compression level 0-9; default 1"),
        arg("--ngff-version", choices=["0.4", "0.5"], default="0.4",
            help="0.4 (zarr format 2, what Fiji/MoBIE read) or 0.5 (zarr format 3); default 0.4"),
        arg("--levels", type=int, default=None,
            help="pyramid levels below full resolution (default: halve until the plane fits "
                 "1024 px; 0: none)"),
        arg("--overwrite", action="store_true", help="replace an existing store"),
        NO_PROGRESS, S3]),
    "mount": Command(_cmd_mount, "serve a plate as a POSIX tree through FUSE", [
        PLATE,
        arg("mountpoint", help="an empty folder"),
        arg("--foreground", action="store_true", help="do not detach; log to stderr"),
        arg("--nonempty", action="store_true",
            help="mount over a folder that has files (they are hidden while mounted)"),
        arg("--allow-other", action="store_true", help="let other users see the mount"),
        arg("--subdir", help="subdirectory shown as images/ (default: the main one)"),
        arg("--writable", action="store_true",
            help="make outputs/ writable; what is written lands in PLATE/outputs (or in "
                 "--outputs-dir)"),
        arg("--materialize", choices=["disk", "zarr"], requires="writable",
            default=MountConfig.materialize,
            help="with --writable: plate images written to outputs/<dir>/ go to OME-Zarr "
                 "(zarr) or stay files (disk, the default)"),
        arg("--pipeline", metavar="FILE", help="add processed/<name>/: TIFFs this pipeline file "
            "(or packaged example, by name) computes when they are first read"),
        arg("--compute-cache-mb", type=int, requires="pipeline",
            default=MountConfig.compute_cache_mb,
            help="with --pipeline: memory for computed stacks (LRU; default 256 MiB)"),
        arg("--chunk-cache-mb", type=int, default=MountConfig.chunk_cache_mb,
            help="remote plates: local disk cache of fetched chunks (LRU; default 1024 MiB, "
                 "0 = none), under ~/.cache/vfsmount/chunks/"),
        arg("--xattrs", action="store_true",
            help="serve user.vfsmount.* attributes (well, site, channel, z, t, source); off by "
                 "default because every `ls -l` then costs two daemon round trips per file. "
                 "`vfsmount info FILE` gives the same facts"),
        arg("--no-xattrs", action="store_false", dest="xattrs",
            help="the default (kept for old scripts)"),
        arg("--no-passthrough", action="store_false", dest="passthrough", default=None,
            help="serve every read and write through the daemon, not kernel FUSE passthrough "
                 "(also VFSMOUNT_PASSTHROUGH=0; `vfsmount list` shows each mount's data path)"),
        arg("--sync-on-close", action="store_true",
            help="outputs/: close() waits until the file is on stable storage (fsync); by "
                 "default only fsync() does, as on ext4"),
        arg("--log-file", help="daemon log (default: ~/.cache/vfsmount/logs/)"),
        arg("--loaddata-config", metavar="FILE", help="pe2loaddata's config.yml (channels: "
            "{HOECHST 33342: OrigDNA, ...}): the column names of MOUNT/load_data.csv"),
        HANDS_OFF, OUTPUTS_DIR_ARG, S3]),
    "loaddata": Command(_cmd_loaddata, "write CellProfiler's LoadData CSV of a plate mounted "
                        "at a known path (what MOUNT/load_data.csv holds)", [
        PLATE,
        arg("--mountpoint", metavar="PATH", required=True,
            help="absolute path where the plate is (or will be) mounted: PathName_ columns"),
        arg("--config", metavar="FILE", help="pe2loaddata's config.yml: column names "
            "(channels: {HOECHST 33342: OrigDNA, ...}); default Orig<channel name>"),
        arg("--illum", action="store_true", help="add pe2loaddata's illumination columns "
            "(MOUNT/load_data_with_illum.csv)"),
        arg("-o", "--output", metavar="FILE", help="write here (atomically); default stdout"),
        S3]),
    "companion": Command(_cmd_companion, "write the plate's OME companion file for Bio-Formats, "
                         "OMERO and QuPath (what MOUNT/plate.companion.ome holds)", [
        PLATE,
        arg("-o", "--output", metavar="FILE", help="write here (atomically); default stdout"),
        arg("--mountpoint", metavar="PATH", help="with -o: where the plate is mounted; file "
            "names then lead from FILE's folder to PATH/images (default: images/ beside FILE)"),
        S3]),
    "umount": Command(_cmd_umount, "unmount (also clears a dead mount)", [
        arg("mountpoint", nargs="?", help="the mount point (or --all)"),
        arg("--all", action="store_true", help="every mount `vfsmount list` shows"),
        arg("--lazy", action="store_true",
            help="detach a busy mount now; it goes when the last file in it is closed")]),
    "list": Command(_cmd_list, "list active mounts: mount point, plate, pid, options, log", [
        arg("--json", action="store_true", help="machine-readable output")]),
    "run": Command(_cmd_run, "run a pipeline file over a plate or a --writable mountpoint", [
        arg("pipeline", help="a Python file defining `pipeline`, or the name of a packaged "
            "example (`vfsmount examples`)"),
        arg("target", help="plate directory, s3://bucket/plate.zarr, or the mountpoint of a "
            "--writable mount"),
        arg("--output", metavar="NAME",
            help="output folder name under outputs/ (default: pipeline name)"),
        arg("--materialize", choices=["disk", "zarr"],
            help="override the pipeline's materialization backend (plate directories)"),
        arg("--workers", type=int, conflicts="dask", default=2,
            help="wells processed in parallel (threads; default 2)"),
        arg("--dask", metavar="SCHEDULER", help="run wells as tasks on a Dask cluster: "
            "tcp://host:8786, or local:N for N local worker processes"),
        arg("--stream", metavar="napari[:ADDRESS]",
            help="also send each written result to a napari viewer (`vfsmount napari`) as the "
                 "run goes; ADDRESS: PORT, HOST:PORT or tcp://... (default tcp://127.0.0.1:5577). "
                 "Never waits: with no viewer, results are dropped and the run says so"),
        arg("--stream-steps", action="store_true", requires="stream",
            help="with --stream: every step's result too, not only what is written"),
        OUTPUTS_DIR_ARG, NO_PROGRESS, S3]),
    "examples": Command(_cmd_examples, "list the pipeline files installed with vfsmount "
                        "(`vfsmount run NAME PLATE` runs one), or copy them to edit", [
        arg("--copy", metavar="DIR", help="copy them into DIR (never over an existing file)")]),
    "napari": Command(_cmd_napari, "start a napari viewer that opens plates and shows the results "
                      "of `vfsmount run --stream napari` as they come", [
        arg("path", nargs="*", help="plates, mount points, OME-Zarr plates or hyperstacks/ "
            "files to open"),
        arg("--listen", metavar="napari[:ADDRESS]", default="napari",
            help="where runs stream to (default napari = tcp://127.0.0.1:5577)")]),
    "demo": Command(_cmd_demo, "generate a sample plate, convert part of it, mount it", [
        arg("--dir", help="where to put the sample plate (default: ~/.cache/vfsmount/demo)"),
        arg("--unmount", action="store_true", help="unmount at the end")]),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):   # one line, not argparse's usage block
        choice = re.match(r"argument .*: invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if choice:   # a misspelt command or choice: name the closest one
            message += did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]))
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def did_you_mean(word: str, candidates) -> str:
    """`` (did you mean `--writable`?)`` for the closest candidate, or nothing (Python 3.11's
    argparse has no suggest_on_error)."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _refuse_unknown_options(parser: argparse.ArgumentParser, args, extras: list[str]) -> None:
    """What argparse left unparsed, each with the closest option of its command."""
    sub = parser.commands.get(getattr(args, "command", None)) or parser
    options = {s for p in {parser, sub} for a in p._actions for s in a.option_strings}
    first = extras[0]
    hint = did_you_mean(first.split("=", 1)[0], options) if first.startswith("-") else ""
    sub.error(f"unrecognized arguments: {' '.join(extras)}{hint}")


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"unknown level {text!r} (use {', '.join(LOG_LEVELS)})")
    return text.lower()


def _add_log_level(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--log-level", type=_log_level, default=default, metavar="LEVEL",
                   help=f"{', '.join(LOG_LEVELS)} (default warning; the mount daemon: info); "
                        "debug also prints tracebacks")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vfsmount", description=(
        "Mount microscopy plates (ImageXpress, Opera Phenix, OME-Zarr) as flat TIFF trees."))
    p.add_argument("--version", action="version", version=f"vfsmount {__version__}")
    _add_log_level(p, None)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help="what to do; `vfsmount COMMAND --help` lists its options")
    p.commands = {}
    for name, command in COMMANDS.items():
        s = sub.add_parser(name, help=command.help, description=command.help)
        for a in command.args:
            s.add_argument(*a.flags, **a.kw)
        _add_log_level(s, argparse.SUPPRESS)   # also accepted after the command
        s.set_defaults(func=command.handler)
        p.commands[name] = s
    return p


def _check_dependent_options(parser: argparse.ArgumentParser, args) -> None:
    """Refuse an option given without the one it needs; then apply the defaults."""
    sub = parser.commands[args.command]
    for a in COMMANDS[args.command].args:
        value = getattr(args, a.dest)
        given = value is not None and value is not False
        if given and a.requires and not getattr(args, a.requires):
            sub.error(f"{a.flags[-1]} needs --{a.requires.replace('_', '-')}")
        if given and a.conflicts and getattr(args, a.conflicts):
            sub.error(f"{a.flags[-1]} cannot go with --{a.conflicts.replace('_', '-')}")
        if value is None and a.default is not None:
            setattr(args, a.dest, a.default)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _refuse_unknown_options(parser, args, extras)
    _check_dependent_options(parser, args)
    logging.basicConfig(level=(args.log_level or "warning").upper(),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if getattr(args, "s3_endpoint", None):
            from backends.storage.remote import S3Options, set_default_options
            set_default_options(S3Options(endpoint_url=args.s3_endpoint))
        _require_extras(args)
        code = args.func(args)
        sys.stdout.flush()   # a reader that went away shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # `vfsmount info --json | head`: quiet, like any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"vfsmount {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.log_level == "debug":
            traceback.print_exc()
        print(f"vfsmount {args.command}: error: {describe_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
