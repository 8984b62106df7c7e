"""benchmarks/gpu_suite.py: a tiny CPU run gives the expected markdown table (no timing assertions), and the
script runs where polars, faiss, dagster and mlflow cannot be imported (what the lent GPU machine has)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
FORBIDDEN = ("polars", "faiss", "dagster", "mlflow")
# the budget only bounds a stuck run (the tiny run takes ≈ 5 s idle): a busy machine must not skip rows
TINY = ["--device", "cpu", "--train-batch", "4", "--embed-batch", "4", "--image-size", "32", "--store-images", "64",
        "--search-sizes", "1500", "--queries", "12", "--query-batch", "8", "--gallery-chunk", "500",
        "--matmul-size", "64", "--warmup", "1", "--iters", "2", "--search-iters", "1", "--budget-s", "500"]

# Runs the script as __main__ with the forbidden packages made unimportable, then reports what got loaded.
WRAPPER = textwrap.dedent("""
    import runpy, sys
    FORBIDDEN = {forbidden!r}
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in FORBIDDEN:
                raise ImportError(f"blocked: {{name}}")
    sys.meta_path.insert(0, Block())
    for name in FORBIDDEN:
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the import blocker let {{name}} through")
    import torch
    torch.set_num_threads(1)
    sys.argv = [{script!r}, *sys.argv[1:]]
    try:
        runpy.run_path({script!r}, run_name="__main__")
    finally:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
        print("FORBIDDEN-LOADED:", loaded, flush=True)
""")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out_json = tmp_path_factory.mktemp("gpu_suite") / "rows.json"
    code = WRAPPER.format(forbidden=FORBIDDEN, script=str(SCRIPT))
    proc = subprocess.run([sys.executable, "-c", code, *TINY, "--json", str(out_json)], capture_output=True,
                          text=True, timeout=540, env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = json.loads(out_json.read_text()) if out_json.exists() else []
    return proc, rows


def test_tiny_cpu_run_prints_the_table_with_every_row(tiny_run):
    proc, rows = tiny_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "# hmpcl GPU suite" in out and "$ python benchmarks/gpu_suite.py --device cpu" in out
    assert f"torch {torch.__version__}" in out and "total wall time:" in out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| # | stage | path | result | ceiling (same run) | % of ceiling | notes |")
    assert len(table) == 1 + len(rows)

    by_key = {r["key"]: r for r in rows}
    expected = ["train.bare.fp32.b4", "train.store.b4", "embed.bare.fp32.b4", "embed.store.b4",
                "search.matmul.fp32.64", "search.torch.fp32.n1500"]
    for key in expected:
        row = by_key.get(key)
        assert row is not None, f"no row {key} in {sorted(by_key)}"
        assert row["status"] == "ok", row
        assert row["value"] > 0 and row["compare"] > 0, row
    assert by_key["search.faiss"]["status"] == "skipped"  # faiss is only tried on CUDA
    assert not [r for r in rows if r["status"] == "error"]
    # each measured row names its ceiling, measured in the same run, and the table shows the ratio
    assert by_key["train.store.b4"]["ceiling_key"] == "train.bare.fp32.b4"
    assert by_key["embed.store.b4"]["ceiling_key"] == "embed.bare.fp32.b4"
    assert by_key["search.torch.fp32.n1500"]["ceiling_key"] == "search.matmul.fp32.64"
    assert by_key["search.torch.fp32.n1500"]["tflops"] > 0
    assert by_key["search.torch.fp32.n1500"]["extra"]["overlap_fp32"] == 1.0  # fp32 search = its fp32 reference
    for stage, key in [("1 training step", "train.store.b4"), ("2 embedding", "embed.store.b4"),
                       ("3 exact search", "search.torch.fp32.n1500")]:
        line = next(line for line in table if f"| {stage} |" in line and by_key[key]["path"] in line)
        assert f"({by_key[key]['ceiling_key']})" in line and " % |" in line, line


def test_runs_without_polars_faiss_dagster_mlflow(tiny_run):
    proc, _ = tiny_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FORBIDDEN-LOADED: []" in proc.stdout


def test_exact_topk_matches_a_full_topk_across_chunk_edges():
    spec = importlib.util.spec_from_file_location("gpu_suite_under_test", SCRIPT)
    suite = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = suite  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(suite)
    finally:
        sys.modules.pop(spec.name, None)
    gen = torch.Generator().manual_seed(0)
    gallery = torch.nn.functional.normalize(torch.randn(103, 16, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(9, 16, generator=gen), dim=1)
    want_v, want_i = torch.topk(queries @ gallery.T, 10, dim=1)
    for query_batch, chunk in [(4, 7), (9, 103), (2, 3), (5, 50)]:  # chunks smaller than k too
        got_v, got_i = suite.exact_topk(gallery, queries, 10, query_batch, chunk)
        assert torch.equal(got_i, want_i), (query_batch, chunk)
        assert torch.allclose(got_v, want_v)
    assert suite.exact_topk(gallery, queries, 10, 4, 7, topk=False) is None
