"""The mount process: build the tree, mount it, serve until unmounted or signalled.

Run in the foreground by ``vfsmount mount --foreground``, or started in its own
session by ``vfsmount mount``, which waits for the line this process writes to
``--ready-fd`` once the mount is live (so the mount is usable when the command
returns) or for the error that stopped it.
"""
from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
from urllib.parse import quote

import pyfuse3
import trio

from .fs import DEFAULT_THREADS, VfsOperations
from .tree import build_tree

log = logging.getLogger("vfsmount")


def fuse_options(*, allow_other: bool, plate_name: str) -> set[str]:
    opts = set(pyfuse3.default_options)          # default_permissions
    # The plate's folder name is user data: percent-encoded (ASCII letters, digits, "._-~"), so no
    # comma, "=" or backslash reaches libfuse's option parser and pyfuse3's ASCII encoding never
    # fails; `vfsmount list` decodes it.
    opts |= {f"fsname=vfsmount:{quote(plate_name, safe='')}", "subtype=vfsmount", "auto_unmount"}
    if allow_other:
        opts.add("allow_other")
    # Never max_read: it breaks the mount. Large reads come from st_blksize and readahead.
    return opts


async def _serve(ops: VfsOperations) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if ops.outputs is not None and ops.outputs.writable:
            nursery.start_soon(_record_outputs, ops)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()   # unmounted from outside: stop the signal watcher


async def _record_outputs(ops: VfsOperations) -> None:
    """Keep openhcs_metadata.json in step with outputs/ (at most once a second)."""
    while True:
        await trio.sleep(1)
        try:
            await trio.to_thread.run_sync(ops.outputs.write_metadata, limiter=ops.limiter)
        except Exception:
            log.exception("cannot record outputs in the plate metadata")


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            scope.cancel()
            return


def serve(plate_path: str, mountpoint: str, *, allow_other: bool = False, subdir: str | None = None,
          threads: int = DEFAULT_THREADS, ready_fd: int | None = None, xattrs: bool = False,
          writable: bool = False, materialize: str = "disk", pipeline_file: str | None = None,
          compute_cache_mb: int = 256, chunk_cache_mb: int = 1024,
          s3_endpoint: str | None = None) -> int:
    from backends import remote
    from backends.plate import Plate
    from .outputs import OUTPUTS, OutputsArea

    def ready(message: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, (message.rstrip("\n") + "\n").encode())
            os.close(ready_fd)

    try:
        remote.set_default_options(remote.S3Options(endpoint_url=s3_endpoint))
        remote.set_default_chunk_cache_bytes(chunk_cache_mb << 20)
        plate = Plate.open(plate_path)
        if writable and plate.url is not None:
            raise ValueError("a remote plate cannot be mounted --writable; write results with "
                             "`vfsmount run PIPELINE " + plate.url + "` instead")
        if subdir is not None:
            plate.entry(subdir)   # raises with the list of subdirectories
            plate.metadata = {**plate.metadata, "subdirectories": {
                k: {**v, "main": k == subdir} for k, v in plate.subdirectories.items()}}
        outputs = None
        if writable or (plate.url is None and (plate.path / OUTPUTS).is_dir()):
            outputs = OutputsArea(plate, writable=writable, materialize=materialize)
            if writable:
                outputs.write_metadata(force=True)   # reconcile after a crash
        computed = []
        if pipeline_file:
            from compute.pipeline import load_pipeline_file
            from .computed import ComputedPlanes
            computed.append(ComputedPlanes(load_pipeline_file(pipeline_file), plate.backend(),
                                           plate.image_files(), cache_bytes=compute_cache_mb << 20,
                                           pixel_size=plate.entry().get("pixel_size")))
        ops = VfsOperations(build_tree(plate, outputs, computed), threads=threads, xattrs=xattrs,
                            outputs=outputs)
        pyfuse3.init(ops, mountpoint, fuse_options(allow_other=allow_other,
                                                   plate_name=plate.name))
    except Exception as e:
        log.exception("cannot mount %s on %s", plate_path, mountpoint)
        ready(f"error: {e}")
        return 1
    log.info("mounted %s on %s (main: %s)", plate.location, mountpoint, plate.main)
    ready("ok")
    unmount = True
    try:
        trio.run(_serve, ops)
        unmount = False   # pyfuse3.main returned: the kernel side is already gone
    except BaseException:
        log.exception("daemon stopped by an error")
        raise
    finally:
        pyfuse3.close(unmount=unmount)
        if ops.outputs is not None and ops.outputs.writable:
            ops.outputs.write_metadata(force=True)
        log.info("unmounted %s", mountpoint)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vfsmount.daemon")
    p.add_argument("plate")
    p.add_argument("mountpoint")
    p.add_argument("--allow-other", action="store_true")
    p.add_argument("--subdir")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--xattrs", action="store_true")
    p.add_argument("--no-xattrs", action="store_true")      # the default; kept for old scripts
    p.add_argument("--writable", action="store_true")
    p.add_argument("--materialize", choices=["disk", "zarr"], default="disk")
    p.add_argument("--pipeline")
    p.add_argument("--compute-cache-mb", type=int, default=256)
    p.add_argument("--chunk-cache-mb", type=int, default=1024)
    p.add_argument("--s3-endpoint")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party chatter (pyfuse3 logs every worker task at DEBUG) would drown our own lines.
    for noisy in ("pyfuse3", "numcodecs", "zarr", "asyncio", "fsspec", "s3fs", "botocore",
                  "aiobotocore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    faulthandler.enable()
    return serve(args.plate, args.mountpoint, allow_other=args.allow_other, subdir=args.subdir,
                 threads=args.threads, ready_fd=args.ready_fd, xattrs=args.xattrs and not args.no_xattrs,
                 writable=args.writable, materialize=args.materialize,
                 pipeline_file=args.pipeline, compute_cache_mb=args.compute_cache_mb,
                 chunk_cache_mb=args.chunk_cache_mb, s3_endpoint=args.s3_endpoint)


if __name__ == "__main__":
    sys.exit(main())
