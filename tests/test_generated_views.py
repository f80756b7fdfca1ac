"""A plate view still being made (a large plate's load_data.csv) never holds up the mount.

The views of a plate read well by well are made on first use, which for 1,000,000 planes takes
a minute. Until then `ls` of the mount names them at once (name and type only), a stat of one
waits in a worker for its size, and every other request is answered meanwhile.
Here the making is held up for real: one well's document is a FIFO that the test writes only
once it has seen the rest of the mount answer.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from benchmarks.foreign_zarr import write_large_plate


@pytest.fixture
def held_store(tmp_path) -> tuple[Path, Path, bytes]:
    """A small NGFF plate of 6 wells whose last well's document is a FIFO (held)."""
    store = tmp_path / "plate.ome.zarr"
    write_large_plate(store, rows=2, columns=3, fields=1, lead=(1, 1), shape=(64, 64))
    doc = store / "B" / "3" / ".zattrs"
    content = doc.read_bytes()
    doc.unlink()
    os.mkfifo(doc)
    yield store, doc, content
    # never leave a reader blocked on it (a failed test): open it for writing without waiting
    try:
        fd = os.open(doc, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


def _within(seconds: float, what: str, fn):
    """fn() in a thread, failed if it takes longer (a mount held up would hang the test;
    the fixture then releases the held well, so the daemon and the thread end too)."""
    out: dict = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"{what} took longer than {seconds} s: the view being made held it up")
    return out["result"]


def test_a_view_being_made_holds_up_nothing(held_store, mounts):
    store, fifo, content = held_store
    mnt = mounts.mount(store)
    names = _within(5, "ls of the mount", lambda: sorted(os.listdir(mnt)))
    assert "load_data.csv" in names and "plate.companion.ome" in names, names
    stat: dict = {}
    waiter = threading.Thread(target=lambda: stat.setdefault(
        "size", os.stat(mnt / "load_data.csv").st_size), daemon=True)
    waiter.start()                      # asks for the size: the views are made now, and wait
    time.sleep(1.0)
    assert waiter.is_alive() and "size" not in stat, "the view was made past the held well"
    # meanwhile the mount answers: the root again, a folder's attributes, another view's name
    _within(3, "the root, images/ and the mount's attributes",
            lambda: (os.listdir(mnt), os.stat(mnt / "images"), os.stat(mnt)))
    with open(fifo, "wb") as f:         # the held well's document: the view can be made
        f.write(content)
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "the stat never returned"
    data = (mnt / "load_data.csv").read_bytes()
    assert stat["size"] == len(data) > 0
    rows = data.decode().splitlines()
    assert len(rows) == 1 + 6, rows     # a header and one image set per well (one field)
    assert json.loads(content)["well"]
