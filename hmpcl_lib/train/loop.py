"""Training loop for the encoder: hierarchical (or baseline) contrastive loss, checkpoints, resume, DDP, CLI.

Restart safety: `out_dir/checkpoints/last.pt` is written atomically at every epoch end (and every
`checkpoint_every_steps` steps) with model, optimizer, scheduler, position in the epoch, RNG states and history.
A rerun with `resume=True` continues exactly where it stopped: augmentation is seeded per sample from
(seed, epoch, batch, index), so a resumed run sees the same images, crops and batches as an uninterrupted one.
Under torchrun (WORLD_SIZE > 1) the model is wrapped in DDP, each rank draws its part of every hierarchical
batch, the loss gathers embeddings across ranks, and only rank 0 writes checkpoints, logs and calls on_metrics.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
import typing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import distributed as D
from .data import DrawingDataset, collate
from .errors import HmpclError
from .io import atomic_path
from .models import Encoder, build_encoder, build_transform

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hmpcl-train-v1"
LABEL_COLUMNS = ("class_label", "subclass_label", "patent_label")
# Fields that do not change the maths, so a resumed run may use other values.
RESUME_FREE_FIELDS = frozenset({"num_workers", "log_every", "checkpoint_every_steps", "device"})


class TrainingDivergedError(HmpclError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""

    def __init__(self, step: int, value: float, checkpoint: Path | None):
        self.step, self.value, self.checkpoint = step, value, checkpoint
        kept = f"; last good checkpoint kept at {checkpoint}" if checkpoint and checkpoint.exists() else ""
        super().__init__(
            f"training diverged at step {step}: loss = {value}{kept}. Lower lr, raise temperature or check the data."
        )


@dataclass
class TrainConfig:
    """Everything that defines a training run (all of it is stored in checkpoints and becomes a CLI flag)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "package"  # "package" | "none" | "hub" | path to a timm state dict
    embed_dim: int | None = 256  # None: no projection head
    head: str = "mlp"  # "mlp" | "linear"
    loss: str = "hierarchical"  # "hierarchical" | "baseline"
    target: str = "item"  # hierarchical target form: "item" (paper) | "level" | "cumulative" (see losses.py)
    s_patent: float = 1.0
    s_subclass: float = 0.5
    s_class: float = 0.25
    temperature: float = 0.07
    learn_temperature: bool = False
    batch_size: int = 64  # global batch: each of the DDP ranks draws batch_size / world_size
    drawings_per_patent: int = 2
    patents_per_subclass: int = 2
    subclasses_per_class: int = 2
    epochs: int = 3
    steps_per_epoch: int | None = None  # None: the sampler's natural epoch length
    lr: float = 3e-4  # head (and learnable temperature) learning rate
    backbone_lr_mult: float = 0.1  # pretrained backbone learns slower than the fresh head
    weight_decay: float = 0.05
    warmup_steps: int | None = None  # None: 5 % of all steps (at least 1)
    min_lr_ratio: float = 0.01  # cosine floor, as a fraction of the peak lr
    image_size: int = 128
    grad_clip: float | None = 1.0
    freeze_bn: bool = False  # keep BatchNorm statistics fixed (tiny per-device batches, exact DDP equivalence)
    num_workers: int | None = None  # None: auto from the CPU count
    seed: int = 0
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    log_every: int = 10
    checkpoint_every_steps: int | None = None  # also checkpoint mid-epoch every N steps

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {message}")

        need(self.loss in ("hierarchical", "baseline"), f"loss must be 'hierarchical' or 'baseline', got {self.loss!r}")
        need(self.head in ("mlp", "linear"), f"head must be 'mlp' or 'linear', got {self.head!r}")
        from .losses import TARGETS, validate_scores

        need(self.target in TARGETS, f"target must be one of {TARGETS}, got {self.target!r}")

        try:
            validate_scores(self.s_patent, self.s_subclass, self.s_class)
        except ValueError as e:
            raise ValueError(f"TrainConfig: {e}") from None
        need(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        need(self.embed_dim is None or self.embed_dim > 0, f"embed_dim must be > 0 or None, got {self.embed_dim}")
        for name in ("batch_size", "drawings_per_patent", "patents_per_subclass", "subclasses_per_class",
                     "epochs", "image_size", "log_every"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.drawings_per_patent >= 2, "drawings_per_patent must be >= 2 (a patent needs a positive pair)")
        for name in ("steps_per_epoch", "checkpoint_every_steps"):
            value = getattr(self, name)
            need(value is None or value >= 1, f"{name} must be >= 1 or None, got {value}")
        need(self.warmup_steps is None or self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        need(self.lr > 0 and self.backbone_lr_mult >= 0, "lr must be > 0 and backbone_lr_mult >= 0")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}")
        need(self.num_workers is None or self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
             f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    model: Encoder
    checkpoint_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    config: TrainConfig | None = None


def build_loss(config: TrainConfig) -> nn.Module:
    """The configured contrastive loss (baseline = same loss, only same-patent pairs positive)."""
    from .losses import HierarchicalContrastiveLoss, baseline_loss

    common = dict(temperature=config.temperature, learn_temperature=config.learn_temperature)
    if config.loss == "baseline":
        return baseline_loss(**common)
    return HierarchicalContrastiveLoss(
        s_patent=config.s_patent, s_subclass=config.s_subclass, s_class=config.s_class, target=config.target,
        **common
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
) -> TrainResult:
    """Train an encoder on `table` (image_path + class/subclass/patent labels); see the module doc."""
    from .samplers import HierarchicalBatchSampler

    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoints" / "last.pt"
    started_dist = _init_distributed()
    rank, world = D.rank(), D.world_size()
    try:
        paths, labels = _table_columns(table)
        fingerprint = _data_fingerprint(paths, labels)
        device = _resolve_device(config.device)
        _seed_everything(config.seed + rank)

        torch.manual_seed(config.seed)  # same initial weights on every rank
        encoder = build_encoder(config.backbone, config.embed_dim, config.weights, head=config.head,
                                image_size=config.image_size)
        encoder.to(device)
        encoder.to(memory_format=torch.channels_last)  # faster on CUDA and on CPU (oneDNN) alike
        criterion = build_loss(config).to(device)
        optimizer = _build_optimizer(encoder, criterion, config)

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

        state = {"epoch": 0, "batches_done": 0, "step": 0, "history": [], "epoch_loss_sum": 0.0, "epoch_loss_count": 0}
        if resume and ckpt_path.exists():
            state = _restore(ckpt_path, config, fingerprint, encoder, criterion, optimizer, scheduler, rank)
            log.info("resuming from %s at epoch %d, batch %d (step %d)", ckpt_path, state["epoch"],
                     state["batches_done"], state["step"])

        model: nn.Module = encoder
        if world > 1:
            model = nn.parallel.DistributedDataParallel(
                encoder, device_ids=[device.index] if device.type == "cuda" else None
            )
        epoch_batches = _SeededEpochBatches(batch_sampler, config.seed)
        dataset = DrawingDataset(paths, labels, build_transform(config.image_size, True,
                                                                encoder.config["mean"], encoder.config["std"]))
        loader = _build_loader(dataset, epoch_batches, config, device, world)

        is_main = rank == 0
        save = _Checkpointer(ckpt_path, config, fingerprint, encoder, criterion, optimizer, scheduler) if is_main else None
        progress = _progress(total_steps, state["step"], is_main)
        window_start, window_images = time.perf_counter(), 0

        for epoch in range(state["epoch"], config.epochs):
            epoch_batches.epoch, epoch_batches.start = epoch, state["batches_done"]
            if state["batches_done"] == 0:
                state["epoch_loss_sum"], state["epoch_loss_count"] = 0.0, 0
            _set_train_mode(encoder, config.freeze_bn)
            for images, indices in loader:
                batch_labels = {k: v.to(device, non_blocking=True) for k, v in dataset.labels_of(indices).items()}
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    z = model(images)
                loss = criterion(z.float(), batch_labels["patent_label"], batch_labels["subclass_label"],
                                 batch_labels["class_label"])
                step_loss = _mean_over_ranks(loss.detach())
                if not math.isfinite(step_loss):
                    raise TrainingDivergedError(state["step"] + 1, step_loss, ckpt_path if ckpt_path.exists() else None)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                _sync_loss_grads(criterion)
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(list(encoder.parameters()) + list(criterion.parameters()), config.grad_clip)
                optimizer.step()
                lr_now = optimizer.param_groups[-1]["lr"]
                scheduler.step()

                state["step"] += 1
                state["batches_done"] += 1
                state["epoch_loss_sum"] += step_loss
                state["epoch_loss_count"] += 1
                window_images += images.shape[0] * world
                progress.update(1)
                end_of_epoch = state["batches_done"] == steps_per_epoch
                report = state["step"] % config.log_every == 0 or end_of_epoch
                if report:
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    metrics = {
                        "loss": step_loss,
                        "lr": lr_now,
                        "temperature": loss_temperature(criterion),
                        "skipped_anchors": float(getattr(criterion, "last_num_skipped", 0)),
                        "images_per_s": window_images / elapsed,
                    }
                    window_start, window_images = time.perf_counter(), 0
                    state["history"].append({"step": state["step"], "epoch": epoch, **metrics})
                if not end_of_epoch and config.checkpoint_every_steps and state["step"] % config.checkpoint_every_steps == 0:
                    _save_everywhere(save, state, epoch, state["batches_done"])
                if report:
                    if is_main:
                        progress.set_postfix(loss=f"{step_loss:.4f}", img_s=f"{metrics['images_per_s']:.1f}")
                        log.info("step %d epoch %d loss %.4f lr %.2e %.1f img/s", state["step"], epoch, step_loss,
                                 lr_now, metrics["images_per_s"])
                        if on_metrics:
                            on_metrics(state["step"], metrics)
            epoch_loss = state["epoch_loss_sum"] / max(state["epoch_loss_count"], 1)
            state["history"].append({"step": state["step"], "epoch": epoch, "epoch_loss": epoch_loss})
            if is_main:
                log.info("epoch %d done: mean loss %.4f", epoch, epoch_loss)
            state["batches_done"] = 0
            _save_everywhere(save, state, epoch + 1, 0)  # durable first, then report
            if is_main and on_metrics:
                on_metrics(state["step"], {"epoch_loss": epoch_loss, "epoch": float(epoch)})
        progress.close()

        encoder.eval()
        if is_main:
            _export_encoder(out_dir / "encoder.pt", encoder, config)
        return TrainResult(model=encoder, checkpoint_path=ckpt_path, history=state["history"], config=config)
    finally:
        if started_dist and D.is_dist():
            torch.distributed.destroy_process_group()


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


def _build_loader(dataset, batches, config: TrainConfig, device: torch.device, world: int):
    workers = config.num_workers
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 2) // (2 * world)))
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
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
        decay = param.ndim > 1 and not name.startswith("loss.")
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


def _set_train_mode(encoder: Encoder, freeze_bn: bool) -> None:
    encoder.train()
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


def _table_columns(table: Any) -> tuple[list[str], dict[str, np.ndarray]]:
    """image paths + int64 label arrays from a pyarrow Table or polars DataFrame, with clear errors."""
    import polars as pl
    import pyarrow as pa

    if isinstance(table, pa.Table):
        table = pl.from_arrow(table)
    if not isinstance(table, pl.DataFrame):
        raise TypeError(f"table must be a pyarrow Table or polars DataFrame, got {type(table).__name__}")
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


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def _init_distributed() -> bool:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA). True if we started it."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or D.is_dist():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    torch.distributed.init_process_group(backend=backend)
    return True


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- checkpoints


