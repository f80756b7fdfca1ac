"""The written state machine of a file in outputs/ (issue 27): every transition of
``outfile.TRANSITIONS`` is taken by a real file in a real outputs area (no FUSE: the node
calls fs.py makes), and an event a state has no row for is refused. Also: a read-only area
has no write capabilities and creates nothing."""
from __future__ import annotations

import errno
import os
import types

import pytest

from vfsmount.errors import CommitError
from vfsmount.outfile import TRANSITIONS, State, WritableOutFile
from vfsmount.outputs import OutputsArea

S = State
HUGE = (1 << 63) - 1        # an offset no write can reach: the write fails


@pytest.fixture
def area(tmp_path):
    plate = types.SimpleNamespace(path=tmp_path)
    return OutputsArea(plate, tmp_path / "outputs", tmp_path / ".staging", writable=True)


@pytest.fixture
def taken(monkeypatch):
    """Every (state, event) taken while the test runs."""
    seen: set[tuple[State, str]] = set()
    go = WritableOutFile._go

    def recording(self, event):
        seen.add((self.state, event))
        go(self, event)
    monkeypatch.setattr(WritableOutFile, "_go", recording)
    return seen


def writer(area, name: str, flags: int = os.O_WRONLY):
    node = area.top.find(name) or area.top.create(os.fsencode(name))
    return node, node.open_file(flags).handle


def committed(area, name: str) -> bytes:
    return (area.plate.path / "outputs" / name).read_bytes()


def test_every_transition(area, taken):
    top = area.top
    # IDLE -stage-> CLEAN -change-> DIRTY -change-> DIRTY -commit-> IDLE
    node = top.create(b"a.txt")
    assert node.state is S.CLEAN
    h = node.open_file(os.O_WRONLY).handle
    node.write(h, 0, b"12")
    node.write(h, 2, b"34")
    assert node.state is S.DIRTY
    assert node.flush(h) and node.state is S.IDLE and committed(area, "a.txt") == b"1234"
    node.release(h)
    # CLEAN -drop-> IDLE: opened for writing, nothing changed, last close
    node, h = writer(area, "a.txt", os.O_RDWR)
    assert node.state is S.CLEAN
    node.release(h)
    assert node.state is S.IDLE and committed(area, "a.txt") == b"1234"
    # CLEAN -commit-> IDLE: fsync of an unchanged copy
    node, h = writer(area, "a.txt", os.O_RDWR)
    assert node.fsync(h) and node.state is S.IDLE
    node.release(h)
    # CLEAN -refuse-> REFUSED -refuse-> REFUSED -change-> DIRTY -refuse-> REFUSED
    (area.plate.path / "outputs" / "bad.tif").write_bytes(b"not a tiff")
    node, h = writer(area, "bad.tif", os.O_RDWR)
    with pytest.raises(CommitError) as e:
        node.fsync(h)
    assert e.value.errno == errno.EINVAL and e.value.kept and node.state is S.REFUSED
    with pytest.raises(CommitError):
        node.flush(h)
    assert node.state is S.REFUSED
    node.write(h, 0, b"still not")
    assert node.state is S.DIRTY
    with pytest.raises(CommitError):
        node.flush(h)
    assert node.state is S.REFUSED and committed(area, "bad.tif") == b"not a tiff"
    # REFUSED -drop-> IDLE: the last close refuses it for good
    node.release(h)
    assert node.state is S.IDLE and committed(area, "bad.tif") == b"not a tiff"
    # DIRTY -refuse-> REFUSED -commit-> IDLE: renamed to a name that takes any bytes
    node, h = writer(area, "new.tif")
    node.write(h, 0, b"bytes")
    with pytest.raises(CommitError):
        node.flush(h)
    assert node.state is S.REFUSED
    with area.lock:            # (its writer alone sees a refused file: moved by node)
        node.move_to(top, "new.bin")
    assert node.flush(h) and node.state is S.IDLE and committed(area, "new.bin") == b"bytes"
    node.release(h)
    # DIRTY -drop-> IDLE: a last close that is refused
    node, h = writer(area, "last.tif")
    node.write(h, 0, b"x")
    node.release(h)
    assert node.state is S.IDLE and not (area.plate.path / "outputs" / "last.tif").exists()
    # CLEAN/DIRTY/REFUSED -fail-> FAILED -fail-> FAILED -change-> FAILED -drop-> IDLE
    for start in (S.CLEAN, S.DIRTY, S.REFUSED):
        node, h = writer(area, "f.tif")
        if start is not S.CLEAN:
            node.write(h, 0, b"x")
        if start is S.REFUSED:
            with pytest.raises(CommitError):
                node.flush(h)
        assert node.state is start
        with pytest.raises(OSError):
            node.write(h, HUGE, b"x")
        assert node.state is S.FAILED
        with pytest.raises(OSError):
            node.write(h, HUGE, b"x")
        node.write(h, 0, b"y")
        assert node.state is S.FAILED
        with pytest.raises(CommitError) as e:    # the lost write is reported, nothing stored
            node.flush(h)
        assert e.value.errno == errno.EINVAL and node.state is S.IDLE
        node.release(h)
        assert top.find("f.tif") is None           # nothing was stored
    # CLEAN/DIRTY/REFUSED/FAILED -displace-> DISPLACED -change/fail-> DISPLACED -drop-> IDLE
    for start in (S.CLEAN, S.DIRTY, S.REFUSED, S.FAILED):
        node, h = writer(area, "gone.tif")
        if start is not S.CLEAN:
            node.write(h, 0, b"x")
        if start is S.REFUSED:
            with pytest.raises(CommitError):
                node.flush(h)
        if start is S.FAILED:
            with pytest.raises(OSError):
                node.write(h, HUGE, b"x")
        assert node.state is start
        other, oh = writer(area, "other.txt")      # renamed over it (a refused file has no
        other.write(oh, 0, b"other")               # name to unlink by)
        other.release(oh)
        top.rename(b"other.txt", top, b"gone.tif")
        assert node.state is S.DISPLACED
        node.write(h, 0, b"z")
        with pytest.raises(OSError):
            node.write(h, HUGE, b"x")
        assert node.state is S.DISPLACED
        node.release(h)
        assert node.state is S.IDLE and committed(area, "gone.tif") == b"other"
        top.unlink(b"gone.tif")
    assert os.listdir(area.plate.path / ".staging") == []         # no staging file left
    assert taken == set(TRANSITIONS), f"not taken: {set(TRANSITIONS) - taken}"


