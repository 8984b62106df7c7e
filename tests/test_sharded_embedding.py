"""Sharded embedding: shards from ranks 0/1 (sequential calls and 2 torchrun processes) merge into exactly the
single-process embedding; incomplete or inconsistent shard sets are refused; a faiss-sharded index answers like one
flat index."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from hmpcl_lib.retrieval.embedding import embed_table, read_embeddings
from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.retrieval.index import CpuShardedIndex, VectorIndex, build_sharded
from hmpcl_lib.retrieval.sharded_embedding import embed_shard, merge_shards, shard_path, shard_rows, shard_set

REPO = Path(__file__).resolve().parent.parent
IMAGE_SIZE = 48
N_DRAWINGS = 9


def _draw(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    img = Image.new("L", (80, 64), 255)
    pen = ImageDraw.Draw(img)
    for _ in range(5):
        pen.line([tuple(int(v) for v in rng.integers(0, 64, 2)) for _ in range(2)], fill=0, width=2)
    img.save(path)
    return str(path)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> pl.DataFrame:
    root = tmp_path_factory.mktemp("shard-drawings")
    ids = [f"USD{900 - i:07d}-20190101-D00001_1" for i in range(N_DRAWINGS)]  # not in id order on purpose
    return pl.DataFrame({"drawing_id": ids, "image_path": [_draw(root / f"{n}.png", n) for n in range(N_DRAWINGS)]})


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("efficientnet_lite0", embed_dim=16, weights="none", image_size=IMAGE_SIZE).eval()


@pytest.fixture(scope="module")
def single(model, table):
    """The reference: one process embeds everything, sorted by id like the merge."""
    return embed_table(model, table, batch_size=4, device="cpu", num_workers=0).sort_by("drawing_id")


def _as_arrays(t):
    ids = t.column("drawing_id").to_pylist()
    return ids, np.stack(t.column("embedding").to_numpy(zero_copy_only=False))


@pytest.mark.parametrize("mode", ["strided", "contiguous"])
@pytest.mark.parametrize("world", [1, 2, 3, 10])
def test_shards_cover_every_row_exactly_once(mode, world):
    parts = [shard_rows(23, r, world, mode) for r in range(world)]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(23))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
    if mode == "contiguous":
        assert all((np.diff(p) == 1).all() for p in parts)


def test_shard_rows_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2, world 2"):
        shard_rows(10, 2, 2)
    with pytest.raises(ValueError, match="shard mode"):
        shard_rows(10, 0, 2, "random")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["strided", "contiguous"])
def test_two_sequential_ranks_merge_into_the_single_process_embedding(model, table, single, tmp_path, mode):
    paths = [embed_shard(model, table, tmp_path, rank, 2, mode, batch_size=3, device="cpu", num_workers=0)
             for rank in (0, 1)]
    assert paths == [shard_path(tmp_path, 0, 2), shard_path(tmp_path, 1, 2)] == shard_set(tmp_path)
    assert {pq.read_metadata(p).num_rows for p in paths} == ({5, 4} if mode == "strided" else {4, 5})
    merged = merge_shards(paths[::-1], expected_ids=table["drawing_id"].to_list())  # any order of paths
    ids, vectors = _as_arrays(merged)
    ref_ids, ref_vectors = _as_arrays(single)
    assert ids == ref_ids == sorted(table["drawing_id"].to_list())
    np.testing.assert_allclose(vectors, ref_vectors, atol=1e-5)
    assert merged.schema.metadata is None or b"hmpcl.shard" not in merged.schema.metadata


def test_torchrun_two_processes_write_shards_and_rank0_merges(model, table, single, tmp_path):
    table_path = tmp_path / "drawings.parquet"
    table.write_parquet(table_path)
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"encoder_config": model.config, "model": model.state_dict()}, checkpoint)
    merged_path = tmp_path / "merged.parquet"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "hmpcl_lib.retrieval.sharded_embedding", "--table", str(table_path), "--model-checkpoint", str(checkpoint),
           "--out", str(tmp_path / "shards"), "--device", "cpu", "--num-workers", "0", "--batch-size", "4",
           "--merge", str(merged_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"merged": str(merged_path), "rows": N_DRAWINGS}
    assert len(shard_set(tmp_path / "shards")) == 2
    ids, vectors = read_embeddings(merged_path)
    ref_ids, ref_vectors = _as_arrays(single)
    assert ids.tolist() == ref_ids
    np.testing.assert_allclose(vectors, ref_vectors, atol=1e-5)


# ------------------------------------------------------------------ bad shard sets


@pytest.fixture(scope="module")
def two_shards(model, table, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return [embed_shard(model, table, out, r, 2, batch_size=5, device="cpu", num_workers=0) for r in (0, 1)]


def test_a_missing_rank_is_named(two_shards):
    with pytest.raises(InputError, match=r"ranks \[1\] of 2 missing") as err:
        merge_shards(two_shards[:1])
    assert err.value.source.endswith("shard-00001-of-00002.parquet")


def test_the_same_rank_twice_is_refused(two_shards):
    with pytest.raises(InputError, match="rank 0 given twice"):
        merge_shards([two_shards[0], two_shards[0], two_shards[1]])


def test_shards_of_different_world_sizes_are_refused(model, table, two_shards, tmp_path):
    other = embed_shard(model, table, tmp_path, 2, 3, batch_size=5, device="cpu", num_workers=0)
    with pytest.raises(InputError, match="different runs"):
        merge_shards([*two_shards, other])


def test_a_duplicated_drawing_id_is_named(model, table, tmp_path):
    doubled = pl.concat([table.head(3), table.head(1)])  # rows 0 and 3: same id, one in each strided shard
    paths = [embed_shard(model, doubled, tmp_path, r, 2, batch_size=5, device="cpu", num_workers=0) for r in (0, 1)]
    with pytest.raises(InputError, match="more than one shard row") as err:
        merge_shards(paths)
    assert err.value.record == table["drawing_id"][0]


def test_expected_ids_catch_a_missing_drawing(two_shards, table):
    with pytest.raises(InputError, match="1 expected drawing id\\(s\\) missing") as err:
        merge_shards(two_shards, expected_ids=[*table["drawing_id"].to_list(), "USD9999999-20190101-D00001_1"])
    assert err.value.record == "USD9999999-20190101-D00001_1"


def test_a_file_that_is_not_a_shard_is_named(two_shards, single, tmp_path):
    plain = tmp_path / "plain.parquet"
    pq.write_table(single, plain)
    with pytest.raises(InputError, match="not an embedding shard") as err:
        merge_shards([two_shards[0], plain])
    assert err.value.source == str(plain)
    broken = tmp_path / "shard-00001-of-00002.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read shard") as err:
        merge_shards([two_shards[0], broken])
    assert err.value.source == str(broken)


# ------------------------------------------------------------------ sharded faiss index


def _unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("n_shards", [2, 3])
def test_faiss_index_shards_answer_like_one_flat_index(tmp_path, n_shards):
    ids = np.array([f"d{i:04d}" for i in range(1001)])
    vectors, queries = _unit_vectors(1001, 24, 0), _unit_vectors(17, 24, 1)
    flat = VectorIndex.build(ids, vectors, kind="flat", use_gpu=False)
    sharded = build_sharded(ids, vectors, n_shards=n_shards, use_gpu=False)
    assert isinstance(sharded, CpuShardedIndex) and sharded.n_shards == n_shards and len(sharded) == 1001
    want_ids, want_scores = flat.search(queries, 10)
    got_ids, got_scores = sharded.search(queries, 10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)
    # saved as one merged flat index that the ordinary loader reads back
    loaded = VectorIndex.load(sharded.save(tmp_path / "index"), use_gpu=False)
    np.testing.assert_array_equal(loaded.search(queries, 10)[0], want_ids)


def test_build_sharded_refuses_bad_input():
    ids = np.array(["a", "b", "a"])
    with pytest.raises(InputError, match="duplicate drawing id") as err:
        build_sharded(ids, _unit_vectors(3, 8, 0), use_gpu=False)
    assert err.value.record == "a"
    with pytest.raises(InputError, match="not L2-normalised"):
        build_sharded(np.array(["a", "b"]), np.ones((2, 8), np.float32), use_gpu=False)
    import faiss

    if faiss.get_num_gpus() == 0:
        with pytest.raises(InputError, match="no GPU"):
            build_sharded(np.array(["a"]), _unit_vectors(1, 8, 0), use_gpu=True)
