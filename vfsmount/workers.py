"""The daemon's worker threads: where file-system calls that may wait for the disk run.

``trio.to_thread.run_sync`` costs about 230 µs a call on a 2-core VM (it takes a
CapacityLimiter, picks or starts a cached thread, names it with prctl, copies the context);
copying 128 files into outputs/ makes ~10 such calls a file. This pool keeps a fixed set of
threads fed from one queue and hands each result back through the trio token: about 90 µs
a call. The thread count is the concurrency limit (jobs queue beyond it). A job cannot be
cancelled once queued, like ``to_thread.run_sync`` without ``abandon_on_cancel``.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

import outcome
import trio

log = logging.getLogger(__name__)


class WorkerPool:
    def __init__(self, threads: int) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"vfsmount-worker-{i}",
                                          daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread; its result, or its exception raised here."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._jobs.put((fn, args, trio.lowlevel.current_trio_token(),
                        trio.lowlevel.current_task()))
        result = await trio.lowlevel.wait_task_rescheduled(
            lambda _raise_cancel: trio.lowlevel.Abort.FAILED)
        return result

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, token, task = job
            result = outcome.capture(fn, *args)
            try:
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
            except trio.RunFinishedError:        # the loop ended while this job ran
                log.debug("worker result dropped: the daemon's loop has ended")


__all__ = ["WorkerPool"]
