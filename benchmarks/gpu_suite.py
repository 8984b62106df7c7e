"""GPU suite: every model-bound stage of the pipeline in one run (< 10 min on an H100/H200), one markdown table,
each row beside its ceiling measured in the same run.

    python benchmarks/gpu_suite.py --device cuda                 # from the repo root, on the GPU machine
    python benchmarks/gpu_suite.py --device cpu --train-batch 4 --embed-batch 4 --image-size 32 \\
        --store-images 64 --search-sizes 2000 --queries 16 --matmul-size 128 --budget-s 60   # smoke test

Runs where only torch, timm, numpy and pyarrow exist (no polars, faiss, dagster, mlflow, no download): it imports
`hmpcl_lib` modules whose import chain is torch/timm/numpy/pyarrow only (models, losses, pixels, samplers,
train.config, train.loop) and builds the encoder with random weights (`weights="none"`; weights do not change speed).

Rows
1. training step: the project's encoder (timm backbone + projection head, channels_last) and the configured
   hierarchical loss, the loop's step (forward under bf16 autocast on CUDA, loss in fp32, the per-step loss sync,
   backward, grad clip, AdamW + LR schedule; optimizer and loss from hmpcl_lib.train.loop). "bare" = that step on
   a batch already on the device (ceiling: bf16 on CUDA, fp32 on CPU); "pixel store" = the loop's real data path
   (HierarchicalBatchSampler → PixelTrainDataset → DataLoader(0 workers) → augment_batch on the device), from a
   store written on the fly in the real format (synthetic uint8 pixels, `PixelStore.open`).
2. embedding: inference_mode forward, channels_last, bf16 on CUDA. "bare" = a batch already on the device
   (ceiling); "pixel store" = what `embed_table(pixel_store=...)` does per batch (memmap rows → pin → eval_batch →
   forward → float32 rows to host), re-written here because hmpcl_lib.retrieval.embedding imports polars.
3. exact search: unit-norm gallery vectors (dim 256, fp16 on CUDA) × queries, top-k by torch matmul + torch.topk
   over gallery chunks (what exact search costs on a GPU without faiss-gpu), reported as QPS and TFLOP/s against
   a plain square matmul in the same dtype (ceiling) and the same chunked matmul without top-k (notes). A faiss
   GpuIndexFlatIP row when faiss with GPU support imports (CUDA only; faiss is never imported on CPU).

Timing: warm-up iterations, then timed iterations each ended by torch.cuda.synchronize (wall clock); the median
is reported. `--budget-s` bounds the whole run: rows that would start after it are listed as skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hmpcl_lib.modeling.distributed import resolve_device  # noqa: E402
from hmpcl_lib.modeling.models import build_encoder  # noqa: E402
from hmpcl_lib.modeling.pixels import FORMAT, MODE, PixelStore, PixelTrainDataset, eval_batch, train_side  # noqa: E402
from hmpcl_lib.modeling.samplers import HierarchicalBatchSampler  # noqa: E402
from hmpcl_lib.train.config import TrainConfig, config_from_strings  # noqa: E402
from hmpcl_lib.train.loop import (_build_loader, _build_optimizer, _build_scheduler,  # noqa: E402
                                  _SeededEpochBatches, _set_train_mode, build_loss)

# synthetic hierarchy of the pixel store: 4 drawings per patent, 4 patents per subclass, 4 subclasses per class
DRAWINGS_PER_PATENT, PATENTS_PER_SUBCLASS, SUBCLASSES_PER_CLASS = 4, 4, 4
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}

# defaults that depend on the device: (cuda, cpu)
DEVICE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "train_batch": ([64, 256], [16]),
    "embed_batch": ([64, 512], [32]),
    "warmup": (3, 1),
    "iters": (20, 3),
    "store_images": (8192, 256),
    "search_sizes": ([1_000_000, 10_000_000], [20_000]),
    "queries": (4096, 64),
    "query_batch": (2048, 64),
    "gallery_chunk": (1 << 20, 8192),
    "search_dtype": ("fp16", "fp32"),
    "search_iters": (3, 2),
    "matmul_size": (8192, 512),
}


# ---------------------------------------------------------------- results


@dataclass
class Row:
    key: str  # stable id, e.g. "train.bare.bf16.b64"
    stage: str
    path: str
    value: float | None = None  # images/s, QPS or TFLOP/s (unit below); None when skipped or failed
    unit: str = ""
    ceiling_key: str | None = None  # the row this one is measured against (None: it is a ceiling)
    compare: float | None = None  # the quantity compared with the ceiling (value, or TFLOP/s for search rows)
    tflops: float | None = None
    notes: str = ""
    status: str = "ok"  # ok | skipped | error
    extra: dict[str, Any] = field(default_factory=dict)


class Suite:
    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.start = time.perf_counter()
        self.deadline = self.start + args.budget_s
        self.rows: list[Row] = []

    def left_s(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, key: str, stage: str, path: str, measure: Callable[[Row], None], unit: str = "",
            ceiling_key: str | None = None) -> Row:
        """Measure one row unless the budget is spent; an exception makes an error row, not a crash."""
        row = Row(key, stage, path, unit=unit, ceiling_key=ceiling_key)
        if self.left_s() <= 0:
            row.status, row.notes = "skipped", f"skipped: --budget-s {self.args.budget_s:g} s exhausted"
        else:
            try:
                measure(row)
            except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
                traceback.print_exc(file=sys.stderr)
                row.status, row.value = "error", None
                row.notes = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        if row.status == "ok" and row.compare is None:
            row.compare = row.value
        self.rows.append(row)
        _progress(f"[{time.perf_counter() - self.start:6.1f} s] {row.key}: "
                  f"{_fmt(row.value) + ' ' + row.unit if row.value is not None else row.status} {row.notes}")
        return row

    def skip(self, key: str, stage: str, path: str, why: str) -> Row:
        row = Row(key, stage, path, status="skipped", notes=why)
        self.rows.append(row)
        _progress(f"[{time.perf_counter() - self.start:6.1f} s] {key}: skipped ({why})")
        return row

    def timed(self, fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
        """Seconds of each timed call of `fn` (after `warmup` calls); stops early past the deadline (>= 1 call)."""
        for _ in range(warmup):
            fn()
        _sync(self.device)
        times: list[float] = []
        for _ in range(max(1, iters)):
            t0 = time.perf_counter()
            fn()
            _sync(self.device)
            times.append(time.perf_counter() - t0)
            if self.left_s() <= 0:
                break
        return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _precision(bf16: bool, on_cuda: bool) -> str:
    """How a row's forward runs, for its label."""
    return "bf16 autocast" if bf16 else ("fp32 (cuDNN TF32 default)" if on_cuda else "fp32")


