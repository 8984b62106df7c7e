"""Restart safety of training: resume after a crash (in-process and kill -9 of the CLI) = uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# the same fixtures as test_training (one torch thread, the tiny drawing table): imported, so pytest registers them
from test_training import drawing_table, tiny_config  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

from hmpcl_lib.train.loop import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Crash(Exception):
    pass


def losses(history):
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


def crash_at(step_to_crash: int):
    def on_metrics(step, metrics):
        if step == step_to_crash and "loss" in metrics:
            raise Crash(step)
    return on_metrics


@pytest.fixture(scope="module")
def uninterrupted(drawing_table, tmp_path_factory):
    """2 epochs x 4 steps straight through (augmentation on, BN in train mode)."""
    return train(tiny_config(checkpoint_every_steps=3), drawing_table, tmp_path_factory.mktemp("straight"))


def test_epoch_boundary_resume_gives_the_same_loss_curve(drawing_table, tmp_path, uninterrupted):
    with pytest.raises(Crash):  # crash right after epoch 1's checkpoint (step 4 = end of epoch 0)
        train(tiny_config(), drawing_table, tmp_path, on_metrics=lambda s, m: (_ for _ in ()).throw(Crash())
              if "epoch_loss" in m else None)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)  # checkpoints hold no pickled objects["step"] == 4
    resumed = train(tiny_config(), drawing_table, tmp_path)
    assert losses(resumed.history) == losses(uninterrupted.history)
    assert [h["epoch_loss"] for h in resumed.history if "epoch_loss" in h] == \
        [h["epoch_loss"] for h in uninterrupted.history if "epoch_loss" in h]


def test_mid_epoch_resume_gives_the_same_loss_curve(drawing_table, tmp_path, uninterrupted):
    config = tiny_config(checkpoint_every_steps=3)
    with pytest.raises(Crash):  # dies at step 7: the checkpoint of step 6 (epoch 1, batch 2) is the last one
        train(config, drawing_table, tmp_path, on_metrics=crash_at(7))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)  # checkpoints hold no pickled objects
    assert (ckpt["epoch"], ckpt["batches_done"], ckpt["step"]) == (1, 2, 6)
    resumed = train(config, drawing_table, tmp_path)
    assert losses(resumed.history) == losses(uninterrupted.history)
    for name, tensor in uninterrupted.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=0, atol=0)


# The CLI, with one test-only change: right after the first mid-epoch checkpoint is durable it writes a marker file
# and then waits forever. So the SIGKILL lands after that checkpoint and before the run could go on, however slow or
# fast the machine is (polling for last.pt alone could kill too late: at the epoch-end checkpoint or after the end).
HOLD_AFTER_FIRST_MID_EPOCH_CHECKPOINT = textwrap.dedent("""
    import pathlib, sys, threading
    from hmpcl_lib.train import cli, loop

    marker = pathlib.Path(sys.argv[1])
    real_save = loop._save_everywhere

    def save_then_hold(save, state, epoch, batches_done):
        real_save(save, state, epoch, batches_done)
        if batches_done:  # mid-epoch: the checkpoint is on disk (atomic write); now wait for the kill
            marker.write_text(str(state.step))
            threading.Event().wait()

    loop._save_everywhere = save_then_hold
    sys.exit(cli.main(sys.argv[2:]))
""")


def test_kill_9_mid_epoch_then_rerun_finishes_like_an_uninterrupted_run(drawing_table, tmp_path, uninterrupted):
    table_path = tmp_path / "table.parquet"
    drawing_table.write_parquet(table_path)
    out = tmp_path / "run"
    args = ["--table", str(table_path), "--out", str(out),
            "--weights", "none", "--embed-dim", "32", "--image-size", "64", "--batch-size", "16", "--epochs", "2",
            "--steps-per-epoch", "4", "--lr", "0.001", "--warmup-steps", "1", "--num-workers", "0",
            "--log-every", "1", "--seed", "0", "--checkpoint-every-steps", "3"]
    cmd = [sys.executable, "-m", "hmpcl_lib.train.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ckpt_path = out / "checkpoints" / "last.pt"
    marker, log_path = tmp_path / "checkpointed", tmp_path / "killed_run.log"

    with open(log_path, "wb") as log:  # a file, not a pipe nobody reads while we wait: the child never blocks on it
        proc = subprocess.Popen([sys.executable, "-c", HOLD_AFTER_FIRST_MID_EPOCH_CHECKPOINT, str(marker), *args],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not marker.exists():
                assert proc.poll() is None, f"exited with {proc.returncode} before a mid-epoch checkpoint:\n" \
                                            f"{log_path.read_text(errors='replace')[-3000:]}"
                assert time.monotonic() < deadline, "no mid-epoch checkpoint within 300 s:\n" \
                                                    f"{log_path.read_text(errors='replace')[-3000:]}"
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log_path.read_text(errors="replace")[-3000:]
    killed_at = torch.load(ckpt_path, weights_only=True)  # checkpoints hold no pickled objects
    assert (killed_at["epoch"], killed_at["batches_done"], killed_at["step"]) == (0, 3, 3)  # mid-epoch 0

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr
    final = torch.load(ckpt_path, weights_only=True)  # checkpoints hold no pickled objects
    assert final["step"] == 8
    steps, values = zip(*losses(final["history"]))
    expected_steps, expected_values = zip(*losses(uninterrupted.history))
    assert steps == expected_steps
    assert values == pytest.approx(expected_values, rel=1e-6)
