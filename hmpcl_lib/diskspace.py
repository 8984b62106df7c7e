"""Free disk before each big stage: estimate what a stage writes and refuse to start when it does not fit.

Each big writer (download of a year, extraction, pixel store, corpus embeddings, FAISS index) calls
`require_free_disk(stage, folder, needed)` before it writes its first byte (no folder, temp folder or partial
file), so a full disk is an `InsufficientDiskError` naming the stage, the folder and the bytes, not a crash hours
in. The estimates are the `*_bytes` functions below; every per-item constant they use is in `SIZES`.
Standard library only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from hmpcl_lib.errors import InputError

MARGIN = 0.05  # asked on top of every estimate: file-system blocks, footers, the estimate's own slack

# Every constant the estimates use (bytes, or a ratio where the name says so).
SIZES: dict[str, float] = {
    "float32": 4,  # one embedding component (and one component of a stored FAISS vector)
    "float16": 2,  # one embedding component of a float16 embeddings table
    "drawing_id": 40,  # one id in Parquet/numpy when the exact ids are not at hand ("USD0836880-20190101-D00001_1")
    "npy_header": 128,  # header of one .npy file (format 1.0, padded to a multiple of 64 bytes)
    "index_row": 32,  # per pixel-store row besides its paths: Parquet offsets, file_size + mtime_ns (2 x int64)
    "small_files": 64 * 1024,  # per stage: meta.json, Parquet footers, the FAISS header
    "ivf_id": 8,  # int64 id stored with each vector in an IVF inverted list
    "hnsw_link": 4,  # int32 neighbour of an HNSW graph: 2*M per vector at level 0, about 1 more above
    "hnsw_node": 12,  # per HNSW vector: its level (int32) and its offset into the links (size_t)
    # Extraction peak over the year's unpacked bytes: the year unpacked (a zip lists that, a tar is about its own
    # size since PNG does not compress) plus its largest inner archive (Segmented.tar.gz, ...) unpacked beside it
    # before that archive is deleted, which is at most the year again.
    "extract_peak_ratio": 2.0,
}


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, one decimal)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class InsufficientDiskError(InputError):
    """Not enough free disk for a stage: names the stage, the folder, the bytes needed and free, and the fix."""

    def __init__(self, stage: str, folder: str | os.PathLike, needed: int, free: int, margin: float = 0.0):
        self.stage, self.folder, self.needed, self.free = stage, str(folder), int(needed), int(free)
        how = f", the estimate + {margin:.0%} margin" if margin else ""
        super().__init__(
            f"not enough free disk for {stage} in {self.folder}: it needs {human_bytes(self.needed)} "
            f"({self.needed:,} bytes{how}) and {human_bytes(self.free)} ({self.free:,} bytes) are free. Free space "
            "there, or point HMPCL_DATA_ROOT (--data-root) at a folder on a bigger disk")
        self.source = self.folder  # as InputError's `source`, without its 'file ...:' prefix in the message


def existing_ancestor(folder: str | os.PathLike) -> Path:
    """`folder` itself if it exists, else its nearest existing parent (where its files would land)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: str | os.PathLike) -> int:
    """Free bytes on the disk that holds (or would hold) `folder`."""
    return int(shutil.disk_usage(existing_ancestor(folder)).free)


def require_free_disk(stage: str, folder: str | os.PathLike, needed_bytes: int, margin: float = MARGIN) -> int:
    """Raise InsufficientDiskError unless the disk of `folder` has needed_bytes * (1 + margin) free; writes
    nothing. Returns the free bytes."""
    needed = int(max(0, needed_bytes) * (1 + margin))
    free = free_bytes(folder)
    if free < needed:
        raise InsufficientDiskError(stage, folder, needed, free, margin)
    return free


# ---------------------------------------------------------------- what each stage writes


def download_bytes(sizes: list[int | None], have: list[int]) -> int:
    """A year's download: each listed file size minus the bytes already there (a finished file or a `.part`);
    a file the listing gives no size for counts 0."""
    return sum(max(0, int(size) - int(got)) for size, got in zip(sizes, have) if size is not None)


def extract_bytes(unpacked_bytes: int, joined_bytes: int = 0) -> int:
    """Peak of extracting a year whose outer archive unpacks to `unpacked_bytes` (see `extract_peak_ratio`), plus
    `joined_bytes` when its parts are first joined into one archive file."""
    return int(unpacked_bytes * SIZES["extract_peak_ratio"]) + int(joined_bytes)


def pixel_store_bytes(n: int, image_size: int, train_side: int, text_bytes: int | None = None) -> int:
    """A pixel store of `n` drawings: eval.npy (uint8 n x S x S) + train.npy (uint8 n x T x T), exactly, plus
    index.parquet (`text_bytes`: the ids and paths, default `drawing_id` + 100 per row) and meta.json."""
    text = n * (SIZES["drawing_id"] + 100) if text_bytes is None else text_bytes
    return int(n * (image_size ** 2 + train_side ** 2) + 2 * SIZES["npy_header"]
               + n * SIZES["index_row"] + text + SIZES["small_files"])


def embeddings_bytes(n: int, dim: int, float16: bool = False, id_bytes: int | None = None) -> int:
    """The embeddings Parquet of `n` vectors of `dim`: n x dim x 4 (2 for float16) plus the ids (`id_bytes`,
    default `drawing_id` per row); floats do not compress, so this is about the file's size."""
    ids = n * SIZES["drawing_id"] if id_bytes is None else id_bytes
    return int(n * dim * SIZES["float16" if float16 else "float32"] + ids + SIZES["small_files"])


def index_bytes(n: int, dim: int, kind: str = "flat", nlist: int | None = None, hnsw_m: int | None = None,
                id_bytes: int | None = None) -> int:
    """A saved FAISS index of `n` vectors of `dim` (`kind`: flat / ivf / hnsw / other, as IndexMeta.kind) plus its
    ids.npy: n full float32 vectors (exact for Flat, IVF-Flat and HNSW storage, an upper bound for compressed
    codes), an int64 id per vector and the nlist centroids for IVF (and any other factory), graph links for HNSW."""
    per_vector = dim * SIZES["float32"]
    if kind == "hnsw":
        per_vector += (2 * (hnsw_m or 32) + 1) * SIZES["hnsw_link"] + SIZES["hnsw_node"]
    elif kind != "flat":
        per_vector += SIZES["ivf_id"]
    centroids = (nlist or 0) * dim * SIZES["float32"]
    ids = n * SIZES["drawing_id"] if id_bytes is None else id_bytes
    return int(n * per_vector + centroids + ids + SIZES["npy_header"] + SIZES["small_files"])
