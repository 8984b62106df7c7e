"""Batched inference: drawings → L2-normalised embeddings → Parquet (`drawing_id`, fixed-size-list `embedding`).

Deterministic: eval mode, no shuffling, no augmentation, results written in input order. On CUDA the forward
pass runs under bf16 autocast with channels_last inputs (the output is re-normalised in float32 so the index
sees unit vectors either way). No mlflow/faiss import here: this is torch core.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from hmpcl_lib.modeling.distributed import resolve_device
from hmpcl_lib.modeling.dataset import DrawingDataset, collate
from hmpcl_lib.diskspace import embeddings_bytes, require_free_disk
from hmpcl_lib.errors import InputError
from hmpcl_lib.io import atomic_path, write_parquet_atomic
from hmpcl_lib.modeling.models import build_transform, IMAGENET_MEAN, IMAGENET_STD
from hmpcl_lib.modeling.pixels import PixelStore, PixelStoreSet, eval_batch, open_pixel_store
from hmpcl_lib.schemas import embeddings_schema

log = logging.getLogger(__name__)


@dataclass
class EmbedStats:
    """Throughput of the last `embed_paths` call it was passed to (filled in place)."""

    n_images: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    device: str = ""
    batch_size: int = 0
    num_workers: int = 0


def default_num_workers(n_images: int, batch_size: int) -> int:
    """Worker processes only pay off beyond a couple of batches; leave one core to the forward pass."""
    if n_images <= 2 * batch_size:
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _model_config(model: torch.nn.Module) -> dict[str, Any]:
    return dict(getattr(model, "config", None) or {})


def embed_paths(
    model: torch.nn.Module,
    image_paths: Sequence[str | os.PathLike],
    image_size: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    num_workers: int | None = None,
    float16: bool = False,
    stats: EmbedStats | None = None,
    pixel_store: "PixelStore | PixelStoreSet | str | os.PathLike | None" = None,
) -> np.ndarray:
    """Embed image files in order → [N, D] float32 (float16 with `float16=True`), rows L2-normalised.

    `image_size`, mean and std default to `model.config` (what the encoder was trained with). A file that is
    missing or not decodable raises InputError naming it. Throughput is logged and written into `stats`.
    With `pixel_store` (hmpcl_lib.modeling.pixels, built at this image size and holding every path) the pixels
    come from the store, decoded once: the same numbers as the PNG path (grey drawings), no decoding here.
    """
    config = _model_config(model)
    image_size = image_size or config.get("image_size")
    if not image_size:
        raise ValueError("image_size not given and model.config has no 'image_size'")
    if pixel_store is not None and str(pixel_store) != "":
        return _embed_from_store(model, [str(p) for p in image_paths], int(image_size), batch_size, device,
                                 float16, stats, open_pixel_store(pixel_store), config)
    transform = build_transform(
        int(image_size), train=False, mean=config.get("mean", IMAGENET_MEAN), std=config.get("std", IMAGENET_STD)
    )
    paths = [str(p) for p in image_paths]
    target = resolve_device(device)
    workers = default_num_workers(len(paths), batch_size) if num_workers is None else num_workers
    loader = DataLoader(
        DrawingDataset(paths, transform=transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=target.type == "cuda",
        persistent_workers=False,
    )
    batches = (images.to(target, non_blocking=True) for images, _ in loader)
    return _embed_batches(model, batches, len(paths), target, batch_size, workers, float16, stats, "files")


def _embed_from_store(model, paths: list[str], image_size: int, batch_size: int, device, float16: bool,
                      stats: EmbedStats | None, store: PixelStore | PixelStoreSet, config: dict[str, Any]) -> np.ndarray:
    """embed_paths over a pixel store: batches are memmap row reads in this process (no DataLoader workers)."""
    if store.image_size != image_size:
        raise InputError(f"pixel store holds {store.image_size} px drawings, embedding wants {image_size} px",
                         source=str(store.path))
    rows = store.positions(paths)
    mean, std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
    target = resolve_device(device)

    def batches() -> Iterator[torch.Tensor]:
        for lo in range(0, len(rows), batch_size):
            pixels = torch.from_numpy(store.eval_rows(rows[lo:lo + batch_size]))  # a copy, read with pread
            yield eval_batch(pixels.pin_memory() if target.type == "cuda" else pixels, mean, std, target)

    return _embed_batches(model, batches(), len(paths), target, batch_size, 0, float16, stats,
                          f"pixel store {store.path}")


def _embed_batches(model, batches: Iterable[torch.Tensor], n_images: int, target: torch.device, batch_size: int,
                   workers: int, float16: bool, stats: EmbedStats | None, source: str) -> np.ndarray:
    """The inference loop both paths share: eval mode, channels_last, bf16 autocast on CUDA, L2-normalised rows;
    throughput logged and written into `stats`."""
    was_training = model.training
    model.eval().to(target)
    model.to(memory_format=torch.channels_last)  # faster on CUDA and on CPU (oneDNN) alike
    on_cuda = target.type == "cuda"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda and torch.cuda.is_bf16_supported())
    chunks: list[np.ndarray] = []
    start = time.perf_counter()
    try:
        with torch.inference_mode(), autocast:
            for images in batches:
                images = images.contiguous(memory_format=torch.channels_last)
                chunks.append(F.normalize(model(images).float(), dim=-1).cpu().numpy())
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    dim = getattr(model, "output_dim", None)
    out = np.concatenate(chunks) if chunks else np.zeros((0, int(dim or 0)), dtype=np.float32)
    rate = n_images / seconds if seconds > 0 else 0.0
    log.info("embedded %d images from %s in %.1f s (%.1f images/s, %s, batch %d, %d workers)",
             n_images, source, seconds, rate, target, batch_size, workers)
    if stats is not None:
        stats.n_images, stats.seconds, stats.images_per_s = n_images, seconds, rate
        stats.device, stats.batch_size, stats.num_workers = str(target), batch_size, workers
    return out.astype(np.float16) if float16 else out.astype(np.float32, copy=False)


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, float16: bool = False) -> pa.Table:
    """Pack ids and [N, D] vectors into the embeddings schema (fixed-size list column)."""
    vectors = np.asarray(vectors, dtype=np.float16 if float16 else np.float32)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise InputError(f"{len(ids)} ids for vectors of shape {vectors.shape}", source="embeddings")
    dim = vectors.shape[1]
    schema = embeddings_schema(dim, float16)
    values = pa.array(vectors.reshape(-1), type=schema.field("embedding").type.value_type)
    column = pa.FixedSizeListArray.from_arrays(values, dim)
    return pa.Table.from_arrays([pa.array(list(ids), pa.string()), column], schema=schema)


def embed_table(
    model: torch.nn.Module,
    table: pa.Table | pl.DataFrame,
    image_size: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = "auto",
    num_workers: int | None = None,
    float16: bool = False,
    stats: EmbedStats | None = None,
    pixel_store: "PixelStore | PixelStoreSet | str | os.PathLike | None" = None,
) -> pa.Table:
    """Embed every row of a drawings-like table (`drawing_id`, `image_path`) → embeddings table, same order.
    `pixel_store`: read the pixels from that store instead of decoding the PNGs (see `embed_paths`)."""
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    missing = [c for c in ("drawing_id", "image_path") if c not in frame.columns]
    if missing:
        raise InputError(f"drawings table lacks columns {missing}", source="embed_table")
    null_path = frame.filter(pl.col("image_path").is_null())
    if null_path.height:
        raise InputError("image_path is null", source="embed_table", record=null_path["drawing_id"][0])
    vectors = embed_paths(model, frame["image_path"].to_list(), image_size, batch_size, device, num_workers,
                          float16, stats, pixel_store)
    return embeddings_table(frame["drawing_id"].to_list(), vectors, float16)


def write_embeddings(table: pa.Table, path: str | os.PathLike) -> Path:
    """Write an embeddings table atomically (temp file + rename), after checking the disk has room for it."""
    if table.column_names != ["drawing_id", "embedding"]:
        raise InputError(f"not an embeddings table: columns {table.column_names}", source=str(path))
    kind = table.schema.field("embedding").type
    float16 = pa.types.is_float16(kind.value_type)
    require_free_disk(f"the corpus embeddings ({table.num_rows:,} x {kind.list_size} {kind.value_type})",
                      Path(path).parent, embeddings_bytes(table.num_rows, kind.list_size, float16,
                                                          table.column("drawing_id").nbytes))
    return write_parquet_atomic(table, path)


EMBED_CHUNK_ROWS = 65_536  # rows embedded and written per Parquet row group by `embed_to_parquet`


def embed_to_parquet(
    model: torch.nn.Module,
    table: pa.Table | pl.DataFrame,
    path: str | os.PathLike,
    chunk_rows: int = EMBED_CHUNK_ROWS,
    stats: EmbedStats | None = None,
    **embed_options: Any,
) -> tuple[Path, int, int]:
    """`embed_table` + `write_embeddings` for a corpus of any size: `chunk_rows` rows at a time, each written as a
    row group of one Parquet file (temp file, renamed when complete), so memory holds one chunk's vectors, not the
    corpus's. Returns (path, rows, dim); `stats` gets the throughput over all chunks."""
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    dim = int(getattr(model, "output_dim", 0) or 0)
    float16 = bool(embed_options.get("float16", False))
    if dim:
        require_free_disk(f"the corpus embeddings ({frame.height:,} x {dim})", Path(path).parent,
                          embeddings_bytes(frame.height, dim, float16, int(frame["drawing_id"].str.len_bytes().sum())))
    total = EmbedStats()
    writer = None
    with atomic_path(path) as tmp:
        try:
            for lo in range(0, frame.height, chunk_rows):
                part_stats = EmbedStats()
                part = embed_table(model, frame.slice(lo, chunk_rows), stats=part_stats, **embed_options)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, part.schema)
                writer.write_table(part)
                dim = part.schema.field("embedding").type.list_size
                total.n_images += part_stats.n_images
                total.seconds += part_stats.seconds
                total.device, total.batch_size, total.num_workers = (part_stats.device, part_stats.batch_size,
                                                                     part_stats.num_workers)
            if writer is None:  # no rows: an empty file of the right schema
                pq.write_table(embeddings_table([], np.zeros((0, dim), np.float32), float16), tmp)
        finally:
            if writer is not None:
                writer.close()
    total.images_per_s = total.n_images / total.seconds if total.seconds > 0 else 0.0
    if stats is not None:
        stats.__dict__.update(total.__dict__)
    return Path(path), frame.height, dim


