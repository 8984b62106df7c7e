"""Shared by train_throughput.py and embed_bench.py: a labelled drawings table rendered from the generated sample
(`hmpcl_lib.sample`) into a folder, and the bits both print (command line, machine line)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

import polars as pl
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hmpcl_lib.sample import SampleSpec, render_drawing, sample_patents  # noqa: E402


def sample_table(folder: Path, n_images: int, png_size: int = 384) -> pl.DataFrame:
    """`n_images` sample drawings as PNG (png_size tall, 4:3 like DeepPatent2 figures, grey) with the training
    table's columns: drawing_id, image_path, class_label, subclass_label, patent_label. Patents are taken two per
    subclass across all classes first, so the hierarchical sampler can fill its batches from a small corpus."""
    spec = SampleSpec(image_size=png_size)
    patents = sample_patents(spec).with_columns(k=pl.col("patent_index").rank("ordinal").over("subclass_code") - 1)
    patents = patents.sort(pl.col("k") // 2, "class_code", "subclass_code", "k")
    classes = {c: i for i, c in enumerate(sorted(patents["class_code"].unique()))}
    subclasses = {c: i for i, c in enumerate(sorted(patents["subclass_code"].unique()))}
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for patent in patents.iter_rows(named=True):
        for view in range(patent["n_views"]):
            if len(rows) == n_images:
                return pl.DataFrame(rows).with_columns(pl.col("^.*_label$").cast(pl.Int32))
            drawing = render_drawing(spec, patent, view)
            canvas = Image.new("L", (png_size * 4 // 3, png_size), 255)
            canvas.paste(drawing, (png_size // 6, 0))
            path = folder / f"{patent['patent_id']}-{view}.png"
            canvas.save(path)
            rows.append({"drawing_id": path.stem, "image_path": str(path), "class_label": classes[patent["class_code"]],
                         "subclass_label": subclasses[patent["subclass_code"]],
                         "patent_label": patent["patent_index"]})
    return pl.DataFrame(rows).with_columns(pl.col("^.*_label$").cast(pl.Int32))


def header() -> str:
    """The command (as typed) and the machine, for the top of a benchmark's output."""
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    return (f"$ python {shlex.join(sys.argv)}\n\n"
            f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores "
            f"({platform.processor() or platform.machine()}), native CPU bf16: {'yes' if bf16 else 'no'}, "
            f"cuda: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
