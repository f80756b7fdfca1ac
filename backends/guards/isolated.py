"""Run a decoder in a worker process, so that a crash in C code (a segfault, an abort) or a
hang kills the worker and not the daemon.

Used for inputs whose bytes cannot be checked up front (chunks of codecs vfsmount has no
check for, TIFFs with compressions other than none/LZW/deflate/PackBits). The worker is
started with "spawn" (the daemon is multi-threaded: forking it is unsafe), once, and
replaced after a crash.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0


class DecoderCrashed(RuntimeError):
    """The worker died or hung while decoding: the input is taken as corrupt."""


class _Worker:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        """Drop a crashed or hung worker; the next call starts a fresh one."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        for proc in list(getattr(pool, "_processes", {}).values()):   # a hung one is killed
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        pool = self._executor()
        future = pool.submit(fn, *args)
        try:
            return future.result(TIMEOUT_S)
        except BrokenProcessPool as e:
            self._discard(pool)
            raise DecoderCrashed("the decoder crashed (worker process died)") from e
        except TimeoutError as e:
            self._discard(pool)
            raise DecoderCrashed(f"the decoder did not finish in {TIMEOUT_S:.0f} s") from e

    async def call_async(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(self.call, fn, *args)


_worker = _Worker()


def run_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in the worker process (fn and args must pickle); DecoderCrashed if it dies."""
    return _worker.call(fn, *args)


async def run_isolated_async(fn: Callable[..., Any], *args: Any) -> Any:
    return await _worker.call_async(fn, *args)