def _median_note(times: list[float], per: str = "step") -> str:
    return f"median of {len(times)}: {statistics.median(times) * 1e3:.2f} ms/{per}"


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the pixel store (real format, synthetic pixels)


def build_synthetic_store(root: Path, n: int, image_size: int, seed: int = 0) -> PixelStore:
    """A pixel store in `hmpcl_lib.modeling.pixels`' format (eval.npy, train.npy, index.parquet, meta.json),
    filled with random uint8 pixels instead of decoded PNGs, opened with `PixelStore.open`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    side = train_side(image_size)
    path = root / f"{image_size}-synthetic"
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, s in (("eval", image_size), ("train", side)):
        arr = np.lib.format.open_memmap(path / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(n, s, s))
        for lo in range(0, n, 1024):
            hi = min(n, lo + 1024)
            arr[lo:hi] = rng.integers(0, 256, size=(hi - lo, s, s), dtype=np.uint8)
        arr.flush()
        del arr
    ids = [f"synthetic-{i:08d}" for i in range(n)]
    pq.write_table(pa.table({"drawing_id": pa.array(ids, pa.string()),
                             "image_path": pa.array([f"/synthetic/{i}.png" for i in ids], pa.string()),
                             "file_size": pa.array(np.zeros(n, np.int64)),
                             "mtime_ns": pa.array(np.zeros(n, np.int64))}), path / "index.parquet")
    meta = {"format": FORMAT, "mode": MODE, "image_size": int(image_size), "train_side": side,
            "margin": side / image_size, "count": n, "fingerprint": "synthetic", "build_seconds": 0.0,
            "preprocessing": "synthetic uint8 pixels (benchmarks/gpu_suite.py)"}
    (path / "meta.json").write_text(json.dumps(meta, indent=1))
    store = PixelStore.open(path)
    check = store.verify()
    if not check["ok"]:
        raise RuntimeError(f"synthetic pixel store is inconsistent: {check['problems']}")
    return store


def synthetic_labels(n: int) -> dict[str, np.ndarray]:
    i = np.arange(n, dtype=np.int64)
    patent = i // DRAWINGS_PER_PATENT
    subclass = patent // PATENTS_PER_SUBCLASS
    klass = subclass // SUBCLASSES_PER_CLASS
    return {"class_label": klass, "subclass_label": subclass, "patent_label": patent}


# ---------------------------------------------------------------- 1. training step


def _batch_labels(config: TrainConfig, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Labels of a hierarchical batch as the sampler lays it out (drawings_per_patent per patent, ...)."""
    i = torch.arange(batch, device=device)
    patent = i // config.drawings_per_patent
    subclass = patent // config.patents_per_subclass
    return {"patent_label": patent, "subclass_label": subclass,
            "class_label": subclass // config.subclasses_per_class}


class TrainStep:
    """The training loop's step (hmpcl_lib.train.loop.train, one iteration of `for batch in loader`)."""

    def __init__(self, config: TrainConfig, device: torch.device, bf16: bool):
        torch.manual_seed(config.seed)
        self.config, self.device, self.bf16 = config, device, bf16
        self.encoder = build_encoder(config.backbone, config.embed_dim, config.weights, head=config.head,
                                     image_size=config.image_size)
        self.encoder.to(device)
        self.encoder.to(memory_format=torch.channels_last)
        self.criterion = build_loss(config).to(device)
        self.optimizer = _build_optimizer(self.encoder, self.criterion, config)
        self.scheduler = _build_scheduler(self.optimizer, config, total_steps=100_000)
        self.params = list(self.encoder.parameters()) + list(self.criterion.parameters())
        _set_train_mode(self.encoder, config.freeze_bn)
        self.last_loss = float("nan")

    def __call__(self, images: torch.Tensor, labels: dict[str, torch.Tensor]) -> None:
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            z = self.encoder(images)
        loss = self.criterion(z.float(), labels["patent_label"], labels["subclass_label"], labels["class_label"])
        self.last_loss = float(loss.detach())  # the loop's per-step sync (_mean_over_ranks + isfinite check)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()


def train_rows(suite: Suite, base: TrainConfig, store: PixelStore | None) -> None:
    args, device = suite.args, suite.device
    on_cuda = device.type == "cuda"
    loop_bf16 = on_cuda  # the loop: bf16 autocast on CUDA only
    for b in args.train_batch:
        config = config_from_strings([f"batch_size={b}"], base)
        ceiling = f"train.bare.{'bf16' if loop_bf16 else 'fp32'}.b{b}"

        def bare(row: Row, bf16: bool, config: TrainConfig = config, b: int = b) -> None:
            step = TrainStep(config, device, bf16)
            x = torch.randn(b, 3, config.image_size, config.image_size, device=device)
            x = x.contiguous(memory_format=torch.channels_last)
            labels = _batch_labels(config, b, device)
            times = suite.timed(lambda: step(x, labels), args.warmup, args.iters)
            row.value = b / statistics.median(times)
            row.notes = f"{_median_note(times)}; loss {step.last_loss:.3f}"
            row.extra = {"step_ms": statistics.median(times) * 1e3, "loss": step.last_loss}
            del step, x
            _free(device)

        variants = [("bf16", True), ("fp32", False)] if on_cuda else [("fp32", False)]
        for name, bf16 in variants:
            key = f"train.bare.{name}.b{b}"
            precision = _precision(bf16, on_cuda)
            suite.run(key, "1 training step", f"bare: in-memory batch, {precision}, B={b}",
                      lambda row, bf16=bf16: bare(row, bf16), "img/s", None if key == ceiling else ceiling)

        def from_store(row: Row, config: TrainConfig = config, b: int = b) -> None:
            assert store is not None
            step = TrainStep(config, device, loop_bf16)
            labels = synthetic_labels(len(store))
            dataset = PixelTrainDataset(store, store.image_paths, labels, config.image_size,
                                        step.encoder.config["mean"], step.encoder.config["std"])
            sampler = HierarchicalBatchSampler(
                labels["class_label"], labels["subclass_label"], labels["patent_label"], b,
                drawings_per_patent=config.drawings_per_patent, patents_per_subclass=config.patents_per_subclass,
                subclasses_per_class=config.subclasses_per_class, seed=config.seed)
            batches = _SeededEpochBatches(sampler, config.seed)
            loader = _build_loader(dataset, batches, config, device, 1)
            state = {"it": iter(loader)}

            def next_batch():
                try:
                    return next(state["it"])
                except StopIteration:  # next epoch, as the loop does
                    batches.epoch += 1
                    state["it"] = iter(loader)
                    return next(state["it"])

            def one() -> None:
                batch = next_batch()
                batch_labels = {k: v.to(device, non_blocking=True) for k, v in dataset.labels_of(batch[-1]).items()}
                images = dataset.model_input(batch[0], batch[1], device)
                step(images, batch_labels)

            times = suite.timed(one, args.warmup, args.iters)
            row.value = b / statistics.median(times)
            row.notes = (f"{_median_note(times)}; {len(store)} stored drawings, augment_batch on {device.type}, "
                         f"{config.num_workers if config.num_workers is not None else 0} loader workers")
            del step, loader, dataset
            _free(device)

        if store is None:
            suite.skip(f"train.store.b{b}", "1 training step", f"pixel store → augment_batch, B={b}",
                       "no pixel store (build failed or skipped)")
        else:
            precision = "bf16 autocast" if loop_bf16 else "fp32"
            suite.run(f"train.store.b{b}", "1 training step",
                      f"loop's data path: pixel store (synthetic, real format) → HierarchicalBatchSampler → "
                      f"augment_batch, {precision}, B={b}",
                      from_store, "img/s", ceiling)


# ---------------------------------------------------------------- 2. embedding


def embed_rows(suite: Suite, base: TrainConfig, store: PixelStore | None) -> None:
    args, device = suite.args, suite.device
    on_cuda = device.type == "cuda"
    bf16_ok = on_cuda and torch.cuda.is_bf16_supported()
    torch.manual_seed(base.seed)
    model = build_encoder(base.backbone, base.embed_dim, base.weights, head=base.head, image_size=base.image_size)
    model.eval().to(device)
    model.to(memory_format=torch.channels_last)
    mean, std = model.config["mean"], model.config["std"]
    s = base.image_size

    def autocast(bf16: bool):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    for b in args.embed_batch:
        ceiling = f"embed.bare.{'bf16' if bf16_ok else 'fp32'}.b{b}"

        def bare(row: Row, bf16: bool, b: int = b) -> None:
            x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=torch.channels_last)

            def one() -> None:
                with torch.inference_mode(), autocast(bf16):
                    model(x)

            times = suite.timed(one, args.warmup, args.iters)
            row.value = b / statistics.median(times)
            row.notes = _median_note(times, "batch")
            del x
            _free(device)

        variants = [("bf16", True), ("fp32", False)] if bf16_ok else [("fp32", False)]
        for name, bf16 in variants:
            key = f"embed.bare.{name}.b{b}"
            precision = _precision(bf16, on_cuda)
            suite.run(key, "2 embedding", f"bare: in-memory batch, inference_mode, {precision}, B={b}",
                      lambda row, bf16=bf16: bare(row, bf16), "img/s", None if key == ceiling else ceiling)

        def from_store(row: Row, b: int = b) -> None:
            assert store is not None
            rows = store.positions(store.image_paths)  # what _embed_from_store does once per table
            state = {"lo": 0}
            out: list[np.ndarray] = []

            def one() -> None:  # one batch of hmpcl_lib.retrieval.embedding._embed_from_store + _embed_batches
                lo = state["lo"] if state["lo"] + b <= len(rows) else 0
                state["lo"] = lo + b
                pixels = torch.from_numpy(store.eval[rows[lo:lo + b]])  # fancy index: a copy
                images = eval_batch(pixels.pin_memory() if on_cuda else pixels, mean, std, device)
                with torch.inference_mode(), autocast(bf16_ok):
                    images = images.contiguous(memory_format=torch.channels_last)
                    out.append(F.normalize(model(images).float(), dim=-1).cpu().numpy())
                if len(out) > 4:
                    out.clear()

            times = suite.timed(one, args.warmup, args.iters)
            row.value = b / statistics.median(times)
            row.notes = (f"{_median_note(times, 'batch')}; embed_table's store loop re-written here "
                         "(retrieval/embedding.py imports polars): memmap rows (page cache warm) → pin → eval_batch "
                         "→ forward → float32 rows on the host")

        if store is None:
            suite.skip(f"embed.store.b{b}", "2 embedding", f"pixel store → eval_batch → forward, B={b}",
                       "no pixel store (build failed or skipped)")
        else:
            precision = "bf16 autocast" if bf16_ok else "fp32"
            suite.run(f"embed.store.b{b}", "2 embedding",
                      f"pixel store (synthetic, real format) → eval_batch → forward → host, {precision}, B={b}",
                      from_store, "img/s", ceiling)
    del model
    _free(device)


