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

from backends.layout import FS_SUBTYPE

from .config import MountConfig, outputs_folders, parse_daemon_argv
from .fs import VfsOperations
from .passthrough import DataPath
from .tree import build_tree

log = logging.getLogger("vfsmount")


def fuse_options(*, allow_other: bool, plate_name: str, writable: bool = False) -> set[str]:
    opts = set(pyfuse3.default_options)          # default_permissions
    # The plate's folder name is user data: percent-encoded (ASCII letters, digits, "._-~"), so no
    # comma, "=" or backslash reaches libfuse's option parser and pyfuse3's ASCII encoding never
    # fails; `vfsmount list` decodes it.
    opts |= {f"fsname=vfsmount:{quote(plate_name, safe='')}", f"subtype={FS_SUBTYPE}",
             "auto_unmount"}
    if allow_other:
        opts.add("allow_other")
    if not writable:      # the kernel refuses every write itself (EROFS; access(W_OK) says so)
        opts.add("ro")
    # Never max_read: it breaks the mount. Large reads come from st_blksize and readahead.
    return opts


# Request-reading tasks kept waiting on /dev/fuse. pyfuse3 starts one whenever none is idle
# and ends extra idle ones beyond this: with its default (1), a client doing one call at a
# time costs a task start and end per request.
MAIN_TASKS = 16

# Kernel readahead of the mount (KiB). FUSE's default is 128 KiB: a synthesized TIFF read
# cold then costs one daemon round trip (and a chunk lookup) per 128 KiB; 1 MiB matches the
# largest FUSE request (libfuse's buffer) and the daemon's own READ_AHEAD of vendor files.
READ_AHEAD_KB = 1024


def set_readahead(mountpoint: str, kib: int = READ_AHEAD_KB) -> str:
    """Raise the mount's readahead through its bdi in sysfs (root only; the FUSE INIT reply can
    only lower it). Finds the device in mountinfo: a stat of our own mount point from the
    daemon would wait on the daemon itself."""
    from backends.storage.mountinfo import unescape
    real = os.path.realpath(mountpoint)       # (in a thread: the loop answers its stat)
    try:
        with open("/proc/self/mountinfo") as f:
            devs = [row[2] for row in map(str.split, f) if unescape(row[4]) == real]
        if not devs:
            return "mount not found in mountinfo"
        with open(f"/sys/class/bdi/{devs[-1]}/read_ahead_kb", "w") as f:
            f.write(str(kib))
        return f"{kib} KiB"
    except OSError as e:
        return f"left at the default ({e.strerror})"


async def _keep_state(ops: VfsOperations, mountpoint: str) -> None:
    """The daemon's state file (`vfsmount list`: data path and why; request counters for
    the tests): written once the kernel's INIT is answered, then when it changes."""
    from .control import write_state
    last = None
    while True:
        ops.data_path.expire()            # kept backing files idle for too long
        state = ops.data_path.state()
        if state != last and state["reason"] != "waiting for the kernel's answer at init":
            try:
                await ops.workers.run(write_state, mountpoint, state)
                last = state
            except OSError as e:
                log.warning("cannot write the mount's state file: %s", e)
        await trio.sleep(0.2)


async def _serve(ops: VfsOperations, mountpoint: str) -> None:
    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        nursery.start_soon(_keep_state, ops, mountpoint)
        nursery.start_soon(_tune_readahead, mountpoint)
        if ops.outputs is not None and ops.outputs.writable:
            nursery.start_soon(_record_outputs, ops)
        await pyfuse3.main(min_tasks=MAIN_TASKS)
        nursery.cancel_scope.cancel()   # unmounted from outside: stop the signal watcher


async def _tune_readahead(mountpoint: str) -> None:
    log.info("readahead: %s", await trio.to_thread.run_sync(set_readahead, mountpoint))


# The recorder waits for a pause in the requests (a copy into outputs/ is recorded when it
# pauses): recording lists and parses every output file and rewrites (fsyncs) the metadata,
# CPU and GIL time taken from the copy itself. While requests never pause, it records every
# RECORD_MAX_DELAY seconds. (Nothing depends on it for safety: a mount reconciles the
# metadata with what is committed, and so does the unmount.)
RECORD_MAX_DELAY = 10


