"""Microscope handlers and format auto-detection.

To add a format: write a module with a MicroscopeHandler subclass and list it
in HANDLERS (most specific first).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import PlateFormatError
from .base import ImageSet, MicroscopeHandler, PlateScan
from .imagexpress import ImageXpressHandler
from .ome_zarr import OmeZarrHandler
from .openhcs import OpenHCSHandler
from .opera_phenix import OperaPhenixHandler

# Order matters: a normalized plate's names would also parse as ImageXpress.
HANDLERS: tuple[type[MicroscopeHandler], ...] = (OperaPhenixHandler, OpenHCSHandler, ImageXpressHandler,
                                                 OmeZarrHandler)
HANDLERS_BY_NAME = {h.name: h for h in HANDLERS}


def detect_handler(plate: str | os.PathLike) -> MicroscopeHandler:
    plate = Path(plate)
    if not plate.is_dir():
        raise PlateFormatError("plate is not a directory", path=plate)
    try:
        for handler in HANDLERS:
            if handler.detect(plate):
                return handler()
    except PermissionError as e:
        raise PlateFormatError("cannot read plate directory", path=plate, cause=e) from e
    raise PlateFormatError(
        "no microscope format recognized (expected ImageXpress TimePoint_/ZStep_ folders or "
        "A01_s1_w1 names, an Opera Phenix Index.idx.xml, or normalized A01_s001_w1_z001_t001.tif names)",
        path=plate)


__all__ = ["HANDLERS", "HANDLERS_BY_NAME", "detect_handler", "MicroscopeHandler", "PlateScan",
           "ImageSet", "ImageXpressHandler", "OperaPhenixHandler", "OpenHCSHandler",
           "OmeZarrHandler"]
