"""The command line's remaining verbs and the systemd template unit."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vfsmount.control import is_mounted

from .conftest import REPO, run_cli


def test_demo_runs_end_to_end(tmp_path):
    res = run_cli("demo", "--dir", str(tmp_path / "demo"), "--unmount")
    out = res.stdout
    assert "identical to the zarr plane: True" in out
    assert "72 zarr-backed TIFFs" in out and "24 projections" in out
    assert not is_mounted(tmp_path / "demo" / "mnt")


def test_umount_of_a_plain_directory(tmp_path):
    res = run_cli("umount", str(tmp_path), check=False)
    assert res.returncode == 1 and "is not mounted" in res.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = (REPO / "systemd" / "vfsmount@.service").read_text()
    binary = shutil.which("vfsmount") or str(Path(os.sys.executable).parent / "vfsmount")
    assert Path(binary).exists()
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "demo.conf").write_text((REPO / "systemd" / "example.conf").read_text())
    unit = unit.replace("/usr/local/bin/vfsmount", binary).replace("/etc/vfsmount", str(conf))
    target = tmp_path / "vfsmount@.service"
    target.write_text(unit)
    instance = tmp_path / "vfsmount@demo.service"
    os.symlink(target, instance)
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                         capture_output=True, text=True)
    problems = [l for l in (res.stdout + res.stderr).splitlines()
                if "vfsmount@" in l or "Command" in l or "Unknown" in l]
    assert res.returncode == 0 and not problems, res.stdout + res.stderr