async def _record_outputs(ops: VfsOperations) -> None:
    """Keep openhcs_metadata.json in step with outputs/ (once requests pause for a second)."""
    counters, seen, waited = ops.data_path.counters, None, 0
    while True:
        await trio.sleep(1)
        now = (counters.open_requests, counters.flush_requests, counters.release_requests,
               counters.write_requests)
        busy, seen = now != seen, now
        waited += 1
        if busy and waited < RECORD_MAX_DELAY:
            continue
        waited = 0
        try:
            await ops.workers.run(ops.outputs.write_metadata)
        except Exception:   # nothing is lost: the files stay, the next try records them
            log.warning("cannot record outputs/ in %s yet (the files are kept; the next second, "
                        "or the next mount, records them)", ops.outputs.plate.metadata_file,
                        exc_info=True)


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %s: unmounting", signal.Signals(signum).name)
            scope.cancel()
            return


def _build(cfg: MountConfig) -> tuple[object, VfsOperations]:
    """The plate and the operations serving it (raises on any problem)."""
    from backends.storage import remote
    from backends.plates.plate import Plate
    from .outputs import OutputsArea

    remote.set_default_options(remote.S3Options(endpoint_url=cfg.s3_endpoint))
    remote.set_default_chunk_cache_bytes(cfg.chunk_cache_mb << 20)
    plate = Plate.open(cfg.plate, lazy=True)        # a store: each well read on first use
    if cfg.writable and plate.url is not None:
        from compute.output_sink import remote_outputs_root   # where `run` puts its results
        raise ValueError(f"{plate.url} is an OME-Zarr store given directly, and a store is "
                         "only mounted read-only (nothing is ever written into it): mount it "
                         "without --writable, and write results with `vfsmount run PIPELINE "
                         f"{plate.url}` (results go beside the store, to "
                         f"{remote_outputs_root(plate.url)}/)")
    if cfg.subdir is not None:
        plate.choose_main(cfg.subdir)
    outputs = None
    folders = outputs_folders(plate, writable=cfg.writable)   # a hands-off plate's: elsewhere
    if folders is not None:   # read-only: an empty folder until the outputs folder exists
        outputs = OutputsArea(plate, *folders, writable=cfg.writable,
                              materialize=cfg.materialize, sync_on_close=cfg.sync_on_close)
        if cfg.writable:
            outputs.write_metadata(force=True)   # reconcile after a crash
        if cfg.writable and cfg.materialize == "zarr":
            from backends.ngff.backend import load_writer
            load_writer()
    computed = []
    if cfg.pipeline_file:
        from compute.pipeline import load_pipeline_file
        from .computed import ComputedPlanes
        main = plate.image_set()
        computed.append(ComputedPlanes(load_pipeline_file(cfg.pipeline_file), main.backend,
                                       list(main.names), cache_bytes=cfg.compute_cache_mb << 20,
                                       pixel_size=main.physics.pixel_size))
    from .views.documents import PlateViews
    views = PlateViews(plate, cfg.mountpoint, cfg.loaddata_config)
    data_path = DataPath.for_mount(cfg.passthrough, local=plate.url is None)
    ops = VfsOperations(build_tree(plate, outputs, computed, views), threads=cfg.threads,
                        xattrs=cfg.xattrs, outputs=outputs, data_path=data_path)
    return plate, ops


def serve(cfg: MountConfig, ready_fd: int | None = None) -> int:
    mountpoint = cfg.mountpoint

    def ready(message: str) -> None:
        if ready_fd is not None:
            os.write(ready_fd, (message.rstrip("\n") + "\n").encode())
            os.close(ready_fd)

    from .control import state_path
    state = state_path(mountpoint)
    state.unlink(missing_ok=True)       # a former mount's: `vfsmount list` waits for ours
    try:
        plate, ops = _build(cfg)
        pyfuse3.init(ops, mountpoint, fuse_options(allow_other=cfg.allow_other,
                                                   plate_name=plate.name, writable=cfg.writable))
    except Exception as e:
        log.exception("cannot mount %s on %s", cfg.plate, mountpoint)
        ready(f"error: {e}")
        return 1
    log.info("mounted %s on %s (main: %s)", plate.location, mountpoint, plate.main)
    ready("ok")
    unmount = True
    try:
        trio.run(_serve, ops, mountpoint)
        unmount = False   # pyfuse3.main returned: the kernel side is already gone
    except BaseException:
        log.exception("daemon stopped by an error")
        raise
    finally:
        pyfuse3.close(unmount=unmount)
        if ops.outputs is not None and ops.outputs.writable:
            ops.outputs.write_metadata(force=True)
        state.unlink(missing_ok=True)
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
