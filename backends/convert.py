"""Convert any detected plate into an OME-Zarr store, well by well.

Memory: one field (well + site) is held at a time with the WELL strategy (its
planes become one chunk), a few planes with FILE. The store is written to a
hidden ``.NAME.partial`` directory beside the output and renamed into place only
when complete; only then is it recorded in openhcs_metadata.json as main. An
interrupted run leaves the source and its metadata untouched, and the next run
removes the partial store and starts again.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from natsort import natsorted

from .errors import StorageError, StorageExistsError
from .metadata import update_metadata
from .naming import parse_virtual_name
from .plate import Plate
from .zarr_config import ZarrChunkStrategy, ZarrConfig

log = logging.getLogger(__name__)

FILE_BATCH = 16  # planes per write with the FILE strategy: bounds memory, amortizes overhead


def source_subdirectory(plate: Plate) -> str:
    if plate.primary_backend() != "zarr":
        return plate.main
    for key, entry in plate.subdirectories.items():
        if not entry.get("available_backends", {}).get("zarr"):
            return key
    raise StorageError("plate has no non-zarr image set to convert", path=plate.path)


def convert_plate(plate_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
                  config: ZarrConfig | None = None, overwrite: bool = False,
                  progress: bool = True, key: str = "zarr") -> Path:
    """Convert the plate's main image set; return the store's path."""
    from .zarr_backend import ZarrStorageBackend  # heavy import, only when converting

    config = config or ZarrConfig()
    plate = Plate.open(plate_path)
    source_key = source_subdirectory(plate)
    entry = plate.entry(source_key)
    source = plate.backend(source_key)
    out = Path(output) if output is not None else plate.path / key
    out = out.absolute()
    if out.exists() and not overwrite:
        raise StorageExistsError("output store exists (use --overwrite to replace it)", path=out)
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        log.warning("removing incomplete conversion left by an earlier run: %s", partial)
        shutil.rmtree(partial)
    out.parent.mkdir(parents=True, exist_ok=True)

    names = entry.get("image_files") or source.list_files("")
    fields: dict[tuple[str, int], list[str]] = {}
    for name in names:
        p = parse_virtual_name(name)
        fields.setdefault((p.well, p.site), []).append(name)

    store = ZarrStorageBackend(partial, mode="w", config=config)
    bar = _progress(len(names), f"convert {plate.path.name}", progress)
    try:
        for (_well, _site), field_names in sorted(fields.items(), key=lambda kv: (
                natsorted([kv[0][0]])[0], kv[0][1])):
            batch = len(field_names) if config.chunk_strategy is ZarrChunkStrategy.WELL else FILE_BATCH
            for i in range(0, len(field_names), batch):
                chunk = field_names[i:i + batch]
                store.save_batch(source.load_batch(chunk), chunk, flush=False)
                bar.update(len(chunk))
        store.flush(plate_name=plate.path.name, pixel_size=entry.get("pixel_size"))
    finally:
        bar.close()

    old = out.parent / f".{out.name}.old"
    if out.exists():
        os.rename(out, old)
    os.rename(partial, out)
    shutil.rmtree(old, ignore_errors=True)

    inside = out.parent == plate.path.absolute()
    store_key = out.name if inside else key
    new_entry = {k: v for k, v in entry.items() if k not in ("workspace_mapping", "main")}
    new_entry.update({
        "available_backends": {"zarr": True},
        "image_files": natsorted(names),
        "source_subdirectory": source_key,
        "zarr_config": {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(config).items()},
    })
    if not inside:
        new_entry["path"] = str(out)
    update_metadata(plate.path, {store_key: new_entry}, main=store_key)
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="plane", disable=not enabled, file=sys.stderr,
                leave=False)
