"""A byte-bounded LRU cache of decoded arrays, safe to share between threads.

Readers that miss on the same key wait for the first one's decode instead of
decoding it again (eight readers of one WELL chunk decode it once).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np


class ArrayCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, threading.Event] = {}
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get_or_load(self, key: Hashable, load: Callable[[], np.ndarray]) -> np.ndarray:
        while True:
            with self._lock:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                    self.hits += 1
                    return value
                event = self._inflight.get(key)
                if event is None:
                    event = self._inflight[key] = threading.Event()
                    self.misses += 1
                    break
            event.wait()  # someone else is decoding it; then look again
        try:
            value = load()
            value.setflags(write=False)
            with self._lock:
                if value.nbytes <= self.max_bytes:
                    self._items[key] = value
                    self._bytes += value.nbytes
                    while self._bytes > self.max_bytes:
                        _k, old = self._items.popitem(last=False)
                        self._bytes -= old.nbytes
            return value
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            event.set()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def discard(self, key: Hashable) -> None:
        """Forget one entry (its source was rewritten)."""
        with self._lock:
            value = self._items.pop(key, None)
            if value is not None:
                self._bytes -= value.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
