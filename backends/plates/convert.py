"""Convert any detected plate into an OME-Zarr store, well by well.

Memory: one field (well + site) is held at a time with the WELL strategy (its
planes become one chunk), a few planes with FILE. The store is written to a
hidden ``.NAME.partial`` directory beside the output and renamed into place only
when complete; only then is it recorded in openhcs_metadata.json as main. An
interrupted run leaves the source and its metadata untouched, and the next run
removes the partial store and starts again.

Object storage (``--output s3://bucket/plate.zarr``) has no rename: the store is
written in place, flagged incomplete from its first object until its index is
written last, and recorded in the plate's metadata (with its URL) only after that.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from natsort import natsorted

from ..errors import StorageError, StorageExistsError
from .metadata import update_metadata
from ..naming import parse_virtual_name
from .plate import Plate
from ..storage.remote import Location
from ..ngff.config import ZarrChunkStrategy, ZarrConfig
from ..ngff.documents import physics_of

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
                  progress: bool = True, key: str = "zarr") -> Path | str:
    """Convert the plate's main image set; return the store's path (or URL)."""
    config = config or ZarrConfig()
    plate = Plate.open(plate_path)
    source_key = source_subdirectory(plate)
    entry = plate.entry(source_key)
    source = plate.backend(source_key)
    names = entry.get("image_files") or source.list_files("")
    target = Location.of(output) if output is not None else None
    if target is not None and target.remote:
        out_url = target.where
        _convert_to_url(plate, source_key, source, names, out_url, config, overwrite, progress)
        _record(plate, entry, source_key, names, config, key, {"path": out_url})
        return out_url
    out = Path(output) if output is not None else plate.path / key
    out = out.absolute()
    if out.exists() and not overwrite:
        raise StorageExistsError("output store exists (use --overwrite to replace it)", path=out)
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        # an interrupted run's leftovers: nothing of the plate is lost, so not a warning
        log.info("removing incomplete conversion left by an earlier run: %s", partial)
        shutil.rmtree(partial)
    out.parent.mkdir(parents=True, exist_ok=True)

    from ..ngff.backend import ZarrStorageBackend  # heavy import, only when converting
    _copy_fields(plate, source, names, ZarrStorageBackend(partial, mode="w", config=config),
                 config, progress)

    old = out.parent / f".{out.name}.old"
    if out.exists():
        os.rename(out, old)
    os.rename(partial, out)
    shutil.rmtree(old, ignore_errors=True)

    inside = out.parent == plate.path.absolute()
    _record(plate, entry, source_key, names, config, out.name if inside else key,
            {} if inside else {"path": str(out)})
    return out


def _copy_fields(plate: Plate, source, names: list[str], store, config: ZarrConfig,
                 progress: bool) -> None:
    """Every plane into ``store``, a field at a time; the index is written last."""
    fields: dict[tuple[str, int], list[str]] = {}
    for name in names:
        p = parse_virtual_name(name)
        fields.setdefault((p.well, p.site), []).append(name)
    bar = _progress(len(names), f"convert {plate.path.name}", progress)
    store.physics = physics_of(plate.entry(source_subdirectory(plate)))   # scale, channels
    try:
        for (_well, _site), field_names in sorted(fields.items(), key=lambda kv: (
                natsorted([kv[0][0]])[0], kv[0][1])):
            batch = len(field_names) if config.chunk_strategy is ZarrChunkStrategy.WELL else FILE_BATCH
            for i in range(0, len(field_names), batch):
                chunk = field_names[i:i + batch]
                store.save_batch(source.load_batch(chunk), chunk, flush=False)
                bar.update(len(chunk))
        from ..ngff.backend import write_pyramids
        write_pyramids(store)
        store.flush(plate_name=plate.path.name)
    finally:
        bar.close()


def _convert_to_url(plate: Plate, source_key: str, source, names: list[str], url: str,
                    config: ZarrConfig, overwrite: bool, progress: bool) -> None:
    from ..storage.remote import check_access, remove_tree, store_exists
    from ..ngff.backend import ZarrStorageBackend
    check_access(url, must_exist=False)             # endpoint, credentials, bucket: fail now
    if store_exists(url):
        if not overwrite:
            raise StorageExistsError("output store exists (use --overwrite to replace it)", path=url)
        # the old store is about to go: no subdirectory may stay main while it is rewritten
        for k, e in plate.subdirectories.items():
            if e.get("path") == url and e.get("main"):
                update_metadata(plate.path, {}, main=source_key)
        remove_tree(url)
    store = ZarrStorageBackend(url, mode="w", config=config)
    store.mark_incomplete()
    _copy_fields(plate, source, names, store, config, progress)


def _record(plate: Plate, entry: dict, source_key: str, names: list[str], config: ZarrConfig,
            store_key: str, extra: dict) -> None:
    """The finished store becomes the plate's main subdirectory."""
    new_entry = {k: v for k, v in entry.items() if k not in ("workspace_mapping", "main", "path")}
    new_entry.update({
        "available_backends": {"zarr": True},
        "image_files": natsorted(names),
        "source_subdirectory": source_key,
        "zarr_config": {k: (v.value if hasattr(v, "value") else v) for k, v in asdict(config).items()},
        **extra,
    })
    update_metadata(plate.path, {store_key: new_entry}, main=store_key)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="plane", disable=not enabled, file=sys.stderr,
                leave=False)