class _Checkpointer:
    def __init__(self, path, config, fingerprint, encoder, criterion, optimizer, scheduler):
        self.path, self.config, self.fingerprint = path, config, fingerprint
        self.encoder, self.criterion, self.optimizer, self.scheduler = encoder, criterion, optimizer, scheduler

    def __call__(self, state: dict[str, Any], epoch: int, batches_done: int, rng_states: list[dict]) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "data_fingerprint": self.fingerprint,
            "encoder_config": self.encoder.config,
            "model": self.encoder.state_dict(),
            "loss": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "batches_done": batches_done,
            "step": state["step"],
            "history": list(state["history"]),
            "epoch_loss_sum": state["epoch_loss_sum"],
            "epoch_loss_count": state["epoch_loss_count"],
            "rng": rng_states,
        }
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        log.info("checkpoint: %s (epoch %d, batch %d, step %d)", self.path, epoch, batches_done, state["step"])


def _save_everywhere(save: _Checkpointer | None, state: dict[str, Any], epoch: int, batches_done: int) -> None:
    """Collect every rank's RNG state (each rank has its own dropout stream), rank 0 writes the file."""
    rng = _rng_state()
    if D.world_size() > 1:
        states: list[Any] = [None] * D.world_size()
        torch.distributed.all_gather_object(states, rng)
    else:
        states = [rng]
    if save is not None:
        save(state, epoch, batches_done, states)
    if D.world_size() > 1:
        torch.distributed.barrier()