def store_embeddings_path(out_dir: str | os.PathLike, store: PixelStore) -> Path:
    """`<out_dir>/<store group>-<store fingerprint[:16]>.parquet`: the embeddings of one pixel store (one year of the
    corpus) by the model whose folder `out_dir` is. Same model folder + same pixels = same file."""
    return Path(out_dir) / f"{store.path.parent.name}-{store.fingerprint[:16]}.parquet"


@dataclass
class StoreEmbeddings:
    """What `ensure_store_embeddings` did: the file, its rows and dimension, and whether it embedded them now."""

    path: Path
    rows: int
    dim: int
    embedded: bool
    removed: list[Path]


def ensure_store_embeddings(model: "torch.nn.Module | Callable[[], torch.nn.Module]", store: PixelStore, out_dir: str | os.PathLike,
                            stats: EmbedStats | None = None, **embed_options: Any) -> StoreEmbeddings:
    """Every drawing of one pixel store embedded by `model` into `store_embeddings_path(out_dir, store)`: reused
    when that file exists (the same model and the same pixels), else embedded chunk by chunk into a temp file and
    renamed into place, so a run killed part-way leaves no file and its rerun redoes this store only. A file of an
    older version of the same group (the year's pixels before they changed) is removed once the new one exists.
    `out_dir` must belong to one model (the pipeline uses `<data root>/embeddings/<MLflow run id>/`); `model` may be
    a function that loads it, called only when there is something to embed."""
    path = store_embeddings_path(out_dir, store)
    stale = [p for p in Path(out_dir).glob(f"{store.path.parent.name}-*.parquet") if p != path]
    if path.exists():
        meta = pq.ParquetFile(path).metadata
        kind = meta.schema.to_arrow_schema().field("embedding").type
        embedded, rows, dim = False, meta.num_rows, kind.list_size
        if rows != len(store):
            raise InputError(f"holds {rows} rows, the pixel store {store.path} {len(store)}", source=str(path))
    else:
        table = pl.DataFrame({"drawing_id": store.drawing_ids, "image_path": store.image_paths},
                             schema={"drawing_id": pl.String, "image_path": pl.String})
        if not isinstance(model, torch.nn.Module):
            model = model()
        _, rows, dim = embed_to_parquet(model, table, path, stats=stats, pixel_store=store, **embed_options)
        embedded = True
    for old in stale:
        old.unlink(missing_ok=True)
    return StoreEmbeddings(path, rows, dim, embedded, stale)


