"""Per-extension readers and writers used by the disk backend.

A writer receives an open binary file (the temporary file of an atomic write),
so no format ever writes to its final path directly.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ..errors import CorruptDataError, UnsupportedFormatError

from ..layout import TIFF_EXTENSIONS  # the one TIFF rule: layout.is_tiff_name
IMAGE_EXTENSIONS = TIFF_EXTENSIONS


@dataclass(frozen=True)
class Format:
    name: str
    read: Callable[[Path], Any]
    write: Callable[[Any, BinaryIO], None]


def _read_tiff(path: Path):
    from ..guards.tiff import read_tiff_checked   # strips checked against the file; no crash
    return read_tiff_checked(path)


def _write_tiff(data, f: BinaryIO) -> None:
    import tifffile
    arr = np.asarray(data)
    if arr.dtype == object or arr.ndim < 2:
        raise TypeError(f"a TIFF needs a 2D+ numeric array, got {arr.dtype} with shape {arr.shape}")
    tifffile.imwrite(f, arr, photometric="minisblack")


def _write_npy(data, f: BinaryIO) -> None:
    np.save(f, np.asarray(data), allow_pickle=False)


def _write_json(data, f: BinaryIO) -> None:
    f.write(json.dumps(data, indent=2, default=_json_default).encode())


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _write_csv(data, f: BinaryIO) -> None:
    text = io.StringIO()
    if isinstance(data, str):
        text.write(data)
    elif hasattr(data, "to_csv"):  # a pandas DataFrame, without importing pandas
        data.to_csv(text, index=False)
    else:
        rows = list(data)
        if rows and isinstance(rows[0], dict):
            fields = list(dict.fromkeys(k for r in rows for k in r))
            w = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        else:
            csv.writer(text, lineterminator="\n").writerows(rows)
    f.write(text.getvalue().encode())


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_text(data, f: BinaryIO) -> None:
    if not isinstance(data, str):
        raise TypeError(f"a text file needs str, got {type(data).__name__}")
    f.write(data.encode())


def _write_bytes(data, f: BinaryIO) -> None:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a raw file needs bytes, got {type(data).__name__}")
    f.write(data)


_TIFF = Format("tiff", _read_tiff, _write_tiff)
_BYTES = Format("bytes", Path.read_bytes, _write_bytes)
FORMATS: dict[str, Format] = {
    ".tif": _TIFF,
    ".tiff": _TIFF,
    ".npy": Format("npy", lambda p: np.load(p, allow_pickle=False), _write_npy),
    ".json": Format("json", lambda p: json.loads(p.read_text()), _write_json),
    ".csv": Format("csv", _read_csv, _write_csv),
    ".txt": Format("text", Path.read_text, _write_text),
    ".bin": _BYTES, ".raw": _BYTES, ".zip": _BYTES, ".roi": _BYTES, ".xml": _BYTES,
}


def format_for(path: str | Path, *, backend: str = "disk") -> Format:
    ext = Path(path).suffix.lower()
    try:
        return FORMATS[ext]
    except KeyError:
        raise UnsupportedFormatError(
            f"unsupported file extension {ext or '(none)'!r}; supported: {', '.join(sorted(FORMATS))}"
            " (pass raw=True to read bytes)", backend=backend, path=path) from None


def read_file(path: Path, *, backend: str = "disk") -> Any:
    fmt = format_for(path, backend=backend)
    try:
        return fmt.read(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # a decoder's own error: report it as corrupt data with the path
        raise CorruptDataError(f"cannot read {fmt.name} file", backend=backend, path=path, cause=e) from e


def encode_file(data: Any, path: str | Path, *, backend: str = "disk") -> bytes:
    """The bytes ``save`` would write for ``path``'s extension (for stores that take whole
    objects, like S3)."""
    import io
    fmt = format_for(path, backend=backend)
    buf = io.BytesIO()
    fmt.write(data, buf)
    return buf.getvalue()
