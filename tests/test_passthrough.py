"""Kernel FUSE passthrough (issue 29), on real mounts.

The daemon counts the READ and WRITE requests it serves, and writes them with its data path
to its state file (`vfsmount list --json` shows it): a file served by passthrough is read
and written without one request reaching the daemon. Where passthrough is not available
(plain pyfuse3, an old kernel, no CAP_SYS_ADMIN) the passthrough tests skip with the reason
the mount gives, and the fallback tests still run.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends.plates.plate import Plate
from backends.plates.sample_plates import PlateSpec, make_imagexpress_plate
from vfsmount.passthrough import DataPath

from .conftest import mount_state as _state, run_cli


def _reuses(state: dict) -> int:
    """Opens served by a kept backing file: by the daemon (one stat of the source) or by
    pyfuse3's fast lane (the same stat, in its reader thread, without Python)."""
    return state["backing_reuses"] + state.get("fastlane_opens", 0)


def _opens(state: dict) -> int:
    return state["open_requests"] + state.get("fastlane_opens", 0)


def _releases(state: dict) -> int:
    return state["release_requests"] + state.get("fastlane_releases", 0)


def _require_passthrough(mnt: Path) -> dict:
    state = _state(mnt)
    assert state, f"no state file for {mnt}"
    if state["data_path"] != "passthrough":
        pytest.skip(f"passthrough unavailable here: {state['reason']}")
    return state


@pytest.fixture
def plate(tmp_path) -> Path:
    """A small generated ImageXpress plate of its own (sources get replaced in one test)."""
    return make_imagexpress_plate(tmp_path / "plate", PlateSpec(
        wells=("A01",), sites=1, channels=2, z=2, t=1, shape=(256, 384)))


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _cat(path: Path) -> bytes:
    res = subprocess.run(["cat", str(path)], capture_output=True)
    assert res.returncode == 0, f"cat {path}: {res.stderr.decode()}"
    return res.stdout


def test_vendor_files_are_read_without_the_daemon(plate, mounts):
    mnt = mounts.mount(plate)
    before = _require_passthrough(mnt)
    sources = {_md5(p.read_bytes()) for p in plate.rglob("*.tif") if p.is_file()}
    names = sorted(os.listdir(mnt / "workspace"))
    assert names
    for name in names:
        assert _md5(_cat(mnt / "workspace" / name)) in sources, name
    state = _state(mnt, until=lambda s: s["passthrough_opens"] >= before["passthrough_opens"]
                   + len(names))
    assert state["passthrough_opens"] >= before["passthrough_opens"] + len(names), state
    assert state["read_requests"] == before["read_requests"] == 0, state
    # each source opened and registered once; after the last close its backing file stays
    # registered (kept) for the next open
    kept = _state(mnt, until=lambda s: s["backing_kept"] == len(names))
    assert kept["backing_kept"] == kept["backing_ids"] == kept["backing_registrations"] \
        == len(names), kept
    # reading them again opens no source: the kept backing files serve, nothing reaches READ
    for name in names:
        assert _md5(_cat(mnt / "workspace" / name)) in sources, name
    again = _state(mnt, until=lambda s: _reuses(s) >= _reuses(kept) + len(names)
                   and s["backing_kept"] == len(names))
    assert _reuses(again) == _reuses(kept) + len(names), again
    assert again["backing_registrations"] == len(names) and again["read_requests"] == 0, again
    # a second reader of an open file shares its inode's one backing id
    with open(mnt / "workspace" / names[0], "rb") as a, open(mnt / "workspace" / names[0], "rb") as b:
        assert a.read() == b.read()
        both = _state(mnt, until=lambda s: s["backing_kept"] == len(names) - 1)
        assert both["backing_ids"] == len(names) and both["backing_kept"] == len(names) - 1, both
    assert _state(mnt, until=lambda s: s["backing_kept"] == len(names))["backing_ids"] \
        == len(names)   # last release: kept again
    # images/ is calibrated (a new first IFD): other bytes than the vendor's, so the daemon
    calibrated = _cat(mnt / "images" / sorted(os.listdir(mnt / "images"))[0])
    assert _md5(calibrated) not in sources
    assert _state(mnt, until=lambda s: s["read_requests"] > 0)["read_requests"] > 0
    listed = json.loads(run_cli("list", "--json").stdout)
    row = next(r for r in listed if r["mountpoint"] == os.path.realpath(mnt))
    assert row["state"]["data_path"] == "passthrough"
    assert "data path: passthrough" in mounts.log(mnt)


