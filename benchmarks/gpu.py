"""GPU: conversions between CuPy, PyTorch and JAX on the device vs a device-to-device copy of
the same bytes, and a three-step pipeline on the GPU vs the same steps on the CPU.

Zero-copy pairs (DLPack) should take microseconds whatever the size, far below the copy;
host <-> device rows move the bytes over the bus. Without a CUDA device it says so and skips.
"""
from __future__ import annotations

import itertools
import time

import numpy as np

from compute import MemoryType, convert_memory, data_pointer
from compute import torch as torch_function
from compute.conversion import aligned_copy
from compute.frameworks import cuda_available, framework

from .common import table

GPU_TYPES = [MemoryType.CUPY, MemoryType.TORCH, MemoryType.JAX]


def synchronize(types) -> None:
    for mt in types:
        if mt is MemoryType.TORCH:
            framework(mt).cuda.synchronize()
        elif mt is MemoryType.CUPY:
            framework(mt).cuda.Device().synchronize()


def settle(x, types) -> None:
    """Wait until ``x`` (and all queued device work) is done."""
    if hasattr(x, "block_until_ready"):
        x.block_until_ready()
    synchronize(types)


def best(fn, types, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat + 1):                     # the first run warms up
        synchronize(types)
        t = time.perf_counter()
        settle(fn(), types)
        times.append(time.perf_counter() - t)
    return min(times[1:])


def device_copy(x, mt: MemoryType):
    """A device-to-device copy of the same bytes, in the array's own framework."""
    if mt is MemoryType.TORCH:
        return x.clone()
    if mt is MemoryType.CUPY:
        return x.copy()
    return framework(mt).numpy.array(x, copy=True)


def pair_row(data, src: MemoryType, dst: MemoryType, t_copy: float, types) -> tuple:
    """One GPU -> GPU conversion: zero-copy when the result has the source's device pointer."""
    zero = data_pointer(convert_memory(data, src, dst)) == data_pointer(data)
    seconds = best(lambda: convert_memory(data, src, dst), types)
    return (f"{src} -> {dst}", "zero-copy" if zero else "copy", f"{seconds * 1e6:,.0f} us",
            seconds / t_copy, "far below 1 (us)")


def conversions(shape: tuple, types: list[MemoryType]) -> None:
    host = aligned_copy(np.random.default_rng(0).integers(0, 4000, shape).astype(np.float32))
    on_gpu = {mt: convert_memory(host, "numpy", mt, gpu_id=0) for mt in types}
    t_copy = best(lambda: device_copy(on_gpu[types[0]], types[0]), types)
    rows = [pair_row(on_gpu[src], src, dst, t_copy, types)
            for src, dst in itertools.permutations(types, 2)]
    gb = host.nbytes / 1e9
    for mt in types:
        up = best(lambda: convert_memory(host, "numpy", mt, gpu_id=0), types)
        down = best(lambda: convert_memory(on_gpu[mt], mt, "numpy"), types)
        rows.append((f"numpy -> {mt} (cuda:0)", f"copy, {gb / up:.1f} GB/s", f"{up * 1e3:.1f} ms",
                     up / t_copy, "bus speed"))
        rows.append((f"{mt} (cuda:0) -> numpy", f"copy, {gb / down:.1f} GB/s",
                     f"{down * 1e3:.1f} ms", down / t_copy, "bus speed"))
    table(f"GPU conversions of a {shape} float32 stack ({host.nbytes / 2**20:.0f} MiB); "
          f"device-to-device copy of the same bytes ({types[0]}): {t_copy * 1e3:.2f} ms", rows,
          ("pair", "kind", "time", "time / D2D copy", "goal"))


@torch_function
def binary_opening_torch(stack, radius: int = 1):
    """Per-plane binary opening with a (2r+1)^2 square: min-pool then max-pool."""
    torch = framework("torch")
    x = (stack > 0).to(torch.float32)[:, None]
    k = 2 * radius + 1
    eroded = -torch.nn.functional.max_pool2d(-x, k, stride=1, padding=radius)
    opened = torch.nn.functional.max_pool2d(eroded, k, stride=1, padding=radius)
    return opened[:, 0].to(torch.uint8)


def three_steps(gpu_id: int | None):
    from compute.functions import gaussian_filter_torch, threshold_otsu_torch
    from compute.pipeline import FunctionStep, Pipeline
    on = {} if gpu_id is None else {"gpu_id": gpu_id}
    return Pipeline([FunctionStep(gaussian_filter_torch, sigma=2.0, **on),
                     FunctionStep(threshold_otsu_torch, **on),
                     FunctionStep(binary_opening_torch, **on)],
                    name="gpu" if on else "cpu")


def pipeline(n_stacks: int, shape: tuple) -> None:
    from compute.pipeline import compute_group, group_images
    z, h, w = shape
    names = [f"A01_s001_w{c}_z{i + 1:03d}_t001.tif" for c in range(1, n_stacks + 1) for i in range(z)]
    groups = group_images(names, ("z",))
    rng = np.random.default_rng(1)
    planes = {g.stem: list((rng.random((z, h, w)) * 4000).astype(np.uint16)) for g in groups}
    results, seconds = {}, {}
    for where, gpu_id in (("CPU (torch)", None), ("GPU (torch, cuda:0)", 0)):
        p = three_steps(gpu_id)
        compute_group(p, groups[0], planes[groups[0].stem])               # warm up
        t = time.perf_counter()
        results[where] = [compute_group(p, g, planes[g.stem]) for g in groups]
        seconds[where] = time.perf_counter() - t
    agree = np.mean([(a == b).mean() for a, b in zip(*results.values())])
    mpix = n_stacks * z * h * w / 1e6
    t_cpu = seconds["CPU (torch)"]
    rows = [(where, f"{s / n_stacks * 1e3:.0f} ms", f"{mpix / s:,.0f}", t_cpu / s)
            for where, s in seconds.items()]
    table(f"Three-step pipeline (torch blur -> Otsu -> opening), {n_stacks} stacks of {shape} "
          f"uint16, loaded planes to NumPy result; masks agree on {agree:.4%} of pixels", rows,
          ("where", "per stack", "MPixel/s", "speed-up vs CPU"))


def available_gpu_types() -> list[MemoryType]:
    return [mt for mt in GPU_TYPES if cuda_available(mt)]


def run(args) -> None:
    types = available_gpu_types()
    if not types:
        print("\n## GPU\n\nskipped: no CUDA device (none of cupy, torch, jax sees one)", flush=True)
        return
    if MemoryType.TORCH in types:
        torch = framework("torch")
        print(f"\nGPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    conversions((4, 1024, 1024) if args.quick else (16, 2048, 2048), types)
    if MemoryType.TORCH in types:
        pipeline(2 if args.quick else 8, (4, 512, 512) if args.quick else (8, 2048, 2048))
    else:
        print("three-step pipeline skipped: torch sees no CUDA device", flush=True)
