"""Decoding real-size drawings: the pixel store's decode beside PIL's bare decode of the same files, in one run.

    python benchmarks/decode_bench.py --images /path/to/sheets --repeat 3          # real USPTO sheets (PNG, G4 TIFF)
    python benchmarks/decode_bench.py --synthetic 40                               # sheet-size drawings made here

Rows, each the median over `--repeat` passes of ms per drawing, one thread, files already in the page cache:
- "PIL bare decode": `Image.open` + `load` + `convert("L")`: the ceiling (issue 29: the store must reach >= 0.7 of it);
- "store decode": what `ensure_pixel_store` does per drawing (`pixels._decode_one`: `decode_grey` — box-reduced
  before padding — then the eval and train resizes);
- "full-resolution path": the store's decode before v2 (grey at full size, padded to a square, two antialiased
  resizes of the whole sheet), which is also the PNG eval transform's pixels.
It also prints how far the store's eval pixels are from the full-resolution path's (mean and max |difference| in grey
levels, and the share of pixels off by more than 8). `--synthetic N` writes N bilevel sheets (half 1-bit PNG, half
CCITT G4 TIFF, 1,000-2,600 px a side, black lines on white) to a temp folder, for machines without real drawings.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hmpcl_lib.modeling.models import PadToSquare
from hmpcl_lib.modeling.pixels import _decode_one, train_side

SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg"}


def synthetic_sheets(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """N bilevel drawing sheets of USPTO's sizes and formats (1-bit PNG and G4 TIFF, alternately)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = int(rng.integers(1000, 2000)), int(rng.integers(1400, 2600))
        img = Image.new("1", (w, h), 1)
        d = ImageDraw.Draw(img)
        for _ in range(60):
            x0, y0, x1, y1 = (int(v) for v in rng.integers(0, [w, h, w, h]))
            d.line((x0, y0, x1, y1), fill=0, width=int(rng.integers(2, 7)))
            d.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=0, width=3)
        path = folder / (f"sheet{i:03d}.png" if i % 2 == 0 else f"sheet{i:03d}.tif")
        img.save(path, **({"compression": "group4"} if path.suffix == ".tif" else {"optimize": True}))
        paths.append(path)
    return paths


def bare(path: Path) -> None:
    with Image.open(path) as img:
        img.load()
        img.convert("L")


def full_resolution(path: Path, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.transforms import functional as TF

    from hmpcl_lib.modeling.dataset import load_drawing

    square = PadToSquare(255)(load_drawing(str(path), "L"))
    return (np.asarray(TF.resize(square, [size, size], antialias=True)),
            np.asarray(TF.resize(square, [side, side], antialias=True)))


def time_per_drawing(fn, paths: list[Path], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        for p in paths:
            fn(p)
        runs.append((time.perf_counter() - start) / len(paths) * 1e3)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help="a folder of drawings (searched recursively)")
    ap.add_argument("--synthetic", type=int, default=0, help="write this many sheet-size drawings and use them")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic:
            paths = synthetic_sheets(Path(tmp), args.synthetic)
        elif args.images:
            paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in SUFFIXES)
        else:
            ap.error("pass --images DIR or --synthetic N")
        size, side = args.image_size, train_side(args.image_size)
        sizes = [Image.open(p).size for p in paths]
        print(f"{len(paths)} drawings, {min(max(s) for s in sizes)}-{max(max(s) for s in sizes)} px on the longer side, "
              f"{statistics.median(p.stat().st_size for p in paths) / 1024:.0f} KB median; image size {size}, "
              f"train side {side}; one thread, median of {args.repeat} passes\n")
        for p in paths:  # page cache
            p.read_bytes()
        t_bare = time_per_drawing(bare, paths, args.repeat)
        t_store = time_per_drawing(lambda p: _decode_one(str(p), p.name, size, side), paths, args.repeat)
        t_full = time_per_drawing(lambda p: full_resolution(p, size, side), paths, args.repeat)
        print("| path | ms per drawing | bare decode / path |")
        print("|---|---:|---:|")
        print(f"| PIL bare decode (open + load + convert to grey): the ceiling | {t_bare:.2f} | 1.00 |")
        print(f"| store decode (`decode_grey`, reduced first, then the two resizes) | {t_store:.2f} | "
              f"{t_bare / t_store:.2f} |")
        print(f"| full-resolution path (the store before v2; the PNG eval transform) | {t_full:.2f} | "
              f"{t_bare / t_full:.2f} |")
        diffs = [np.abs(_decode_one(str(p), p.name, size, side)[0].astype(np.int16)
                        - full_resolution(p, size, side)[0].astype(np.int16)) for p in paths]
        every = np.concatenate([d.ravel() for d in diffs])
        print(f"\neval pixels, store vs full resolution: mean |diff| {every.mean():.3f} grey levels, max "
              f"{every.max()}, {100 * (every > 8).mean():.2f} % of pixels off by more than 8")


if __name__ == "__main__":
    main()