# ---------------------------------------------------------------- 3. exact search


def unit_vectors(n: int, dim: int, dtype: torch.dtype, device: torch.device, seed: int, chunk: int) -> torch.Tensor:
    """[n, dim] random unit vectors in `dtype`, drawn in float32 chunks (no full-size float32 temporary)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(n, dim, dtype=dtype, device=device)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        out[lo:hi] = F.normalize(torch.randn(hi - lo, dim, device=device, generator=gen), dim=1).to(dtype)
    return out


def exact_topk(gallery: torch.Tensor, queries: torch.Tensor, k: int, query_batch: int, chunk: int,
               topk: bool = True, compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Inner-product top-k of every query over the gallery: per query batch, matmul against gallery chunks,
    top-k per chunk, merged with the running top-k. `topk=False` runs the matmuls alone (a tighter ceiling)."""
    n, q_total = gallery.shape[0], queries.shape[0]
    k = min(k, n)
    dt = compute_dtype or gallery.dtype
    out_v = torch.empty(q_total, k, dtype=torch.float32, device=gallery.device) if topk else None
    out_i = torch.empty(q_total, k, dtype=torch.int64, device=gallery.device) if topk else None
    for qlo in range(0, q_total, query_batch):
        q = queries[qlo:qlo + query_batch].to(dt)
        best_v = best_i = None
        for glo in range(0, n, chunk):
            scores = q @ gallery[glo:glo + chunk].to(dt).T
            if not topk:
                continue
            v, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
            i = i + glo
            if best_v is None:
                best_v, best_i = v, i
            else:
                v, i = torch.cat([best_v, v], dim=1), torch.cat([best_i, i], dim=1)
                best_v, pos = torch.topk(v, min(k, v.shape[1]), dim=1)
                best_i = torch.gather(i, 1, pos)
        if topk:
            out_v[qlo:qlo + query_batch] = best_v.float()
            out_i[qlo:qlo + query_batch] = best_i
    return (out_v, out_i) if topk else None


