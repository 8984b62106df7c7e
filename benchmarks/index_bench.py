"""Which faiss index per corpus size, judged on vectors shaped like patent-drawing embeddings.

    python benchmarks/index_bench.py --sizes 20000 100000          # quick check (a few minutes on 2 cores)
    python benchmarks/index_bench.py --out index_bench.md          # 100k, 2.7M, 10M (a size that does not fit
                                                                   # in memory is skipped, with the arithmetic)

Corpus (`synthetic_corpus`, seeded, generated in chunks so 10M rows only ever hold the output array): each vector
is the sum of unit random directions for its Locarno class, subclass, patent and view, with decreasing scales
(`--scales`, default 0.6 0.55 0.5 0.45), then L2-normalised. Proportions follow the public DeepPatent2 figures:
about 2.7M drawings of about 270k design patents (10 views per patent on average: 1 + Poisson(9)), 32 Locarno
classes of Zipf-skewed size (exponent 1), about 220 subclasses (one per class, the rest spread in proportion to class
size, lognormal sizes inside a class). With the default scales the cosine between two views of one patent is about
0.8, between patents of one subclass about 0.6, of one class about 0.3, of different classes about 0.
Queries are held-out views of existing patents (a user's drawing of a patent in the corpus), not corpus rows.

For each size, ground truth is exact top-k by inner product (the "Flat" row, faiss IndexFlatIP), shown beside a plain
numpy matmul + argpartition over the same corpus (the hardware ceiling of exact search). Candidates are faiss
index_factory strings built through `VectorIndex.build` (so the same training sample, seed and efConstruction as
the library): Flat; IVF{nlist},Flat (nlist = default_nlist(N), about 4*sqrt(N) as a power of two; nprobe sweep);
IVF{nlist},PQ{m} and OPQ{m},IVF{nlist},PQ{m} (m = dim/8), each also with a ,RFlat exact re-ranking step (k_factor_rf
sweep); HNSW32 (efSearch sweep). Per row: build s (train + add), QPS (--queries batched queries, best of 3), recall@k
against exact, bytes per vector (faiss.serialize_index size / N). The pick per size is the row with recall@k >=
--target-recall and the most QPS; its table is what `AUTO_RULES` in hmpcl_lib/retrieval/index.py is read from.
Threads are faiss's and numpy's defaults.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hmpcl_lib.retrieval.index import VectorIndex, default_nlist  # noqa: E402

DEFAULT_SCALES = (0.6, 0.55, 0.5, 0.45)  # class, subclass, patent, view
CHUNK_PATENTS = 5_000  # patents generated per chunk (about 50k rows): the corpus depends on the seed only
NPROBE = (4, 8, 16, 32, 64, 128, 256)
K_FACTOR_RF = (2, 8)
EF_SEARCH = (16, 32, 64, 128, 256)
HNSW_M, EF_CONSTRUCTION = 32, 80  # VectorIndex.build's defaults
# how build time grows with N, to skip a candidate predicted slower than --max-build-s from its last measured size:
# IVF adds cost N * nlist ~ N^1.5, HNSW about N log N
BUILD_EXPONENT = {"HNSW": 1.15, "IVF": 1.5, "Flat": 1.0}  # first match in the factory string


# ---------------------------------------------------------------- synthetic corpus


@dataclass
class Corpus:
    vectors: np.ndarray  # [N, dim] float32, unit rows
    queries: np.ndarray  # [Q, dim] float32, unit rows: held-out views of patents in the corpus
    locarno_class: np.ndarray  # [N] int16
    subclass: np.ndarray  # [N] int16, numbered over all classes
    patent: np.ndarray  # [N] int32
    query_patent: np.ndarray  # [Q] int32
    subclass_class: np.ndarray  # [S] int16: the class of each subclass


def _unit(block: np.ndarray) -> np.ndarray:
    return block / np.linalg.norm(block, axis=1, keepdims=True)


def synthetic_corpus(
    n: int,
    dim: int = 256,
    n_queries: int = 1000,
    seed: int = 0,
    *,
    n_classes: int = 32,
    n_subclasses: int = 220,
    views_per_patent: float = 10.0,
    scales: tuple[float, float, float, float] = DEFAULT_SCALES,
    class_zipf: float = 1.0,
    subclass_sigma: float = 1.0,
) -> Corpus:
    """N corpus vectors and `n_queries` held-out query views with the class > subclass > patent > view structure.

    Deterministic in (n, dim, seed and the shape arguments); rows of one patent are contiguous.
    """
    if n < 1 or n_subclasses < n_classes:
        raise ValueError(f"need n >= 1 and n_subclasses >= n_classes, got {n}, {n_subclasses}, {n_classes}")
    rng = np.random.default_rng([seed, 0])
    class_weight = 1.0 / np.arange(1, n_classes + 1) ** class_zipf
    class_weight = rng.permutation(class_weight / class_weight.sum())
    per_class = 1 + rng.multinomial(n_subclasses - n_classes, class_weight)
    subclass_class = np.repeat(np.arange(n_classes), per_class).astype(np.int16)
    within = rng.lognormal(0.0, subclass_sigma, n_subclasses)
    within /= np.bincount(subclass_class, weights=within, minlength=n_classes)[subclass_class]
    subclass_weight = class_weight[subclass_class] * within
    subclass_weight /= subclass_weight.sum()

    views = 1 + rng.poisson(views_per_patent - 1, int(n / views_per_patent * 1.5) + 16)
    ends = np.cumsum(views)
    n_patents = int(np.searchsorted(ends, n)) + 1
    views = views[:n_patents]
    views[-1] -= int(ends[n_patents - 1]) - n  # the last patent gets the remaining rows
    starts = np.concatenate([[0], np.cumsum(views)])
    patent_subclass = rng.choice(n_subclasses, size=n_patents, p=subclass_weight).astype(np.int16)
    class_dirs = _unit(rng.standard_normal((n_classes, dim), dtype=np.float32))
    subclass_dirs = _unit(rng.standard_normal((n_subclasses, dim), dtype=np.float32))

    query_rng = np.random.default_rng([seed, 3])  # its own stream: the corpus does not depend on n_queries
    query_patent = np.sort(query_rng.choice(n_patents, size=min(n_queries, n_patents), replace=False)).astype(np.int32)
    patent = np.repeat(np.arange(n_patents, dtype=np.int32), views)
    subclass = patent_subclass[patent]
    locarno_class = subclass_class[subclass]
    vectors = np.empty((n, dim), dtype=np.float32)
    queries = np.empty((len(query_patent), dim), dtype=np.float32)
    a, b, c, v = (np.float32(s) for s in scales)

    def shared(patents: np.ndarray, patent_dirs: np.ndarray) -> np.ndarray:
        sub = patent_subclass[patents]
        return a * class_dirs[subclass_class[sub]] + b * subclass_dirs[sub] + c * patent_dirs

    for chunk, p0 in enumerate(range(0, n_patents, CHUNK_PATENTS)):
        p1 = min(n_patents, p0 + CHUNK_PATENTS)
        chunk_rng = np.random.default_rng([seed, 1, chunk])
        patent_dirs = _unit(chunk_rng.standard_normal((p1 - p0, dim), dtype=np.float32))
        r0, r1 = starts[p0], starts[p1]
        rows = patent[r0:r1]
        view_dirs = _unit(chunk_rng.standard_normal((r1 - r0, dim), dtype=np.float32))
        vectors[r0:r1] = _unit(shared(rows, patent_dirs[rows - p0]) + v * view_dirs)
        q0, q1 = np.searchsorted(query_patent, [p0, p1])
        if q1 > q0:  # a separate stream, as above
            held_out = _unit(np.random.default_rng([seed, 2, chunk]).standard_normal((q1 - q0, dim), dtype=np.float32))
            qp = query_patent[q0:q1]
            queries[q0:q1] = _unit(shared(qp, patent_dirs[qp - p0]) + v * held_out)
    return Corpus(vectors, queries, locarno_class, subclass, patent, query_patent, subclass_class)


# ---------------------------------------------------------------- measurements


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    hits = (found[:, :, None] == exact[:, None, :]).any(axis=2) & (found >= 0)
    return float(hits.sum() / exact.size)


def best_of(repeats: int, fn):
    """(result, best seconds) of `repeats` calls."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def matmul_top_k(corpus: np.ndarray, queries: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """Exact top-k rows by numpy matmul + argpartition over corpus blocks: the hardware ceiling of exact search."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(corpus), block):
        scores = queries @ corpus[start : start + block].T
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        all_scores = np.hstack([best_scores, np.take_along_axis(scores, part, axis=1)])
        all_rows = np.hstack([best_rows, part + start])
        keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(all_scores, keep, axis=1)
        best_rows = np.take_along_axis(all_rows, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_rows, order, axis=1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_available() -> int:
    """Bytes the kernel says a new process can use (MemAvailable), else free pages."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def candidates(n: int, dim: int, kinds: list[str]) -> list[tuple[str, str, list[str]]]:
    """(template, factory, search-parameter strings) per candidate; template has `{nlist}` for the rule table."""
    nlist, m = default_nlist(n), dim // 8
    nprobe = [f"nprobe={p}" for p in NPROBE if p <= nlist]
    refined = [f"{p},k_factor_rf={f}" for p in nprobe for f in K_FACTOR_RF]
    table = {
        "flat": [("Flat", [""])],
        "ivf": [("IVF{nlist},Flat", nprobe)],
        "pq": [(f"IVF{{nlist}},PQ{m}", nprobe), (f"IVF{{nlist}},PQ{m},RFlat", refined)],
        "opq": [(f"OPQ{m},IVF{{nlist}},PQ{m}", nprobe), (f"OPQ{m},IVF{{nlist}},PQ{m},RFlat", refined)],
        "hnsw": [(f"HNSW{HNSW_M}", [f"efSearch={e}" for e in EF_SEARCH])],
    }
    return [(t, t.replace("{nlist}", str(nlist)), params) for kind in kinds for t, params in table[kind]]


def index_bytes(template: str, n: int, dim: int) -> int:
    """Rough in-memory size of one candidate index (for the does-it-fit arithmetic)."""
    m = dim // 8
    size = n * (m + 8) if ",PQ" in template else n * (dim * 4 + 8 * ("IVF" in template))
    if "RFlat" in template:
        size += n * dim * 4
    if template.startswith("HNSW"):
        size += int(n * (2 * HNSW_M * 4 * 1.1 + 16))
    return size


def memory_plan(n: int, args: argparse.Namespace) -> tuple[int, str]:
    """Peak bytes for size n: vectors + labels + ids + the largest index twice (faiss.serialize_index copies it)."""
    vectors = n * args.dim * 4
    labels_ids = n * (4 + 2 + 2 + 4 * 10 * 2)  # patent/subclass/class arrays; "d1234567" ids (U10) and a sorted copy
    largest = max(index_bytes(t, n, args.dim) for t, _, _ in candidates(n, args.dim, args.kinds))
    scratch = args.queries * 65_536 * 4 * 3 + max(100_000, 39 * default_nlist(n)) * args.dim * 4
    total = vectors + labels_ids + 2 * largest + scratch
    text = (f"vectors {vectors / 2**30:.1f} GiB + labels/ids {labels_ids / 2**30:.1f} GiB + largest index x2 "
            f"(serialize copy) {2 * largest / 2**30:.1f} GiB + scratch {scratch / 2**30:.1f} GiB = {total / 2**30:.1f} GiB")
    return total, text


def bench_size(n: int, args: argparse.Namespace, build_history: dict[str, tuple[int, float]]) -> list[dict]:
    import faiss

    start = time.perf_counter()
    data = synthetic_corpus(n, args.dim, args.queries, args.seed, scales=tuple(args.scales))
    print(f"\n## N = {n:,}: generated {n:,} x {args.dim} + {len(data.queries)} queries in "
          f"{time.perf_counter() - start:.1f} s ({data.patent[-1] + 1:,} patents)", flush=True)
    vectors, queries, k = data.vectors, data.queries, args.k
    ids = np.char.add("d", np.arange(n).astype(str))
    rows: list[dict] = []
    exact = None

    def report(row: dict) -> None:
        rows.append(row)
        qps = f"{row['qps']:9,.0f} q/s" if row["qps"] else "        - q/s"
        print(f"  {row['factory']:<28} {row['params']:<22} build {row['build_s']:7.1f} s  {qps}  "
              f"recall@{k} {row['recall']:.3f}  {row['bytes_per_vector']:7.1f} B/vec {row['note']}", flush=True)

    for template, factory, param_list in candidates(n, args.dim, args.kinds):
        family = next(f for f in BUILD_EXPONENT if f in factory)
        if template in build_history:
            n0, s0 = build_history[template]
            predicted = s0 * (n / n0) ** BUILD_EXPONENT[family]
            if predicted > args.max_build_s:
                print(f"  {factory:<28} skipped: build predicted {predicted:,.0f} s > --max-build-s {args.max_build_s:,.0f}"
                      f" (from {s0:.1f} s at {n0:,})", flush=True)
                rows.append(dict(n=n, factory=factory, template=template, params="-", build_s=predicted, qps=0.0,
                                 recall=0.0, bytes_per_vector=0.0, note="skipped (predicted build time)"))
                continue
        start = time.perf_counter()
        index = VectorIndex.build(ids, vectors, kind=factory, use_gpu=False, ef_construction=EF_CONSTRUCTION,
                                  seed=args.seed)
        build_s = time.perf_counter() - start
        build_history[template] = (n, build_s)
        bytes_per_vector = len(faiss.serialize_index(index._cpu())) / n
        for params in param_list:
            if params:
                index.set_search_params(params=params)
            found, seconds = best_of(3, lambda: index.search_positions(queries, k)[0])
            if exact is None:  # the first candidate is Flat: exact search, the ground truth
                exact = found
                matmul, matmul_s = best_of(3, lambda: matmul_top_k(vectors, queries, k))
                report(dict(n=n, factory=factory, template=template, params="exact", build_s=build_s,
                            qps=len(queries) / seconds, recall=1.0, bytes_per_vector=bytes_per_vector, note=""))
                report(dict(n=n, factory="numpy matmul+argpartition", template="", params="exact", build_s=0.0,
                            qps=len(queries) / matmul_s, recall=recall_at_k(matmul, exact),
                            bytes_per_vector=args.dim * 4.0, note="(ceiling, not an index)"))
                print("  " + structure_line(data, exact), flush=True)
                continue
            report(dict(n=n, factory=factory, template=template, params=params, build_s=build_s,
                        qps=len(queries) / seconds, recall=recall_at_k(found, exact),
                        bytes_per_vector=bytes_per_vector, note=""))
        del index
        gc.collect()
    return rows


def structure_line(data: Corpus, exact: np.ndarray) -> str:
    """Where the exact top-k of the query views lie: own patent, own subclass, own class."""
    qp = data.query_patent[:, None]
    same_patent = (data.patent[exact] == qp).mean()
    sub = data.subclass[data.patent.searchsorted(data.query_patent)][:, None]
    same_sub = (data.subclass[exact] == sub).mean()
    same_class = (data.locarno_class[exact] == data.subclass_class[sub]).mean()
    return (f"exact top-{exact.shape[1]} of the query views: {same_patent:.0%} same patent, {same_sub:.0%} same "
            f"subclass, {same_class:.0%} same class")


# ---------------------------------------------------------------- tables


def results_table(rows: list[dict], k: int) -> str:
    lines = [f"| N | index (faiss factory) | search | build (s) | QPS (k={k}) | recall@{k} | bytes/vector |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if r["note"].startswith("skipped"):
            cells = [f"{r['n']:,}", r["factory"], "-", f"({r['build_s']:,.0f} predicted)", "skipped", "-", "-"]
        else:
            name = r["factory"] + (f" {r['note']}" if r["note"] else "")
            cells = [f"{r['n']:,}", name, r["params"], f"{r['build_s']:.1f}", f"{r['qps']:,.0f}",
                     f"{r['recall']:.3f}", f"{r['bytes_per_vector']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def picks(rows: list[dict], target: float) -> list[dict]:
    chosen = []
    for n in dict.fromkeys(r["n"] for r in rows):
        ok = [r for r in rows if r["n"] == n and r["template"] and r["recall"] >= target]
        if ok:
            chosen.append(max(ok, key=lambda r: r["qps"]))
    return chosen


def picks_table(chosen: list[dict], skipped: list[str], k: int, target: float) -> str:
    lines = [f"| N | pick (recall@{k} >= {target}, most QPS) | search | QPS | recall@{k} | build (s) | bytes/vector |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in chosen:
        params = "" if r["params"] == "exact" else r["params"]
        lines.append(f"| {r['n']:,} | {r['factory']} | {params or '-'} | {r['qps']:,.0f} | {r['recall']:.3f} | "
                     f"{r['build_s']:.1f} | {r['bytes_per_vector']:.0f} |")
    lines += [f"| {line} |  |  |  |  |  |  |" for line in skipped]
    rules = ",\n".join(
        f"    AutoRule({r['n']:_}, {r['template']!r}, {'' if r['params'] == 'exact' else r['params']!r})" for r in chosen)
    return "\n".join(lines) + (f"\n\nAUTO_RULES rows (the last one's max_n becomes None):\n```python\n{rules},\n```"
                               if chosen else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 2_700_000, 10_000_000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scales", type=float, nargs=4, default=list(DEFAULT_SCALES), metavar=("CLASS", "SUB", "PATENT", "VIEW"))
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "pq", "opq", "hnsw"],
                   choices=["flat", "ivf", "pq", "opq", "hnsw"], help="candidate families (flat always runs first)")
    p.add_argument("--target-recall", type=float, default=0.95)
    p.add_argument("--max-build-s", type=float, default=3600.0,
                   help="skip a candidate whose build, extrapolated from the previous size, would take longer")
    p.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = p.parse_args()
    args.kinds = ["flat"] + [kind for kind in args.kinds if kind != "flat"]
    if args.dim % 8:
        p.error("--dim must be a multiple of 8 (PQ uses dim/8 sub-quantisers)")
    import faiss

    available = mem_available()
    header = (f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, {cpu_model()}, "
              f"{available / 2**30:.1f} GiB available; dim {args.dim}, {args.queries} held-out query views, k={args.k}, "
              f"seed {args.seed}, scales class/subclass/patent/view {'/'.join(map(str, args.scales))}, "
              f"HNSW efConstruction {EF_CONSTRUCTION}, QPS best of 3")
    print(header, flush=True)
    rows, skipped, history = [], [], {}
    for n in args.sizes:
        need, arithmetic = memory_plan(n, args)
        if need > 0.9 * available:
            line = f"{n:,}: skipped, does not fit: {arithmetic} > 90% of {available / 2**30:.1f} GiB available"
            print(f"\n## N = {line}", flush=True)
            skipped.append(line)
            continue
        print(f"\n(memory for {n:,}: {arithmetic})", flush=True)
        rows += bench_size(n, args, history)
    text = (f"{header}\n\n{results_table(rows, args.k)}\n\n"
            f"{picks_table(picks(rows, args.target_recall), skipped, args.k, args.target_recall)}")
    print("\n" + text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
