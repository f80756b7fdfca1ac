"""The mount process: build the tree, mount it, serve until unmounted or signalled.

Run in the foreground by ``vfsmount mount --foreground``, or started in its own
session by ``vfsmount mount``, which waits for the line this process writes to
``--ready-fd`` once the mount is live (so the mount is usable when the command
returns) or for the error that stopped it.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
from urllib.parse import quote

import pyfuse3
import trio

from backends.layout import FS_SUBTYPE, OUTPUTS_DIR

from .config import MountConfig, parse_daemon_argv
from .fs import VfsOperations
from .tree import build_tree

log = logging.getLogger("vfsmount")


def fuse_options(*, allow_other: bool, plate_name: str) -> set[str]:
    opts = set(pyfuse3.default_options)          # default_permissions
    # The plate's folder name is user data: percent-encoded (ASCII letters, digits, "._-~"), so no
    # comma, "=" or backslash reaches libfuse's option parser and pyfuse3's ASCII encoding never
    # fails; `vfsmount list` decodes it.
    opts |= {f"fsname=vfsmount:{quote(plate_name, safe='')}", f"subtype={FS_SUBTYPE}",
             "auto_unmount"}
    if allow_other:
        opts.add("allow_other")
    # Never max_read: it breaks the mount. Large reads come from st_blksize and readahead.
    return opts


# Request-reading tasks kept waiting on /dev/fuse. pyfuse3 starts one whenever none is idle
# and ends extra idle ones beyond this: with its default (1), a client doing one call at a
# time costs a task start and end per request.
MAIN_TASKS = 16

async def _serve(ops: VfsOperations) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if ops.outputs is not None and ops.outputs.writable:
            nursery.start_soon(_record_outputs, ops)
        await pyfuse3.main(min_tasks=MAIN_TASKS)
        nursery.cancel_scope.cancel()   # unmounted from outside: stop the signal watcher


async def _record_outputs(ops: VfsOperations) -> None:
    """Keep openhcs_metadata.json in step with outputs/ (at most once a second)."""
    while True:
        await trio.sleep(1)
        try:
            await ops.workers.run(ops.outputs.write_metadata)
        except Exception:
            log.exception("cannot record outputs in the plate metadata")


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            scope.cancel()
            return


def _build(cfg: MountConfig) -> tuple[object, VfsOperations]:
    """The plate and the operations serving it (raises on any problem)."""
    from backends import remote
    from backends.plate import Plate
    from .outputs import OutputsArea

    remote.set_default_options(remote.S3Options(endpoint_url=cfg.s3_endpoint))
    remote.set_default_chunk_cache_bytes(cfg.chunk_cache_mb << 20)
    plate = Plate.open(cfg.plate)
    if cfg.writable and plate.url is not None:
        raise ValueError("a remote plate cannot be mounted --writable; write results with "
                         "`vfsmount run PIPELINE " + plate.url + "` instead")
    if cfg.subdir is not None:
        plate.entry(cfg.subdir)   # raises with the list of subdirectories
        plate.metadata = {**plate.metadata, "subdirectories": {
            k: {**v, "main": k == cfg.subdir} for k, v in plate.subdirectories.items()}}
    outputs = None
    if cfg.writable or (plate.url is None and (plate.path / OUTPUTS_DIR).is_dir()):
        outputs = OutputsArea(plate, writable=cfg.writable, materialize=cfg.materialize,
                              sync_on_close=cfg.sync_on_close)
        if cfg.writable:
            outputs.write_metadata(force=True)   # reconcile after a crash
        if cfg.writable and cfg.materialize == "zarr":
            from backends.zarr_ngff import load_writer
            load_writer()
    computed = []
    if cfg.pipeline_file:
        from compute.pipeline import load_pipeline_file
        from .computed import ComputedPlanes
        computed.append(ComputedPlanes(load_pipeline_file(cfg.pipeline_file), plate.backend(),
                                       plate.image_files(), cache_bytes=cfg.compute_cache_mb << 20,
                                       pixel_size=plate.entry().get("pixel_size")))
    from .plate_views import PlateViews
    views = PlateViews(plate, cfg.mountpoint, cfg.loaddata_config)
    ops = VfsOperations(build_tree(plate, outputs, computed, views), threads=cfg.threads,
                        xattrs=cfg.xattrs, outputs=outputs)
    return plate, ops


def serve(cfg: MountConfig, ready_fd: int | None = None) -> int:
    mountpoint = cfg.mountpoint

    def ready(message: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, (message.rstrip("\n") + "\n").encode())
            os.close(ready_fd)

    try:
        plate, ops = _build(cfg)
        pyfuse3.init(ops, mountpoint, fuse_options(allow_other=cfg.allow_other,
                                                   plate_name=plate.name))
    except Exception as e:
        log.exception("cannot mount %s on %s", cfg.plate, mountpoint)
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
    cfg, args = parse_daemon_argv(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Third-party chatter (pyfuse3 logs every worker task at DEBUG) would drown our own lines.
    for noisy in ("pyfuse3", "numcodecs", "zarr", "asyncio", "fsspec", "s3fs", "botocore",
                  "aiobotocore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    faulthandler.enable()
    return serve(cfg, ready_fd=args.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