def test_an_event_without_a_row_is_refused(area):
    node = area.top.create(b"x.txt")
    assert node.state is S.CLEAN
    with pytest.raises(AssertionError, match="no transition stage from CLEAN"):
        node._go("stage")


def test_read_only_area_has_no_write_capabilities(tmp_path):
    plate = types.SimpleNamespace(path=tmp_path)
    (tmp_path / "outputs" / "d").mkdir(parents=True)
    (tmp_path / "outputs" / "f.txt").write_text("f")
    area = OutputsArea(plate, tmp_path / "outputs", tmp_path / ".staging", writable=False)
    assert area.disk is None and not (tmp_path / ".staging").exists()
    top, f, d = area.top, area.top.find("f.txt"), area.top.find("d")
    calls = [lambda: top.create(b"n"), lambda: top.mkdir(b"n"), lambda: top.unlink(b"f.txt"),
             lambda: top.rmdir(b"d"), lambda: top.rename(b"f.txt", top, b"g", 0),
             lambda: top.make_special("link", b"n"), lambda: top.setxattr(b"user.k", b"v"),
             lambda: f.open_file(os.O_WRONLY), lambda: f.open_file(os.O_RDWR | os.O_TRUNC),
             lambda: f.set_attrs(0, None), lambda: f.set_attrs(None, 1), lambda: f.truncate(0),
             lambda: f.write(None, 0, b"x"), lambda: f.setxattr(b"user.k", b"v"),
             lambda: d.set_attrs(None, 1), lambda: d.create(b"n")]
    for call in calls:
        with pytest.raises(OSError) as e:
            call()
        assert e.value.errno == errno.EROFS
    assert (tmp_path / "outputs" / "f.txt").read_text() == "f"
    assert sorted(os.listdir(tmp_path)) == ["outputs"]
    assert oct(top.mode & 0o777) == "0o555" and oct(f.mode & 0o777) == "0o444"
