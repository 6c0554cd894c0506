"""How prepared sample arrays are encoded on disk (sample format 2): one module for both sides,
`data_prepare.store` writes, `pipeline.samples.SampleStore` reads.

Two storages, chosen by `prepare.sample_storage` (bench/prepare.py `storage` measures them):

- `zstd` (default): images as int16 with a power-of-two step (2^-10 of the normalised unit),
  byte-shuffled (high and low bytes in two planes, which is what makes numeric data compress)
  and zstd-compressed; labels uint8, zstd-compressed. About 5× smaller than float32 on the
  synthetic FLARE set (≈ 6 MB per labeled case with a 160³ coarse grid instead of 31 MB), decoded
  whole on each read (~15 ms for a 160³ coarse sample; the default 64×128×128 has a quarter of its voxels).
- `npy`: float16 .npy, memory-mapped like format 1; half the size of float32, no decoding and
  partial reads (patches) touch only the patch. Consumers converting with
  `np.array(x, dtype=np.float32)` get the same values either way.

Why these precisions suffice. The images are normalised intensities: CT is clipped to its HU
window (±325 HU) and z-scored with the case's std (about 100–200 HU), MRI is z-scored inside the
brain. The int16 step of 2^-10 z is ≤ 0.2 HU for std ≤ 200 HU: an error (≤ half a step) five
times below the 1 HU quantisation of the source and ~100× below CT noise (~10–20 HU); for MRI it
is 0.1 % of the brain's intensity spread, far below MRI noise. The step doubles only where
|x| > 32 would overflow int16 (then it is still ≤ 2^-15 of the largest value). float16 keeps 11
significant bits, ~3 decimal digits: an absolute error ≤ 2^-9 z for |x| < 8, again below 1 HU.
Labels are exact.

Format 1 work folders (float32 .npy, no `codec` in the record) are read as `npy`. Every read is
pickle-free (`allow_pickle=False`; zstd files are raw frames with a checksum, no container).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.errors import SegpipeError

SAMPLE_FORMAT = 2  # written to the index meta (`prepare.sample_format`); bump when the encoding changes
Storage = Literal["zstd", "npy"]
IMAGE_STEP = 2.0**-10
ZSTD_LEVEL = 1  # levels 1-5 are within 2 % in size on CT samples; 1 compresses 3× faster than 3 (measured)
SUFFIX = {"zstd": ".zst", "npy": ".npy"}


def image_step(image: np.ndarray) -> float:
    """The int16 quantisation step: IMAGE_STEP, doubled until the largest |value| fits."""
    peak = float(np.max(np.abs(image))) if image.size else 0.0
    if not math.isfinite(peak):
        raise SegpipeError("normalised image holds NaN or infinite values")
    step = IMAGE_STEP
    while peak / step > 32767:
        step *= 2.0
    return step


def _shuffle(array: np.ndarray) -> bytes:
    """Byte planes of a little-endian 2-byte array: all low bytes, then all high bytes."""
    return np.ascontiguousarray(array.view(np.uint8).reshape(-1, array.itemsize).T).tobytes()


def _unshuffle(raw: bytes, n: int) -> np.ndarray:
    planes = np.frombuffer(raw, np.uint8).reshape(2, n)
    return np.stack((planes[0], planes[1]), axis=1).view("<i2").reshape(n)  # stack: 20× faster than .T copy


def encode(array: np.ndarray, kind: str, storage: Storage) -> tuple[bytes | np.ndarray, dict[str, Any]]:
    """What to write for one array and what the record says about it (without path and size).

    `kind` "image" (float32 normalised intensities) or "label" (uint8)."""
    shape = [int(v) for v in array.shape]
    if kind == "label":
        label = np.ascontiguousarray(array, dtype=np.uint8)
        if storage == "npy":
            return label, {"shape": shape, "dtype": "uint8", "codec": "npy"}
        return _zstd(label.tobytes()), {"shape": shape, "dtype": "uint8", "codec": "zstd"}
    if kind != "image":
        raise ValueError(f"unknown array kind {kind!r}")
    if storage == "npy":
        return np.ascontiguousarray(array, dtype=np.float16), {"shape": shape, "dtype": "float16", "codec": "npy"}
    step = image_step(array)
    quantised = np.rint(np.asarray(array, np.float32) / np.float32(step)).astype("<i2")
    return _zstd(_shuffle(quantised)), {"shape": shape, "dtype": "int16", "scale": step, "codec": "zstd",
                                        "shuffle": True}


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True).compress(data)


def write(fh: Any, payload: bytes | np.ndarray) -> None:
    """Write an `encode` payload to an open binary file and fsync it."""
    if isinstance(payload, np.ndarray):
        np.save(fh, payload, allow_pickle=False)
    else:
        fh.write(payload)
    fh.flush()
    os.fsync(fh.fileno())


def read(path: Path, info: dict[str, Any], *, mmap: bool = True) -> np.ndarray:
    """The array a record entry describes: images as float32 (float16 memory map for `npy`
    storage with `mmap`), labels uint8. Shape, size and checksum mismatches raise SegpipeError."""
    shape = tuple(int(v) for v in info["shape"])
    codec = info.get("codec", "npy")  # format 1 records have no codec: float32 .npy
    if codec == "npy":
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SegpipeError(f"{path}: unreadable sample array ({exc}); rerun `segpipe prepare`") from None
        if array.shape != shape:
            raise SegpipeError(f"{path}: shape {array.shape} does not match the index ({list(shape)})")
        if not mmap and array.dtype == np.float16:
            return array.astype(np.float32)
        return array
    if codec != "zstd":
        raise SegpipeError(f"{path}: unknown sample codec {codec!r}; rerun `segpipe prepare` with this segpipe")
    import zstandard

    n = math.prod(shape)
    dtype = np.dtype(info["dtype"])
    try:
        with open(path, "rb") as fh:
            raw = zstandard.ZstdDecompressor().decompress(fh.read(), max_output_size=n * dtype.itemsize)
    except OSError as exc:
        raise SegpipeError(f"{path}: unreadable sample array ({exc.strerror or exc}); rerun `segpipe prepare`") from None
    except zstandard.ZstdError as exc:
        raise SegpipeError(f"{path}: corrupt sample array ({exc}); rerun `segpipe prepare`") from None
    if len(raw) != n * dtype.itemsize:
        raise SegpipeError(f"{path}: {len(raw)} bytes decoded, the index says {list(shape)} {dtype}")
    if dtype == np.uint8:
        return np.frombuffer(raw, np.uint8).reshape(shape).copy()
    if dtype != np.int16:
        raise SegpipeError(f"{path}: unexpected stored dtype {dtype}")
    quantised = _unshuffle(raw, n) if info.get("shuffle") else np.frombuffer(raw, "<i2")
    out = np.empty(shape, np.float32)
    np.multiply(quantised.reshape(shape), np.float32(info["scale"]), out=out)
    return out
