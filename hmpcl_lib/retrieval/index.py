"""FAISS vector index over L2-normalised embeddings (inner product = cosine), keyed by drawing id.

Exact `IndexFlatIP` by default; IVF-Flat or HNSW when asked for, or ("auto") when the corpus is larger than
`flat_max`. Moved to all GPUs when the installed faiss has any. faiss is imported here only, so the torch
training/embedding core does not need it.

`build_sharded` spreads an exact index over shards: faiss `IndexShards` on CPU, or every GPU via
`index_cpu_to_all_gpus` with the `shard` cloner flag, so a corpus larger than one card's memory still fits.

On disk (`save(dir)`, written to a temp dir then renamed): `index.faiss`, `ids.npy` (unicode array, no
pickle) and `meta.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hmpcl_lib.errors import InputError

IndexKind = Literal["auto", "flat", "ivf", "hnsw"]
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.npy", "meta.json"
FORMAT_VERSION = 1
NORM_TOLERANCE = 1e-2
GPU_MAX_K = 2048  # faiss GPU indexes refuse larger k; such searches run on a CPU copy


def _faiss() -> Any:
    import faiss  # noqa: PLC0415 - optional dependency of the pipeline, not of the torch core

    return faiss


def _gpu_count(faiss: Any) -> int:
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


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
    """About 4*sqrt(N) lists, but at least 39 training points per list (faiss k-means minimum)."""
    return int(max(1, min(round(4 * np.sqrt(n)), n // 39)))


@dataclass
class IndexMeta:
    kind: str
    dim: int
    ntotal: int
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int | None = None
    ef_search: int | None = None
    format_version: int = FORMAT_VERSION


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
        flat_max: int = 100_000,
        nlist: int | None = None,
        hnsw_m: int = 32,
        use_gpu: bool | Literal["auto"] = "auto",
        nprobe: int = 16,
        ef_search: int = 64,
        ef_construction: int = 80,
        train_size: int = 100_000,
        seed: int = 0,
    ) -> "VectorIndex":
        """Index `vectors` (unit rows) under `ids` (unique strings).

        `kind="auto"` is exact flat up to `flat_max` rows, IVF-Flat above. IVF trains on a `seed`-drawn sample of
        max(`train_size`, 39 * nlist) rows (deterministic); HNSW is CPU only.
        """
        faiss = _faiss()
        ids = np.asarray(ids).astype(str)
        vectors = check_normalised(vectors, source="index vectors", ids=ids)
        if ids.ndim != 1 or len(ids) != len(vectors):
            raise InputError(f"{len(ids)} ids for {len(vectors)} vectors", source="index ids")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise InputError("duplicate drawing id in index", source="index ids", record=str(unique[counts > 1][0]))
        n, dim = vectors.shape
        if kind == "auto":
            kind = "flat" if n <= flat_max else "ivf"
        meta = IndexMeta(kind=kind, dim=dim, ntotal=n)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            meta.nlist = int(nlist or default_nlist(n))
            meta.nprobe = int(min(nprobe, meta.nlist))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, meta.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            train_n = max(train_size, 39 * meta.nlist)  # faiss k-means wants >= 39 points per list
            rows = np.sort(np.random.default_rng(seed).permutation(n)[:train_n]) if n > train_n else slice(None)
            index.train(vectors[rows])
            index.nprobe = meta.nprobe
        elif kind == "hnsw":
            meta.hnsw_m, meta.ef_search = hnsw_m, ef_search
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            index.hnsw.efSearch = ef_search
        else:
            raise InputError(f"unknown index kind {kind!r} (flat, ivf, hnsw, auto)", source="index kind")
        if n:
            index.add(vectors)
        return cls._placed(index, ids, meta, use_gpu)

    @classmethod
    def _placed(cls, index: Any, ids: np.ndarray, meta: IndexMeta, use_gpu: bool | str) -> "VectorIndex":
        faiss = _faiss()
        gpus = _gpu_count(faiss)
        if use_gpu is True and gpus == 0:
            raise InputError("use_gpu=True but the installed faiss sees no GPU", source="index")
        if use_gpu and gpus > 0 and meta.kind != "hnsw":
            return cls(faiss.index_cpu_to_all_gpus(index), ids, meta, on_gpu=True)
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

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade recall for speed after build/load (IVF nprobe, HNSW efSearch)."""
        faiss = _faiss()
        if nprobe is not None and self.meta.kind == "ivf":
            self.meta.nprobe = int(min(nprobe, self.meta.nlist or nprobe))
            if self.on_gpu:
                faiss.GpuParameterSpace().set_index_parameter(self._index, "nprobe", self.meta.nprobe)
                self._cpu_index = None  # the lazily made CPU copy would carry the old nprobe
            else:
                faiss.extract_index_ivf(self._index).nprobe = self.meta.nprobe
        if ef_search is not None and self.meta.kind == "hnsw":
            self.meta.ef_search = int(ef_search)
            self._index.hnsw.efSearch = self.meta.ef_search

    def save(self, directory: str | os.PathLike) -> Path:
        """Write the index atomically: a temp dir beside `directory`, renamed over it when complete."""
        faiss = _faiss()
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            faiss.write_index(self._cpu(), str(tmp / INDEX_FILE))
            np.save(tmp / IDS_FILE, self.ids.astype(str), allow_pickle=False)
            (tmp / META_FILE).write_text(json.dumps(asdict(self.meta), indent=2, sort_keys=True))
            old = None
            if target.exists():
                old = target.parent / f".{target.name}.old-{os.getpid()}"
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
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
        if meta.kind == "ivf" and meta.nprobe:
            faiss.extract_index_ivf(index).nprobe = meta.nprobe
        if meta.kind == "hnsw" and meta.ef_search:
            index.hnsw.efSearch = meta.ef_search
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
    meta = IndexMeta(kind="flat", dim=dim, ntotal=n)
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
