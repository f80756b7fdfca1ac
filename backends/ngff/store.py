"""Opening a zarr store, local or in object storage: the one place a store is opened.

``open_store`` is the single function every zarr read and write goes through to get its
store, so a wrapper (chunk validation, caching) hooks in here once. ``open_root_group``
opens the root group of such a store; ``root_document`` reads a local store's root attributes
without zarr (a mount gets ready without importing it); ``failure`` tells remote I/O failures
from corrupt data.

zarr (and the chunk guard, built on it) is imported when a store is first opened: importing
it costs about a second on the 2-core machine, and a read-only mount needs none of it to
list a store (its documents are JSON, read by backends.ngff.index).
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import (CorruptDataError, MetadataError, RemoteStorageError, StorageError,
                     StorageNotFoundError)
from ..storage.remote import S3Options, describe_error

BACKEND_NAME = "zarr"


def open_store(root: Path | str, *, remote: bool, read_only: bool,
               options: S3Options | None = None, chunk_cache_bytes: int | None = None):
    """A zarr store for a local directory or an ``s3://`` URL (see backends.storage.remote)."""
    from ..guards.chunk import guard_store
    if remote:
        from ..storage.remote import zarr_store
        try:
            return guard_store(zarr_store(root, read_only=read_only, options=options,
                                          cache_bytes=chunk_cache_bytes), str(root))
        except StorageError:
            raise
        except Exception as e:
            raise RemoteStorageError(describe_error(e), backend=BACKEND_NAME, path=root) from e
    from zarr.storage import LocalStore
    if read_only and not Path(root).is_dir():
        raise StorageNotFoundError("no zarr store", backend=BACKEND_NAME, path=root)
    return guard_store(LocalStore(root, read_only=read_only), str(root))


def store_exists(root: Path | str, *, remote: bool, options: S3Options | None = None) -> bool:
    if remote:
        from ..storage.remote import store_exists as remote_exists
        return remote_exists(root, options)
    root = Path(root)
    return (root / "zarr.json").exists() or (root / ".zgroup").exists()


def open_root_group(store, root: Path | str, *, remote: bool, read_only: bool,
                    zarr_format: int | None = None) -> "zarr.Group":
    import zarr
    try:
        return zarr.open_group(store=store, mode="r" if read_only else "a",
                               zarr_format=None if read_only else zarr_format)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as e:
        raise StorageNotFoundError("no zarr store", backend=BACKEND_NAME, path=root,
                                   cause=e) from e
    except Exception as e:
        if remote and is_io_failure(e):
            raise RemoteStorageError(describe_error(e), backend=BACKEND_NAME, path=root) from e
        raise MetadataError("cannot open zarr store", backend=BACKEND_NAME, path=root,
                            cause=e) from e


def root_document(root: Path | str) -> tuple[dict, int]:
    """A local store's root group attributes and zarr format, read as zarr would open the group
    (``zarr.json`` first, then ``.zgroup`` and ``.zattrs``), but without zarr."""
    root = Path(root)
    try:
        v3 = _json(root / "zarr.json")
        if v3 is not None:
            if v3.get("node_type") != "group":
                raise ValueError(f"zarr.json is not a group's (node_type {v3.get('node_type')!r})")
            attrs = v3.get("attributes") or {}
            fmt = 3
        elif _json(root / ".zgroup") is not None:
            attrs = _json(root / ".zattrs") or {}
            fmt = 2
        else:
            raise StorageNotFoundError("no zarr store", backend=BACKEND_NAME, path=root)
        if not isinstance(attrs, dict):
            raise ValueError("the root attributes are not a JSON object")
    except StorageError:
        raise
    except (OSError, ValueError) as e:
        raise MetadataError("cannot open zarr store", backend=BACKEND_NAME, path=root,
                            cause=e) from e
    return attrs, fmt


def _json(path: Path) -> dict | None:
    """The JSON object at ``path``; None where there is no such file."""
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return doc


def failure(what: str, where: str, e: BaseException, *, remote: bool) -> StorageError:
    """Remote I/O failures (server down, timeouts) are not corrupt data: say which it is."""
    if remote and is_io_failure(e):
        return RemoteStorageError(f"cannot fetch {what}: {describe_error(e)}",
                                  backend=BACKEND_NAME, path=where)
    return CorruptDataError(f"cannot decode {what}", backend=BACKEND_NAME, path=where, cause=e)


def is_io_failure(e: BaseException) -> bool:
    """Network and server failures somewhere in an exception chain (not a codec error)."""
    seen = 0
    while e is not None and seen < 10:
        mod = type(e).__module__.split(".", 1)[0]
        if mod in ("botocore", "aiobotocore", "aiohttp", "s3fs", "urllib3") \
                or isinstance(e, (OSError, TimeoutError)):
            return True
        e = e.__cause__ or e.__context__
        seen += 1
    return False
