"""Embedding a drawings table split across ranks/workers, and merging the shards back by drawing id.

Why: 2.7 M drawings at ~160 images/s per CPU (thousands per GPU) is a job for many processes. Each rank embeds
its own rows and writes one shard Parquet atomically (`shard-00001-of-00004.parquet`, shard facts in the Parquet
key-value metadata), so a crashed rank reruns alone; `merge_shards` then checks the set is complete (every rank
once, no id missing or duplicated) and returns one table sorted by drawing id. No collective is needed to embed,
so the same code runs as plain calls (`rank`, `world` arguments) or under torchrun (RANK / WORLD_SIZE).

Spreading the merged vectors over index shards (`build_sharded`) is index work and lives in
`hmpcl_lib.retrieval.index`: this module is part of the torch core and imports no faiss.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from hmpcl_lib.retrieval.embedding import embed_table, write_embeddings
from hmpcl_lib.errors import InputError

log = logging.getLogger(__name__)

ShardMode = Literal["strided", "contiguous"]
SHARD_META = b"hmpcl.shard"
SHARD_NAME = re.compile(r"shard-(\d+)-of-(\d+)\.parquet$")


def shard_rows(n_rows: int, rank: int, world: int, mode: ShardMode = "strided") -> np.ndarray:
    """Row positions of `rank`: r::world (strided, balances a sorted table) or one contiguous block."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world) with world >= 1, got rank {rank}, world {world}")
    if mode == "strided":
        return np.arange(rank, n_rows, world, dtype=np.int64)
    if mode == "contiguous":
        bounds = np.linspace(0, n_rows, world + 1).round().astype(np.int64)
        return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)
    raise ValueError(f"shard mode must be 'strided' or 'contiguous', got {mode!r}")


def shard_path(out_dir: str | os.PathLike, rank: int, world: int) -> Path:
    return Path(out_dir) / f"shard-{rank:05d}-of-{world:05d}.parquet"


def embed_shard(model: Any, table: pa.Table | pl.DataFrame, out_dir: str | os.PathLike, rank: int, world: int,
                mode: ShardMode = "strided", **embed_kwargs: Any) -> Path:
    """Embed this rank's rows of `table` (`drawing_id`, `image_path`) and write its shard atomically.

    `embed_kwargs` go to `embedding.embed_table` (image_size, batch_size, device, num_workers, float16).
    """
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    rows = shard_rows(frame.height, rank, world, mode)
    part = frame[rows] if len(rows) else frame.clear()
    embedded = embed_table(model, part.select("drawing_id", "image_path"), **embed_kwargs)
    facts = {"rank": rank, "world": world, "mode": mode, "rows": len(rows), "source_rows": frame.height}
    embedded = embedded.replace_schema_metadata({**(embedded.schema.metadata or {}),
                                                 SHARD_META: json.dumps(facts).encode()})
    path = write_embeddings(embedded, shard_path(out_dir, rank, world))
    log.info("rank %d/%d wrote %d embeddings to %s", rank, world, len(rows), path)
    return path


def _shard_facts(path: Path, table: pa.Table) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(SHARD_META)
    if raw is None:
        raise InputError("not an embedding shard (no shard metadata)", source=str(path))
    return json.loads(raw)


