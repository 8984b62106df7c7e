"""Query latency of the search page's JSON API (`POST /api/search`, an uploaded sample drawing), split into the
encoder (the Searcher's embed step, timed inside the app) and the rest (upload, decode checks aside, index search,
metadata join, JSON). Runs the real app in-process through FastAPI's TestClient (no network), on the rendered
sample corpus (`benchmarks.demo_corpus`) indexed with the default pretrained encoder.

    python benchmarks/search_page_bench.py [--queries 50] [--k 12] [--threads 2] [--image-size 128] [--class 06]

Prints a markdown table: median and p95 in milliseconds of the whole request, the encoder and the rest.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from fastapi.testclient import TestClient

from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.serve.app import create_app
from benchmarks.demo_corpus import DEMO_SPEC, demo_searcher, write_demo_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the target is 2 cores)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--class", dest="class_code", default=None, help="also apply a class filter")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])

    with tempfile.TemporaryDirectory() as tmp:
        layout = write_demo_corpus(tmp, DEMO_SPEC)
        searcher = demo_searcher(layout, build_encoder(embed_dim=None, weights="package", image_size=args.image_size))
        hierarchy = pl.read_parquet(layout.hierarchy_path)
        bodies = [Path(x).read_bytes() for x in hierarchy["image_path"].to_list()]
        params = {"k": args.k, **({"class": args.class_code} if args.class_code else {})}
        total, encoder = [], []
        with TestClient(create_app(searcher, layout)) as client:
            for i in range(args.warmup + args.queries):
                body = bodies[i % len(bodies)]
                started = time.perf_counter()
                resp = client.post("/api/search", params=params, content=body, headers={"Content-Type": "image/png"})
                elapsed = (time.perf_counter() - started) * 1000
                resp.raise_for_status()
                if i >= args.warmup:
                    total.append(elapsed)
                    encoder.append(resp.json()["timing_ms"]["embed"])
    total_a, encoder_a = np.array(total), np.array(encoder)
    rest = total_a - encoder_a

    def row(name: str, values: np.ndarray) -> str:
        return f"| {name} | {np.median(values):.1f} | {np.percentile(values, 95):.1f} |"

    print(f"`{command}`\n")
    print(f"{args.queries} queries (after {args.warmup} warm-up), k={args.k}, corpus of {len(bodies)} drawings, "
          f"EfficientNet-Lite0 at {args.image_size}px, torch threads {args.threads}, {platform.processor() or platform.machine()}\n")
    print("| part | median ms | p95 ms |\n|---|---:|---:|")
    print(row("whole request (POST /api/search)", total_a))
    print(row("encoder (Searcher embed step)", encoder_a))
    print(row("rest (upload, checks, index search, metadata, JSON)", rest))
    print(f"\nencoder share of the median request: {np.median(encoder_a) / np.median(total_a):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
