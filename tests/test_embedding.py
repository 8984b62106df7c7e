"""Embedding inference: order, determinism, normalisation, Parquet round trip, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageDraw

from hmpcl_lib.retrieval.embedding import (EmbedStats, embed_paths, embed_table, embed_to_parquet, read_embeddings,
                                           write_embeddings)
from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.schemas import embeddings_schema

IMAGE_SIZE = 64


def draw(path: Path, seed: int, size=(90, 70), mode="L") -> Path:
    rng = np.random.default_rng(seed)
    img = Image.new(mode, size, 255 if mode == "L" else (255, 255, 255))
    pen = ImageDraw.Draw(img)
    for _ in range(6):
        pen.line([tuple(rng.integers(0, min(size), 2)) for _ in range(2)], fill=0, width=2)
    img.save(path)
    return path


@pytest.fixture(scope="module")
def drawings(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("drawings")
    paths = [draw(root / f"d{i}.png", i, mode="L" if i % 2 else "RGB") for i in range(7)]
    return [str(p) for p in paths]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("efficientnet_lite0", embed_dim=32, weights="none", image_size=IMAGE_SIZE)


def test_embed_paths_is_ordered_normalised_and_deterministic(model, drawings):
    stats = EmbedStats()
    model.train()
    first = embed_paths(model, drawings, batch_size=3, device="cpu", num_workers=0, stats=stats)
    assert model.training, "embedding must restore the caller's train/eval mode"
    assert first.shape == (7, 32) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert stats.n_images == 7 and stats.images_per_s > 0 and stats.device == "cpu"

    again = embed_paths(model, drawings, batch_size=3, device="cpu", num_workers=0)
    np.testing.assert_array_equal(first, again)
    reversed_ = embed_paths(model, drawings[::-1], batch_size=4, device="cpu", num_workers=0)
    np.testing.assert_allclose(reversed_[::-1], first, atol=1e-5)
    # the drawings differ, so their embeddings must too (not a constant model)
    assert np.abs(first[0] - first[1]).max() > 1e-3


def test_worker_processes_give_the_same_vectors(model, drawings):
    single = embed_paths(model, drawings, batch_size=2, device="cpu", num_workers=0)
    workers = embed_paths(model, drawings, batch_size=2, device="cpu", num_workers=2)
    np.testing.assert_allclose(workers, single, atol=1e-6)


def test_image_size_override_changes_the_input(model, drawings):
    small = embed_paths(model, drawings[:2], image_size=32, device="cpu", num_workers=0)
    default = embed_paths(model, drawings[:2], device="cpu", num_workers=0)
    assert small.shape == default.shape and not np.allclose(small, default)


@pytest.mark.parametrize("float16", [False, True])
def test_table_round_trip(model, drawings, tmp_path, float16):
    frame = pl.DataFrame({"drawing_id": [f"id{i}" for i in range(len(drawings))], "image_path": drawings})
    table = embed_table(model, frame, batch_size=4, device="cpu", num_workers=0, float16=float16)
    assert table.schema == embeddings_schema(32, float16)
    path = write_embeddings(table, tmp_path / "emb" / "embeddings.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["embeddings.parquet"]  # no temp file left
    ids, vectors = read_embeddings(path)
    assert ids.tolist() == frame["drawing_id"].to_list()
    assert vectors.dtype == np.float32 and vectors.shape == (7, 32)
    direct = embed_paths(model, drawings, device="cpu", num_workers=0)
    np.testing.assert_allclose(vectors, direct, atol=2e-3 if float16 else 1e-6)
    some_ids, some = read_embeddings(path, ids=pl.Series(["id5", "id1", "nope"]))  # filtered while reading
    assert some_ids.tolist() == ["id1", "id5"]
    np.testing.assert_array_equal(some, vectors[[1, 5]])


def test_truncated_and_missing_images_name_the_file(model, drawings, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(drawings[0]).read_bytes()[:60])
    with pytest.raises(InputError, match="broken.png"):
        embed_paths(model, [drawings[1], str(broken)], device="cpu", num_workers=0)
    with pytest.raises(InputError, match="nowhere.png"):
        embed_paths(model, [str(tmp_path / "nowhere.png")], device="cpu", num_workers=0)
    with pytest.raises(InputError, match="image_path is null"):
        no_path = pl.DataFrame({"drawing_id": ["a"], "image_path": [None]}, schema={"drawing_id": pl.String, "image_path": pl.String})
        embed_table(model, no_path)


def test_read_embeddings_rejects_bad_files(tmp_path):
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="garbage.parquet"):
        read_embeddings(garbage)
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"drawing_id": ["a"], "vec": [[1.0, 0.0]]}), wrong)
    with pytest.raises(InputError, match="wrong.parquet"):
        read_embeddings(wrong)
    nulls = tmp_path / "nulls.parquet"
    column = pa.array([[1.0, 0.0], [0.0, 1.0]], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.Table.from_arrays([pa.array(["a", None]), column], schema=embeddings_schema(2)), nulls)
    with pytest.raises(InputError) as err:
        read_embeddings(nulls)
    assert err.value.record == "#1" and "nulls.parquet" in str(err.value)


def test_embed_to_parquet_writes_chunk_by_chunk_what_embed_table_gives(model, drawings, tmp_path):
    """Chunks of 3 rows, each a row group of one file: the same ids and vectors as one embed_table call."""
    frame = pl.DataFrame({"drawing_id": [f"id{i}" for i in range(len(drawings))], "image_path": drawings})
    stats = EmbedStats()
    path, rows, dim = embed_to_parquet(model, frame, tmp_path / "e" / "emb.parquet", chunk_rows=3, stats=stats,
                                       batch_size=2, device="cpu", num_workers=0)
    assert (rows, dim) == (len(drawings), 32) and stats.n_images == len(drawings) and stats.images_per_s > 0
    assert pq.ParquetFile(path).metadata.num_row_groups == 3 and sorted(os.listdir(path.parent)) == ["emb.parquet"]
    ids, vectors = read_embeddings(path)
    whole = embed_table(model, frame, batch_size=2, device="cpu", num_workers=0)
    assert ids.tolist() == whole.column("drawing_id").to_pylist()
    np.testing.assert_allclose(vectors, np.stack(whole.column("embedding").to_numpy(zero_copy_only=False)), atol=1e-6)
    empty, n, _ = embed_to_parquet(model, frame.head(0), tmp_path / "empty.parquet", device="cpu", num_workers=0)
    assert n == 0 and read_embeddings(empty)[1].shape == (0, 32)
