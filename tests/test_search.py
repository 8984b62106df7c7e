"""Query path: search by image with the real encoder, hostile input, CLI, results picture."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw

from hmpcl_lib.retrieval.embedding import embed_paths
from hmpcl_lib.errors import InputError
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.retrieval.plots import results_grid_png
from hmpcl_lib.cli.search import main
from hmpcl_lib.retrieval.query_image import open_query_image
from hmpcl_lib.retrieval.search import RESULT_COLUMNS, Searcher

REPO = Path(__file__).resolve().parents[1]


def drawing(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = Image.new("L", (80, 60), 255)
    pen = ImageDraw.Draw(img)
    for _ in range(5):
        pen.ellipse(sorted_box(rng), outline=0, width=2)
    img.save(path)
    return path


def sorted_box(rng) -> list[int]:
    x0, x1 = sorted(rng.integers(0, 80, 2))
    y0, y1 = sorted(rng.integers(0, 60, 2))
    return [int(x0), int(y0), int(x1) + 1, int(y1) + 1]


def png_claiming_size(path: Path, width: int, height: int) -> Path:
    """A tiny valid-looking PNG whose header claims width x height (decoding it would need huge memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    (root / "png").mkdir()
    rows = []
    for p in range(5):
        for view in range(2):
            path = drawing(root / "png" / f"USD{p:07d}-D{view:05d}.png", seed=10 * p + view)
            rows.append(
                {
                    "drawing_id": f"USD{p:07d}-D{view:05d}",
                    "patent_id": f"USD{p:07d}-20190101",
                    "class_code": f"0{p % 2 + 1}",
                    "subclass_code": f"0{p % 2 + 1}-0{p % 3}" if p != 4 else None,
                    "image_path": str(path),
                }
            )
    hierarchy = pl.DataFrame(rows)
    torch.manual_seed(0)
    model = build_encoder("efficientnet_lite0", embed_dim=16, weights="none", image_size=64)
    vectors = embed_paths(model, hierarchy["image_path"].to_list(), device="cpu", num_workers=0)
    index = VectorIndex.build(hierarchy["drawing_id"].to_numpy(), vectors)
    return root, hierarchy, model, index


def test_search_image_finds_itself_first(corpus):
    root, hierarchy, model, index = corpus
    searcher = Searcher(model, index, hierarchy, data_root=root)
    query = hierarchy.row(3, named=True)
    results = searcher.search_image(query["image_path"], k=4)
    assert results.columns == RESULT_COLUMNS and results.height == 4
    assert results["rank"].to_list() == [1, 2, 3, 4]
    first = results.row(0, named=True)
    assert first["drawing_id"] == query["drawing_id"] and first["patent_id"] == query["patent_id"]
    assert first["score"] == pytest.approx(1.0, abs=1e-4)
    assert results["score"].to_list() == sorted(results["score"].to_list(), reverse=True)
    assert searcher.search_image(query["image_path"], k=50).height == 10  # the index holds 10 drawings


def test_hostile_paths_and_files(corpus, tmp_path):
    root, hierarchy, model, index = corpus
    searcher = Searcher(model, index, hierarchy, data_root=root / "png")
    outside = drawing(tmp_path / "outside.png", seed=1)
    with pytest.raises(InputError, match="outside the data root"):
        searcher.search_image(outside)
    sneaky = root / "png" / "link.png"
    sneaky.symlink_to(outside)
    with pytest.raises(InputError, match="outside the data root"):
        searcher.search_image(sneaky)
    with pytest.raises(InputError, match="outside the data root"):
        searcher.search_image(root / "png" / ".." / ".." / outside.parent.name / "outside.png")

    not_image = root / "png" / "notes.png"
    not_image.write_text("this is not a picture")
    with pytest.raises(InputError, match="notes.png.*not a readable image"):
        searcher.search_image(not_image)
    truncated = root / "png" / "cut.png"
    truncated.write_bytes(Path(hierarchy["image_path"][0]).read_bytes()[:120])
    with pytest.raises(InputError, match="cut.png"):
        searcher.search_image(truncated)
    with pytest.raises(InputError, match="does not exist"):
        searcher.search_image(root / "png" / "absent.png")
    with pytest.raises(InputError, match="k must"):
        searcher.search_image(hierarchy["image_path"][0], k=0)


def test_huge_images_are_refused_from_the_header(tmp_path):
    # 8000 x 8000 = 64 MP: above our 50 MP default, below PIL's own bomb limit
    big = png_claiming_size(tmp_path / "big.png", 8000, 8000)
    with pytest.raises(InputError, match="big.png.*8000x8000.*pixel limit"):
        open_query_image(big)
    # 10^10 pixels: decoding would need ~10 GB; refused before any pixel is read
    bomb = png_claiming_size(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(InputError, match="bomb.png.*pixel limit"):
        open_query_image(bomb)
    small = drawing(tmp_path / "small.png", seed=3)  # 80 x 60 = 4800 pixels
    with pytest.raises(InputError, match="pixel limit of 4000"):
        open_query_image(small, max_pixels=4000)
    assert open_query_image(small, max_pixels=4800).size == (80, 60)


def test_cli_with_checkpoint(corpus, tmp_path, capsys):
    root, hierarchy, model, index = corpus
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"encoder_config": model.config, "model": model.state_dict()}, checkpoint)
    index_dir = index.save(tmp_path / "index")
    hierarchy_path = tmp_path / "lic_hierarchy.parquet"
    hierarchy.write_parquet(hierarchy_path)
    query = hierarchy["image_path"][2]
    out_png = tmp_path / "grid.png"
    common = ["--model-checkpoint", str(checkpoint), "--index", str(index_dir), "--hierarchy", str(hierarchy_path)]
    assert main(["--image", query, "-k", "3", "--out-png", str(out_png), *common]) == 0
    printed = capsys.readouterr().out
    assert hierarchy["drawing_id"][2] in printed and hierarchy["patent_id"][2] in printed
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["--image", str(tmp_path / "missing.png"), *common]) == 2
    assert "missing.png" in capsys.readouterr().err
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)  # a pickled module: refused, never unpickled
    assert main(["--image", query, "-k", "2", "--model-checkpoint", str(whole), "--index", str(index_dir),
                 "--hierarchy", str(hierarchy_path)]) == 2
    assert "whole.pt" in (err := capsys.readouterr().err) and "only unpickling could load" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    assert main(["--image", query, "--model-checkpoint", str(junk), "--index", str(index_dir),
                 "--hierarchy", str(hierarchy_path)]) == 2
    assert "junk.pt" in capsys.readouterr().err


