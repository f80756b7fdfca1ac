"""The receiving side of ``vfsmount run --stream napari``: results become layers as they come.

A :class:`StreamReceiver` binds a ZeroMQ PULL socket at the address runs send to (see
``compute.streaming``). Each message is one stack of results (one field, one channel, one
step); :func:`apply` puts it in the viewer as a *growing stack*: one layer per output, step
and channel, its first axis the fields in the order they arrived (the slider jumps to the
newest), so a 384-well run is a few layers, not thousands. Layers carry the run's scale
(z spacing and pixel size where the plate knows them) and, in ``metadata``, every field's
well, site and plane names. A layer keeps the newest ``KEEP`` fields; older ones are let go.
"""
from __future__ import annotations

import json
import logging
import weakref

import numpy as np

log = logging.getLogger(__name__)

KEEP = 256          # fields kept per streamed layer
RECEIVE_HWM = 256   # frames received but not yet shown, at most
_stacks: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # layer -> its fields' arrays


class StreamReceiver:
    def __init__(self, address: str) -> None:
        import zmq
        self.address = address
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PULL)
        # Frames wait here, not in the run: the run hands them over at once and ends; a viewer
        # more than RECEIVE_HWM frames behind pushes back, and the run then drops (never waits).
        self._socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)

    def receive(self, timeout_ms: int = 0) -> tuple[dict, np.ndarray] | None:
        """One message, or None when none came within ``timeout_ms``."""
        if not self._socket.poll(timeout_ms):
            return None
        header, data = self._socket.recv_multipart(copy=False)
        meta = json.loads(bytes(header.buffer))
        pixels = np.frombuffer(data.buffer, dtype=np.dtype(meta["dtype"])).reshape(meta["shape"])
        return meta, pixels

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()


def layer_name(meta: dict) -> str:
    step = f" [{meta['step']}]" if meta.get("step") else ""
    channel = meta.get("channel")
    info = (meta.get("channel_info") or {}).get(str(channel)) or {}
    label = info.get("name") or (f"w{channel}" if channel is not None else "")
    return f"{meta['output']}{step} {label}".strip()


def _scale(meta: dict) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """(field, z, y, x): physical where the run's plate knows it (the stack is along z when its
    planes differ in z)."""
    along_z = len({p[1] for p in meta["planes"]}) > 1
    z = meta.get("z_spacing") if along_z else None
    px = meta.get("pixel_size")
    return ((1.0, float(z or 1.0), float(px or 1.0), float(px or 1.0)),
            ("pixel", "micrometer" if z else "pixel", *(("micrometer",) * 2 if px else ("pixel",) * 2)))


def apply(viewer, meta: dict, pixels: np.ndarray):
    """Add one stack of results to ``viewer`` (a napari Viewer or ViewerModel); the layer."""
    name = layer_name(meta)
    record = {k: meta.get(k) for k in ("well", "site", "stem", "names", "planes", "step")}
    stack = pixels[None] if pixels.ndim == 3 else pixels[None, None]
    layer = next((l for l in viewer.layers if l.name == name
                  and l.metadata.get("vfsmount", {}).get("kind") == "stream"), None)
    if layer is not None and layer in _stacks and layer.data.shape[1:] == stack.shape[1:] \
            and layer.data.dtype == stack.dtype:
        import dask.array as da        # a lazy stack of what came: no copy of the older fields
        arrays = _stacks[layer] = _stacks[layer][-(KEEP - 1):] + [stack[0]]
        layer.metadata["vfsmount"]["fields"] = layer.metadata["vfsmount"]["fields"][
            -(KEEP - 1):] + [record]
        layer.data = da.stack(arrays)
    else:
        scale, units = _scale(meta)
        lo, hi = float(pixels.min()), float(pixels.max())
        layer = viewer.add_image(stack, name=name, scale=scale, units=units,
                                 contrast_limits=[lo, hi if hi > lo else lo + 1],
                                 metadata={"vfsmount": {"kind": "stream", "output": meta["output"],
                                                        "fields": [record]}})
        _stacks[layer] = [stack[0]]
    viewer.dims.set_current_step(0, layer.data.shape[0] - 1)
    return layer
