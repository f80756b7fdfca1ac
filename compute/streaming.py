"""Live streaming of a run's results to a viewer (napari), never slowing the run.

``vfsmount run PIPELINE PLATE --stream napari[:ADDRESS]`` puts the stream's address in the
output sink; wherever a stack of results is written (``compute.execution``), :func:`publish`
hands it to this process's :class:`StreamSender`, which queues it (bounded in frames and
bytes) for a thread of its own that sends it over ZeroMQ (a PUSH socket connecting to the
viewer's PULL socket; ZeroMQ is what napari's own console already runs on). Nothing here
waits on the viewer: with no viewer listening, or one that falls behind, a result that does
not fit the queue is dropped, and the run says so once (a warning), then counts.

A message is two frames: a JSON header (what the result is: output, step, stem, plane names,
well, site, channel, z and t of each plane, shape, dtype, physics) and the pixels, C order.
The receiving side is ``vfsmount.napari.stream``.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "tcp://127.0.0.1:5577"
PROTOCOL = 1
MAX_FRAMES = 16                  # results waiting to be sent, at most ...
MAX_BYTES = 256 << 20            # ... and at most this many bytes of pixels
SEND_TIMEOUT_S = 2.0             # a viewer that takes a frame longer than this is "slow": drop it
DRAIN_S = 3.0                    # at the run's end, what a listening viewer gets to take the rest


def parse_target(text: str) -> str:
    """``napari``, ``napari:PORT``, ``napari:HOST:PORT`` or ``napari:tcp://...`` / ``ipc://...``
    -> a ZeroMQ address."""
    kind, _, rest = text.partition(":")
    if kind != "napari":
        raise ValueError(f"--stream {text!r}: only napari[:ADDRESS] is supported (Fiji: see the "
                         "README, 'napari')")
    if not rest:
        return DEFAULT_ADDRESS
    if "://" in rest:
        return rest
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"--stream {text!r}: ADDRESS is PORT, HOST:PORT, tcp://HOST:PORT or "
                         "ipc://PATH")
    return f"tcp://{host or '127.0.0.1'}:{port}"


@dataclass
class StreamReport:
    address: str
    published: int = 0            # results handed to the stream
    sent: int = 0
    dropped: int = 0              # no viewer, a slow viewer, or a full queue
    peak_queued: int = 0          # the most results waiting to be sent at once

    def line(self) -> str:
        text = f"stream {self.address}: {self.sent} of {self.published} results sent"
        text += (f", {self.dropped} dropped (no viewer listening, or it fell behind)"
                 if self.dropped else "")
        return text + f"; at most {self.peak_queued} queued"


@dataclass
class StreamSender:
    """One ZeroMQ PUSH socket and its sending thread (see the module docstring)."""

    address: str
    max_frames: int = MAX_FRAMES
    max_bytes: int = MAX_BYTES
    report: StreamReport = field(init=False)

    def __post_init__(self) -> None:
        import zmq
        self.report = StreamReport(self.address)
        self._queue: queue.Queue = queue.Queue()
        self._bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = float("inf")
        self._warned = False
        self._connected = False
        self._context = zmq.Context()            # its own: closing it flushes what is sent
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.IMMEDIATE, 1)     # queue only to a viewer that is there
        self._socket.setsockopt(zmq.SNDHWM, 4)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._events = self._socket.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._socket.connect(self.address)
        self._thread = threading.Thread(target=self._run, name="vfsmount-stream", daemon=True)
        self._thread.start()

    def publish(self, header: dict, pixels: np.ndarray) -> bool:
        """Queue one result; False (and a count) when it does not fit. Never waits."""
        with self._lock:
            self.report.published += 1
            fits = not self._stop.is_set() and self._queue.qsize() < self.max_frames \
                and self._bytes + pixels.nbytes <= self.max_bytes
            if fits:
                self._bytes += pixels.nbytes
                self.report.peak_queued = max(self.report.peak_queued, self._queue.qsize() + 1)
        if not fits:
            self._dropped("the queue is full")
            return False
        pixels = np.array(pixels, order="C", copy=True)   # the run may reuse its buffers
        header = {**header, "protocol": PROTOCOL, "shape": list(pixels.shape),
                  "dtype": pixels.dtype.str}
        self._queue.put((json.dumps(header).encode(), pixels))
        return True

    def _dropped(self, why: str, count: int = 1) -> None:
        with self._lock:
            self.report.dropped += count
            first, self._warned = not self._warned, True
        if first:
            log.warning("stream %s: %s, so results are dropped (the run goes on; counted at the "
                        "end). Is a viewer listening? `vfsmount napari`", self.address, why)

    def _read_events(self) -> None:
        import zmq
        from zmq.utils.monitor import recv_monitor_message
        while self._events.poll(0):
            event = recv_monitor_message(self._events)["event"]
            self._connected = event == zmq.EVENT_CONNECTED

    def _giving_up(self) -> bool:
        """Stopping with no viewer connected, or past the deadline: what is queued is dropped."""
        return self._stop.is_set() and (not self._connected or time.monotonic() > self._deadline)

    def _run(self) -> None:
        while True:
            self._read_events()
            if self._stop.is_set() and (self._queue.empty() or self._giving_up()):
                break
            try:
                header, pixels = self._queue.get(timeout=0.02)
            except queue.Empty:
                continue
            sent = self._send(header, pixels)
            with self._lock:
                self._bytes -= pixels.nbytes
                self.report.sent += sent
            if not sent:
                self._dropped("no viewer takes them")

    def _send(self, header: bytes, pixels: np.ndarray) -> bool:
        import zmq
        deadline = time.monotonic() + SEND_TIMEOUT_S
        while time.monotonic() < deadline and not self._giving_up():
            if self._socket.poll(20, zmq.POLLOUT):
                self._socket.send_multipart([header, pixels], copy=False)
                return True
            self._read_events()
        return False

    def close(self, timeout: float = DRAIN_S) -> StreamReport:
        """Send what is queued while a viewer takes it (at most ``timeout`` seconds), then stop."""
        self._deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(timeout + 2 * SEND_TIMEOUT_S)
        left = self._queue.qsize()
        if left:
            self._dropped("the viewer did not take them before the run ended", left)
        self._socket.disable_monitor()
        self._events.close(linger=0)
        self._socket.close(linger=int(1000 * min(timeout, 2.0)))
        self._context.term()                     # waits (at most the linger) for the last frames
        return self.report


_senders: dict[str, StreamSender] = {}
_senders_lock = threading.Lock()


def sender(address: str) -> StreamSender:
    """This process's sender to ``address`` (a Dask worker makes its own)."""
    with _senders_lock:
        s = _senders.get(address)
        if s is None:
            s = _senders[address] = StreamSender(address)
        return s


def finish(address: str) -> StreamReport | None:
    """Close this process's sender to ``address``: its report, or None if it sent nothing."""
    with _senders_lock:
        s = _senders.pop(address, None)
    return s.close() if s is not None else None


def publish(sink, group, names: Sequence[str], coords: Sequence[Any], stack: Any,
            step: str | None) -> None:
    """One written stack of results to the sink's stream (when it has one)."""
    physics = sink.physics or {}
    channels = {p.channel for p in coords}
    info = (physics.get("channel_info") or {})
    header = {"output": sink.name, "step": step, "stem": group.stem, "names": list(names),
              "well": coords[0].well, "site": coords[0].site,
              "planes": [[p.channel, p.z, p.t] for p in coords],
              "channel": next(iter(channels)) if len(channels) == 1 else None,
              "pixel_size": physics.get("pixel_size"), "z_spacing": physics.get("z_spacing"),
              "time_interval": physics.get("time_interval"),
              "channel_info": {str(c): info.get(str(c), info.get(c, {})) for c in channels}}
    sender(sink.stream).publish(header, np.asarray(stack))