def test_python_dash_m_entry_point(corpus, tmp_path):
    root, hierarchy, model, index = corpus
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"encoder_config": model.config, "model": model.state_dict()}, checkpoint)
    hierarchy.write_parquet(tmp_path / "h.parquet")
    done = subprocess.run(
        [sys.executable, "-m", "hmpcl_lib.cli.search", "--image", hierarchy["image_path"][0], "-k", "2",
         "--model-checkpoint", str(checkpoint), "--index", str(index.save(tmp_path / "idx")),
         "--hierarchy", str(tmp_path / "h.parquet"), "--data-root", str(root)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert hierarchy["drawing_id"][0] in done.stdout


def test_results_grid_is_deterministic_and_marks_same_patent(corpus, tmp_path):
    root, hierarchy, model, index = corpus
    searcher = Searcher(model, index, hierarchy)
    query = hierarchy.row(0, named=True)
    results = searcher.search_image(query["image_path"], k=6)
    a = results_grid_png(query["image_path"], results, tmp_path / "a.png", query_patent_id=query["patent_id"])
    b = results_grid_png(query["image_path"], results, tmp_path / "b.png", query_patent_id=query["patent_id"])
    assert a.read_bytes() == b.read_bytes()
    pixels = np.asarray(Image.open(a).convert("RGB")).reshape(-1, 3)
    green = np.all(pixels == (0x2C, 0xA0, 0x2C), axis=1).sum()
    assert green > 50  # the same-patent border is drawn
    c = results_grid_png(query["image_path"], results, tmp_path / "c.png", query_patent_id="nobody")
    assert np.all(np.asarray(Image.open(c).convert("RGB")).reshape(-1, 3) == (0x2C, 0xA0, 0x2C), axis=1).sum() == 0