def test_forced_off_serves_through_the_daemon(plate, mounts, monkeypatch):
    mnt = mounts.mount(plate, "--no-passthrough")
    state = _state(mnt)
    assert state["data_path"] == "daemon"
    assert "forced off (--no-passthrough)" in state["reason"]
    sources = {_md5(p.read_bytes()) for p in plate.rglob("*.tif") if p.is_file()}
    names = sorted(os.listdir(mnt / "workspace"))
    for name in names:
        assert _md5(_cat(mnt / "workspace" / name)) in sources
    state = _state(mnt, until=lambda s: s["read_requests"] >= len(names))
    assert state["read_requests"] >= len(names) and state["passthrough_opens"] == 0, state
    out = run_cli("list").stdout
    assert "forced off (--no-passthrough)" in out and " daemon " in out
    # the environment switch, as the daemon reads it
    monkeypatch.setenv("VFSMOUNT_PASSTHROUGH", "0")
    forced = DataPath.for_mount(True)
    assert not forced.wanted and "VFSMOUNT_PASSTHROUGH=0" in forced.reason


def test_source_replaced_while_mounted(plate, mounts):
    """The mount's rule: a source replaced while mounted is served new from the next open.
    The kernel passes one backing file per inode through, so while a file opened before the
    replacement is still open, new opens share the version it reads."""
    mnt = mounts.mount(plate)
    _require_passthrough(mnt)
    name = sorted(os.listdir(mnt / "workspace"))[0]
    # (from the mapping: `vfsmount info` of the file would open it, and keep a backing file)
    source = plate / Plate.open(plate).entry("workspace")["workspace_mapping"][name]
    old = source.read_bytes()
    new = b"II*\x00" + os.urandom(len(old) + 1000)
    with open(mnt / "workspace" / name, "rb") as held:
        assert held.read(64) == old[:64]
        tmp = source.with_name("replacement.tmp")
        tmp.write_bytes(new)
        os.replace(tmp, source)
        assert _cat(mnt / "workspace" / name)[:len(old)] == old     # the open version
        held.seek(0)
        assert held.read() == old
    # the old version's backing file is released at its last close, never kept
    closed = _state(mnt, until=lambda s: _releases(s) >= 2)    # held's and cat's
    assert _releases(closed) == _opens(closed) == 2, closed
    assert closed["backing_ids"] == closed["backing_kept"] == 0, closed
    assert _cat(mnt / "workspace" / name) == new                # next open: the new file
    kept = _state(mnt, until=lambda s: _releases(s) >= 3)
    assert kept["backing_kept"] == kept["backing_ids"] == 1, kept
    assert _cat(mnt / "workspace" / name) == new                # the kept one, reused
    reused = _state(mnt, until=lambda s: _releases(s) >= 4)
    assert _reuses(reused) == _reuses(kept) + 1, reused
    assert reused["backing_registrations"] == kept["backing_registrations"], reused
    newest = b"II*\x00" + os.urandom(len(old))                  # replaced while kept
    tmp.write_bytes(newest)
    os.replace(tmp, source)
    assert _cat(mnt / "workspace" / name) == newest
    swapped = _state(mnt, until=lambda s: _releases(s) >= 5)
    assert swapped["backing_registrations"] == kept["backing_registrations"] + 1, swapped
    assert swapped["backing_ids"] == 1, swapped     # the old version's released, not kept
    newer = os.urandom(4096)
    source.write_bytes(newer)                                   # changed in place
    assert _cat(mnt / "workspace" / name) == newer
    assert "source replaced while open" in mounts.log(mnt)
    assert _state(mnt)["read_requests"] == 0


