"""Timing, cache dropping, mounting and the ratio table shared by the benchmarks."""
from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Iterator


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}"


def timed(fn, *args, repeat: int = 1, **kw) -> float:
    """Best wall time of ``repeat`` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args, **kw)
        best = min(best, time.perf_counter() - t)
    return best


def drop_caches(paths: list[Path] | None = None) -> None:
    """Cold cache: the kernel-wide drop if permitted, else fadvise(DONTNEED) on each file."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    except OSError:
        pass
    for p in paths or []:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def read_all(paths: list[Path], block: int = 1 << 20) -> int:
    total = 0
    buf = bytearray(block)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total


def cat(paths: list[Path]) -> None:
    """The native baseline: cat(1) to /dev/null, in batches to stay under ARG_MAX."""
    for i in range(0, len(paths), 2000):
        subprocess.run(["cat", *map(str, paths[i:i + 2000])], stdout=subprocess.DEVNULL, check=True)


@contextlib.contextmanager
def mounted(plate: Path, mnt: Path, *args: str) -> Iterator[int]:
    from vfsmount.control import start_daemon, unmount
    mnt.mkdir(parents=True, exist_ok=True)
    pid, _log = start_daemon(plate, mnt, log_level="WARNING", extra_args=list(args))
    try:
        yield pid
    finally:
        unmount(mnt)


def table(title: str, rows: list[tuple], headers: tuple[str, ...]) -> str:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = [f"\n## {title}", "", "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(v).ljust(w) for v, w in zip(r, widths)) + " |")
    out = "\n".join(lines)
    print(out, flush=True)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def mib_s(nbytes: int, seconds: float) -> float:
    return nbytes / 2**20 / seconds if seconds > 0 else float("inf")