def merge_shards(paths: Sequence[str | os.PathLike], expected_ids: Sequence[str] | None = None) -> pa.Table:
    """One embeddings table sorted by drawing_id from a complete shard set.

    Refuses (InputError naming the shard and the id) a missing or repeated rank, shards of different runs,
    a duplicated drawing id, a row count short of the source table, or ids differing from `expected_ids`.
    """
    if not paths:
        raise InputError("no shard to merge", source="merge_shards")
    tables, ranks, worlds, sources = [], {}, set(), set()
    for path in map(Path, paths):
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"cannot read shard: {exc}", source=str(path)) from exc
        facts = _shard_facts(path, table)
        if facts["rank"] in ranks:
            raise InputError(f"rank {facts['rank']} given twice (also {ranks[facts['rank']]})", source=str(path))
        if table.num_rows != facts["rows"]:
            raise InputError(f"shard holds {table.num_rows} rows, its metadata says {facts['rows']}", source=str(path))
        ranks[facts["rank"]] = path
        worlds.add(facts["world"])
        sources.add(facts["source_rows"])
        tables.append(table.replace_schema_metadata(None))
    if len(worlds) != 1 or len(sources) != 1:
        raise InputError(f"shards of different runs (world sizes {sorted(worlds)}, source rows {sorted(sources)})",
                         source=str(Path(paths[0]).parent))
    world, source_rows = worlds.pop(), sources.pop()
    missing_ranks = sorted(set(range(world)) - set(ranks))
    if missing_ranks:
        raise InputError(f"shard set incomplete: ranks {missing_ranks} of {world} missing",
                         source=str(shard_path(Path(paths[0]).parent, missing_ranks[0], world)))
    try:
        merged = pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise InputError(f"shards disagree on the embedding schema: {exc}", source=str(Path(paths[0]).parent)) from exc
    merged = merged.sort_by("drawing_id")
    ids = merged.column("drawing_id").to_numpy(zero_copy_only=False).astype(str)
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if len(repeated):
        raise InputError(f"drawing id in more than one shard row ({len(repeated)} duplicates)",
                         source=str(Path(paths[0]).parent), record=str(repeated[0]))
    if merged.num_rows != source_rows:
        raise InputError(f"merged {merged.num_rows} rows, the source table had {source_rows}",
                         source=str(Path(paths[0]).parent))
    if expected_ids is not None:
        expected = np.unique(np.asarray(expected_ids).astype(str))
        lost = np.setdiff1d(expected, ids)
        extra = np.setdiff1d(ids, expected)
        if len(lost) or len(extra):
            record = str(lost[0]) if len(lost) else str(extra[0])
            raise InputError(f"{len(lost)} expected drawing id(s) missing, {len(extra)} unexpected",
                             source=str(Path(paths[0]).parent), record=record)
    return merged


def shard_set(out_dir: str | os.PathLike) -> list[Path]:
    """Every shard file in `out_dir`, in rank order (what `merge_shards` takes after the ranks finished)."""
    found = [p for p in Path(out_dir).iterdir() if SHARD_NAME.search(p.name)]
    return sorted(found, key=lambda p: int(SHARD_NAME.search(p.name).group(1)))


# ---------------------------------------------------------------- CLI


def _distributed_rank_world() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hmpcl_lib.retrieval.sharded_embedding",
        description="Embed this rank's shard of a drawings table (RANK/WORLD_SIZE from torchrun, or --rank/--world); "
                    "with --merge, rank 0 waits for every shard and writes the merged table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--table", required=True, help="Parquet with drawing_id, image_path")
    parser.add_argument("--model-checkpoint", required=True, help="encoder.pt or checkpoints/last.pt from training")
    parser.add_argument("--out", required=True, help="folder for shard-RRRRR-of-WWWWW.parquet")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--world", type=int, default=None)
    parser.add_argument("--mode", choices=["strided", "contiguous"], default="strided")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=None, help="default: the encoder's training size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--num-workers", type=int, default=None)
    parser.add_argument("--float16", action="store_true")
    parser.add_argument("--merge", default=None, help="merged embeddings Parquet (written by rank 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from hmpcl_lib.modeling.models import load_encoder

    env_rank, env_world = _distributed_rank_world()
    rank = env_rank if args.rank is None else args.rank
    world = env_world if args.world is None else args.world
    try:
        table = pl.read_parquet(args.table, columns=["drawing_id", "image_path"])
    except Exception as exc:  # noqa: BLE001 - any read failure is bad input here
        raise InputError(f"cannot read drawings table ({exc})", source=args.table) from exc
    model = load_encoder(args.model_checkpoint)
    path = embed_shard(model, table, args.out, rank, world, args.mode, image_size=args.image_size,
                       batch_size=args.batch_size, device=args.device,
                       num_workers=args.num_workers, float16=args.float16)
    if args.merge:
        if env_world > 1:  # under torchrun: wait until every rank's shard is on disk
            import torch.distributed as dist

            dist.init_process_group("gloo")
            dist.barrier()
        if rank == 0:
            merged = merge_shards([shard_path(args.out, r, world) for r in range(world)],
                                  expected_ids=table["drawing_id"].to_list())
            write_embeddings(merged, args.merge)
            print(json.dumps({"merged": args.merge, "rows": merged.num_rows}))
        if env_world > 1:
            dist.destroy_process_group()
    else:
        print(json.dumps({"shard": str(path), "rank": rank, "world": world}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
