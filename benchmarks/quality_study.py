"""The issue-22 quality study: the rule, every candidate's paired intervals on the pooled samples, the decision.

    .venv/bin/python scripts/sample_data.py --sample-seed 1 --root data-sample1   # and 2: data-sample2
    for seed in 0 1 2; do for s in 1 2; do
      .venv/bin/hmpcl sweep --data-root data-sample$s --no-mlflow --seeds $seed --name study \\
        --variant pretrained --variant pretrained-160px --variant cumulative --variant cumulative-class-.4 \\
        --variant cumulative-160px
    done; done
    .venv/bin/python benchmarks/quality_study.py data-sample1/sweeps/study data-sample2/sweeps/study

Prints `hmpcl_lib.experiments.study.RULE`, the per-sample means of every run (mean ± sd over training seeds), the
candidates' paired differences with 95 % intervals on the pooled queries, and what the rule ships. A partial study
(not every seed run yet) is reported as it stands, with the seeds each row used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hmpcl_lib.experiments import study  # noqa: E402
from hmpcl_lib.io import markdown_table  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders, one per sample (named by their data root)")
    args = parser.parse_args(argv)
    dirs = {Path(d).resolve().parents[1].name: d for d in args.sweeps}
    frame = study.load_study(dirs)
    print(study.RULE)
    means = (frame.group_by("sample", "protocol", "variant", "features", "seed")
             .agg(*[pl.col(m).mean() for m in study.METRICS])
             .group_by("sample", "protocol", "variant", "features")
             .agg(pl.len().alias("seeds"), *[pl.format("{} ± {}", pl.col(m).mean().round(3), pl.col(m).std().round(3)
                                                       .fill_null(0)).alias(m) for m in study.METRICS])
             .sort("protocol", "sample", "variant", "features"))
    print("## Mean ± sd over training seeds, per sample\n")
    print(markdown_table(means, max_rows=means.height, max_chars=60))
    shipped, verdicts, why = study.decide(frame)
    print("\n## Candidates: paired differences on the pooled queries (95 % intervals)\n")
    print(study.report(verdicts))
    print(f"\nShips: {shipped[0]} with {shipped[1]} features ({why}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
