"""VectorIndex: exact results vs numpy, approximate kinds, padding, atomic save/load, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.index import CpuShardedIndex, VectorIndex, build_sharded, default_nlist


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def corpus():
    vectors = unit_vectors(2000, 32, seed=1)
    ids = np.array([f"D{i:05d}" for i in range(len(vectors))])
    queries = unit_vectors(50, 32, seed=2)
    return ids, vectors, queries


def numpy_top_k(vectors, queries, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def test_flat_is_exact_and_returns_drawing_ids(corpus):
    ids, vectors, queries = corpus
    index = VectorIndex.build(ids, vectors, use_gpu=False)
    assert index.meta.kind == "flat" and len(index) == 2000
    found_ids, scores = index.search(queries, 10)
    order, expected = numpy_top_k(vectors, queries, 10)
    assert found_ids.shape == (50, 10) and scores.dtype == np.float32
    np.testing.assert_array_equal(found_ids, ids[order])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    single_ids, _ = index.search(queries[0], 3)  # a single vector is one query
    assert single_ids.shape == (1, 3)


def test_auto_switches_to_ivf_above_the_flat_rule(corpus):
    ids, vectors, queries = corpus
    rules = [(1000, "Flat", ""), (None, "IVF{nlist},Flat", "nprobe=8")]
    index = VectorIndex.build(ids, vectors, rules=rules, use_gpu=False)
    assert index.meta.kind == "ivf" and index.meta.nlist == default_nlist(2000) == 32
    assert index.meta.factory == "IVF32,Flat" and index.meta.nprobe == 8
    exact, _ = numpy_top_k(vectors, queries, 10)
    found = index.search_positions(queries, 10)[0]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)])
    assert recall > 0.3
    index.set_search_params(nprobe=index.meta.nlist)  # probing every list is exhaustive
    np.testing.assert_array_equal(index.search_positions(queries, 10)[0], exact)


def test_hnsw_recall(corpus):
    ids, vectors, queries = corpus
    index = VectorIndex.build(ids, vectors, kind="hnsw", hnsw_m=16, ef_search=128)
    exact, _ = numpy_top_k(vectors, queries, 10)
    found = index.search_positions(queries, 10)[0]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, exact)]) > 0.9


def test_k_beyond_index_size_is_padded():
    vectors = unit_vectors(3, 8, seed=0)
    index = VectorIndex.build(["a", "b", "c"], vectors)
    ids, scores = index.search(vectors, 5)
    assert ids.shape == (3, 5)
    assert ids[:, 0].tolist() == ["a", "b", "c"]
    assert all(x is None for x in ids[:, 3:].ravel())
    assert np.isneginf(scores[:, 3:]).all() and np.isfinite(scores[:, :3]).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip_is_atomic(corpus, tmp_path, kind):
    ids, vectors, queries = corpus
    index = VectorIndex.build(ids, vectors, kind=kind, nprobe=4)
    before = index.search(queries, 5)
    target = tmp_path / "gallery_index"
    index.save(target)
    VectorIndex.build(ids[:10], vectors[:10]).save(target)  # overwrite an existing index
    index.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery_index"]  # no temp/old dirs left
    assert sorted(p.name for p in target.iterdir()) == ["ids.npy", "index.faiss", "meta.json"]
    loaded = VectorIndex.load(target, use_gpu=False)
    assert loaded.meta == index.meta
    after = loaded.search(queries, 5)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_bad_input_is_refused(corpus, tmp_path):
    ids, vectors, _ = corpus
    with pytest.raises(InputError, match="D00007"):
        bad = vectors.copy()
        bad[7] *= 3
        VectorIndex.build(ids, bad)
    with pytest.raises(InputError, match="D00000: duplicate"):
        VectorIndex.build(np.array(["D00000", "D00000"]), vectors[:2])
    with pytest.raises(InputError, match="ids for"):
        VectorIndex.build(ids[:5], vectors[:6])
    index = VectorIndex.build(ids[:10], vectors[:10])
    with pytest.raises(InputError, match="query vectors"):
        index.search(np.ones((2, 5), dtype=np.float32), 3)
    with pytest.raises(InputError, match="k must"):
        index.search(vectors[:1], 0)
    with pytest.raises(InputError, match="kind"):
        VectorIndex.build(ids[:10], vectors[:10], kind="lsh")
    with pytest.raises(InputError, match="nothing_here.index.faiss: index file missing"):
        VectorIndex.load(tmp_path / "nothing_here")
    target = index.save(tmp_path / "idx")
    meta = json.loads((target / "meta.json").read_text())
    (target / "meta.json").write_text(json.dumps(meta | {"ntotal": 11}))
    with pytest.raises(InputError, match="meta says 11"):
        VectorIndex.load(target)
    (target / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(InputError, match="index.faiss"):
        VectorIndex.load(target)


def test_use_gpu_true_without_gpus_is_a_clear_error(corpus):
    import faiss

    ids, vectors, _ = corpus
    if faiss.get_num_gpus() > 0:
        index = VectorIndex.build(ids, vectors, use_gpu=True)
        assert index.on_gpu
        ids_found, _ = index.search(vectors[:3], 3000)  # above the GPU k limit: served by a CPU copy
        assert ids_found[:, 0].tolist() == ids[:3].tolist()
    else:
        with pytest.raises(InputError, match="no GPU"):
            VectorIndex.build(ids, vectors, use_gpu=True)


# ------------------------------------------------------------------ built part by part (the pipeline's year files)


@pytest.mark.parametrize("kind", ["flat", "IVF16,Flat"])
def test_an_index_built_in_parts_is_the_index_built_at_once(kind):
    """Year files read one at a time give the same index as the corpus in memory: same training rows, same vectors."""
    ids = np.array([f"d{i:04d}" for i in range(900)])
    vectors, queries = unit_vectors(900, 16, 0), unit_vectors(9, 16, 1)
    whole = VectorIndex.build(ids, vectors, kind=kind, use_gpu=False, train_size=300, nprobe=4)
    bounds = [0, 250, 250, 700, 900]  # an empty part too
    reads = []

    def part(i):
        def read():
            reads.append(i)
            return ids[bounds[i]:bounds[i + 1]], vectors[bounds[i]:bounds[i + 1]]
        return read

    parts = VectorIndex.build_in_parts([part(i) for i in range(4)], 900, kind=kind, use_gpu=False, train_size=300,
                                       nprobe=4)
    np.testing.assert_array_equal(parts.search(queries, 10)[0], whole.search(queries, 10)[0])
    assert parts.meta.factory == whole.meta.factory and len(parts) == 900
    assert reads.count(1) <= 2 and reads.count(0) == (2 if kind != "flat" else 1)  # trained, then filled


def test_parts_that_do_not_add_up_or_repeat_an_id_are_refused():
    vectors = unit_vectors(4, 8, 0)
    one = lambda: (np.array(["a", "b"]), vectors[:2])  # noqa: E731
    with pytest.raises(InputError, match="hold 2 vectors, 3 were counted"):
        VectorIndex.build_in_parts([one], 3, kind="flat", use_gpu=False, names=["year=2019"])
    with pytest.raises(InputError, match="duplicate drawing id") as err:
        VectorIndex.build_in_parts([one, one], 4, kind="flat", use_gpu=False)
    assert err.value.record == "a"

@pytest.mark.parametrize("n_shards", [2, 3])
def test_faiss_index_shards_answer_like_one_flat_index(tmp_path, n_shards):
    ids = np.array([f"d{i:04d}" for i in range(1001)])
    vectors, queries = unit_vectors(1001, 24, 0), unit_vectors(17, 24, 1)
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
        build_sharded(ids, unit_vectors(3, 8, 0), use_gpu=False)
    assert err.value.record == "a"
    with pytest.raises(InputError, match="not L2-normalised"):
        build_sharded(np.array(["a", "b"]), np.ones((2, 8), np.float32), use_gpu=False)
    import faiss

    if faiss.get_num_gpus() == 0:
        with pytest.raises(InputError, match="no GPU"):
            build_sharded(np.array(["a"]), unit_vectors(1, 8, 0), use_gpu=True)