def search_rows(suite: Suite) -> None:
    args, device = suite.args, suite.device
    dtype = DTYPES[args.search_dtype]
    m = args.matmul_size
    ceiling_key = f"search.matmul.{args.search_dtype}.{m}"

    def matmul(row: Row) -> None:
        a = torch.randn(m, m, device=device).to(dtype)
        b = torch.randn(m, m, device=device).to(dtype)
        reps = 10 if device.type == "cuda" else 1

        def one() -> None:
            for _ in range(reps):
                torch.mm(a, b)

        times = suite.timed(one, args.warmup, args.iters)
        row.value = 2 * m ** 3 * reps / statistics.median(times) / 1e12
        row.tflops = row.value
        row.notes = f"{reps} × {m}×{m}×{m} {args.search_dtype} torch.mm per timed call, {_median_note(times, 'call')}"
        del a, b
        _free(device)

    suite.run(ceiling_key, "3 exact search", f"ceiling: plain {m}³ {args.search_dtype} matmul", matmul, "TFLOP/s")

    for n in args.search_sizes:
        key = f"search.torch.{args.search_dtype}.n{n}"
        label = f"torch mm + topk (chunks of {min(n, args.gallery_chunk):,}), {_count(n)} × {args.dim} " \
                f"{args.search_dtype}, {args.queries:,} queries (batches of {args.query_batch:,}), k={args.k}"

        def measure(row: Row, n: int = n) -> None:
            t0 = time.perf_counter()
            gallery = unit_vectors(n, args.dim, dtype, device, seed=1, chunk=args.gallery_chunk)
            queries = unit_vectors(args.queries, args.dim, dtype, device, seed=2, chunk=args.gallery_chunk)
            _sync(device)
            build_s = time.perf_counter() - t0
            flops = 2.0 * args.queries * n * args.dim

            def search() -> None:
                exact_topk(gallery, queries, args.k, args.query_batch, args.gallery_chunk)

            times = suite.timed(search, 1, args.search_iters)
            sec = statistics.median(times)
            row.value, row.tflops = args.queries / sec, flops / sec / 1e12
            row.compare = row.tflops
            mm_times = suite.timed(lambda: exact_topk(gallery, queries, args.k, args.query_batch, args.gallery_chunk,
                                                      topk=False), 1, args.search_iters)
            mm_tflops = flops / statistics.median(mm_times) / 1e12
            # sanity: the top-k of the first queries against a float32 computation of the same search
            nq = min(args.queries, 128)
            _, got = exact_topk(gallery, queries[:nq], args.k, args.query_batch, args.gallery_chunk)
            _, ref = exact_topk(gallery, queries[:nq], args.k, args.query_batch, args.gallery_chunk,
                                compute_dtype=torch.float32)
            recall = _overlap(got, ref)
            row.notes = (f"{_median_note(times, 'pass')}; {row.tflops:.3g} TFLOP/s; matmul alone (same chunks, "
                         f"no topk): {mm_tflops:.3g} TFLOP/s; top-{args.k} overlap with fp32 on {nq} queries: "
                         f"{recall:.3f}; gallery {gallery.numel() * gallery.element_size() / 2**30:.2f} GiB "
                         f"made in {build_s:.1f} s")
            row.extra = {"mm_only_tflops": mm_tflops, "overlap_fp32": recall, "gallery_gib":
                         gallery.numel() * gallery.element_size() / 2**30}
            del gallery, queries
            _free(device)

        suite.run(key, "3 exact search", label, measure, "QPS", ceiling_key)
        if device.type == "cuda":
            faiss_row(suite, n, ceiling_key)
    if device.type != "cuda":
        suite.skip("search.faiss", "3 exact search", "faiss GpuIndexFlatIP",
                   f"not run on {device.type} (CUDA only; faiss not imported)")