def _require_fast_lane(mnt: Path) -> dict:
    state = _require_passthrough(mnt)
    if not state.get("fast_lane"):
        pytest.skip("pyfuse3 without the fast lane (built without patches/"
                    "pyfuse3-passthrough.patch of this tree: run scripts/setup.sh)")
    return state


def test_reopens_are_answered_by_the_fast_lane(plate, mounts):
    """A kept backing file's next opens are answered by pyfuse3's reader thread: no OPEN or
    RELEASE reaches the daemon's Python, the bytes are the source's, a changed source is
    seen at the very next open."""
    mnt = mounts.mount(plate)
    _require_fast_lane(mnt)
    mapping = Plate.open(plate).entry("workspace")["workspace_mapping"]
    names = sorted(os.listdir(mnt / "workspace"))
    for name in names:                      # first opens: the daemon registers and keeps
        assert _cat(mnt / "workspace" / name) == (plate / mapping[name]).read_bytes()
    kept = _state(mnt, until=lambda s: s["backing_kept"] == len(names)
                  and s["release_requests"] == len(names))
    assert kept["backing_kept"] == len(names), kept
    for _ in range(3):
        for name in names:
            assert _cat(mnt / "workspace" / name) == (plate / mapping[name]).read_bytes()
    fast = _state(mnt, until=lambda s: s["fastlane_releases"] >= kept["fastlane_releases"]
                  + 3 * len(names))
    assert fast["fastlane_opens"] == kept["fastlane_opens"] + 3 * len(names), fast
    assert fast["fastlane_releases"] == kept["fastlane_releases"] + 3 * len(names), fast
    assert fast["open_requests"] == kept["open_requests"], fast     # none reached Python
    assert fast["release_requests"] == kept["release_requests"], fast
    assert fast["read_requests"] == 0 and fast["backing_registrations"] == len(names), fast
    assert "fast lane" in fast["reason"]
    # replaced: the fast lane's stat sees it and hands the open to the daemon
    source = plate / mapping[names[0]]
    new = b"II*\x00" + os.urandom(5000)
    tmp = source.with_name("replacement.tmp")
    tmp.write_bytes(new)
    os.replace(tmp, source)
    assert _cat(mnt / "workspace" / names[0]) == new
    seen = _state(mnt, until=lambda s: s["release_requests"] > fast["release_requests"])
    assert seen["fastlane_fallbacks"] == fast["fastlane_fallbacks"] + 1, seen
    assert seen["backing_registrations"] == len(names) + 1, seen
    # changed in place, same size: the mtime tells
    same_size = os.urandom(len(new))
    time.sleep(0.01)
    source.write_bytes(same_size)
    assert _cat(mnt / "workspace" / names[0]) == same_size