def read_embeddings(path: str | os.PathLike | Sequence[str | os.PathLike],
                    ids: Sequence[str] | pl.Series | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an embeddings Parquet (or several: the pipeline's year files, in the order given) → (drawing ids as a
    str array, [N, D] float32 vectors); with `ids`, only those rows (filtered while reading, so the rest of a
    multi-million-row corpus never enters memory)."""
    if not isinstance(path, (str, os.PathLike)):
        files = [str(p) for p in path]
        if not files:
            raise InputError("no embeddings files to read", source="read_embeddings")
        if len(files) > 1:
            parts = [read_embeddings(f, ids) for f in files]
            return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])
        path = files[0]
    try:
        if ids is None:
            table = pq.read_table(path)
        else:
            wanted = pa.array(ids.to_list() if isinstance(ids, pl.Series) else list(ids), pa.string())
            table = pq.read_table(path, filters=pc.field("drawing_id").isin(wanted))
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read embeddings Parquet: {exc}", source=str(path)) from exc
    if table.column_names[:2] != ["drawing_id", "embedding"]:
        raise InputError(f"expected columns drawing_id, embedding; got {table.column_names}", source=str(path))
    column = table.column("embedding").combine_chunks()
    if not pa.types.is_fixed_size_list(column.type):
        raise InputError(f"embedding column must be a fixed-size list, got {column.type}", source=str(path))
    ids = table.column("drawing_id").to_numpy(zero_copy_only=False)
    null_rows = np.flatnonzero(
        column.is_null().to_numpy(zero_copy_only=False)
        | table.column("drawing_id").is_null().to_numpy(zero_copy_only=False)
    )
    if len(null_rows):
        row = int(null_rows[0])
        raise InputError("null embedding or drawing id", source=str(path), record=ids[row] or f"#{row}")
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)
    return ids.astype(str), vectors
