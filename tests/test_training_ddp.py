"""DDP training on CPU (gloo, 2 processes via torchrun): the loss is the single-process loss of the global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_training import make_drawing_table, tiny_config  # noqa: E402

from hmpcl_lib.train import loop as training  # noqa: E402
from hmpcl_lib.modeling.dataset import DrawingDataset, collate  # noqa: E402
from hmpcl_lib.modeling.models import build_encoder, build_transform  # noqa: E402
from hmpcl_lib.modeling.samplers import HierarchicalBatchSampler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def single_process_first_step_loss(config: training.TrainConfig, table, world: int) -> float:
    """The first-step loss of one process on the global batch the `world` ranks draw together."""
    labels = {c: table[c].to_numpy().astype(np.int64) for c in training.LABEL_COLUMNS}
    keyed = []
    for rank in range(world):  # each rank's first batch, with the augmentation seeds the loop gives them
        sampler = HierarchicalBatchSampler(
            labels["class_label"], labels["subclass_label"], labels["patent_label"], config.batch_size // world,
            num_batches=config.steps_per_epoch, seed=config.seed, rank=rank, world_size=world)
        sampler.set_epoch(0)
        seen: Counter[int] = Counter()
        for i in next(iter(sampler)):
            keyed.append((i, training._sample_seed(config.seed, 0, 0, i, seen[i])))
            seen[i] += 1
    torch.manual_seed(config.seed)
    encoder = build_encoder(config.backbone, config.embed_dim, config.weights, head=config.head)
    transform = build_transform(config.image_size, True, encoder.config["mean"], encoder.config["std"])
    dataset = DrawingDataset(table["image_path"].to_list(), labels, transform)
    images, indices = collate([dataset[key] for key in keyed])
    batch_labels = dataset.labels_of(indices)
    training._set_train_mode(encoder, config.freeze_bn)
    with torch.no_grad():
        z = encoder(images)
    loss = training.build_loss(config)
    return float(loss(z, batch_labels["patent_label"], batch_labels["subclass_label"], batch_labels["class_label"]))


def test_two_gloo_ranks_give_the_single_process_loss_of_the_global_batch(tmp_path):
    table = make_drawing_table(tmp_path / "drawings")
    table_path = tmp_path / "table.parquet"
    table.write_parquet(table_path)
    # BatchNorm statistics are per rank without SyncBatchNorm (CUDA only), so compare with frozen BN statistics.
    config = tiny_config(image_size=32, epochs=1, steps_per_epoch=1, freeze_bn=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "hmpcl_lib.train.cli", "--table", str(table_path), "--out", str(tmp_path / "ddp"),
           "--weights", "none", "--embed-dim", "32", "--image-size", "32", "--batch-size", "16", "--epochs", "1",
           "--steps-per-epoch", "1", "--lr", "0.001", "--warmup-steps", "1", "--num-workers", "0",
           "--log-every", "1", "--seed", "0", "--freeze-bn", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-4000:]

    ckpt = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)  # checkpoints hold no pickled objects
    assert len(ckpt["rng"]) == 2  # both ranks' RNG states, written once by rank 0
    ddp_loss = next(h["loss"] for h in ckpt["history"] if "loss" in h)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = single_process_first_step_loss(config, table, world=2)
    finally:
        torch.set_num_threads(before)
    assert abs(ddp_loss - expected) < 1e-4, (ddp_loss, expected)
