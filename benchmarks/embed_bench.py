"""Embedding throughput (images/s) of the encoder: tensors already in memory vs PNG files through `embed_paths`.

    .venv/bin/python benchmarks/embed_bench.py --sizes 128 224 --images 256

"memory" times the forward pass alone (the ceiling); "png" is the real path (decode, pad, resize, normalise,
DataLoader workers, forward). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hmpcl_lib.retrieval.embedding import EmbedStats, embed_paths, resolve_device  # noqa: E402
from hmpcl_lib.modeling.models import build_encoder  # noqa: E402


def write_drawings(folder: Path, n: int, seed: int = 0) -> list[str]:
    """Line drawings the size of DeepPatent2 segmented figures (~600 x 450 grey PNG)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = Image.new("L", (600, 450), 255)
        pen = ImageDraw.Draw(img)
        for _ in range(12):
            pen.line([tuple(int(v) for v in rng.integers(0, 450, 2)) for _ in range(2)], fill=0, width=3)
        path = folder / f"d{i:05d}.png"
        img.save(path)
        paths.append(str(path))
    return paths


def memory_throughput(model: torch.nn.Module, size: int, n: int, batch: int, device: torch.device) -> float:
    images = torch.randn(batch, 3, size, size, device=device)
    model.eval().to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        model(images)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < n:
            model(images)
            done += batch
        if device.type == "cuda":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="package", help="package | none | path (weights do not change speed)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers for the PNG path (auto)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    model = build_encoder(args.backbone, embed_dim=256, weights=args.weights)
    params = sum(t.numel() for t in model.parameters()) / 1e6
    print(f"{args.backbone} ({params:.1f} M params incl. head), {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_drawings(Path(tmp), args.images)
        for size in args.sizes:
            mem = memory_throughput(model, size, args.images, args.batch_size, device)
            embed_paths(model, paths[: args.batch_size], image_size=size, device=device, num_workers=0)  # warm-up
            stats = EmbedStats()
            embed_paths(model, paths, image_size=size, batch_size=args.batch_size, device=device,
                        num_workers=args.num_workers, stats=stats)
            rows.append((size, mem, stats.images_per_s, stats.num_workers))
            print(f"  {size} px: memory {mem:.0f} img/s, png {stats.images_per_s:.0f} img/s "
                  f"({stats.num_workers} workers)", flush=True)
    print("\n| image size | in-memory tensors (img/s) | PNG files via embed_paths (img/s) | workers |")
    print("|---:|---:|---:|---:|")
    for size, mem, png, workers in rows:
        print(f"| {size} | {mem:.0f} | {png:.0f} | {workers} |")


if __name__ == "__main__":
    main()
