"""Search benchmark: flat vs IVF vs HNSW on random unit vectors (build time, QPS, recall@10 against flat).

    .venv/bin/python benchmarks/search_bench.py                     # 10k, 100k, 1M
    .venv/bin/python benchmarks/search_bench.py --sizes 10000 100000 # skip 1M

Random Gaussian directions have no cluster structure, the worst case for IVF/HNSW: real embeddings give
higher recall at the same settings. Prints a markdown table (and writes it with --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hmpcl_lib.retrieval.index import VectorIndex  # noqa: E402


def unit_vectors(n: int, dim: int, seed: int, chunk: int = 200_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    hits = (found[:, :, None] == exact[:, None, :]).any(axis=2) & (found >= 0)
    return float(hits.sum() / exact.size)


def timed_search(index: VectorIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    positions, _ = index.search_positions(queries, k)
    return positions, len(queries) / (time.perf_counter() - start)


def bench_size(n: int, args: argparse.Namespace) -> list[dict]:
    vectors = unit_vectors(n, args.dim, seed=n)
    queries = unit_vectors(args.queries, args.dim, seed=n + 1)
    ids = np.char.add("d", np.arange(n).astype(str))
    rows = []

    start = time.perf_counter()
    flat = VectorIndex.build(ids, vectors, kind="flat", use_gpu=args.gpu)
    build = time.perf_counter() - start
    exact, qps = timed_search(flat, queries, args.k)
    rows.append(dict(n=n, kind="flat", params="exact", build_s=build, qps=qps, recall=1.0))
    del flat

    if "ivf" in args.kinds:
        start = time.perf_counter()
        ivf = VectorIndex.build(ids, vectors, kind="ivf", use_gpu=args.gpu)
        build = time.perf_counter() - start
        for nprobe in args.nprobe:
            ivf.set_search_params(nprobe=nprobe)
            found, qps = timed_search(ivf, queries, args.k)
            params = f"nlist={ivf.meta.nlist} nprobe={nprobe}"
            rows.append(dict(n=n, kind="ivf", params=params, build_s=build, qps=qps, recall=recall_at_k(found, exact)))
        del ivf

    if "hnsw" in args.kinds and n <= args.hnsw_max:
        start = time.perf_counter()
        hnsw = VectorIndex.build(ids, vectors, kind="hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
        build = time.perf_counter() - start
        for ef in args.ef_search:
            hnsw.set_search_params(ef_search=ef)
            found, qps = timed_search(hnsw, queries, args.k)
            params = f"M={args.hnsw_m} efC={args.ef_construction} efSearch={ef}"
            rows.append(dict(n=n, kind="hnsw", params=params, build_s=build, qps=qps, recall=recall_at_k(found, exact)))
    for row in rows:
        print(f"  {row['n']:>9,} {row['kind']:<5} {row['params']:<34} build {row['build_s']:7.1f} s  "
              f"{row['qps']:9.0f} q/s  recall@{args.k} {row['recall']:.3f}", flush=True)
    return rows


def markdown(rows: list[dict], k: int) -> str:
    lines = [
        f"| corpus | index | parameters | build (s) | QPS (k={k}) | recall@{k} vs flat |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r['n']:,}", r["kind"], r["params"], f"{r['build_s']:.1f}", f"{r['qps']:,.0f}", f"{r['recall']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"], choices=["ivf", "hnsw"], help="besides flat")
    p.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    p.add_argument("--ef-search", type=int, nargs="+", default=[64, 256])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this size (1M takes ~30 min on 2 cores)")
    p.add_argument("--gpu", action="store_true", help="put flat/IVF on the GPU when faiss has one")
    p.add_argument("--out", type=Path, help="also write the markdown table here")
    args = p.parse_args()
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, dim {args.dim}, "
          f"{args.queries} queries, k={args.k}", flush=True)
    rows = [row for n in args.sizes for row in bench_size(n, args)]
    table = markdown(rows, args.k)
    print("\n" + table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