def _restore(path: Path, config: TrainConfig, fingerprint: str, encoder, criterion, optimizer, scheduler,
             rank: int) -> dict[str, Any]:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise HmpclError(f"{path} is not an hmpcl training checkpoint; move it away or pass resume=False")
    saved, wanted = ckpt["config"], config.to_dict()
    diff = {k: (saved.get(k), v) for k, v in wanted.items() if k not in RESUME_FREE_FIELDS and saved.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise HmpclError(f"cannot resume from {path}: config differs ({detail}); use another out_dir or resume=False")
    if ckpt["data_fingerprint"] != fingerprint:
        raise HmpclError(f"cannot resume from {path}: the training table changed since the checkpoint was written")
    encoder.load_state_dict(ckpt["model"])
    criterion.load_state_dict(ckpt["loss"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    rng = ckpt["rng"]
    if len(rng) != D.world_size():
        log.warning("checkpoint holds RNG states of %d ranks, running with %d: RNG streams restart", len(rng),
                    D.world_size())
    _set_rng_state(rng[rank % len(rng)])
    return {k: ckpt[k] for k in ("epoch", "batches_done", "step", "history", "epoch_loss_sum", "epoch_loss_count")}


def _export_encoder(path: Path, encoder: Encoder, config: TrainConfig) -> None:
    """The trained encoder alone (what embedding/search load with models.load_encoder)."""
    with atomic_path(path) as tmp:
        torch.save({"encoder_config": encoder.config, "model": encoder.state_dict(), "train_config": config.to_dict()}, tmp)


# ---------------------------------------------------------------- CLI


def _flag_type(hint: Any) -> Callable[[str], Any]:
    """argparse converter for a dataclass field type (optional types accept 'none'/'auto')."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if args else hint

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "auto", "null"):
            return None
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        return base(text)

    convert.__name__ = getattr(base, "__name__", "value")
    return convert


def config_from_strings(assignments: list[str], base: TrainConfig | None = None) -> TrainConfig:
    """`["epochs=4", "learn_temperature=true"]` applied to `base` (default TrainConfig()), typed like the CLI flags."""
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in hints:
            raise ValueError(f"expected FIELD=VALUE with a TrainConfig field, got {item!r}")
        try:
            values[key] = _flag_type(hints[key])(text.strip())
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"bad value for {key}: {text!r} ({e})") from None
    return dataclasses.replace(base or TrainConfig(), **values)


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hmpcl_lib.training",
        description="Train the hmpcl image encoder (resumes from OUT/checkpoints/last.pt when present).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--table", required=True, help="Parquet with image_path, class_label, subclass_label, patent_label")
    parser.add_argument("--splits", help="splits Parquet (drawing_id, split): train only on --split rows")
    parser.add_argument("--split", default="train", help="which split to train on when --splits is given")
    parser.add_argument("--out", required=True, help="output folder (checkpoints/, encoder.pt)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument("--log-level", default="INFO")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=_flag_type(hints[f.name]),
                            default=f.default, help=f"{f.name} ({hints[f.name]})".replace("typing.", ""))
    return parser


def _load_training_table(table_path: str, splits_path: str | None, split: str):
    import polars as pl

    from .errors import InputError

    try:
        table = pl.read_parquet(table_path)
    except Exception as e:  # noqa: BLE001 - any read failure is bad input here
        raise InputError(f"cannot read training table ({e})", source=table_path) from e
    if splits_path:
        splits = pl.read_parquet(splits_path)
        for name, frame, cols in (("table", table, ["drawing_id"]), ("splits", splits, ["drawing_id", "split"])):
            missing = [c for c in cols if c not in frame.columns]
            if missing:
                raise InputError(f"missing columns {missing}", source=table_path if name == "table" else splits_path)
        keep = splits.filter(pl.col("split") == split).select("drawing_id")
        table = table.join(keep, on="drawing_id", how="semi", maintain_order="left")
        if table.height == 0:
            raise InputError(f"no drawing of the table is in split {split!r}", source=splits_path)
    return table


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    table = _load_training_table(args.table, args.splits, args.split)
    result = train(config, table, args.out, resume=not args.no_resume)
    if D.rank() == 0:
        last = next((h for h in reversed(result.history) if "epoch_loss" in h), {})
        print(json.dumps({"checkpoint": str(result.checkpoint_path), "steps": result.history[-1]["step"] if result.history else 0,
                          "final_epoch_loss": last.get("epoch_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