_FAISS: dict[str, Any] = {}


def _faiss_gpu(disabled: bool):
    """(faiss module, None) when faiss with GPUs imports, else (None, why). Called on CUDA runs only."""
    if disabled:
        return None, "disabled by --no-faiss"
    if "result" not in _FAISS:
        try:
            import faiss  # noqa: PLC0415 - optional, CUDA runs only
        except Exception as exc:  # noqa: BLE001 - ImportError or a broken install
            _FAISS["result"] = (None, f"faiss absent ({type(exc).__name__}: {exc}); torch rows are the exact-search "
                                      "ceiling here")
        else:
            gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            if not hasattr(faiss, "GpuIndexFlatIP") or gpus < 1:
                _FAISS["result"] = (None, f"faiss {getattr(faiss, '__version__', '?')} has no GPU support "
                                          f"({gpus} GPUs; faiss-cpu?)")
            else:
                _FAISS["result"] = (faiss, None)
    return _FAISS["result"]


def faiss_row(suite: Suite, n: int, ceiling_key: str) -> None:
    args, device = suite.args, suite.device
    key = f"search.faiss.{args.search_dtype}.n{n}"
    label = f"faiss GpuIndexFlatIP ({'float16' if args.search_dtype != 'fp32' else 'float32'} store), " \
            f"{_count(n)} × {args.dim}, {args.queries:,} queries, k={args.k}"
    faiss, why = _faiss_gpu(args.no_faiss)
    if faiss is None:
        suite.skip(key, "3 exact search", label, why)
        return

    def measure(row: Row) -> None:
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = device.index or 0
        cfg.useFloat16 = args.search_dtype != "fp32"
        index = faiss.GpuIndexFlatIP(res, args.dim, cfg)
        dtype = DTYPES[args.search_dtype]
        t0 = time.perf_counter()
        gallery = unit_vectors(n, args.dim, dtype, device, seed=1, chunk=args.gallery_chunk)  # the torch row's
        for lo in range(0, n, args.gallery_chunk):  # added chunk by chunk: no full float32 copy on the host
            index.add(gallery[lo:lo + args.gallery_chunk].float().cpu().numpy())
        del gallery
        _free(device)
        build_s = time.perf_counter() - t0
        queries = unit_vectors(args.queries, args.dim, dtype, device, seed=2, chunk=args.gallery_chunk)
        qnp = queries.float().cpu().numpy()
        times = suite.timed(lambda: index.search(qnp, args.k), 1, args.search_iters)
        sec = statistics.median(times)
        flops = 2.0 * args.queries * n * args.dim
        row.value, row.tflops = args.queries / sec, flops / sec / 1e12
        row.compare = row.tflops
        row.notes = f"{_median_note(times, 'pass')}; {row.tflops:.3g} TFLOP/s; index built in {build_s:.1f} s"
        del index, res

    suite.run(key, "3 exact search", label, measure, "QPS", ceiling_key)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.cpu().numpy(), b.cpu().numpy()
    hits = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b))
    return hits / max(1, b.size)


