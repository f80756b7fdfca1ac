"""Plates in object storage: ``s3://bucket/prefix`` locations through fsspec/s3fs.

Endpoint and credentials come from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), or from
:class:`S3Options` (the command line's ``--s3-endpoint``). Secrets never go on a
command line.

Timeouts are short and retries few on purpose: a mount must answer a read with
EIO within seconds when the server is down, not hang a reader for minutes.

Reads of a mounted remote plate go through zarr's ``CacheStore``: a bounded,
least-recently-used local copy of the chunk objects already fetched, so a
re-read does not touch the network.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RemoteStorageError, StorageExistsError, StorageNotFoundError
from ..layout import cache_root

log = logging.getLogger(__name__)

SCHEMES = ("s3",)
DEFAULT_CHUNK_CACHE_BYTES = 1 << 30


def is_url(location: Any) -> bool:
    """True for ``scheme://...`` locations other than local files."""
    if not isinstance(location, str) or "://" not in location:
        return False
    return location.split("://", 1)[0].lower() not in ("file", "")


@dataclass(frozen=True)
class Location:
    """Where a plate or store lives, and whether that is object storage: decided once (``of``,
    or ``known`` where the caller decided it, a plate being opened), then handed on, so that
    nothing it reaches asks again."""

    where: str | Path     # an ``s3://`` URL without its trailing slash, or a local path
    remote: bool

    @classmethod
    def of(cls, where: "str | os.PathLike | Location") -> "Location":
        return where if isinstance(where, Location) else cls.known(where, is_url(where))

    @classmethod
    def known(cls, where: str | os.PathLike, remote: bool) -> "Location":
        return cls(os.fspath(where).rstrip("/"), True) if remote else cls(Path(where), False)

    def __str__(self) -> str:
        return str(self.where)


def check_scheme(url: str) -> None:
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise RemoteStorageError(f"unsupported storage scheme {scheme!r} (supported: "
                                 f"{', '.join(s + '://' for s in SCHEMES)})", path=url)


@dataclass(frozen=True)
class S3Options:
    """Connection settings; anything left None falls back to the AWS environment."""

    endpoint_url: str | None = None
    profile: str | None = None
    anon: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    retries: int = 2
    extra: dict = field(default_factory=dict)

    def storage_options(self) -> dict:
        endpoint = (self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3")
                    or os.environ.get("AWS_ENDPOINT_URL"))
        opts: dict[str, Any] = {
            "anon": self.anon,
            "config_kwargs": {"connect_timeout": self.connect_timeout,
                              "read_timeout": self.read_timeout,
                              "retries": {"max_attempts": self.retries, "mode": "standard"}},
        }
        if endpoint:
            opts["endpoint_url"] = endpoint
        if self.profile:
            opts["profile"] = self.profile
        opts.update(self.extra)
        return opts


_default_options = S3Options()
_default_chunk_cache_bytes = 0       # the mount daemon sets --chunk-cache-mb here


def set_default_options(options: S3Options) -> None:
    """What the command line's --s3-* flags set for the whole process."""
    global _default_options
    _default_options = options


def default_options() -> S3Options:
    return _default_options


def set_default_chunk_cache_bytes(n: int) -> None:
    global _default_chunk_cache_bytes
    _default_chunk_cache_bytes = max(0, int(n))


def filesystem(url: str, options: S3Options | None = None, *, asynchronous: bool = False):
    """(fsspec filesystem, path without scheme) for a URL."""
    import fsspec
    check_scheme(url)
    opts = (options or _default_options).storage_options()
    # fsspec's instance cache gives one session per settings: stores opened and dropped do not
    # each leave an aiohttp session behind (a restarted server is reconnected by the pool)
    fs, path = fsspec.core.url_to_fs(url, asynchronous=asynchronous, **opts)
    return fs, path.rstrip("/")


