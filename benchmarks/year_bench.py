"""A year lands: what adding the fifth year of a five-year corpus costs through the real assets, beside a full build.

The corpus is `scale_bench.py`'s (DeepPatent2's layout served by a local Dataverse, drawings at USPTO sheet size by
default), N drawings over 5 years, 20 % each. Every stage runs in its own process in one Dagster instance, as
`scale_bench.py` runs them:

1. **four years**: ingest (raw_archives, drawings, decoded_drawings) of 4 years, the model (lic_codes, lic_hierarchy,
   splits, a short trained_encoder), corpus_embeddings of the 4 years, gallery_index;
2. **the fifth year lands**: its raw_archives, drawings, decoded_drawings and corpus_embeddings, then gallery_index
   (what `new_drawings_sensor` → `embed_year` → `corpus_follow_up` → `refresh_index` runs). The embedding of the
   new year is first killed (SIGKILL) after `--kill-after` seconds, as a lost pod, then run again;
3. the unchanged years' pixel stores and embeddings files are compared (inode, mtime) before and after.

"Full build" = decoding and embedding all five years from nothing: the four years' cost in step 1 plus the fifth's
own decode and embed in step 2 (each year is built by the same code from scratch, so the sum is the full build's
decode + embed time). The issue's bar: the added year (20 % of the corpus) costs <= 30 % of that.

    .venv/bin/python benchmarks/year_bench.py --n 5000 --json-out docs/img/year_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale_bench as sb  # noqa: E402

YEARS = (2016, 2017, 2018, 2019, 2020)
DECODE_EMBED = ("decoded_drawings", "corpus_embeddings")


def files_of(data: Path, year: int) -> dict[str, tuple[int, int]]:
    group = f"year={year}"
    paths = [*(data / "pixels" / group).rglob("*"), *(data / "embeddings").rglob(f"{group}-*")]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths if p.is_file()}


def fail_dead_runs(env: dict) -> None:
    """What Dagster's run monitoring does for a run whose worker died: mark it failed and free the `gpu` pool slot its
    step held (without it the rerun waits on the pool forever: found by this benchmark)."""
    code = ("import dagster as dg; i = dg.DagsterInstance.get()\n"
            "for r in i.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):\n"
            "    i.report_run_failed(r); i.event_log_storage.free_concurrency_slots_for_run(r.run_id)")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=sb.REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="drawings over the five years")
    parser.add_argument("--work", type=Path, default=sb.REPO / "data" / "year_bench")
    parser.add_argument("--pool", type=int, default=300, help="distinct rendered drawings the corpus copies")
    parser.add_argument("--drawings", choices=sb.DRAWINGS, default="sheet")
    parser.add_argument("--kill-after", type=float, default=8.0,
                        help="seconds into the new year's embedding at which it is killed (0: not killed)")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args(argv)
    print(f"$ python {' '.join(sys.argv)}\n{os.cpu_count()} cores, {sb.datetime_now()}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    home = args.work
    src, data, dagster_home = home / "source", home / "data", home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").symlink_to(sb.REPO / "dagster_home" / "dagster.yaml")
    pool = sb.render_pool(args.pool, 384, drawings=args.drawings)
    corpus = sb.build_corpus(src, args.n, pool, years=YEARS)
    server = sb.LocalDataverse(src / "dataverse")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "HMPCL_DATA_ROOT": str(data),
           "HMPCL_SOURCE": "deeppatent2", "HMPCL_USPTO_XML_DIR": str(src / "uspto"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "HMPCL_MLFLOW_ARTIFACTS": str(home / "mlartifacts"),
           "PYTHONUNBUFFERED": "1"}
    config = {"resources": {"store": {"config": {"dataverse_url": server.url, "doi": sb.DOI}}}}
    log, rows = home / "stages.log", []

    def stage(phase: str, asset: str, year: int | None = None, kill_after: float | None = None) -> dict:
        run_config = dict(config)
        if asset == "trained_encoder":
            run_config = {**config, "ops": {"trained_encoder": {"config": sb.SHORT_TRAINING}}}
        cost = sb.run_stage(asset, None if year is None else str(year), run_config, env, [data], log,
                            kill_after=kill_after)
        meta = cost.get("meta", {})
        row = {"phase": phase, "asset": asset, "year": year, "seconds": round(cost["seconds"], 2),
               "killed": bool(cost.get("killed")),
               "peak_gib": round(max(cost.get("vmhwm_kib", 0), cost.get("children_maxrss_kib", 0)) / 2**20, 2),
               "decoded": meta.get("drawings_decoded"), "embedded": meta.get("drawings_embedded"),
               "rows": meta.get("dagster/row_count", meta.get("vectors"))}
        rows.append(row)
        print(f"  {phase:>10} {asset:<18} {year or '':<5} {row['seconds']:8.1f} s  peak {row['peak_gib']:.2f} GiB"
              f"{'  KILLED' if row['killed'] else ''}  decoded {row['decoded']}  embedded {row['embedded']}",
              flush=True)
        return row

    old, new = YEARS[:-1], YEARS[-1]
    try:
        for year in old:
            for asset in ("raw_archives", "drawings", "decoded_drawings"):
                stage("four years", asset, year)
        for asset in ("lic_codes", "lic_hierarchy", "splits", "trained_encoder"):
            stage("four years", asset)
        for year in old:
            stage("four years", "corpus_embeddings", year)
        stage("four years", "gallery_index")
        before = {year: files_of(data, year) for year in old}
        for asset in ("raw_archives", "drawings", "decoded_drawings"):
            stage("new year", asset, new)
        if args.kill_after:
            stage("new year", "corpus_embeddings", new, kill_after=args.kill_after)
            fail_dead_runs(env)
        stage("new year", "corpus_embeddings", new)
        stage("new year", "gallery_index")
        untouched = {year: files_of(data, year) == before[year] for year in old}
    finally:
        server.close()

    def total(phase: str, assets=DECODE_EMBED, killed: bool = False) -> float:
        return sum(r["seconds"] for r in rows if r["phase"] == phase and r["asset"] in assets and r["killed"] == killed)

    new_year = total("new year")
    full = total("four years") + new_year
    summary = {"n": args.n, "years": list(YEARS), "drawings": args.drawings, "corpus": corpus, "stages": rows,
               "full_decode_embed_s": round(full, 1), "new_year_decode_embed_s": round(new_year, 1),
               "new_year_share": round(new_year / full, 3),
               "new_year_with_index_s": round(new_year + total("new year", ("gallery_index",)), 1),
               "killed_attempt_s": round(total("new year", ("corpus_embeddings",), killed=True), 1),
               "unchanged_years_untouched": untouched,
               "old_years_decoded_or_embedded_again": sum((r["decoded"] or 0) + (r["embedded"] or 0) for r in rows
                                                          if r["phase"] == "new year" and r["year"] in old)}
    print(json.dumps({k: v for k, v in summary.items() if k not in ("stages", "corpus")}, indent=1))
    print(f"\nthe new year (20 % of the corpus) costs {summary['new_year_share']:.1%} of a full build's decode + embed "
          f"time ({new_year:.1f} s of {full:.1f} s); with the index rebuild {summary['new_year_with_index_s']:.1f} s")
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=1))
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
