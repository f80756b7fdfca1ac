"""The ``vfsmount`` command line: info, convert, mount, umount, demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from backends.errors import StorageError
from compute.errors import PipelineError

from .config import MountConfig


def _cmd_info(args) -> int:
    from backends.plate import Plate
    plate = Plate.open(args.plate, rescan=not args.no_rescan)
    report = {
        "plate": plate.location,
        "format": plate.handler_name,
        "metadata_file": str(plate.metadata_file),
        "main": plate.main,
        "primary_backend": plate.primary_backend(),
        "subdirectories": {},
    }
    for key, e in plate.subdirectories.items():
        report["subdirectories"][key] = {
            "images": len(e.get("image_files", [])),
            "wells": e.get("wells", []), "sites": e.get("sites", []),
            "channels": e.get("channels", {}), "z_indexes": e.get("z_indexes", []),
            "timepoints": e.get("timepoints", []), "pixel_size_um": e.get("pixel_size"),
            "grid_dimensions": e.get("grid_dimensions"),
            "available_backends": [k for k, v in e.get("available_backends", {}).items() if v],
            "main": e.get("main", False),
        }
    if plate.scan is not None:
        report["unparsed_tiffs"] = plate.scan.unparsed
        report["ignored_thumbnails"] = plate.scan.ignored
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
        return 0
    print(f"plate:     {report['plate']}")
    print(f"format:    {report['format']}")
    print(f"metadata:  {report['metadata_file']}")
    print(f"main:      {report['main']} (read through {report['primary_backend']})")
    for key, s in report["subdirectories"].items():
        star = " (main)" if s["main"] else ""
        print(f"\n[{key}]{star}  {s['images']} images via {', '.join(s['available_backends'])}")
        print(f"  wells:     {len(s['wells'])}: {' '.join(s['wells'][:24])}{' ...' if len(s['wells']) > 24 else ''}")
        print(f"  sites:     {s['sites']}")
        chans = ", ".join(f"w{c}" + (f"={n}" if n else "") for c, n in s["channels"].items())
        print(f"  channels:  {chans}")
        print(f"  z:         {s['z_indexes']}")
        print(f"  t:         {s['timepoints']}")
        print(f"  pixel:     {s['pixel_size_um']} um" + (f", grid {s['grid_dimensions']}"
                                                          if s["grid_dimensions"] else ""))
    if report.get("unparsed_tiffs"):
        print(f"\n{len(report['unparsed_tiffs'])} TIFF names did not parse and are not mapped:")
        for rel in report["unparsed_tiffs"][:10]:
            print(f"  {rel}")
    if report.get("ignored_thumbnails"):
        print(f"\n{report['ignored_thumbnails']} thumbnails ignored")
    return 0


def _cmd_convert(args) -> int:
    from backends.convert import convert_plate
    from backends.zarr_config import ZarrConfig
    config = ZarrConfig(chunk_strategy=args.chunk_strategy, compressor=args.compressor,
                        compression_level=args.level, ngff_version=args.ngff_version)
    out = convert_plate(args.plate, args.output, config=config, overwrite=args.overwrite,
                        progress=not args.no_progress)
    print(f"wrote {out} ({config.chunk_strategy.value} chunks, {config.compressor.value}, "
          f"NGFF {config.ngff_version}); it is now the plate's main subdirectory")
    return 0


def _cmd_mount(args) -> int:
    from .control import start_daemon
    cfg = MountConfig.from_args(args)
    if args.foreground:
        from .daemon import serve
        logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return serve(cfg)
    pid, log_file = start_daemon(args.plate, args.mountpoint, log_level=args.log_level,
                                 log_file=args.log_file, extra_args=cfg.to_argv()[2:])
    print(f"mounted {args.plate} on {args.mountpoint} (daemon pid {pid}, log {log_file})")
    return 0


def _cmd_umount(args) -> int:
    from .control import unmount
    print(f"{args.mountpoint}: {unmount(args.mountpoint)}")
    return 0


def _cmd_run(args) -> int:
    from compute.pipeline import load_pipeline_file, run_pipeline
    pipeline = load_pipeline_file(args.pipeline)
    if args.materialize:
        from compute.pipeline import VFSConfig
        pipeline.config = VFSConfig(materialization_backend=args.materialize)
    result = run_pipeline(pipeline, args.target, output=args.output, workers=args.workers,
                          progress=not args.no_progress, dask=args.dask)
    print(f"{pipeline.name}: {result.groups} stacks, {result.images_written} images and "
          f"{len(result.files_written)} files written to {result.output}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(Path(args.dir) if args.dir else None, keep_mounted=not args.unmount)


def _s3_option(s: argparse.ArgumentParser) -> None:
    s.add_argument("--s3-endpoint", help="S3-compatible endpoint URL for s3:// locations "
                   "(default: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL); credentials come from "
                   "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY or $AWS_PROFILE")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vfsmount", description=(
        "Mount microscopy plates (ImageXpress, Opera Phenix, OME-Zarr) as flat TIFF trees."))
    p.add_argument("--log-level", default="WARNING", help="logging level for this command")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="detect a plate's format, map it, write its metadata, report")
    s.add_argument("plate", help="plate directory, or s3://bucket/plate.zarr")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--no-rescan", action="store_true", help="report the existing metadata as is")
    _s3_option(s)
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("convert", help="convert a plate to OME-Zarr (PLATE/zarr by default)")
    s.add_argument("plate")
    s.add_argument("--output", help="store path or s3://bucket/key.zarr (default: PLATE/zarr)")
    s.add_argument("--chunk-strategy", choices=["well", "file"], default="well")
    s.add_argument("--compressor", choices=["zstd", "lz4", "zlib", "none"], default="zstd")
    s.add_argument("--level", type=int, default=1, help="compression level 0-9")
    s.add_argument("--ngff-version", choices=["0.4", "0.5"], default="0.4")
    s.add_argument("--overwrite", action="store_true", help="replace an existing store")
    s.add_argument("--no-progress", action="store_true")
    _s3_option(s)
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("mount", help="serve a plate as a POSIX tree through FUSE")
    s.add_argument("plate", help="plate directory, or s3://bucket/plate.zarr")
    s.add_argument("mountpoint")
    s.add_argument("--foreground", action="store_true", help="do not detach; log to stderr")
    s.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    s.add_argument("--subdir", help="subdirectory shown as images/ (default: the main one)")
    s.add_argument("--writable", action="store_true",
                   help="make outputs/ writable; what is written lands in the plate")
    s.add_argument("--materialize", choices=["disk", "zarr"], default=MountConfig.materialize,
                   help="with --writable: plate images written to outputs/<dir>/ go to OME-Zarr")
    s.add_argument("--pipeline", help="add processed/<name>/: TIFFs this pipeline file computes "
                                      "when they are first read")
    s.add_argument("--compute-cache-mb", type=int, default=MountConfig.compute_cache_mb,
                   help="memory for computed stacks (LRU; default 256 MiB)")
    s.add_argument("--chunk-cache-mb", type=int, default=MountConfig.chunk_cache_mb,
                   help="remote plates: local disk cache of fetched chunks (LRU; default 1024 MiB, "
                        "0 = none), under ~/.cache/vfsmount/chunks/")
    s.add_argument("--sync-on-close", action="store_true",
                   help="outputs/: close() waits until the file is on stable storage (fsync)")
    s.add_argument("--no-xattrs", action="store_true",
                   help="no user.vfsmount.* attributes; makes `ls -l` of huge folders faster")
    s.add_argument("--log-file", help="daemon log (default: ~/.cache/vfsmount/logs/)")
    s.add_argument("--log-level", dest="log_level", default="INFO")
    _s3_option(s)
    s.set_defaults(func=_cmd_mount)

    s = sub.add_parser("umount", help="unmount (also clears a dead mount)")
    s.add_argument("mountpoint")
    s.set_defaults(func=_cmd_umount)

    s = sub.add_parser("run", help="run a pipeline file over a plate or a --writable mountpoint")
    s.add_argument("pipeline", help="a Python file defining `pipeline`")
    s.add_argument("target", help="plate directory, s3://bucket/plate.zarr, or the mountpoint "
                                  "of a --writable mount")
    s.add_argument("--output", help="output folder name under outputs/ (default: pipeline name)")
    s.add_argument("--materialize", choices=["disk", "zarr"],
                   help="override the pipeline's materialization backend (plate directories)")
    s.add_argument("--workers", type=int, default=2, help="wells processed in parallel (threads)")
    s.add_argument("--dask", metavar="SCHEDULER", help="run wells as tasks on a Dask cluster: "
                   "tcp://host:8786, or local:N for N local worker processes")
    s.add_argument("--no-progress", action="store_true")
    _s3_option(s)
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("demo", help="generate a sample plate, convert part of it, mount it")
    s.add_argument("--dir", help="where to put the sample plate (default: ~/.cache/vfsmount/demo)")
    s.add_argument("--unmount", action="store_true", help="unmount at the end")
    s.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "s3_endpoint", None):
        from backends.remote import S3Options, set_default_options
        set_default_options(S3Options(endpoint_url=args.s3_endpoint))
    logging.basicConfig(level=getattr(args, "log_level", "WARNING").upper()
                        if args.command != "mount" else "WARNING",
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (StorageError, OSError, ValueError, RuntimeError, PipelineError) as e:
        print(f"vfsmount {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
