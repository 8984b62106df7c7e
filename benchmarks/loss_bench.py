"""Forward+backward time and peak memory of the hierarchical loss vs a plain reference (and PML's SupConLoss).

    python benchmarks/loss_bench.py [--sizes 256 1024 4096] [--dim 256] [--device cpu|cuda]

Implementations:
- `hmpcl`            HierarchicalContrastiveLoss (vectorised, float32 math), default scores.
- `hmpcl-baseline`   baseline_loss() (s_subclass = s_class = 0).
- `reference-loop`   the SPEC formula written plainly: a python loop over anchors, each building its row of
                     weights, logits and log-softmax (what a first implementation would look like).
- `pml-supcon`       pytorch_metric_learning.losses.SupConLoss (baseline case), if installed.
On CUDA each is also run under bf16 autocast. Every (implementation, batch size) runs in its own subprocess so
that peak memory is its own: on CPU the rise of the process's peak RSS (VmHWM) over the RSS before the first
call, on CUDA torch.cuda.max_memory_allocated over the memory allocated before the call. Batch labels follow
the sampler's default template: 2 drawings per patent, 2 patents per subclass, 2 subclasses per class.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss, baseline_loss  # noqa: E402

IMPLEMENTATIONS = ("hmpcl", "hmpcl-baseline", "reference-loop", "pml-supcon")


def reference_loop_loss(z, patent, subclass, klass, s=(1.0, 0.5, 0.25), tau=0.07):
    """One anchor at a time, exactly as SPEC states it; differentiable, no cross-anchor vectorisation."""
    n = z.shape[0]
    total, anchors = z.new_zeros(()), 0
    for i in range(n):
        others = torch.arange(n, device=z.device) != i
        w = torch.where(patent == patent[i], s[0],
                        torch.where((subclass == subclass[i]) & (subclass[i] >= 0), s[1],
                                    torch.where(klass == klass[i], s[2], 0.0)))[others]
        if w.sum() == 0:
            continue
        logits = ((z @ z[i]) / tau)[others]  # z @ z[i] first: indexing z itself would copy it per anchor
        total = total - ((w / w.sum()) * torch.log_softmax(logits, dim=0)).sum()
        anchors += 1
    return total / max(anchors, 1)


def make_loss(name: str):
    if name == "hmpcl":
        return HierarchicalContrastiveLoss()
    if name == "hmpcl-baseline":
        return baseline_loss()
    if name == "reference-loop":
        return reference_loop_loss
    if name == "pml-supcon":
        from pytorch_metric_learning.losses import SupConLoss

        supcon = SupConLoss(temperature=0.07)
        return lambda z, patent, subclass, klass: supcon(z, patent)
    raise ValueError(f"unknown implementation {name!r}")


def batch(n: int, dim: int, device: str):
    gen = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1).to(device)
    index = torch.arange(n, device=device)
    return z, index // 2, index // 4, index // 8


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_one(name: str, n: int, dim: int, device: str, bf16: bool) -> dict:
    """Time and peak memory of forward+backward of one implementation at one batch size (this process)."""
    loss_fn = make_loss(name)
    if hasattr(loss_fn, "to"):
        loss_fn = loss_fn.to(device)
    cuda = device.startswith("cuda")

    def step(z0, labels):
        # under autocast the encoder hands the loss bf16 embeddings
        z = z0.to(torch.bfloat16 if bf16 else z0.dtype).requires_grad_(True)
        with torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(z, *labels)
        loss.backward()
        return loss.item()

    tiny_z, *tiny_labels = batch(16, dim, device)
    step(tiny_z, tiny_labels)  # load kernels / thread pools before measuring memory
    z, *labels = batch(n, dim, device)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    value = step(z, labels)
    if cuda:
        torch.cuda.synchronize()
    times = [time.perf_counter() - start]
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_kib("VmHWM") * 1024) - before

    # the python loop is slow enough at large N that its first (already warmed-up) call is the timing
    repeats = 0 if name == "reference-loop" and n >= 1024 else max(3, 4096 // n)
    if repeats:
        times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(z, labels)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {"impl": name + (" (bf16 autocast)" if bf16 else ""), "n": n, "loss": value,
            "ms": 1000 * sorted(times)[len(times) // 2], "peak_mib": peak / 2**20, "repeats": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--impl", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "N", "BF16"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        name, n, bf16 = args.one
        print(json.dumps(measure_one(name, int(n), args.dim, args.device, bf16 == "1")))
        return

    try:
        import pytorch_metric_learning  # noqa: F401
    except ImportError:
        args.impl = [i for i in args.impl if i != "pml-supcon"]
        print("pytorch-metric-learning not installed: skipping pml-supcon", file=sys.stderr)
    precisions = ["0", "1"] if args.device.startswith("cuda") else ["0"]
    rows = []
    for n in args.sizes:
        for name in args.impl:
            for bf16 in precisions:
                cmd = [sys.executable, __file__, "--dim", str(args.dim), "--device", args.device,
                       "--one", name, str(n), bf16]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"done {rows[-1]['impl']} N={n}", file=sys.stderr)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} threads")
    print(f"\nLoss forward+backward, dim {args.dim}, {device_name}, torch {torch.__version__} "
          "(median of the timed calls; peak = memory added by the first call)\n")
    print("| batch | implementation | loss | time (ms) | peak memory (MiB) |")
    print("|---:|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['n']} | {row['impl']} | {row['loss']:.4f} | {row['ms']:.1f} | {row['peak_mib']:.0f} |")


if __name__ == "__main__":
    main()
