"""Zarr storage settings: chunking strategy, compressor, NGFF version.

Kept apart from the zarr backend so configuration can be built and passed
around without importing zarr.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ZarrChunkStrategy(str, Enum):
    WELL = "well"   # one chunk per field image: whole (T, C, Z, Y, X) -- fast batch reads
    FILE = "file"   # one chunk per (1, 1, 1, Y, X) plane -- fast single-plane reads


class ZarrCompressor(str, Enum):
    ZSTD = "zstd"
    LZ4 = "lz4"
    ZLIB = "zlib"
    NONE = "none"


@dataclass(frozen=True)
class ZarrConfig:
    chunk_strategy: ZarrChunkStrategy = ZarrChunkStrategy.WELL
    compressor: ZarrCompressor = ZarrCompressor.ZSTD
    compression_level: int = 1
    ngff_version: str = "0.4"   # 0.4 = zarr format 2 (what Java readers open); 0.5 = zarr format 3
    pyramid_levels: int | None = None   # levels below level 0; None: halve until it fits 1024 px

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunk_strategy", ZarrChunkStrategy(self.chunk_strategy))
        object.__setattr__(self, "compressor", ZarrCompressor(self.compressor))
        if self.ngff_version not in ("0.4", "0.5"):
            raise ValueError(f"ngff_version must be '0.4' or '0.5', got {self.ngff_version!r}")
        if self.pyramid_levels is not None and not 0 <= int(self.pyramid_levels) <= 16:
            raise ValueError(f"pyramid_levels must be 0..16, got {self.pyramid_levels}")
        if not 0 <= int(self.compression_level) <= 9:
            raise ValueError(f"compression_level must be 0..9, got {self.compression_level}")

    @property
    def zarr_format(self) -> int:
        return 2 if self.ngff_version == "0.4" else 3

    def compressors(self):
        """The codec object(s) for zarr.create_array's ``compressors`` argument."""
        if self.compressor is ZarrCompressor.NONE:
            return None
        if self.zarr_format == 2:
            import numcodecs
            return numcodecs.Blosc(cname=self.compressor.value, clevel=self.compression_level,
                                   shuffle=numcodecs.Blosc.BITSHUFFLE)
        from zarr.codecs import BloscCodec
        return BloscCodec(cname=self.compressor.value, clevel=self.compression_level,
                          shuffle="bitshuffle")
