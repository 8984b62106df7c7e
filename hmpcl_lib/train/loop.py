"""Training loop for the encoder: hierarchical (or baseline) contrastive loss, resume, DDP (`train` and its pieces).

Restart safety: `out_dir/checkpoints/last.pt` is written atomically at every epoch end (and every
`checkpoint_every_steps` steps) with model, optimizer, scheduler, position in the epoch, RNG states and history.
A rerun with `resume=True` continues exactly where it stopped: augmentation is seeded per sample from
(seed, epoch, batch, index), so a resumed run sees the same images, crops and batches as an uninterrupted one.
Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP, each rank draws its part of every hierarchical
batch, the loss gathers embeddings across ranks, and only rank 0 writes checkpoints, logs and calls on_metrics.
With `ema_decay` > 0 the run exports an exponential moving average of the weights (timm's `ModelEmaV3`, kept
in the checkpoint). Given a `validation` table, every epoch ends with retrieval metrics on it (`val_*` in the history
and to `on_metrics`, so MLflow draws them as curves), and `export_weights="best-val"` exports the best epoch's
weights (`hmpcl_lib.train.validation`). The config is `hmpcl_lib.train.config`, the checkpoint files
`hmpcl_lib.train.checkpoint`, the CLI `hmpcl_lib.train.cli`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn

from hmpcl_lib.errors import HmpclError
from hmpcl_lib.modeling import distributed as D
from hmpcl_lib.modeling.dataset import DrawingDataset, collate
from hmpcl_lib.modeling.models import Encoder, build_encoder, build_transform, freeze_stages, wise
from hmpcl_lib.modeling.pixels import PixelTrainDataset
from hmpcl_lib.train.checkpoint import TrainState, _Checkpointer, _export_encoder, _restore, _save_everywhere
from hmpcl_lib.train import validation as V
from hmpcl_lib.train.config import TrainConfig

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("class_label", "subclass_label", "patent_label")


class TrainingDivergedError(HmpclError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""

    def __init__(self, step: int, value: float, checkpoint: Path | None):
        self.step, self.value, self.checkpoint = step, value, checkpoint
        kept = f"; last good checkpoint kept at {checkpoint}" if checkpoint and checkpoint.exists() else ""
        super().__init__(
            f"training diverged at step {step}: loss = {value}{kept}. Lower lr, raise temperature or check the data."
        )


@dataclass
class TrainResult:
    model: Encoder
    checkpoint_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: TrainConfig | None = None
    exported_epoch: int | None = None  # the epoch whose weights `model` holds (0-based)


def build_loss(config: TrainConfig) -> nn.Module:
    """The configured contrastive loss (baseline = same loss, only same-patent pairs positive)."""
    from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss, baseline_loss

    common = dict(temperature=config.temperature, learn_temperature=config.learn_temperature)
    if config.loss == "baseline":
        return baseline_loss(**common)
    return HierarchicalContrastiveLoss(
        s_patent=config.s_patent, s_subclass=config.s_subclass, s_class=config.s_class, target=config.target,
        coarse_temperature=config.coarse_temperature, **common
    )


def loss_temperature(criterion: nn.Module) -> float:
    """Current temperature of the loss module, whichever way it stores it (fixed float or learnable)."""
    for name in ("temperature", "tau"):
        value = getattr(criterion, name, None)
        if value is not None and not callable(value):
            return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
    log_t = getattr(criterion, "log_temperature", None)
    return float(log_t.detach().exp()) if isinstance(log_t, torch.Tensor) else float("nan")


def train(
    config: TrainConfig,
    table: Any,
    out_dir: str | os.PathLike,
    on_metrics: Callable[[int, dict[str, float]], None] | None = None,
    resume: bool = True,
    validation: Any = None,
) -> TrainResult:
    """Train an encoder on `table` (image_path + class/subclass/patent labels); `validation` (the same columns: the
    validation split) is scored every epoch on rank 0; see the module doc."""
    out_dir = Path(out_dir)
    started_dist = _init_distributed()
    try:
        run = _setup(config, table, out_dir / "checkpoints" / "last.pt", resume, validation)
        for epoch in range(run.state.epoch, config.epochs):
            _run_epoch(run, epoch, on_metrics)
        run.progress.close()
        final = _exported(run)
        final.eval()
        exported_epoch = config.epochs - 1
        if config.export_weights == "best-val" and run.is_main:
            best = V.best_epoch(run.state.history)
            if best is None:
                log.warning("export_weights 'best-val' without validation metrics: exporting the last epoch")
            elif best != exported_epoch:
                V.load_best(final, run.ckpt_path.parent)
                exported_epoch = best
            log.info("exporting the weights of epoch %d of %d", exported_epoch, config.epochs)
        if config.wise_alpha != 1.0:
            wise(final, initial_encoder(config), config.wise_alpha)
        if run.is_main:
            _export_encoder(out_dir / "encoder.pt", final, config)
        return TrainResult(model=final, checkpoint_path=run.ckpt_path, history=run.state.history, config=config,
                           exported_epoch=exported_epoch)
    finally:
        if started_dist and D.is_dist():
            torch.distributed.destroy_process_group()


@dataclass
class _Run:
    """Everything one training run holds between steps (built by `_setup`)."""
    config: TrainConfig
    device: torch.device
    world: int
    is_main: bool
    encoder: Encoder
    model: nn.Module  # the encoder, wrapped in DDP across ranks
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    dataset: Any
    loader: Any
    epoch_batches: "_SeededEpochBatches"
    steps_per_epoch: int
    ckpt_path: Path
    save: Any  # the rank-0 checkpointer (None elsewhere)
    progress: Any
    state: TrainState
    frozen: list = field(default_factory=list)  # modules of the backbone that do not train (eval mode too)
    anchor: list = field(default_factory=list)  # L2-SP: (trainable backbone parameter, its initial value)
    ema: Any = None  # timm ModelEmaV3 of the encoder when config.ema_decay > 0 (what the run exports)
    val_rows: Any = None  # the validation drawings scored each epoch (validation.validation_rows), rank 0 only
    window: list = field(default_factory=lambda: [time.perf_counter(), 0])  # start, images since (images/s)


def _setup(config: TrainConfig, table: Any, ckpt_path: Path, resume: bool, validation: Any = None) -> _Run:
    """Seed, build model, loss, optimizer, sampler and schedule (in this order: it fixes the random streams), restore
    the checkpoint when resuming, and build the data loader."""
    from hmpcl_lib.modeling.samplers import HierarchicalBatchSampler

    rank, world = D.rank(), D.world_size()
    paths, labels = _table_columns(table)
    fingerprint = _data_fingerprint(paths, labels)
    device = D.resolve_device(config.device)
    _seed_everything(config.seed + rank)

    torch.manual_seed(config.seed)  # same initial weights on every rank
    encoder = _start_encoder(config)
    encoder.to(device)
    encoder.to(memory_format=torch.channels_last)  # faster on CUDA and on CPU (oneDNN) alike
    frozen = freeze_stages(encoder.backbone, config.frozen_stages)
    anchor = [(p, p.detach().clone()) for p in encoder.backbone.parameters() if p.requires_grad] if config.l2sp else []
    criterion = build_loss(config).to(device)
    optimizer = _build_optimizer(encoder, criterion, config)
    ema = ModelEmaV3(encoder, decay=config.ema_decay, use_warmup=True) if config.ema_decay else None

    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (global) must be divisible by the {world} ranks")
    batch_sampler = HierarchicalBatchSampler(  # per-rank batches; ranks draw distinct batches of one epoch
        labels["class_label"], labels["subclass_label"], labels["patent_label"], config.batch_size // world,
        drawings_per_patent=config.drawings_per_patent, patents_per_subclass=config.patents_per_subclass,
        subclasses_per_class=config.subclasses_per_class, num_batches=config.steps_per_epoch,
        seed=config.seed, rank=rank, world_size=world,
    )
    steps_per_epoch = len(batch_sampler)
    if steps_per_epoch < 1:
        raise ValueError(f"the sampler yields no batch for {len(paths)} drawings at batch_size {config.batch_size}")
    total_steps = config.epochs * steps_per_epoch
    scheduler = _build_scheduler(optimizer, config, total_steps)

    state = TrainState()
    if resume and ckpt_path.exists():
        state = _restore(ckpt_path, config, fingerprint, encoder, criterion, optimizer, scheduler, rank, ema)
        log.info("resuming from %s at epoch %d, batch %d (step %d)", ckpt_path, state.epoch,
                 state.batches_done, state.step)

    model: nn.Module = encoder
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            encoder, device_ids=[device.index] if device.type == "cuda" else None
        )
    epoch_batches = _SeededEpochBatches(batch_sampler, config.seed)
    if config.pixel_store:  # decoded once (hmpcl_lib.modeling.pixels): crop + affine batched on the device
        dataset = PixelTrainDataset(config.pixel_store, paths, labels, config.image_size,
                                    encoder.config["mean"], encoder.config["std"])
    else:
        dataset = DrawingDataset(paths, labels, build_transform(config.image_size, True,
                                                                encoder.config["mean"], encoder.config["std"]))
    loader = _build_loader(dataset, epoch_batches, config, device, world)

    is_main = rank == 0
    val_rows = None
    if validation is not None and config.val_drawings and is_main:
        val_rows = V.validation_rows(_as_polars(validation), config.val_drawings)
        if val_rows.height < 2:
            log.warning("validation: no patent with two drawings in the validation table; no validation metrics")
            val_rows = None
        else:
            log.info("validation: %d drawings of %d patents every epoch", val_rows.height,
                     val_rows["patent_id"].n_unique())
    save = _Checkpointer(ckpt_path, config, fingerprint, encoder, criterion, optimizer, scheduler, ema) if is_main else None
    return _Run(config, device, world, is_main, encoder, model, criterion, optimizer, scheduler, dataset, loader,
                epoch_batches, steps_per_epoch, ckpt_path, save, _progress(total_steps, state.step, is_main), state,
                frozen, anchor, ema, val_rows)


def _start_encoder(config: TrainConfig) -> Encoder:
    """The configured encoder before training, from the global random state (its head's initialisation)."""
    return build_encoder(config.backbone, config.embed_dim, config.weights, head=config.head,
                         image_size=config.image_size)


def initial_encoder(config: TrainConfig) -> Encoder:
    """The encoder a run of `config` starts from (what L2-SP pulls towards and WiSE-FT averages with), built as
    `_setup` builds it, without touching the global random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return _start_encoder(config)


def _run_epoch(run: _Run, epoch: int, on_metrics: Callable[[int, dict[str, float]], None] | None) -> None:
    """The epoch's remaining batches (from `state.batches_done` when resumed), then its checkpoint and report."""
    state, config = run.state, run.config
    run.epoch_batches.epoch, run.epoch_batches.start = epoch, state.batches_done
    if state.batches_done == 0:
        state.epoch_loss_sum, state.epoch_loss_count = 0.0, 0
    _set_train_mode(run.encoder, config.freeze_bn, run.frozen)
    for batch in run.loader:
        step_loss, lr_now, images = _train_step(run, batch)
        state.step += 1
        state.batches_done += 1
        state.epoch_loss_sum += step_loss
        state.epoch_loss_count += 1
        run.window[1] += images * run.world
        run.progress.update(1)
        end_of_epoch = state.batches_done == run.steps_per_epoch
        report = state.step % config.log_every == 0 or end_of_epoch
        metrics = _step_metrics(run, epoch, step_loss, lr_now) if report else None
        if not end_of_epoch and config.checkpoint_every_steps and state.step % config.checkpoint_every_steps == 0:
            _save_everywhere(run.save, state, epoch, state.batches_done)
        if metrics is not None and run.is_main:
            run.progress.set_postfix(loss=f"{step_loss:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
            log.info("step %d epoch %d loss %.4f lr %.2e %.1f img/s", state.step, epoch, step_loss, lr_now,
                     metrics["images_per_s"])
            if on_metrics:
                on_metrics(state.step, metrics)
    epoch_loss = state.epoch_loss_sum / max(state.epoch_loss_count, 1)
    val = _validate(run) if run.val_rows is not None else {}
    state.history.append({"step": state.step, "epoch": epoch, "epoch_loss": epoch_loss, **val})
    if run.is_main:
        log.info("epoch %d done: mean loss %.4f%s", epoch, epoch_loss,
                 "".join(f", {k} {v:.4f}" for k, v in val.items()))
    if val and config.export_weights == "best-val" and V.best_epoch(state.history) == epoch:
        V.save_best(_exported(run), run.ckpt_path.parent)  # before the checkpoint that names it the best
    state.batches_done = 0
    _save_everywhere(run.save, state, epoch + 1, 0)  # durable first, then report
    if run.is_main and on_metrics:
        on_metrics(state.step, {"epoch_loss": epoch_loss, "epoch": float(epoch), **val})


def _exported(run: _Run) -> nn.Module:
    """What the run exports (and validates): the moving average of the weights with `ema_decay`, else the encoder."""
    return run.ema.module if run.ema is not None else run.encoder


def _validate(run: _Run) -> dict[str, float]:
    """The epoch's validation metrics ({"val_<metric>": value}), leaving every random stream as it was: a run with
    validation trains exactly as one without."""
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            metrics = V.validate(_exported(run), run.val_rows, run.config.image_size, run.config.pixel_store,
                                 run.device)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
    return {f"val_{k}": v for k, v in metrics.items()}


def _train_step(run: _Run, batch) -> tuple[float, float, int]:
    """One optimisation step: (loss averaged over ranks, the learning rate it used, images on this rank)."""
    device, criterion, optimizer = run.device, run.criterion, run.optimizer
    dataset = run.dataset
    batch_labels = {k: v.to(device, non_blocking=True) for k, v in dataset.labels_of(batch[-1]).items()}
    if isinstance(dataset, PixelTrainDataset):
        images = dataset.model_input(batch[0], batch[1], device)
    else:
        images = batch[0].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        z = run.model(images)
    loss = criterion(z.float(), batch_labels["patent_label"], batch_labels["subclass_label"],
                     batch_labels["class_label"])
    if run.anchor:
        loss = loss + _l2sp_penalty(run.anchor, run.config.l2sp)
    step_loss = _mean_over_ranks(loss.detach())
    if not math.isfinite(step_loss):
        raise TrainingDivergedError(run.state.step + 1, step_loss, run.ckpt_path if run.ckpt_path.exists() else None)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    _sync_loss_grads(criterion)
    if run.config.grad_clip is not None:
        nn.utils.clip_grad_norm_(list(run.encoder.parameters()) + list(criterion.parameters()), run.config.grad_clip)
    optimizer.step()
    if run.ema is not None:  # same weights on every rank after the step, so every rank's average agrees
        run.ema.update(run.encoder, step=run.state.step + 1)
    lr_now = optimizer.param_groups[-1]["lr"]
    run.scheduler.step()
    return step_loss, lr_now, images.shape[0]


def _step_metrics(run: _Run, epoch: int, step_loss: float, lr_now: float) -> dict[str, float]:
    """The reported metrics of this step (images/s over the steps since the last report), kept in the history."""
    elapsed = max(time.perf_counter() - run.window[0], 1e-9)
    metrics = {
        "loss": step_loss,
        "lr": lr_now,
        "temperature": loss_temperature(run.criterion),
        "skipped_anchors": float(getattr(run.criterion, "last_num_skipped", 0)),
        "images_per_s": run.window[1] / elapsed,
    }
    run.window[:] = [time.perf_counter(), 0]
    run.state.history.append({"step": run.state.step, "epoch": epoch, **metrics})
    return metrics


# ---------------------------------------------------------------- pieces of the loop


class _SeededEpochBatches:
    """The sampler's batches for `epoch` from batch `start` on, each index paired with its augmentation seed.

    The seed is a function of (seed, epoch, batch number, index, repeat within the batch), so the same run
    resumed mid-epoch, or run with another number of workers, feeds the model exactly the same tensors.
    """

    def __init__(self, sampler, seed: int):
        self.sampler, self.seed, self.epoch, self.start = sampler, seed, 0, 0

    def __len__(self) -> int:
        return max(len(self.sampler) - self.start, 0)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        for b, batch in enumerate(self.sampler):
            if b < self.start:
                continue
            seen: Counter[int] = Counter()
            keyed = []
            for i in batch:
                i = int(i)
                keyed.append((i, _sample_seed(self.seed, self.epoch, b, i, seen[i])))
                seen[i] += 1
            yield keyed


def _sample_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def default_train_workers(pixel_store: bool, world: int = 1) -> int:
    """DataLoader workers when the config says None. A pixel store's batch is a few memmap row copies (the
    augmentation runs batched in the step), so worker processes only take cores from the step: 0. PNGs: decode
    beside the step, half the cores per rank (1 on a 2-core machine)."""
    if pixel_store:
        return 0
    return min(8, max(1, (os.cpu_count() or 2) // (2 * world)))


def _build_loader(dataset, batches, config: TrainConfig, device: torch.device, world: int):
    workers = config.num_workers
    if workers is None:
        workers = default_train_workers(isinstance(dataset, PixelTrainDataset), world)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=dataset.collate if isinstance(dataset, PixelTrainDataset) else collate,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        # own generator: creating an iterator must not consume the global RNG (resume would shift it)
        generator=torch.Generator().manual_seed(config.seed),
    )


def _build_optimizer(encoder: Encoder, criterion: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with a slower backbone, a full-rate head/temperature, and no decay on biases, norms, temperature."""
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    named = [(f"backbone.{n}", p) for n, p in encoder.backbone.named_parameters()]
    named += [(f"head.{n}", p) for n, p in encoder.head.named_parameters()]
    named += [(f"loss.{n}", p) for n, p in criterion.named_parameters()]
    for name, param in named:
        if not param.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") else "head"
        decay = param.ndim > 1 and not name.startswith("loss.") and not (part == "backbone" and config.l2sp)
        groups.setdefault((part, decay), []).append(param)
    param_groups = [
        {"params": params, "lr": config.lr * (config.backbone_lr_mult if part == "backbone" else 1.0),
         "weight_decay": config.weight_decay if decay else 0.0, "name": f"{part}{'' if decay else '_no_decay'}"}
        for (part, decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)


def _build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Linear warm-up, then cosine decay to `min_lr_ratio` of each group's peak lr."""
    warmup = config.warmup_steps if config.warmup_steps is not None else max(1, round(0.05 * total_steps))
    warmup = min(warmup, total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _l2sp_penalty(anchor: list, alpha: float) -> torch.Tensor:
    """L2-SP (Li et al., "Explicit inductive bias for transfer learning with convolutional networks", ICML 2018):
    alpha/2 * sum |w - w0|^2 over the backbone's trainable weights, a pull towards the pretrained starting point
    instead of towards zero (so the backbone has no weight decay then, `_build_optimizer`)."""
    return alpha / 2 * sum((p - p0).pow(2).sum() for p, p0 in anchor)


def _set_train_mode(encoder: Encoder, freeze_bn: bool, frozen: list | None = None) -> None:
    encoder.train()
    for module in frozen or ():
        module.eval()
    if freeze_bn:
        for module in encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _mean_over_ranks(value: torch.Tensor) -> float:
    """The step's loss as every rank sees it (mean of per-rank losses), so NaN stops all ranks together."""
    if D.world_size() > 1:
        value = value.clone()
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.SUM)
        value /= D.world_size()
    return float(value)


def _sync_loss_grads(criterion: nn.Module) -> None:
    """DDP syncs the encoder's gradients only; average the (learnable temperature) loss gradients too."""
    if D.world_size() == 1:
        return
    for param in criterion.parameters():
        if param.grad is not None:
            torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)
            param.grad /= D.world_size()


def _progress(total: int, done: int, is_main: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True,
                disable=not is_main or not sys.stderr.isatty())


# ---------------------------------------------------------------- data, devices, determinism


def _as_polars(table: Any):
    import polars as pl
    import pyarrow as pa

    if isinstance(table, pa.Table):
        table = pl.from_arrow(table)
    if not isinstance(table, pl.DataFrame):
        raise TypeError(f"table must be a pyarrow Table or polars DataFrame, got {type(table).__name__}")
    return table


def _table_columns(table: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    """image paths + int64 label arrays from a pyarrow Table or polars DataFrame, with clear errors."""
    import polars as pl

    table = _as_polars(table)
    missing = [c for c in ("image_path", *LABEL_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(f"training table lacks columns {missing} (has {table.columns})")
    if table.height == 0:
        raise ValueError("training table is empty")
    for column in ("image_path", *LABEL_COLUMNS):
        nulls = table[column].null_count()
        if nulls:
            first = table.with_row_index("row").filter(pl.col(column).is_null())["row"][0]
            raise ValueError(f"training table: column {column} has {nulls} nulls (first at row #{first})")
    labels = {c: table[c].cast(pl.Int64).to_numpy() for c in LABEL_COLUMNS}
    return table["image_path"].to_list(), labels


def _data_fingerprint(paths: list[str], labels: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256("\n".join(paths).encode())
    for name in LABEL_COLUMNS:
        h.update(np.ascontiguousarray(labels[name], dtype=np.int64).tobytes())
    return h.hexdigest()


def _init_distributed() -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA). True if we started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or D.is_dist():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(D.local_rank())
    torch.distributed.init_process_group(backend=backend)
    return True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
