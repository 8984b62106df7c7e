"""Training throughput (images/s): the bare model step on in-memory tensors vs the real `train()` loop over the
generated sample's drawings, via the pixel store and via PNGs; one run, one table, and the ratio pipeline / bare.

    python benchmarks/train_throughput.py --image-size 128 --batch-size 32 --batches 6 --images 256

"bare" = forward + loss + backward + grad clip + AdamW step on a synthetic channels_last batch already in memory
(the loop's step with no data: its ceiling). "store" / "png" = `hmpcl_lib.train.loop.train` with
`pixel_store=<store>` / `""`: steady-state step throughput from its own per-step `images_per_s` (log_every=1,
the first `--warmup` steps dropped), so data loading, augmentation, label lookup and the step are all in it; the
store build (decode once) and the end-of-epoch checkpoint are reported apart. The issue's target: store ≥ 90 % of
bare. On CUDA the step runs under bf16 autocast as the loop does; CPU bf16 autocast is not used (the header says
whether this CPU has native bf16). Numbers on a shared machine are only indicative: rerun on an idle one.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from bench_corpus import header, sample_table
from hmpcl_lib.modeling.distributed import resolve_device
from hmpcl_lib.modeling.losses import HierarchicalContrastiveLoss
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.modeling.pixels import ensure_pixel_store
from hmpcl_lib.train.config import TrainConfig
from hmpcl_lib.train.loop import default_train_workers, train


def bare_step_throughput(args, device: torch.device, compile_model: bool = False,
                         memory_format: torch.memory_format = torch.channels_last) -> float:
    encoder = build_encoder(args.backbone, 256, args.weights, image_size=args.image_size).to(device)
    encoder.to(memory_format=memory_format).train()
    model = torch.compile(encoder) if compile_model else encoder
    loss_fn = HierarchicalContrastiveLoss().to(device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    patent = torch.arange(args.batch_size, device=device) // 2
    cuda = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            z = model(x)
        loss = loss_fn(z.float(), patent, patent // 2, patent // 4)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.batches):
        step()
    if cuda:
        torch.cuda.synchronize()
    return args.batches * args.batch_size / (time.perf_counter() - start)


def loop_throughput(args, table, out_dir: Path, pixel_store: str, workers: int | None) -> tuple[float, float]:
    """(steady-state images/s of train()'s steps after the warm-up, wall seconds of the whole train() call)."""
    config = TrainConfig(backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                         batch_size=args.batch_size, epochs=1, steps_per_epoch=args.warmup + args.batches,
                         log_every=1, num_workers=workers, pixel_store=pixel_store, device=args.device)
    start = time.perf_counter()
    result = train(config, table, out_dir, resume=False)
    wall = time.perf_counter() - start
    steps = [h for h in result.history if "images_per_s" in h][args.warmup:]
    seconds = sum(args.batch_size / h["images_per_s"] for h in steps)
    return len(steps) * args.batch_size / seconds, wall


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="none", help="weights do not change speed; 'none' avoids loading")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=6, help="timed steps per path")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--images", type=int, default=256, help="sample drawings rendered as PNG")
    p.add_argument("--png-size", type=int, default=384, help="height of the rendered PNGs (4:3)")
    p.add_argument("--png-workers", type=int, nargs="+", default=[-1],
                   help="DataLoader workers for the PNG path, one row each (-1: the loop's default)")
    p.add_argument("--store-workers", type=int, nargs="+", default=[-1],
                   help="DataLoader workers for the store path, one row each (-1: the loop's default)")
    p.add_argument("--contiguous", action="store_true",
                   help="also time the bare model in the default (NCHW) memory format, to check channels_last")
    p.add_argument("--compile", action="store_true", help="also time the bare step under torch.compile")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    print(header(), flush=True)
    print(f"{args.backbone} @ {args.image_size} px, batch {args.batch_size}, {args.batches} timed steps after "
          f"{args.warmup} warm-up, {device}", flush=True)

    rows: list[tuple[str, float, str]] = []
    bare = bare_step_throughput(args, device)
    rows.append(("bare step (in-memory tensors)", bare, "fwd+loss+bwd+clip+AdamW, channels_last"))
    print(f"  bare: {bare:.1f} img/s", flush=True)
    if args.contiguous:
        plain = bare_step_throughput(args, device, memory_format=torch.contiguous_format)
        rows.append(("bare step, NCHW (not channels_last)", plain, "to check the channels_last default"))
        print(f"  bare NCHW: {plain:.1f} img/s", flush=True)
    if args.compile:
        start = time.perf_counter()
        compiled = bare_step_throughput(args, device, compile_model=True)
        rows.append(("bare step, torch.compile", compiled, f"compile+warm-up {time.perf_counter() - start:.0f} s"))
        print(f"  bare compiled: {compiled:.1f} img/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        table = sample_table(tmp / "png", args.images, args.png_size)
        print(f"  rendered {table.height} PNGs in {time.perf_counter() - start:.1f} s", flush=True)
        store = ensure_pixel_store(table, tmp / "data", args.image_size)
        print(f"  pixel store built in {store.meta['build_seconds']:.1f} s "
              f"({table.height / max(store.meta['build_seconds'], 1e-9):.0f} drawings/s): {store.path}", flush=True)
        for label, pixel_store, worker_list in (("train() via pixel store", str(store.path), args.store_workers),
                                                ("train() via PNG decode", "", args.png_workers)):
            for workers in worker_list:
                workers = None if workers < 0 else workers
                shown = default_train_workers(bool(pixel_store)) if workers is None else workers
                rate, wall = loop_throughput(args, table, tmp / "run", pixel_store, workers)
                rows.append((label, rate, f"{shown} workers{' (default)' if workers is None else ''}, "
                                          f"train() wall {wall:.1f} s"))
                print(f"  {label}, {shown} workers: {rate:.1f} img/s", flush=True)

    print("\n| path | images/s | vs bare | notes |\n|---|---:|---:|---|")
    for name, rate, notes in rows:
        print(f"| {name} | {rate:.1f} | {rate / bare:.0%} | {notes} |")


if __name__ == "__main__":
    main()
