"""Microscope handlers and format auto-detection.

To add a format: write a module with a MicroscopeHandler subclass and list it
in HANDLERS (most specific first).
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import PlateFormatError
from .base import ScannedSet, MicroscopeHandler, PlateScan
from .imagexpress import ImageXpressHandler
from .ome_zarr import OmeZarrHandler
from .openhcs import OpenHCSHandler
from .opera_phenix import OperaPhenixHandler
from .unsupported import unsupported_instrument

# Order matters: a normalized plate's names would also parse as ImageXpress.
HANDLERS: tuple[type[MicroscopeHandler], ...] = (OperaPhenixHandler, OpenHCSHandler, ImageXpressHandler,
                                                 OmeZarrHandler)
HANDLERS_BY_NAME = {h.name: h for h in HANDLERS}


SUPPORTED_FORMATS = ("ImageXpress/MetaXpress (TimePoint_/ZStep_ folders or A01_s1_w1 names), "
                     "Opera Phenix/Operetta (Index.idx.xml), OME-Zarr, and normalized "
                     "A01_s001_w1_z001_t001.tif names")


def detect_handler(plate: str | os.PathLike) -> MicroscopeHandler:
    plate = Path(plate)
    if not plate.is_dir():
        refuse_unsupported(plate)
        raise PlateFormatError("plate is not a directory", path=plate)
    try:
        for handler in HANDLERS:
            if handler.detect(plate):
                return handler()
    except PermissionError as e:
        raise PlateFormatError("cannot read plate directory", path=plate, cause=e) from e
    refuse_unsupported(plate)
    raise PlateFormatError(f"no microscope format recognized; vfsmount reads {SUPPORTED_FORMATS}",
                           path=plate)


def refuse_unsupported(plate: Path) -> None:
    """A known instrument we do not read is refused by its name, not as 'unrecognized'."""
    found = unsupported_instrument(plate)
    if found is not None:
        instrument, evidence = found
        raise PlateFormatError(f"{instrument} data ({evidence}) is not supported; vfsmount reads "
                               f"{SUPPORTED_FORMATS}", path=plate)


__all__ = ["HANDLERS", "HANDLERS_BY_NAME", "detect_handler", "MicroscopeHandler", "PlateScan",
           "ScannedSet", "ImageXpressHandler", "OperaPhenixHandler", "OpenHCSHandler",
           "OmeZarrHandler", "refuse_unsupported", "SUPPORTED_FORMATS"]
