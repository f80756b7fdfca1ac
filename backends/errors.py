"""Typed storage errors.

Every error names the backend, the path and the cause, so a message read in a
log (or by a user at a prompt) says what to fix without a traceback.
"""
from __future__ import annotations

from pathlib import PurePath


class StorageError(Exception):
    """Base class for every error raised by ``backends``."""

    def __init__(self, message: str, *, backend: str | None = None,
                 path: str | PurePath | None = None, cause: BaseException | None = None):
        self.backend = backend
        self.path = None if path is None else str(path)
        self.cause = cause
        where = []
        if backend:
            where.append(f"backend={backend}")
        if path is not None:
            where.append(f"path={self.path}")
        text = message if not where else f"{message} [{', '.join(where)}]"
        if cause is not None:
            text += f": {type(cause).__name__}: {cause}"
        super().__init__(text)


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The path does not exist in the backend."""


class StorageExistsError(StorageError, FileExistsError):
    """The path exists and the caller did not ask to overwrite it."""


class UnknownBackendError(StorageError, KeyError):
    """No backend is registered under that name."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return Exception.__str__(self)


class UnsupportedFormatError(StorageError, ValueError):
    """No reader/writer handles this file extension (or this data type)."""


class PathEscapeError(StorageError, PermissionError):
    """A path is absolute, contains '..', or resolves outside its root."""


class ReadOnlyError(StorageError, PermissionError):
    """The backend or path cannot be written."""


class CorruptDataError(StorageError, ValueError):
    """Stored bytes could not be decoded (corrupt TIFF, truncated chunk, ...)."""


class MetadataError(StorageError, ValueError):
    """A metadata file (openhcs_metadata.json, HTD, Index.xml, zarr attrs) is malformed."""


class PlateFormatError(StorageError, ValueError):
    """A plate's layout is not recognized or its file names do not parse."""


class NameCollisionError(StorageError, ValueError):
    """Two sources would appear under one virtual name."""


class RemoteStorageError(StorageError, OSError):
    """Object storage could not be reached, refused the credentials, or has no such bucket."""
