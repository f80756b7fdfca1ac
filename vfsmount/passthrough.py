"""The data path of a mount: kernel FUSE passthrough where a file's bytes are a real file.

With passthrough (Linux >= 6.9, libfuse >= 3.17.1, the patched pyfuse3 of
``patches/pyfuse3-passthrough.patch``) the daemon registers an open file's ``backing_fd``
with the kernel once, and the kernel then serves that file's reads and writes from it: no
request reaches the daemon, no byte crosses the FUSE channel. Everything else (synthesized
TIFFs, calibrated views, outputs/ readers, any open where passthrough is refused) goes
through the daemon's ``read``/``write`` as before.

The decisions, once per mount and once per open, live here (``fs.py`` only asks):
- per mount: is passthrough wanted (``--no-passthrough``, ``VFSMOUNT_PASSTHROUGH=0``), does
  this pyfuse3 have it, did the kernel grant it at init, may this process register backing
  files (CAP_SYS_ADMIN). The answer and its reason are logged and shown by `vfsmount list`.
- per open: one backing id per inode (registered at its first passthrough open, as
  libfuse's example/passthrough_hp does). At its last release it is released, or, for a
  read-only source whose node says so (``OpenFile.keep_backing``), kept registered for a
  while (``KEEP_BACKINGS``, ``KEEP_SECONDS``): the next open of that inode asks the node
  whether the source is unchanged (one stat) and reuses it, opening nothing; a changed
  source gets a new one. The kernel refuses (EIO) an
  open whose io mode contradicts the inode's other opens, so an inode with page-cached opens
  gets no passthrough, and every open of an inode in passthrough shares its backing file.
  The daemon's view lags the kernel's (it hears of a release after the kernel has done it),
  never leads it, so these rules never ask the kernel for a mode it refuses.
  A registration the kernel refuses (a backing file system it cannot stack on, ...) falls
  back to the daemon for that open, with one log line per kind of error.
- the fast lane (pyfuse3 of the patch, ``fastlane_*``): while a kept backing file waits for
  its next open, its inode is handed to a C reader thread that answers that open itself if
  one stat of the source (a file on a local disk) finds the version the backing file holds:
  no Python, about a tenth of the round trip. Any other open of the inode comes here, which
  first takes the inode back (``fastlane_revoke``); opens the fast lane answered and that are
  still open count as opens of the backing file, so it is shared, and released only once
  they are closed (``_draining``). A kept backing file the fast lane keeps using is not idle.
"""
from __future__ import annotations

import errno
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import pyfuse3

from backends.storage.mountinfo import on_local_disk

log = logging.getLogger("vfsmount.passthrough")

ENV_SWITCH = "VFSMOUNT_PASSTHROUGH"      # "0" forces the daemon data path (tests, benchmarks)
FAST_LANE_SWITCH = "VFSMOUNT_FAST_LANE"  # "0": every open reaches Python (tests, benchmarks)
CAP_SYS_ADMIN = 21

PASSTHROUGH = "passthrough"
DAEMON = "daemon"

# Backing files kept registered after their last close, so that reopening a vendor file
# costs one stat instead of opening the source and registering it again (libfuse's
# passthrough_hp keeps one per inode for as long as the kernel knows the inode). Bounded in
# number and in time, so that a source deleted or replaced in the plate is not held open
# (its disk space pinned) for long.
KEEP_BACKINGS = 512
KEEP_SECONDS = 30.0


def _switched_off(value: str) -> bool:
    return value.strip().lower() in ("0", "no", "off", "false")


def supported() -> bool:
    """This pyfuse3 can register backing files (built with the patch against libfuse >= 3.17.1)."""
    return hasattr(pyfuse3, "passthrough_open")


def _has_cap_sys_admin() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


@dataclass
class Counters:
    """What the daemon itself served: a passthrough file's reads never count here."""

    read_requests: int = 0
    write_requests: int = 0
    # the other requests a file costs (what is left per file with passthrough; benchmarks)
    lookup_requests: int = 0
    getattr_requests: int = 0
    open_requests: int = 0            # OPEN and CREATE
    flush_requests: int = 0
    release_requests: int = 0
    passthrough_opens: int = 0
    daemon_opens: int = 0
    backing_ids: int = 0              # registered now (open, or kept for the next open)
    backing_kept: int = 0             # of which no open uses now
    backing_registrations: int = 0    # sources opened and registered with the kernel
    backing_reuses: int = 0           # opens served by a kept backing file (no source opened)
    # (the fast lane's own: fastlane_opens, fastlane_releases, fastlane_fallbacks: see state())


@dataclass
class _Backing:
    backing_id: int
    opens: int = 1                # opens the daemon answered and that are not released yet
    keep: bool = False            # may stay registered once no open uses it (see OpenFile)
    idle_since: float = 0.0
    source: tuple | None = None   # (path, size, mtime_ns, inode) of its version, local source
    fast_total: int = 0           # fast-lane opens of it counted at the last expiry check