def test_fast_lane_open_held_while_the_source_is_replaced(plate, mounts):
    """An open the fast lane answered keeps its inode's backing file: opens while it is open
    share that version (the kernel's rule), the next after its close reads the new one, and
    the old backing file is released once the fast lane's open is closed."""
    mnt = mounts.mount(plate)
    _require_fast_lane(mnt)
    name = sorted(os.listdir(mnt / "workspace"))[0]
    source = plate / Plate.open(plate).entry("workspace")["workspace_mapping"][name]
    old = source.read_bytes()
    assert _cat(mnt / "workspace" / name) == old
    kept = _state(mnt, until=lambda s: s["backing_kept"] == 1 and s["release_requests"] == 1)
    with open(mnt / "workspace" / name, "rb") as held:          # answered by the fast lane
        opened = _state(mnt, until=lambda s: s["fastlane_opens"] > kept["fastlane_opens"])
        assert opened["fastlane_opens"] == kept["fastlane_opens"] + 1, opened
        assert opened["backing_kept"] == 0, opened              # in use by the fast lane's open
        new = b"II*\x00" + os.urandom(len(old) + 100)
        tmp = source.with_name("replacement.tmp")
        tmp.write_bytes(new)
        os.replace(tmp, source)
        assert _cat(mnt / "workspace" / name)[:len(old)] == old   # shares the open version
        assert held.read() == old
        during = _state(mnt, until=lambda s: s["release_requests"] == 2)
        assert during["backing_ids"] == 1, during               # not released: still open
    # (the kernel sends RELEASE after close() returns: the next open waits for it here)
    _state(mnt, until=lambda s: s["fastlane_releases"] > opened["fastlane_releases"])
    assert _cat(mnt / "workspace" / name) == new
    after = _state(mnt, until=lambda s: s["backing_ids"] == 1 and s["backing_kept"] == 1
                   and s["backing_registrations"] == 2)
    assert after["backing_registrations"] == 2 and after["backing_ids"] == 1, after
    assert after["read_requests"] == 0, after


def test_fast_lane_forced_off(plate, mounts, monkeypatch):
    monkeypatch.setenv("VFSMOUNT_FAST_LANE", "0")
    mnt = mounts.mount(plate)
    state = _require_passthrough(mnt)
    assert not state["fast_lane"] and "fast lane" not in state["reason"], state
    names = sorted(os.listdir(mnt / "workspace"))
    for _ in range(2):
        for name in names:
            _cat(mnt / "workspace" / name)
    again = _state(mnt, until=lambda s: s["release_requests"] == 2 * len(names))
    assert again["open_requests"] == 2 * len(names), again     # every open reaches Python
    assert again["backing_reuses"] == len(names), again
    assert again.get("fastlane_opens", 0) == 0, again


def test_outputs_writes_pass_through_and_commit_at_close(tmp_path, plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    before = _require_passthrough(mnt)
    data = os.urandom(3 << 20)
    local = tmp_path / "local.bin"
    local.write_bytes(data)
    (mnt / "outputs" / "run").mkdir()
    subprocess.run(["cp", str(local), str(mnt / "outputs" / "run" / "a.bin")], check=True)
    assert (plate / "outputs" / "run" / "a.bin").read_bytes() == data     # committed at close
    state = _state(mnt, until=lambda s: s["passthrough_opens"] > before["passthrough_opens"])
    assert state["write_requests"] == 0, state
    # rewriting part of a committed file in place (no O_TRUNC) is committed too
    with open(mnt / "outputs" / "run" / "a.bin", "r+b") as f:
        f.seek(100)
        f.write(b"patched")
    expect = data[:100] + b"patched" + data[107:]
    assert (plate / "outputs" / "run" / "a.bin").read_bytes() == expect
    assert (mnt / "outputs" / "run" / "a.bin").read_bytes() == expect
    assert _state(mnt)["write_requests"] == 0
    assert not list((plate / "outputs").rglob("*.part"))


def test_kill9_during_passthrough_writes_commits_nothing_broken(plate, mounts):
    mnt = mounts.mount(plate, "--writable")
    _require_passthrough(mnt)
    whole = os.urandom(1 << 20)
    (mnt / "outputs" / "done.bin").write_bytes(whole)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "f = open(sys.argv[1], 'wb')\n"
        "while True:\n"
        "    f.write(os.urandom(1 << 16)); f.flush(); time.sleep(0.002)\n"),
        str(mnt / "outputs" / "partial.bin")], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _state(mnt).get("passthrough_opens", 0) < 2:
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(mounts.pids[mnt], signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert (plate / "outputs" / "done.bin").read_bytes() == whole
    assert not (plate / "outputs" / "partial.bin").exists()      # never committed
    again = mounts.mount(plate, "--writable")          # (auto_unmount clears the dead one)
    assert sorted(os.listdir(again / "outputs")) == ["done.bin"]
    assert (again / "outputs" / "done.bin").read_bytes() == whole
