"""Disk backend: real files, formats chosen by extension, every write atomic.

With ``root`` set, every path (absolute, or relative to the root) must resolve
inside it; without a root the backend accepts any absolute path.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from natsort import natsorted

from .atomic import TEMP_PREFIX, atomic_open, fsync_dir
from .base import Backend, FileTree, StorageBackend
from ..errors import StorageError, StorageExistsError, StorageNotFoundError
from .formats import format_for, read_file
from .paths import within


class DiskStorageBackend(FileTree, StorageBackend):
    _backend_type = Backend.DISK

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = None if root is None else Path(os.path.realpath(root))

    def _path(self, path: str | os.PathLike) -> Path:
        if self.root is not None:
            return within(self.root, path)
        return Path(path)

    def real_path(self, path: str | os.PathLike) -> Path:
        """The file behind ``path`` (checked against the root); files are served as they are."""
        return self._path(path)

    def _missing(self, p: Path, what: str = "no such file") -> StorageNotFoundError:
        return StorageNotFoundError(what, backend=self.name, path=p)

    # -- read -------------------------------------------------------------
    def load(self, path: str | os.PathLike, *, raw: bool = False, **_) -> Any:
        p = self._path(path)
        if not p.is_file():
            raise self._missing(p, "is a directory" if p.is_dir() else "no such file")
        if raw:
            return p.read_bytes()
        return read_file(p, backend=self.name)

    # -- write ------------------------------------------------------------
    def save(self, data: Any, path: str | os.PathLike, *, overwrite: bool = True, **_) -> None:
        p = self._path(path)
        fmt = format_for(p, backend=self.name)
        if p.is_dir():
            raise StorageExistsError("path is a directory", backend=self.name, path=p)
        if not overwrite and p.exists():
            raise StorageExistsError("file exists (pass overwrite=True to replace it)",
                                     backend=self.name, path=p)
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_open(p, overwrite=overwrite) as f:
                fmt.write(data, f)
        except FileExistsError as e:
            raise StorageExistsError("file exists", backend=self.name, path=p, cause=e) from e
        except (TypeError, ValueError) as e:
            raise StorageError(f"cannot write {type(data).__name__} as {fmt.name}",
                               backend=self.name, path=p, cause=e) from e
        except OSError as e:
            raise StorageError("write failed; previous file left intact", backend=self.name,
                               path=p, cause=e) from e

    def save_bytes(self, data: bytes, path: str | os.PathLike, *, overwrite: bool = True) -> None:
        p = self._path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(p, overwrite=overwrite) as f:
            f.write(data)

    # -- listing ------------------------------------------------------------
    def list_files(self, directory: str | os.PathLike, *, extensions: Iterable[str] | None = None,
                   recursive: bool = False) -> list[str]:
        d = self._path(directory)
        if not d.is_dir():
            raise self._missing(d, "no such directory")
        exts = None if extensions is None else {e.lower() for e in extensions}
        out: list[str] = []
        walker = os.walk(d, onerror=_raise) if recursive else [(str(d), [], _file_names(d))]
        for dirpath, _dirs, files in walker:
            for name in files:
                if name.startswith(TEMP_PREFIX):
                    continue
                if exts is not None and os.path.splitext(name)[1].lower() not in exts:
                    continue
                out.append(os.path.join(dirpath, name))
        return natsorted(out)

    def list_dir(self, directory: str | os.PathLike) -> list[str]:
        d = self._path(directory)
        if not d.is_dir():
            raise self._missing(d, "no such directory")
        return natsorted(n for n in os.listdir(d) if not n.startswith(TEMP_PREFIX))

    def exists(self, path) -> bool:
        return self._path(path).exists()

    def is_file(self, path) -> bool:
        return self._path(path).is_file()

    def is_dir(self, path) -> bool:
        return self._path(path).is_dir()

    # -- tree operations ----------------------------------------------------
    def delete(self, path, *, recursive: bool = False) -> None:
        p = self._path(path)
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            if recursive:
                shutil.rmtree(p)
            else:
                try:
                    p.rmdir()
                except OSError as e:
                    raise StorageError("directory not empty (pass recursive=True)",
                                       backend=self.name, path=p, cause=e) from e
        else:
            raise self._missing(p, "no such file or directory")

    def ensure_directory(self, path) -> None:
        p = self._path(path)
        if p.exists() and not p.is_dir():
            raise StorageExistsError("path exists and is not a directory", backend=self.name, path=p)
        p.mkdir(parents=True, exist_ok=True)

    def copy(self, src, dst, *, overwrite: bool = False) -> None:
        s, d = self._path(src), self._path(dst)
        if not s.exists():
            raise self._missing(s)
        if d.exists() and not overwrite:
            raise StorageExistsError("destination exists", backend=self.name, path=d)
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            tmp = d.parent / f"{TEMP_PREFIX}{d.name}.part"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(s, tmp, symlinks=True)
            if d.exists():
                shutil.rmtree(d)
            os.rename(tmp, d)
            fsync_dir(d.parent)
            return
        with open(s, "rb") as fin, atomic_open(d, overwrite=overwrite) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)

    def move(self, src, dst, *, overwrite: bool = False, replace_symlinks: bool = False) -> None:
        """Rename ``src`` to ``dst`` atomically (a copy + rename across file systems)."""
        s, d = self._path(src), self._path(dst)
        if not s.exists() and not s.is_symlink():
            raise self._missing(s)
        if d.exists() or d.is_symlink():
            if not (overwrite or (replace_symlinks and d.is_symlink())):
                raise StorageExistsError("destination exists", backend=self.name, path=d)
        d.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(s, d)
        except OSError as e:
            if e.errno != 18:  # EXDEV: different file systems
                raise StorageError("move failed", backend=self.name, path=s, cause=e) from e
            self.copy(s, d, overwrite=True)
            self.delete(s, recursive=True)
        fsync_dir(d.parent)

    def mirror_directory(self, src, dst, *, overwrite_symlinks_only: bool = False) -> int:
        """Recreate ``src``'s tree under ``dst`` with a symlink per file; return the link count.

        Existing symlinks in ``dst`` are replaced; with ``overwrite_symlinks_only`` an
        existing regular file is an error instead of being kept silently.
        """
        s, d = self._path(src), self._path(dst)
        if not s.is_dir():
            raise self._missing(s, "no such directory")
        count = 0
        for dirpath, _dirs, files in os.walk(s, onerror=_raise):
            rel = os.path.relpath(dirpath, s)
            target_dir = d / rel
            target_dir.mkdir(parents=True, exist_ok=True)
            for name in files:
                link = target_dir / name
                if link.is_symlink():
                    link.unlink()
                elif link.exists():
                    if overwrite_symlinks_only:
                        raise StorageExistsError("refusing to replace a regular file with a symlink",
                                                 backend=self.name, path=link)
                    continue
                os.symlink(os.path.join(dirpath, name), link)
                count += 1
        return count


def _file_names(d: Path) -> list[str]:
    with os.scandir(d) as it:
        return [e.name for e in it if e.is_file()]


def _raise(err: OSError) -> None:
    raise err
