"""VectorIndex built from faiss factory strings: the auto rule table, search params through save/load, bad strings,
and the structured synthetic corpus of benchmarks/index_bench.py (seeded, unit rows, hierarchy visible)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.index import AUTO_RULES, AutoRule, VectorIndex, default_nlist

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "index_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("index_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["index_bench"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clustered(bench):
    data = bench.synthetic_corpus(6000, dim=32, n_queries=60, seed=3, n_classes=8, n_subclasses=24)
    ids = np.array([f"D{i:05d}" for i in range(len(data.vectors))])
    return data, ids


def exact_top_k(vectors, queries, k):
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def recall(found, exact):
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found, exact)]))


RULES = [AutoRule(1000, "Flat", ""), AutoRule(4000, "IVF{nlist},Flat", "nprobe=4"), (None, "HNSW16", "efSearch=48")]


@pytest.mark.parametrize(("n", "factory", "params"), [
    (800, "Flat", ""),
    (1000, "Flat", ""),
    (3000, "IVF64,Flat", "nprobe=4"),  # default_nlist(3000): 4*sqrt(3000) = 219 -> 256, capped at 3000/39 -> 64
    (6000, "HNSW16", "efSearch=48"),
])
def test_auto_picks_the_first_rule_that_covers_the_size(clustered, n, factory, params):
    data, ids = clustered
    index = VectorIndex.build(ids[:n], data.vectors[:n], rules=RULES, use_gpu=False)
    assert (index.meta.factory, index.meta.search_params) == (factory, params)
    assert index.meta.kind == {"Flat": "flat", "HNSW16": "hnsw"}.get(factory, "ivf")


def test_default_rules_are_one_documented_table_ending_in_any_size():
    assert AUTO_RULES[-1].max_n is None
    bounds = [rule.max_n for rule in AUTO_RULES[:-1]]
    assert bounds == sorted(bounds)
    assert default_nlist(100_000) == 1024 and default_nlist(2_700_000) == 8192 and default_nlist(10) == 1


def test_ivf_recall_on_clustered_vectors(clustered):
    data, ids = clustered
    exact = exact_top_k(data.vectors, data.queries, 10)
    index = VectorIndex.build(ids, data.vectors, kind="IVF{nlist},Flat", use_gpu=False)
    assert index.meta.factory == "IVF128,Flat" and index.meta.nlist == 128
    index.set_search_params(nprobe=8)
    assert recall(index.search_positions(data.queries, 10)[0], exact) >= 0.9
    flat = VectorIndex.build(ids, data.vectors, kind="Flat", use_gpu=False)
    np.testing.assert_array_equal(flat.search_positions(data.queries, 10)[0], exact)


@pytest.mark.parametrize(("factory", "params"), [
    ("IVF32,Flat", "nprobe=3"),
    ("IVF32,SQ8,RFlat", "nprobe=5,k_factor_rf=4"),  # (PQ training: minutes)
    ("HNSW8", "efSearch=20"),
])
def test_factory_and_search_params_survive_save_and_load(clustered, tmp_path, factory, params):
    data, ids = clustered
    index = VectorIndex.build(ids[:3000], data.vectors[:3000], kind=factory, train_size=3000, use_gpu=False)
    index.set_search_params(params=params)
    before = index.search(data.queries, 5)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert (meta["factory"], meta["search_params"]) == (factory, params)
    loaded = VectorIndex.load(tmp_path / "idx", use_gpu=False)
    assert loaded.meta == index.meta
    after = loaded.search(data.queries, 5)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_nprobe_is_restored_from_a_meta_file_without_the_new_fields(clustered, tmp_path):
    data, ids = clustered
    index = VectorIndex.build(ids[:3000], data.vectors[:3000], kind="ivf", nlist=32, nprobe=32, use_gpu=False)
    target = index.save(tmp_path / "old")
    meta = json.loads((target / "meta.json").read_text())
    old = {key: meta[key] for key in ("kind", "dim", "ntotal", "nlist", "nprobe", "hnsw_m", "ef_search", "format_version")}
    (target / "meta.json").write_text(json.dumps(old))
    import faiss

    faiss.extract_index_ivf(index._index).nprobe = 1  # what is on disk must not decide: meta.json does
    faiss.write_index(index._index, str(target / "index.faiss"))
    loaded = VectorIndex.load(target, use_gpu=False)
    assert (loaded.meta.factory, loaded.meta.search_params, loaded.meta.nprobe) == ("IVF32,Flat", "nprobe=32", 32)
    assert faiss.extract_index_ivf(loaded._index).nprobe == 32


def test_bad_factory_strings_and_params_are_input_errors(clustered):
    data, ids = clustered
    with pytest.raises(InputError, match="'IVF12,Flot'"):
        VectorIndex.build(ids[:500], data.vectors[:500], kind="IVF12,Flot")
    with pytest.raises(InputError, match="no auto rule covers 500"):
        VectorIndex.build(ids[:500], data.vectors[:500], rules=[(100, "Flat", "")])
    index = VectorIndex.build(ids[:500], data.vectors[:500], kind="Flat")
    with pytest.raises(InputError, match="'bogus'"):
        index.set_search_params(params="bogus")
    with pytest.raises(InputError, match="nprobe=3"):
        index.set_search_params(params="nprobe=3")  # a flat index has no lists
    index.set_search_params(nprobe=3, ef_search=5)  # the named ones are ignored where they do not apply
    assert index.meta.search_params == ""


def test_generator_is_seeded_and_unit_length(bench):
    a = bench.synthetic_corpus(3000, dim=16, n_queries=20, seed=7)
    b = bench.synthetic_corpus(3000, dim=16, n_queries=20, seed=7)
    c = bench.synthetic_corpus(3000, dim=16, n_queries=20, seed=8)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.queries, b.queries)
    assert not np.allclose(a.vectors, c.vectors)
    assert a.vectors.shape == (3000, 16) and a.vectors.dtype == np.float32 and a.queries.shape == (20, 16)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a.queries, axis=1), 1, atol=1e-5)
    assert np.bincount(a.patent).mean() == pytest.approx(10, rel=0.15)  # about 10 views per patent
    assert len(np.unique(a.subclass_class)) == 32 and len(a.subclass_class) == 220
    sizes = np.bincount(a.locarno_class, minlength=32)
    assert sizes.max() > 5 * np.median(sizes)  # skewed class sizes
    # more queries do not change the corpus
    np.testing.assert_array_equal(bench.synthetic_corpus(3000, dim=16, n_queries=50, seed=7).vectors, a.vectors)


def test_generator_has_the_hierarchy(bench):
    data = bench.synthetic_corpus(8000, dim=64, n_queries=100, seed=0)
    v = data.vectors
    first = data.patent.searchsorted(data.query_patent)
    own = np.einsum("qd,qd->q", data.queries, v[first])  # a held-out view vs one corpus view of its patent
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(v), (2, 20_000))
    cos = np.einsum("nd,nd->n", v[i], v[j])
    same_sub = (data.subclass[i] == data.subclass[j]) & (data.patent[i] != data.patent[j])
    same_class = (data.locarno_class[i] == data.locarno_class[j]) & (data.subclass[i] != data.subclass[j])
    other = data.locarno_class[i] != data.locarno_class[j]
    assert own.mean() > cos[same_sub].mean() + 0.1
    assert cos[same_sub].mean() > cos[same_class].mean() + 0.1 > cos[other].mean() + 0.2
    assert abs(cos[other].mean()) < 0.05
    assert not np.isin(data.queries, v).all(axis=1).any()  # queries are not corpus rows
    exact = exact_top_k(v, data.queries, 1)[:, 0]
    assert (data.patent[exact] == data.query_patent).mean() > 0.9  # nearest neighbour: a view of the same patent
