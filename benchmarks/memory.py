"""Memory-type conversions of a (16, 2048, 2048) stack vs np.copy of the same bytes.

Zero-copy pairs should take microseconds whatever the size; copying pairs should be
within 1.5x of np.copy.
"""
from __future__ import annotations

import time

import numpy as np

from compute import MemoryType, convert_memory, data_pointer
from compute.conversion import aligned_copy
from compute.frameworks import available

from .common import table

TYPES = [MemoryType.NUMPY, MemoryType.TORCH, MemoryType.JAX, MemoryType.TENSORFLOW,
         MemoryType.PYCLESPERANTO]


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def run(args) -> None:
    shape = (4, 1024, 1024) if args.quick else (16, 2048, 2048)
    types = [t for t in TYPES if available(t)]
    for dtype in ("uint16", "float32"):
        host = aligned_copy(np.random.default_rng(0).integers(0, 4000, shape).astype(dtype))
        t_copy = best(lambda: np.copy(host))
        sources = {t: convert_memory(host, "numpy", t) for t in types}
        rows = []
        for src in types:
            for dst in types:
                if src is dst:
                    continue
                data = sources[src]
                out = convert_memory(data, src, dst)
                p_in, p_out = data_pointer(data), data_pointer(out)
                zero = p_in is not None and p_in == p_out
                seconds = best(lambda: convert_memory(data, src, dst))
                rows.append((f"{src} -> {dst}", "zero-copy" if zero else "copy",
                             f"{seconds * 1e6:,.0f} us", seconds / t_copy,
                             "size-independent (us)" if zero else "<= 1.5"))
        nbytes = host.nbytes
        table(f"Conversions of a {shape} {dtype} stack ({nbytes / 2**20:.0f} MiB); "
              f"np.copy of the same bytes: {t_copy * 1e3:.1f} ms", rows,
              ("pair", "kind", "time", "time / np.copy", "goal"))