def describe_error(e: BaseException) -> str:
    """One line a user can act on, for the usual object-storage failures."""
    text = f"{type(e).__name__}: {e}"
    low = text.lower()
    if isinstance(e, PermissionError) or "signature" in low or "accessdenied" in low \
            or "invalidaccesskeyid" in low or "access denied" in low:
        return f"access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {text}"
    if "bucket" in low and ("not exist" in low or "nosuchbucket" in low):
        return f"no such bucket: {text}"
    if "connect" in low or "timeout" in low or "timed out" in low:
        return f"storage endpoint unreachable: {text}"
    return text


def check_access(url: str, options: S3Options | None = None, *, must_exist: bool) -> None:
    """Fail early, with a clear message, on a wrong endpoint, credentials or bucket."""
    fs, path = filesystem(url, options)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(bucket, refresh=True)           # proves endpoint, credentials and bucket
    except FileNotFoundError as e:
        raise RemoteStorageError(f"no such bucket {bucket!r}", path=url, cause=e) from e
    except Exception as e:
        raise RemoteStorageError(describe_error(e), path=url) from e
    if must_exist and not (fs.exists(f"{path}/zarr.json") or fs.exists(f"{path}/.zgroup")):
        raise StorageNotFoundError("no zarr store at this location", path=url)


def store_exists(url: str, options: S3Options | None = None) -> bool:
    fs, path = filesystem(url, options)
    try:
        return bool(fs.exists(f"{path}/zarr.json") or fs.exists(f"{path}/.zgroup"))
    except Exception as e:
        raise RemoteStorageError(describe_error(e), path=url) from e


def remove_tree(url: str, options: S3Options | None = None) -> None:
    fs, path = filesystem(url, options)
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
    except Exception as e:
        raise RemoteStorageError(describe_error(e), path=url) from e


def put_bytes(url: str, data: bytes, options: S3Options | None = None, *,
              overwrite: bool = True) -> None:
    """One object, written by a single PUT: readers see the old object or the new one."""
    fs, path = filesystem(url, options)
    try:
        if not overwrite and fs.exists(path):
            raise StorageExistsError("object exists", path=url)
        fs.pipe_file(path, bytes(data))
    except StorageExistsError:
        raise
    except Exception as e:
        raise RemoteStorageError(f"cannot write object: {describe_error(e)}", path=url) from e


def get_bytes(url: str, options: S3Options | None = None) -> bytes:
    fs, path = filesystem(url, options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as e:
        raise StorageNotFoundError("no such object", path=url, cause=e) from e
    except Exception as e:
        raise RemoteStorageError(describe_error(e), path=url) from e


def list_objects(url: str, options: S3Options | None = None) -> list[str]:
    """Object paths under a prefix, relative to it."""
    fs, path = filesystem(url, options)
    try:
        return sorted(p[len(path) + 1:] for p in fs.find(path))
    except Exception as e:
        raise RemoteStorageError(describe_error(e), path=url) from e


def zarr_store(url: str, *, read_only: bool, options: S3Options | None = None,
               cache_bytes: int | None = None):
    """A zarr store for a URL; with ``cache_bytes`` a bounded local cache of fetched objects."""
    from zarr.storage import FsspecStore, LocalStore
    fs, path = filesystem(url, options, asynchronous=True)
    store = FsspecStore(fs=fs, path=path, read_only=read_only)
    if cache_bytes is None:
        cache_bytes = _default_chunk_cache_bytes if read_only else 0
    if not cache_bytes:
        return store
    from zarr.experimental.cache_store import CacheStore
    return CacheStore(store, cache_store=LocalStore(_chunk_cache_dir()), max_size=cache_bytes,
                      cache_set_data=False)


def chunk_cache_root() -> Path:
    return cache_root() / "chunks"


def _chunk_cache_dir() -> str:
    """A private directory per store opened: the cache's size accounting lives in memory,
    so a directory shared with another process would not be bounded."""
    root = chunk_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)
    atexit.register(shutil.rmtree, path, True)
    return path


__all__ = ["S3Options", "Location", "is_url", "check_access", "filesystem", "zarr_store", "put_bytes",
           "get_bytes", "remove_tree", "store_exists", "list_objects", "set_default_options",
           "DEFAULT_CHUNK_CACHE_BYTES"]
