"""Training checkpoints: `checkpoints/last.pt` written atomically (model, loss, optimizer, scheduler, position in
the epoch, every rank's RNG state, history), restored on resume only if config and data match; `encoder.pt` export."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hmpcl_lib.errors import HmpclError
from hmpcl_lib.io import atomic_path
from hmpcl_lib.modeling import distributed as D
from hmpcl_lib.modeling.models import Encoder
from hmpcl_lib.train.config import TrainConfig, saved_config_values

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hmpcl-train-v1"
# Fields that do not change the maths, so a resumed run may use other values. Validation never changes what a run
# learns (tested bit for bit); under export_weights "best-val" a resume with another val_drawings compares the epochs
# before and after it on two validation sets.
RESUME_FREE_FIELDS = frozenset({"num_workers", "log_every", "checkpoint_every_steps", "device", "val_drawings"})


def _resume_key(name: str, value: Any) -> Any:
    """What must match to resume: for `pixel_store`, only whether one is used (a rebuilt store moves, the pixels
    do not change), everything else by value."""
    return bool(value) if name == "pixel_store" else value


def _rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values, so a checkpoint loads with `weights_only=True`."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """Where a run is: the epoch and batch it resumes at, the global step, the metric history and the running
    epoch-loss sum. Checkpoints store exactly these fields next to the model and optimizer states."""

    epoch: int = 0
    batches_done: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0
    epoch_loss_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "history": list(self.history)}


class _Checkpointer:
    def __init__(self, path, config, fingerprint, encoder, criterion, optimizer, scheduler, ema=None):
        self.path, self.config, self.fingerprint = path, config, fingerprint
        self.encoder, self.criterion, self.optimizer, self.scheduler = encoder, criterion, optimizer, scheduler
        self.ema = ema

    def __call__(self, state: TrainState, epoch: int, batches_done: int, rng_states: list[dict]) -> None:
        payload = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "data_fingerprint": self.fingerprint,
            "encoder_config": self.encoder.config,
            "model": self.encoder.state_dict(),
            "loss": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **state.to_dict(),
            "epoch": epoch,
            "batches_done": batches_done,
            "rng": rng_states,
            **({"ema": self.ema.module.state_dict()} if self.ema is not None else {}),
        }
        with atomic_path(self.path) as tmp:
            torch.save(payload, tmp)
        log.info("checkpoint: %s (epoch %d, batch %d, step %d)", self.path, epoch, batches_done, state.step)


def _save_everywhere(save: _Checkpointer | None, state: TrainState, epoch: int, batches_done: int) -> None:
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
             rank: int, ema=None) -> TrainState:
    try:  # tensors and plain values only: nothing the project writes is unpickled
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HmpclError(f"{path} cannot be loaded without unpickling Python objects (a checkpoint of an older hmpcl, "
                         f"or not a checkpoint: {str(exc).splitlines()[0]}); move it away or pass resume=False") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise HmpclError(f"{path} is not an hmpcl training checkpoint; move it away or pass resume=False")
    saved, wanted = ckpt["config"], config.to_dict()
    saved = saved_config_values(saved)  # a field added since: the value it had before it existed
    diff = {k: (saved.get(k), v) for k, v in wanted.items()
            if k not in RESUME_FREE_FIELDS and _resume_key(k, saved.get(k)) != _resume_key(k, v)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise HmpclError(f"cannot resume from {path}: config differs ({detail}); use another out_dir or resume=False")
    if ckpt["data_fingerprint"] != fingerprint:
        raise HmpclError(f"cannot resume from {path}: the training table changed since the checkpoint was written")
    encoder.load_state_dict(ckpt["model"])
    criterion.load_state_dict(ckpt["loss"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if ema is not None:  # ema_decay is part of the config checked above, so a run with an average saved one
        ema.module.load_state_dict(ckpt["ema"])
    rng = ckpt["rng"]
    if len(rng) != D.world_size():
        log.warning("checkpoint holds RNG states of %d ranks, running with %d: RNG streams restart", len(rng),
                    D.world_size())
    _set_rng_state(rng[rank % len(rng)])
    return TrainState(**{f.name: ckpt[f.name] for f in dataclasses.fields(TrainState)})


def _export_encoder(path: Path, encoder: Encoder, config: TrainConfig) -> None:
    """The trained encoder alone (what embedding/search load with models.load_encoder)."""
    with atomic_path(path) as tmp:
        torch.save({"encoder_config": encoder.config, "model": encoder.state_dict(), "train_config": config.to_dict()}, tmp)
