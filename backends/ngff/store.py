"""Opening a zarr store, local or in object storage: the one place a store is opened.

``open_store`` is the single function every zarr read and write goes through to get its
store, so a wrapper (chunk validation, caching) hooks in here once. ``open_root_group``
opens the root group of such a store; ``failure`` tells remote I/O failures from corrupt data.
"""
from __future__ import annotations

from pathlib import Path

import zarr

from ..guards.chunk import guard_store
from ..errors import (CorruptDataError, MetadataError, RemoteStorageError, StorageError,
                     StorageNotFoundError)
from ..storage.remote import S3Options, describe_error

BACKEND_NAME = "zarr"


def open_store(root: Path | str, *, remote: bool, read_only: bool,
               options: S3Options | None = None, chunk_cache_bytes: int | None = None):
    """A zarr store for a local directory or an ``s3://`` URL (see backends.storage.remote)."""
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
                    zarr_format: int | None = None) -> zarr.Group:
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