def fastlane_supported() -> bool:
    """This pyfuse3 can answer kept passthrough opens in its reader thread (the patch)."""
    return hasattr(pyfuse3, "fastlane_allow")


@dataclass
class DataPath:
    """The mount's data path; ``mode``/``reason`` say which one and why."""

    wanted: bool = True
    mode: str = DAEMON
    reason: str = "not mounted yet"
    counters: Counters = field(default_factory=Counters)
    _backing: dict = field(default_factory=dict)         # inode -> _Backing (open or kept)
    _idle: OrderedDict = field(default_factory=OrderedDict)   # inode -> None, oldest first
    _cached: dict = field(default_factory=dict)          # inode -> opens in page-cache mode
    _refusals: set = field(default_factory=set)          # errnos already logged
    _draining: set = field(default_factory=set)   # released here, fast-lane opens still open
    _local_devices: dict = field(default_factory=dict)   # st_dev -> on a local disk

    @property
    def fast_lane_wanted(self) -> bool:
        """Ask pyfuse3 for its fast lane (before init; it serves only passthrough opens)."""
        return (self.wanted and fastlane_supported()
                and not _switched_off(os.environ.get(FAST_LANE_SWITCH, "1")))

    @classmethod
    def for_mount(cls, option: bool, *, local: bool = True) -> "DataPath":
        """Before init: what the mount will ask the kernel for."""
        if not option:
            return cls(False, DAEMON, "passthrough forced off (--no-passthrough)")
        if _switched_off(os.environ.get(ENV_SWITCH, "1")):
            return cls(False, DAEMON, f"passthrough forced off ({ENV_SWITCH}=0)")
        if not supported():
            return cls(False, DAEMON, "pyfuse3 without passthrough (built against libfuse "
                                      "< 3.17.1 or without patches/pyfuse3-passthrough.patch; "
                                      "run scripts/setup.sh)")
        if not local:
            return cls(False, DAEMON, "remote plate: no local file to pass through")
        return cls(True, DAEMON, "waiting for the kernel's answer at init")

    def at_init(self) -> None:
        """After the kernel's INIT: the final answer for this mount."""
        if not self.wanted:
            pass
        elif not pyfuse3.passthrough_enabled():
            self.reason = ("kernel without FUSE passthrough (needs Linux >= 6.9 with "
                           "CONFIG_FUSE_PASSTHROUGH)")
        elif not _has_cap_sys_admin():
            self.reason = "no CAP_SYS_ADMIN: the kernel lets only it register backing files"
        else:
            self.mode = PASSTHROUGH
            self.reason = ("kernel FUSE passthrough for files whose bytes are a real file "
                           "(vendor files, outputs/ writes); the daemon serves the rest")
            if self.fast_lane:
                self.reason += ("; reopened unchanged files are answered by pyfuse3's fast "
                                "lane, without the daemon's Python")
        log.info("data path: %s (%s)", self.mode, self.reason)

    @property
    def summary(self) -> str:
        return f"{self.mode}: {self.reason}"

    # -- per open --------------------------------------------------------------------
    def kept(self, inode: int) -> bool:
        """True if ``inode`` has a backing file that may serve its next open if its source
        is unchanged (ask the node: ``open_file(flags, kept=True)``)."""
        backing = self._backing.get(inode)
        return backing is not None and backing.keep

    def open(self, inode: int, opened, label) -> tuple[int, bool] | None:
        """(backing id or 0, direct_io) for one open (``opened``: the node's ``OpenFile``;
        ``label()`` names the file in log lines); call ``release`` with the same inode and
        the id returned when the handle is released. None if ``opened.kept`` but the kept
        backing file is gone meanwhile: open the node again without ``kept``."""
        backing = self._backing.get(inode)
        if backing is not None:
            fast_open = pyfuse3.fastlane_revoke(inode) if backing.source else 0
            if opened.kept or backing.opens or fast_open:
                # The kernel refuses (EIO) any open of an inode in passthrough that is not a
                # passthrough open of the same backing file: share it, even if the node now
                # has another file (a source replaced while a file opened before still reads
                # it; this open sees that version, the next one after it closes the new one).
                if backing.opens == 0 and inode in self._idle:
                    del self._idle[inode]
                    self.counters.backing_kept -= 1
                self._draining.discard(inode)
                if opened.invalidate and opened.backing_fd is not None:
                    backing.keep = False      # an old version: closed at its last release
                    log.info("%s: source replaced while open; shares the open version until "
                             "it is closed", label())
                backing.opens += 1
                self.counters.passthrough_opens += 1
                if opened.kept:
                    self.counters.backing_reuses += 1
                return backing.backing_id, False
            self._close(inode)            # kept, but its source changed since: a new one
        if opened.kept:
            return None
        backing_fd, direct_io = opened.backing_fd, opened.direct_io
        if backing_fd is not None and self.mode == PASSTHROUGH and not self._cached.get(inode):
            backing_id = self._register(backing_fd, label)
            if backing_id:
                self._backing[inode] = _Backing(backing_id, keep=opened.keep_backing,
                                                source=self._fast_source(opened))
                self.counters.passthrough_opens += 1
                self.counters.backing_ids += 1
                self.counters.backing_registrations += 1
                return backing_id, False
        self.counters.daemon_opens += 1
        if not direct_io:
            self._cached[inode] = self._cached.get(inode, 0) + 1
        return 0, direct_io

    def _register(self, fd: int, label) -> int:
        try:
            return pyfuse3.passthrough_open(fd)
        except OSError as e:
            if e.errno == errno.EPERM:
                self.mode, self.reason = DAEMON, ("no CAP_SYS_ADMIN: the kernel refused to "
                                                  "register a backing file (EPERM)")
                log.warning("%s: data path now %s", label(), self.summary)
            elif e.errno not in self._refusals:
                self._refusals.add(e.errno)
                log.warning("%s: no passthrough (%s: %s); served by the daemon (further "
                            "refusals of this kind are not logged)", label(),
                            errno.errorcode.get(e.errno, e.errno), e.strerror)
            return 0

    def _fast_source(self, opened) -> tuple | None:
        """What the fast lane stats before answering an open of this version of the source:
        only a file on a local disk (a stat there never waits on a network) and only where
        the fast lane runs."""
        if not (opened.source_path and opened.keep_backing and self.fast_lane):
            return None
        st = os.fstat(opened.backing_fd)
        local = self._local_devices.get(st.st_dev)
        if local is None:
            local = self._local_devices[st.st_dev] = on_local_disk(os.fsdecode(opened.source_path))
        return (opened.source_path, st.st_size, st.st_mtime_ns, st.st_ino) if local else None

    def release(self, inode: int, backing_id: int, direct_io: bool) -> None:
        if backing_id:
            backing = self._backing.get(inode)
            if backing is None or backing.backing_id != backing_id:
                return
            backing.opens -= 1
            if backing.opens == 0:
                if backing.keep and KEEP_BACKINGS:
                    backing.idle_since = time.monotonic()
                    self._idle[inode] = None
                    self.counters.backing_kept += 1
                    if backing.source:      # its next opens: the fast lane, while unchanged
                        pyfuse3.fastlane_allow(inode, backing.backing_id, *backing.source)
                        backing.fast_total = 0
                    self.expire(backing.idle_since)
                else:
                    self._retire(inode)
        elif not direct_io:
            left = self._cached.get(inode, 0) - 1
            if left > 0:
                self._cached[inode] = left
            else:
                self._cached.pop(inode, None)

    def expire(self, now: float | None = None) -> None:
        """Release the kept backing files beyond KEEP_BACKINGS or idle for KEEP_SECONDS
        (called at each release, and periodically by the daemon)."""
        for inode in [i for i in self._draining if not pyfuse3.fastlane_usage(i)[0]]:
            self._close(inode)            # the fast lane's last open of it is closed
        idle = self._idle
        if not idle:
            return
        now = time.monotonic() if now is None else now
        deadline = now - KEEP_SECONDS
        for _ in range(len(idle)):       # (each kept file looked at once at most)
            oldest = next(iter(idle))
            backing = self._backing[oldest]
            within = len(idle) <= KEEP_BACKINGS
            if within and backing.idle_since > deadline:
                break
            if within and backing.source:
                fast_open, fast_total = pyfuse3.fastlane_usage(oldest)
                if fast_open or fast_total != backing.fast_total:   # used: not idle
                    backing.fast_total, backing.idle_since = fast_total, now
                    idle.move_to_end(oldest)
                    continue
            del idle[oldest]
            self.counters.backing_kept -= 1
            self._retire(oldest)

    def _retire(self, inode: int) -> None:
        """No open of the daemon uses it: release it, once the fast lane's are closed too."""
        if self._backing[inode].source and pyfuse3.fastlane_revoke(inode):
            self._draining.add(inode)
        else:
            self._close(inode)

    def _close(self, inode: int) -> None:
        backing = self._backing.pop(inode)
        self._draining.discard(inode)
        if backing.opens == 0 and inode in self._idle:
            del self._idle[inode]
            self.counters.backing_kept -= 1
        self.counters.backing_ids -= 1
        try:
            pyfuse3.passthrough_close(backing.backing_id)
        except OSError as e:
            log.warning("inode %d: releasing backing id %d: %s", inode, backing.backing_id, e)

    def state(self) -> dict:
        """For `vfsmount list` and the tests (the mount's state file)."""
        state = {"data_path": self.mode, "reason": self.reason, "fast_lane": self.fast_lane,
                 **self.counters.__dict__}
        if self.fast_lane:
            state.update(pyfuse3.fastlane_stats())
            # kept = no open uses it, the fast lane's included
            state["backing_kept"] -= sum(1 for inode in self._idle if self._backing[inode].source
                                         and pyfuse3.fastlane_usage(inode)[0])
        return state

    @property
    def fast_lane(self) -> bool:
        return self.mode == PASSTHROUGH and fastlane_supported() and pyfuse3.fastlane_running()