def _count(n: int) -> str:
    for div, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{suffix}"
    return f"{n:,}"


# ---------------------------------------------------------------- report


def header(args: argparse.Namespace, argv: list[str], device: torch.device) -> str:
    import timm

    lines = ["# hmpcl GPU suite", "", f"$ python {shlex.join(['benchmarks/gpu_suite.py', *argv])}", ""]
    versions = f"torch {torch.__version__}, timm {timm.__version__}, numpy {np.__version__}"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        versions += (f", CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; device: {p.name} "
                     f"(sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs), "
                     f"bf16: {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        versions += f"; device: CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    lines.append(versions + f"; {os.cpu_count()} CPU cores; python {platform.python_version()}")
    lines.append(f"budget {args.budget_s:g} s; warm-up {args.warmup}, timed {args.iters} iterations (median); "
                 f"image {args.image_size} px; backbone {args.backbone} (random weights), embed_dim {args.embed_dim}, "
                 f"head {args.head}; cudnn.benchmark={torch.backends.cudnn.benchmark}")
    return "\n".join(lines)


def table(rows: list[Row]) -> str:
    by_key = {r.key: r for r in rows}
    out = ["| # | stage | path | result | ceiling (same run) | % of ceiling | notes |",
           "|---|---|---|---:|---:|---:|---|"]
    for n, r in enumerate(rows, 1):
        if r.status != "ok":
            result = r.status
        elif r.unit == "QPS":
            result = f"{_fmt(r.value)} QPS · {_fmt(r.tflops)} TFLOP/s"
        else:
            result = f"{_fmt(r.value)} {r.unit}"
        ceiling, pct = "(ceiling)" if r.status == "ok" else "", ""
        if r.ceiling_key is not None:
            c = by_key.get(r.ceiling_key)
            if c is not None and c.status == "ok" and c.compare:
                unit = "TFLOP/s" if r.unit == "QPS" else c.unit
                ceiling = f"{_fmt(c.compare)} {unit} ({c.key})"
                if r.status == "ok" and r.compare is not None:
                    pct = f"{100 * r.compare / c.compare:.0f} %"
            else:
                ceiling = f"— ({r.ceiling_key} not measured)"
        notes = r.notes.replace("|", "/")
        out.append(f"| {n} | {r.stage} | {r.path} | {result} | {ceiling} | {pct} | {notes} |")
    return "\n".join(out)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--budget-s", type=float, default=540.0, help="skip the rows that would start after this many s")
    p.add_argument("--stages", nargs="+", default=["train", "embed", "search"], choices=["train", "embed", "search"])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--embed-dim", type=int, default=256)
    p.add_argument("--head", default="mlp", choices=["mlp", "linear"])
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="TrainConfig overrides for the training step (e.g. target=item grad_clip=none)")
    p.add_argument("--train-batch", type=int, nargs="+", help="training batch sizes, one row pair each "
                   "(default: 64 256 on CUDA, 16 on CPU; the project's default is 64)")
    p.add_argument("--embed-batch", type=int, nargs="+", help="embedding batch sizes (default: 64 512 on CUDA, "
                   "32 on CPU; embed_table's default is 64)")
    p.add_argument("--warmup", type=int, help="warm-up iterations per row (default 3 CUDA, 1 CPU)")
    p.add_argument("--iters", type=int, help="timed iterations per row (default 20 CUDA, 3 CPU)")
    p.add_argument("--store-images", type=int, help="drawings in the synthetic pixel store (default 8192 / 256)")
    p.add_argument("--search-sizes", type=int, nargs="+", help="gallery sizes (default 1000000 10000000 / 20000)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, help="queries per search pass (default 4096 / 64)")
    p.add_argument("--query-batch", type=int, help="queries per matmul (default 2048 / 64)")
    p.add_argument("--gallery-chunk", type=int, help="gallery rows per matmul (default 1048576 / 8192)")
    p.add_argument("--search-dtype", choices=sorted(DTYPES), help="gallery dtype (default fp16 CUDA, fp32 CPU)")
    p.add_argument("--search-iters", type=int, help="timed search passes (default 3 / 2)")
    p.add_argument("--matmul-size", type=int, help="side of the square ceiling matmul (default 8192 / 512)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True "
                   "(the training loop leaves it off)")
    p.add_argument("--no-faiss", action="store_true", help="never try to import faiss")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    wall = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = resolve_device(args.device)
    slot = 0 if device.type == "cuda" else 1
    for name, defaults in DEVICE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, defaults[slot])
    if args.search_dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        args.search_dtype = "fp16"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    print(header(args, argv, device), flush=True)

    suite = Suite(args, device)
    base = config_from_strings(
        [f"backbone={args.backbone}", "weights=none", f"embed_dim={args.embed_dim}", f"head={args.head}",
         f"image_size={args.image_size}", f"device={device}", *args.set])
    with tempfile.TemporaryDirectory(prefix="hmpcl-gpu-suite-") as tmp:
        store = None
        if {"train", "embed"} & set(args.stages):
            t0 = time.perf_counter()
            try:
                store = build_synthetic_store(Path(tmp), args.store_images, args.image_size)
                _progress(f"[{time.perf_counter() - suite.start:6.1f} s] synthetic pixel store: {len(store)} "
                          f"drawings at {args.image_size} px (train side {store.train_side}) in "
                          f"{time.perf_counter() - t0:.1f} s")
            except Exception:  # noqa: BLE001 - the bare rows still run
                traceback.print_exc(file=sys.stderr)
        if "train" in args.stages:
            train_rows(suite, base, store)
        if "embed" in args.stages:
            embed_rows(suite, base, store)
        del store
    if "search" in args.stages:
        search_rows(suite)

    print()
    print(table(suite.rows))
    print()
    print(f"total wall time: {time.perf_counter() - wall:.1f} s (budget {args.budget_s:g} s; "
          f"{sum(r.status == 'skipped' for r in suite.rows)} skipped, "
          f"{sum(r.status == 'error' for r in suite.rows)} errors)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in suite.rows], indent=1, default=str))
    return suite.rows


if __name__ == "__main__":
    result = main()
    sys.exit(1 if any(r.status == "error" for r in result) else 0)
