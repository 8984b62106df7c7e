"""benchmarks/scale_bench.py: its corpus is real DeepPatent2 + USPTO input (downloaded from its local Dataverse API,
extracted and parsed by the library into exactly N drawings with a Locarno code each), and its report's growth
exponents and 2.7M projection follow their formulas. The full harness run is `make scale` (minutes), not a test."""

import importlib.util
import math
import sys
from pathlib import Path

import polars as pl
import pytest

from hmpcl_lib.sources import archives, dataverse, deeppatent2, uspto
from hmpcl_lib.taxonomy import hierarchy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scale_bench.py"


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_corpus_downloads_extracts_and_parses_into_n_labelled_drawings(scale, tmp_path):
    pool = scale.render_pool(5, png_size=64)
    assert len(pool) == 5 and all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in pool)
    n, years = 57, (2019, 2020)
    corpus = scale.build_corpus(tmp_path / "src", n, pool, years=years, part_bytes=4096)
    assert corpus["drawings"] == n and corpus["parts"] > 2  # several Dataverse parts per year
    server = scale.LocalDataverse(tmp_path / "src" / "dataverse")
    try:
        tables = []
        for year in years:
            raw = tmp_path / "data" / "raw" / str(year)
            parts = dataverse.download_year(year, raw, base_url=server.url, doi=scale.DOI)
            assert archives.detect_format(parts) == "zip"  # what DeepPatent2's joined parts are
            _, parsed = deeppatent2.build_year(year, raw, tmp_path / "data" / "extracted" / str(year),
                                               tmp_path / f"{year}.parquet", tmp_path / f"{year}.q.parquet")
            assert parsed.quarantine.num_rows == 0
            tables.append(pl.from_arrow(parsed.drawings))
    finally:
        server.close()
    drawings = pl.concat(tables)
    assert drawings.height == n and drawings["drawing_id"].n_unique() == n
    assert drawings["image_path"].map_elements(lambda p: Path(p).read_bytes() in pool, return_dtype=pl.Boolean).all()
    codes, bad = uspto.read_lic_codes(sorted((tmp_path / "src" / "uspto").glob("ipg*.xml")))
    assert codes.num_rows == corpus["patents"] and bad.num_rows == 0
    table, quarantine = hierarchy.build_lic_hierarchy(drawings, codes)
    assert table.num_rows == n and quarantine.num_rows == 0


def _result(n: int, seconds: dict[str, float], encoder: str = "real") -> dict:
    stages = {s: {"seconds": t, "peak_kib": 1024 * n / 100, "work_kib": 1024 * n / 1000, "bytes_written": 10 * n}
              for s, t in seconds.items()}
    return {"n": n, "corpus": {"patents": n // 7, "years": [2020], "seconds": 1.0}, "stages": stages,
            "encoder": encoder, "disk": {"pixel store": 44_000 * n}}


def test_exponents_and_the_projection_follow_their_formulas(scale, tmp_path):
    small = _result(1000, {"drawings": 2.0, "gallery_index": 1.0, "corpus_embeddings": 10.0, "retrieval_benchmark": 1.0})
    large = _result(4000, {"drawings": 8.0, "gallery_index": 8.0, "corpus_embeddings": 1.0, "retrieval_benchmark": 2.0},
                    encoder="standin")
    assert scale.exponent([small, large], "drawings", "seconds") == pytest.approx(1.0)
    assert scale.exponent([small, large], "gallery_index", "seconds") == pytest.approx(1.5)
    text = scale.report([small, large], tmp_path)
    projected = text.split("**Projection")[1].splitlines()[4:]  # the rows after the table's header
    hours = {line.split("|")[1].strip().split(" ")[0]: float(line.split("|")[-2].strip(" *").replace(",", ""))
             for line in projected if line.startswith("| ")}
    assert hours["drawings"] == pytest.approx(round(8.0 * scale.REAL_SIZE / 4000 / 3600, 2), abs=0.01)
    assert hours["gallery_index"] == pytest.approx(round(8.0 * (scale.REAL_SIZE / 4000) ** 1.5 / 3600, 2), abs=0.01)
    # exact search is quadratic: projected with e = 2 although 1000 -> 4000 measured 0.5
    assert hours["retrieval_benchmark"] == pytest.approx(round(2.0 * (scale.REAL_SIZE / 4000) ** 2 / 3600, 2), abs=0.01)
    # the stand-in's time is not projected: the real encoder's measured rate (1000 drawings in 10 s) is
    assert hours["corpus_embeddings"] == pytest.approx(round(scale.REAL_SIZE / 100 / 3600, 2), abs=0.01)
    assert (tmp_path / "scale.md").read_text().strip() == text.strip()
    assert "| pixel store | 44,000 |" in text and math.isclose(44_000 * scale.REAL_SIZE / 2**30, 110.6, abs_tol=0.1)


def test_sheet_drawings_are_bilevel_pngs_of_uspto_size(scale):
    """`--drawings sheet` (the default): 1-bit PNG pages 1,000-2,000 px wide and 1.4 times as tall, a drawing on them."""
    import io

    import numpy as np
    from PIL import Image

    pool = scale.render_pool(3, png_size=64, drawings="sheet")
    for png in pool:
        with Image.open(io.BytesIO(png)) as img:
            assert img.format == "PNG" and img.mode == "1"
            assert 1000 <= img.width <= 2000 and img.height == int(img.width * 1.4)
            ink = 1 - np.asarray(img, dtype=np.float32).mean()
            assert 0.001 < ink < 0.5  # black lines on white
    with pytest.raises(ValueError, match="drawings must be one of"):
        scale.render_pool(1, png_size=64, drawings="tiff")
