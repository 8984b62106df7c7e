"""Embedding throughput (images/s): the bare forward pass on in-memory tensors vs `embed_table` over the generated
sample's drawings, via the pixel store and via PNGs; one run, one table, and the ratio pipeline / bare.

    python benchmarks/embed_bench.py --image-size 128 --batch-size 64 --images 256

"bare" = the encoder's forward under inference_mode on a synthetic channels_last batch already in memory (the
ceiling). "store" = `embed_table(..., pixel_store=store)` (memmap rows → normalise → forward, no decoding);
"png" = `embed_table(...)` (decode, pad, resize, normalise in DataLoader workers, forward). Both are timed over
all `--images` after a one-batch warm-up; the store build (decode once) is reported apart. The issue's target:
store ≥ 90 % of bare. On CUDA the forward runs under bf16 autocast as embedding does; CPU bf16 autocast is not
used (the header says whether this CPU has native bf16). On a shared machine the numbers are only indicative.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from bench_corpus import header, sample_table
from hmpcl_lib.modeling.distributed import resolve_device
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.modeling.pixels import ensure_pixel_store
from hmpcl_lib.retrieval.embedding import EmbedStats, default_num_workers, embed_table


def bare_throughput(model, args, device: torch.device, compile_model: bool = False,
                    memory_format: torch.memory_format = torch.channels_last) -> float:
    model.eval().to(device).to(memory_format=memory_format)
    forward = torch.compile(model) if compile_model else model
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    batches = max(1, args.images // args.batch_size)
    with torch.inference_mode(), autocast:
        forward(x)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            forward(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batches * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="none", help="package | none | path (weights do not change speed)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--images", type=int, default=256, help="sample drawings rendered as PNG (and bare batches)")
    p.add_argument("--png-size", type=int, default=384, help="height of the rendered PNGs (4:3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--png-workers", type=int, nargs="+", default=[-1],
                   help="DataLoader workers for the PNG path, one row each (-1: embed_paths' default)")
    p.add_argument("--contiguous", action="store_true",
                   help="also time the bare model in the default (NCHW) memory format, to check channels_last")
    p.add_argument("--compile", action="store_true", help="also time the bare forward under torch.compile")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    model = build_encoder(args.backbone, embed_dim=256, weights=args.weights, image_size=args.image_size)
    print(header(), flush=True)
    print(f"{args.backbone} @ {args.image_size} px, batch {args.batch_size}, {args.images} images, {device}",
          flush=True)

    rows: list[tuple[str, float, str]] = []
    bare = bare_throughput(model, args, device)
    rows.append(("bare forward (in-memory tensors)", bare, "inference_mode, channels_last"))
    print(f"  bare: {bare:.1f} img/s", flush=True)
    if args.contiguous:
        plain = bare_throughput(model, args, device, memory_format=torch.contiguous_format)
        rows.append(("bare forward, NCHW (not channels_last)", plain, "to check the channels_last default"))
        print(f"  bare NCHW: {plain:.1f} img/s", flush=True)
    if args.compile:
        start = time.perf_counter()
        compiled = bare_throughput(model, args, device, compile_model=True)
        rows.append(("bare forward, torch.compile", compiled, f"compile+run {time.perf_counter() - start:.0f} s"))
        print(f"  bare compiled: {compiled:.1f} img/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = sample_table(tmp / "png", args.images, args.png_size)
        store = ensure_pixel_store(table, tmp / "data", args.image_size)
        print(f"  pixel store built in {store.meta['build_seconds']:.1f} s "
              f"({table.height / max(store.meta['build_seconds'], 1e-9):.0f} drawings/s)", flush=True)
        warm = table.head(args.batch_size)
        embed_table(model, warm, batch_size=args.batch_size, device=device, pixel_store=store)
        stats = EmbedStats()
        embed_table(model, table, batch_size=args.batch_size, device=device, pixel_store=store, stats=stats)
        rows.append(("embed_table via pixel store", stats.images_per_s, "memmap rows, no workers"))
        print(f"  store: {stats.images_per_s:.1f} img/s", flush=True)
        for workers in args.png_workers:
            workers = None if workers < 0 else workers
            embed_table(model, warm, batch_size=args.batch_size, device=device, num_workers=0)
            stats = EmbedStats()
            embed_table(model, table, batch_size=args.batch_size, device=device, num_workers=workers, stats=stats)
            default = " (default)" if workers is None else ""
            rows.append(("embed_table via PNG decode", stats.images_per_s, f"{stats.num_workers} workers{default}"))
            print(f"  png, {stats.num_workers} workers: {stats.images_per_s:.1f} img/s", flush=True)

    print("\n| path | images/s | vs bare | notes |\n|---|---:|---:|---|")
    for name, rate, notes in rows:
        print(f"| {name} | {rate:.1f} | {rate / bare:.0%} | {notes} |")
    print(f"\n(default PNG workers here: {default_num_workers(args.images, args.batch_size)})")


if __name__ == "__main__":
    main()
