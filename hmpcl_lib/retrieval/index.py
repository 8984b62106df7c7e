"""FAISS vector index over L2-normalised embeddings (inner product = cosine), keyed by drawing id.

Every index is made by `faiss.index_factory(dim, factory, METRIC_INNER_PRODUCT)`. `kind` names it: "flat"
(exact `IndexFlatIP`, "Flat"), "ivf" ("IVF{nlist},Flat"), "hnsw" ("HNSW{m}"), any other faiss factory string
("OPQ64,IVF4096,PQ64,RFlat"; a bad one raises InputError naming it; `{nlist}` is replaced by `default_nlist(N)`),
or "auto": the first row of `AUTO_RULES` whose size bound covers the corpus, a table read off the output of
`benchmarks/index_bench.py` (synthetic vectors with the Locarno class/subclass/patent/view structure). Search
parameters (nprobe, efSearch, k_factor_rf) are faiss `ParameterSpace` strings such as "nprobe=32", kept in the
metadata. Moved to all GPUs when the installed faiss has any (not HNSW). faiss is imported here only, so the
torch training/embedding core does not need it.

`build_sharded` spreads an exact index over shards: faiss `IndexShards` on CPU, or every GPU via
`index_cpu_to_all_gpus` with the `shard` cloner flag, so a corpus larger than one card's memory still fits.

On disk (`save(dir)`, written to a temp dir then renamed): `index.faiss`, `ids.npy` (unicode array, no
pickle) and `meta.json` (factory string and search parameters included; a meta.json from before they were
recorded still loads, its nprobe/ef_search restored as before).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from hmpcl_lib.io import atomic_dir
from hmpcl_lib.diskspace import index_bytes, require_free_disk
from hmpcl_lib.errors import InputError

IndexKind = str  # "auto", "flat", "ivf", "hnsw", or a faiss index_factory string
NAMED_KINDS = ("auto", "flat", "ivf", "hnsw")
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "meta.json"
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-2
GPU_MAX_K = 2048  # faiss GPU indexes refuse larger k; such searches run on a CPU copy


class AutoRule(NamedTuple):
    """kind="auto" uses `factory` (with `search_params`) for corpora of at most `max_n` rows (None: any size)."""

    max_n: int | None
    factory: str
    search_params: str


# kind="auto": the first rule whose max_n covers the corpus size N. `{nlist}` is default_nlist(N) (about 4*sqrt(N),
# a power of two), the same nlist the benchmark uses. The numbers come from the output of
#     python benchmarks/index_bench.py --sizes 100000 1000000 --scales 0.5 0.4 0.3 0.8 --kinds flat ivf hnsw \
#         --max-build-s 240
# run alone on the 2-core machine (dim 256, 1000 held-out query views, k=10; pick = recall@10 >= 0.95 with the most
# QPS; README "Search" table): 100k: IVF1024,Flat nprobe=16 (0.971, 6.8k QPS; Flat 2.1k, HNSW32 efSearch=64 0.967
# at 6.5k); 1M: IVF4096,Flat nprobe=64 (0.988, 612 QPS; Flat 197; nprobe=32 falls to 0.947). Below 10k exact search
# answers in about a millisecond with no training, so it stays. Above 1.5M (2.7M = all of DeepPatent2) the row is an
# extrapolation, not a measurement: nlist doubles (8192), so nprobe doubles to probe the same 1.6 % of the lists.
AUTO_RULES: tuple[AutoRule, ...] = (
    AutoRule(10_000, "Flat", ""),
    AutoRule(300_000, "IVF{nlist},Flat", "nprobe=16"),
    AutoRule(1_500_000, "IVF{nlist},Flat", "nprobe=64"),
    AutoRule(None, "IVF{nlist},Flat", "nprobe=128"),
)


def _faiss() -> Any:
    import faiss  # noqa: PLC0415 - optional dependency of the pipeline, not of the torch core

    return faiss


def _gpu_count(faiss: Any) -> int:
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _faiss_reason(exc: Exception) -> str:
    """The message of a faiss RuntimeError without its C++ signature and source location."""
    lines = str(exc).strip().splitlines() or [""]
    return re.sub(r"^.*?\.(?:cpp|h):\d+: ", "", lines[-1]).strip()


def check_normalised(vectors: Any, source: str, ids: np.ndarray | None = None) -> np.ndarray:
    """Return `vectors` as C-contiguous float32 [N, D]; refuse NaN/inf or rows that are not unit length."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InputError(f"vectors must be a 2-D [N, D] array, got shape {array.shape}", source=source)
    norms = np.linalg.norm(array, axis=1)
    bad = ~np.isfinite(norms) | (np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.any():
        row = int(np.argmax(bad))
        record = str(ids[row]) if ids is not None else f"#{row}"
        raise InputError(
            f"{int(bad.sum())} vector(s) not L2-normalised or not finite (first norm {norms[row]:.4g})",
            source=source,
            record=record,
        )
    return array


def default_nlist(n: int) -> int:
    """About 4*sqrt(N) lists rounded to a power of two, but at most N/39 (faiss k-means wants 39 points per list)."""
    if n < 2 * 39:
        return 1
    target = 2 ** round(float(np.log2(4 * np.sqrt(n))))
    cap = 2 ** int(np.floor(np.log2(n // 39)))
    return int(min(target, cap))


def parse_search_params(text: str | None) -> dict[str, float]:
    """"nprobe=32,k_factor_rf=4" -> {"nprobe": 32.0, "k_factor_rf": 4.0} (faiss ParameterSpace syntax)."""
    params: dict[str, float] = {}
    for part in (text or "").split(","):
        name, sep, value = part.strip().partition("=")
        if not name and not sep:
            continue
        try:
            if not name.strip() or not sep:
                raise ValueError
            params[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"bad search parameter {part.strip()!r} in {text!r} (want name=value,...)",
                             source="index search params") from None
    return params


def format_search_params(params: dict[str, float]) -> str:
    return ",".join(f"{name}={int(v) if float(v).is_integer() else v}" for name, v in params.items())


def index_family(factory: str) -> str:
    """"flat", "ivf" (any IVF: Flat, PQ, OPQ+PQ, refined), "hnsw", or "other" for a faiss factory string."""
    parts = [part.strip() for part in factory.split(",")]
    if parts == ["Flat"]:
        return "flat"
    if any(part.startswith("IVF") for part in parts):
        return "ivf"
    if any(part.startswith("HNSW") for part in parts):
        return "hnsw"
    return "other"


def resolve_kind(
    kind: IndexKind,
    n: int,
    *,
    nlist: int | None = None,
    nprobe: int = 16,
    hnsw_m: int = 32,
    ef_search: int = 64,
    rules: Sequence[AutoRule | tuple[int | None, str, str]] | None = None,
) -> tuple[str, str]:
    """(faiss factory string, search parameters) that `kind` means for an N-row corpus; `{nlist}` filled in."""
    if not isinstance(kind, str) or not kind.strip():
        raise InputError(f"index kind must be one of {NAMED_KINDS} or a faiss factory string, got {kind!r}",
                         source="index kind")
    if kind == "auto":
        table = [AutoRule(*rule) for rule in (AUTO_RULES if rules is None else rules)]
        rule = next((r for r in table if r.max_n is None or n <= r.max_n), None)
        if rule is None:
            raise InputError(f"no auto rule covers {n} vectors (give the last rule max_n=None)", source="index kind")
        factory, params = rule.factory, rule.search_params
    elif kind == "flat":
        factory, params = "Flat", ""
    elif kind == "ivf":
        factory, params = "IVF{nlist},Flat", f"nprobe={nprobe}"
    elif kind == "hnsw":
        factory, params = f"HNSW{hnsw_m}", f"efSearch={ef_search}"
    else:
        factory, params = kind.strip(), ""
    return factory.replace("{nlist}", str(int(nlist or default_nlist(n)))), params


def _make_index(faiss: Any, dim: int, factory: str) -> Any:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(
            f"unknown index kind or bad faiss factory string {factory!r} (kinds: {', '.join(NAMED_KINDS)}, or a "
            f"faiss index_factory string such as 'IVF1024,Flat'): {_faiss_reason(exc)}",
            source="index kind",
        ) from exc


def _apply_search_params(index: Any, text: str | None, on_gpu: bool = False) -> None:
    if not text:
        return
    faiss = _faiss()
    space = faiss.GpuParameterSpace() if on_gpu else faiss.ParameterSpace()
    try:
        space.set_index_parameters(index, text)
    except RuntimeError as exc:
        raise InputError(f"search parameters {text!r} do not apply to this index: {_faiss_reason(exc)}",
                         source="index search params") from exc


@dataclass
class IndexMeta:
    kind: str  # family: flat / ivf / hnsw / other (see index_family)
    dim: int
    ntotal: int
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    format_version: int = FORMAT_VERSION
    factory: str | None = None  # the faiss index_factory string (absent from meta.json written before it was kept)
    search_params: str | None = None  # faiss ParameterSpace string, e.g. "nprobe=32"; "" for none

    def record_params(self, params: dict[str, float]) -> None:
        """Keep `params` as the search_params string, with nprobe/ef_search mirrored in their own fields."""
        self.search_params = format_search_params(params)
        self.nprobe = int(params["nprobe"]) if "nprobe" in params else None
        self.ef_search = int(params["efSearch"]) if "efSearch" in params else None

    def fill_legacy(self) -> None:
        """A meta.json from before factory/search_params were kept: derive them from kind, nlist, nprobe, ..."""
        if self.factory is None:
            self.factory = {"flat": "Flat", "ivf": f"IVF{self.nlist},Flat", "hnsw": f"HNSW{self.hnsw_m}"}.get(self.kind)
        if self.search_params is None:
            params = {"nprobe": self.nprobe} if self.kind == "ivf" and self.nprobe else {}
            params |= {"efSearch": self.ef_search} if self.kind == "hnsw" and self.ef_search else {}
            self.search_params = format_search_params(params)


class VectorIndex:
    """A faiss index plus the drawing id of each row; `search` answers ids and scores, not faiss row numbers."""

    def __init__(self, index: Any, ids: np.ndarray, meta: IndexMeta, on_gpu: bool = False):
        self._index = index
        self._cpu_index: Any | None = None if on_gpu else index
        self.ids = ids
        self.meta = meta
        self.on_gpu = on_gpu

    def __len__(self) -> int:
        return self.meta.ntotal

    @property
    def dim(self) -> int:
        return self.meta.dim

    @classmethod
    def build(
        cls,
        ids: Any,
        vectors: Any,
        kind: IndexKind = "auto",
        nlist: int | None = None,
        hnsw_m: int = 32,
        use_gpu: bool | Literal["auto"] = "auto",
        nprobe: int = 16,
        ef_search: int = 64,
        ef_construction: int = 80,
        train_size: int = 100_000,
        seed: int = 0,
        rules: Sequence[AutoRule | tuple[int | None, str, str]] | None = None,
    ) -> "VectorIndex":
        """Index `vectors` (unit rows) under `ids` (unique strings).

        `kind`: "flat", "ivf" (IVF{nlist},Flat with `nprobe`), "hnsw" (HNSW{hnsw_m} with `ef_search`,
        `ef_construction`), any faiss factory string, or "auto": the first of `rules` (default `AUTO_RULES`)
        whose max_n covers N. `nlist` defaults to `default_nlist(N)` wherever a factory says `{nlist}`. Indexes
        that need training train on a `seed`-drawn sample of max(`train_size`, 39 * nlist) rows (deterministic);
        HNSW is CPU only.
        """
        ids = np.asarray(ids).astype(str)  # checked with the vectors by build_in_parts, which reads this one part
        return cls.build_in_parts([lambda: (ids, vectors)], len(ids), kind=kind, nlist=nlist, hnsw_m=hnsw_m,
                                  use_gpu=use_gpu, nprobe=nprobe, ef_search=ef_search,
                                  ef_construction=ef_construction, train_size=train_size, seed=seed, rules=rules,
                                  names=["index"])

    @classmethod
    def build_in_parts(
        cls,
        parts: Sequence[Callable[[], tuple[Any, Any]]],
        n: int,
        kind: IndexKind = "auto",
        nlist: int | None = None,
        hnsw_m: int = 32,
        use_gpu: bool | Literal["auto"] = "auto",
        nprobe: int = 16,
        ef_search: int = 64,
        ef_construction: int = 80,
        train_size: int = 100_000,
        seed: int = 0,
        rules: Sequence[AutoRule | tuple[int | None, str, str]] | None = None,
        names: Sequence[str] | None = None,
    ) -> "VectorIndex":
        """`build` over a corpus read part by part (the pipeline's year files): `parts[i]()` returns that part's
        (ids, unit vectors) and `n` is the rows of all parts (at least one part, which may be empty). An index that needs training trains on the same
        `seed`-drawn rows `build` would draw from the parts joined, read one part at a time; the vectors are then
        added part by part. Memory: the largest part, the training sample and what faiss holds, never the corpus's
        vectors twice. `names` label the parts in errors (a part whose size is not the one counted, a duplicate id)."""
        faiss = _faiss()
        names = list(names) if names is not None else [f"part {i}" for i in range(len(parts))]
        factory, params_text = resolve_kind(kind, n, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m,
                                            ef_search=ef_search, rules=rules)
        params = parse_search_params(params_text)

        def read(i: int) -> tuple[np.ndarray, np.ndarray]:
            ids, vectors = parts[i]()
            ids = np.asarray(ids).astype(str)
            vectors = check_normalised(vectors, source=f"{names[i]} vectors", ids=ids)
            if ids.ndim != 1 or len(ids) != len(vectors):
                raise InputError(f"{len(ids)} ids for {len(vectors)} vectors", source=f"{names[i]} ids")
            return ids, vectors

        cached = {0: read(0)}  # one part held at a time: the first is read once for its dimension
        dim = cached[0][1].shape[1]
        index = _make_index(faiss, dim, factory)
        meta = IndexMeta(kind=index_family(factory), dim=dim, ntotal=n, factory=factory)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.cp.seed = seed
            meta.nlist = int(ivf.nlist)
            if hasattr(ivf, "do_polysemous_training"):  # IVF-PQ: index_factory turns it on; minutes of training
                ivf.do_polysemous_training = False  # for codes only a polysemous_ht search would use
            if "nprobe" in params:
                params["nprobe"] = min(params["nprobe"], meta.nlist)
        if hasattr(index, "hnsw"):
            index.hnsw.efConstruction = ef_construction
            meta.hnsw_m = int(index.hnsw.nb_neighbors(1))
        def part(i: int) -> tuple[np.ndarray, np.ndarray]:
            return cached.pop(i) if i in cached else read(i)

        if not index.is_trained:
            train_n = max(train_size, 39 * (meta.nlist or 1))  # faiss k-means wants >= 39 points per list
            chosen = np.sort(np.random.default_rng(seed).permutation(n)[:train_n]) if n > train_n else np.arange(n)
            sample, offset = [], 0
            for i in range(len(parts)):
                ids, vectors = part(i)
                local = chosen[(chosen >= offset) & (chosen < offset + len(ids))] - offset
                sample.append(vectors[local])
                offset += len(ids)
            try:
                index.train(np.concatenate(sample))
            except RuntimeError as exc:
                raise InputError(f"cannot train {factory!r} on {min(n, train_n)} vectors: {_faiss_reason(exc)}",
                                 source="index kind") from exc
            del sample
        all_ids = []
        for i in range(len(parts)):
            ids, vectors = part(i)
            if len(ids):
                index.add(vectors)
            all_ids.append(ids)
        ids = np.concatenate(all_ids)
        if len(ids) != n:
            raise InputError(f"the parts hold {len(ids)} vectors, {n} were counted", source=", ".join(names))
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise InputError("duplicate drawing id in index", source="index ids", record=str(unique[counts > 1][0]))
        meta.record_params(params)
        _apply_search_params(index, meta.search_params)
        return cls._placed(index, ids, meta, use_gpu)

    @classmethod
    def _placed(cls, index: Any, ids: np.ndarray, meta: IndexMeta, use_gpu: bool | str) -> "VectorIndex":
        faiss = _faiss()
        gpus = _gpu_count(faiss)
        if use_gpu is True and gpus == 0:
            raise InputError("use_gpu=True but the installed faiss sees no GPU", source="index")
        if use_gpu and gpus > 0 and meta.kind != "hnsw" and "HNSW" not in (meta.factory or ""):
            try:
                return cls(faiss.index_cpu_to_all_gpus(index), ids, meta, on_gpu=True)
            except RuntimeError as exc:  # a factory string faiss has no GPU version of
                if use_gpu is True:
                    raise InputError(f"faiss cannot put {meta.factory!r} on the GPU: {_faiss_reason(exc)}",
                                     source="index") from exc
        return cls(index, ids, meta)

    def _cpu(self) -> Any:
        if self._cpu_index is None:
            self._cpu_index = _faiss().index_gpu_to_cpu(self._index)
        return self._cpu_index

    def search_positions(self, query_vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row positions [Q, k] int64 (-1 where fewer than k results) and scores [Q, k] float32 (-inf there)."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}", source="search")
        queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise InputError(f"query vectors must be [Q, {self.dim}], got {queries.shape}", source="search")
        if not np.isfinite(queries).all():
            raise InputError("query vectors contain NaN or inf", source="search")
        positions = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        k_run = min(k, self.meta.ntotal)
        if k_run == 0 or len(queries) == 0:
            return positions, scores
        index = self._cpu() if self.on_gpu and k_run > GPU_MAX_K else self._index
        found_scores, found = index.search(queries, k_run)
        positions[:, :k_run] = found
        scores[:, :k_run] = np.where(found >= 0, found_scores, -np.inf)
        return positions, scores

    def search(self, query_vectors: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k drawing ids [Q, k] (object array) and scores [Q, k] float32, best first.

        When the index holds fewer than k rows (or an approximate index finds fewer), the tail is padded
        with id None and score -inf, so the shape is always [Q, k].
        """
        positions, scores = self.search_positions(query_vectors, k)
        ids = np.full(positions.shape, None, dtype=object)
        found = positions >= 0
        ids[found] = self.ids[positions[found]]
        return ids, scores

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None, params: str | None = None) -> None:
        """Trade recall for speed after build/load: IVF `nprobe`, HNSW `ef_search`, or any faiss ParameterSpace
        string (`params="nprobe=32,k_factor_rf=4"`). nprobe/ef_search are ignored by indexes without IVF lists /
        an HNSW graph; the result is kept in `meta` (and so in meta.json on save)."""
        current = parse_search_params(self.meta.search_params)
        current.update(parse_search_params(params))
        if nprobe is not None and self.meta.nlist is not None:
            current["nprobe"] = nprobe
        if ef_search is not None and self.meta.hnsw_m is not None:
            current["efSearch"] = ef_search
        if "nprobe" in current and self.meta.nlist:
            current["nprobe"] = min(current["nprobe"], self.meta.nlist)
        _apply_search_params(self._index, format_search_params(current), on_gpu=self.on_gpu)
        if self.on_gpu:
            self._cpu_index = None  # the lazily made CPU copy would carry the old parameters
        self.meta.record_params(current)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index atomically: a temp dir beside `directory`, renamed over it when complete."""
        faiss = _faiss()
        target = Path(directory)
        ids = self.ids.astype(str)
        meta = self.meta
        require_free_disk(f"the FAISS index ({len(ids):,} vectors, {meta.factory or meta.kind})", target.parent,
                          index_bytes(len(ids), meta.dim, meta.kind, meta.nlist, meta.hnsw_m, ids.nbytes))
        with atomic_dir(target) as tmp:
            faiss.write_index(self._cpu(), str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, ids, allow_pickle=False)
            (tmp / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2, sort_keys=True))
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike, use_gpu: bool | Literal["auto"] = "auto") -> "VectorIndex":
        """Read an index written by `save`; a missing or inconsistent file raises InputError naming it."""
        faiss = _faiss()
        directory = Path(directory)
        for name in (INDEX_FILE, IDS_FILE, META_FILE):
            if not (directory / name).is_file():
                raise InputError("index file missing", source=str(directory / name))
        try:
            meta = IndexMeta(**json.loads((directory / META_FILE).read_text()))
        except (ValueError, TypeError) as exc:
            raise InputError(f"unreadable index metadata: {exc}", source=str(directory / META_FILE)) from exc
        if meta.format_version != FORMAT_VERSION:
            raise InputError(f"index format {meta.format_version}, expected {FORMAT_VERSION}", source=str(directory))
        try:
            ids = np.load(directory / IDS_FILE, allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"unreadable id array: {exc}", source=str(directory / IDS_FILE)) from exc
        try:
            index = faiss.read_index(str(directory / INDEX_FILE))
        except RuntimeError as exc:
            raise InputError(f"unreadable faiss index: {exc}", source=str(directory / INDEX_FILE)) from exc
        if index.ntotal != meta.ntotal or len(ids) != meta.ntotal or index.d != meta.dim:
            raise InputError(
                f"index has {index.ntotal} rows of dim {index.d}, ids {len(ids)}, meta says {meta.ntotal} x {meta.dim}",
                source=str(directory),
            )
        meta.fill_legacy()
        _apply_search_params(index, meta.search_params)
        return cls._placed(index, ids, meta, use_gpu)


# ---------------------------------------------------------------- sharded exact index


def build_sharded(ids: Any, vectors: Any, n_shards: int | None = None, use_gpu: bool | Literal["auto"] = "auto"):
    """An exact inner-product VectorIndex spread over shards.

    GPUs present (and `use_gpu`): the flat index is cloned onto all of them with `GpuMultipleClonerOptions.shard`
    (each card holds 1/n of the vectors). Otherwise `n_shards` CPU flat indexes (default 2) under
    `faiss.IndexShards`, searched in parallel. Results equal a single flat index; `save()` writes the merged flat.
    """
    import faiss

    ids = np.asarray(ids).astype(str)
    vectors = check_normalised(vectors, source="index vectors", ids=ids)
    if len(ids) != len(vectors):
        raise InputError(f"{len(ids)} ids for {len(vectors)} vectors", source="index ids")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError("duplicate drawing id in index", source="index ids", record=str(unique[counts > 1][0]))
    n, dim = vectors.shape
    meta = IndexMeta(kind="flat", dim=dim, ntotal=n, factory="Flat", search_params="")
    gpus = _gpu_count(faiss)
    if use_gpu is True and gpus == 0:
        raise InputError("use_gpu=True but the installed faiss sees no GPU", source="index")
    if use_gpu and gpus > 0:
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        options = faiss.GpuMultipleClonerOptions()
        options.shard = True
        return VectorIndex(faiss.index_cpu_to_all_gpus(flat, co=options), ids, meta, on_gpu=True)
    n_shards = n_shards or 2
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    return CpuShardedIndex(vectors, n_shards, ids, meta)


class CpuShardedIndex(VectorIndex):
    """VectorIndex over `faiss.IndexShards` of contiguous flat blocks; saved as one merged flat index."""

    def __init__(self, vectors: np.ndarray, n_shards: int, ids: np.ndarray, meta: IndexMeta):
        import faiss

        sharded = faiss.IndexShards(meta.dim, True, True)  # threaded, successive ids: positions stay global
        self._shards = []
        for block in np.array_split(np.arange(len(vectors)), n_shards):
            shard = faiss.IndexFlatIP(meta.dim)
            if len(block):
                shard.add(vectors[block])
            self._shards.append(shard)  # IndexShards does not own its members: keep them alive
            sharded.add_shard(shard)
        super().__init__(sharded, ids, meta)
        self._cpu_index = None  # save() goes through _cpu(): a merged flat index faiss can serialise

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    def _cpu(self) -> Any:
        import faiss

        if self._cpu_index is None:
            merged = faiss.IndexFlatIP(self.meta.dim)
            for shard in self._shards:
                if shard.ntotal:
                    merged.add(shard.reconstruct_n(0, shard.ntotal))
            self._cpu_index = merged
        return self._cpu_index
