"""Mount settings: one dataclass, built by the CLI and handed to the daemon.

Each default is stated here once. The background daemon is a separate process, so the
settings cross as a command line: :meth:`MountConfig.to_argv` writes it and
:func:`parse_daemon_argv` reads it back, both generated from the fields.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_THREADS = 8


@dataclass
class MountConfig:
    plate: str
    mountpoint: str
    allow_other: bool = False
    subdir: str | None = None
    threads: int = DEFAULT_THREADS
    xattrs: bool = False                 # off: `ls -l` costs no round trip per file (README)
    writable: bool = False
    materialize: str = "disk"            # "disk" or "zarr": where images written to outputs/ go
    sync_on_close: bool = False          # every commit durable (fsync) before close() returns
    passthrough: bool = True             # kernel FUSE passthrough where available (passthrough.py)
    pipeline_file: str | None = None
    compute_cache_mb: int = 256
    chunk_cache_mb: int = 1024
    s3_endpoint: str | None = None
    loaddata_config: str | None = None   # pe2loaddata's config.yml: LoadData column names
    extra: dict = field(default_factory=dict, compare=False, repr=False)   # unknown settings

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MountConfig":
        """From the CLI's parsed ``mount`` arguments (``--pipeline`` is ``pipeline_file``;
        the rest match the fields)."""
        given = vars(args)
        # None: not given on the command line, so the default stated here applies
        values = {f.name: given[f.name] for f in fields(cls)
                  if given.get(f.name) is not None and f.name != "extra"}
        if given.get("pipeline"):
            values["pipeline_file"] = os.path.abspath(given["pipeline"])
        return cls(**values)

    def to_argv(self) -> list[str]:
        """The daemon's command line for these settings (defaults left out)."""
        argv = [self.plate, self.mountpoint]
        for f in fields(self):
            if f.name in ("plate", "mountpoint", "extra"):
                continue
            value = getattr(self, f.name)
            if value == f.default:
                continue
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + f.name.replace("_", "-"))
            else:
                argv += [flag, str(value)]
        return argv


def outputs_folders(plate, *, writable: bool) -> tuple[Path, Path] | None:
    """(outputs folder, staging folder) of a mount of ``plate`` (an opened Plate): ``PLATE/outputs``
    and ``PLATE/.vfsmount-staging``, or for a hands-off plate the folder the user named and a
    staging folder outside the plate; None for a store given directly (no outputs of its own).
    Raises ValueError for a --writable mount of a hands-off plate with no folder named."""
    from backends.layout import STAGING_DIR
    from backends.plates.metadata import hands_off, outputs_dir, staging_dir
    if plate.url is not None:
        return None
    root, may_write = outputs_dir(plate.path)
    if writable and not may_write:
        raise ValueError(f"{plate.location} is hands-off ({hands_off(plate.path)}): nothing "
                         "is written into it; name a folder for the results: --outputs-dir DIR")
    # a read-only mount stages nothing: no folder is made for it
    staging = staging_dir(plate.path, root) if writable else plate.path / STAGING_DIR
    return root, staging


def parse_daemon_argv(argv: list[str] | None) -> tuple[MountConfig, argparse.Namespace]:
    """Read back what :meth:`MountConfig.to_argv` wrote (plus the daemon's own options)."""
    p = argparse.ArgumentParser(prog="python -m vfsmount.daemon")
    p.add_argument("plate")
    p.add_argument("mountpoint")
    for f in fields(MountConfig):
        if f.name in ("plate", "mountpoint", "extra"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, dest=f.name, action="store_true", default=f.default)
            p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false")
        else:
            kind = int if f.type in ("int", int) else str
            aliases = ["--pipeline"] if f.name == "pipeline_file" else []
            p.add_argument(flag, *aliases, dest=f.name, type=kind, default=f.default)
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(MountConfig) if f.name != "extra"}
    return MountConfig(**values), args


__all__ = ["MountConfig", "parse_daemon_argv", "outputs_folders", "DEFAULT_THREADS"]
