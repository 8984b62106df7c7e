"""The issue-22 quality study: the rule, every candidate's paired intervals on the pooled samples, the decision.

    .venv/bin/python scripts/sample_data.py --sample-seed 1 --root data-sample1   # and 2: data-sample2
    for seed in 0 1 2; do for s in 1 2; do
      .venv/bin/hmpcl sweep --data-root data-sample$s --no-mlflow --seeds $seed --name study \\
        --variant pretrained --variant pretrained-160px --variant cumulative --variant cumulative-class-.4 \\
        --variant cumulative-160px
    done; done
    .venv/bin/python benchmarks/quality_study.py data-sample1/sweeps/study data-sample2/sweeps/study

    # round 2 (study.RULE_2): keep what the backbone knows, 192 px, query-side flips
    for s in 1 2; do .venv/bin/hmpcl sweep --data-root data-sample$s --no-mlflow --seeds 0 1 2 --name study \
      --variant pretrained --variant pretrained-192px --variant cumulative --variant cumulative-backbone-lr-.03 \
      --variant cumulative-l2sp --variant cumulative-frozen-4 --variant cumulative-wise-.5 --variant cumulative-192px
    done
    .venv/bin/python benchmarks/quality_study.py --round 2 data-sample1/sweeps/study data-sample2/sweeps/study

    # round 7 (study.RULE_7): one change each to the new default (backbone lr x1), against its runs
    for s in 1 2; do .venv/bin/hmpcl sweep --data-root data-sample$s --no-mlflow --seeds 0 1 2 --name study \
      --variant cumulative-backbone-lr-1 --variant cumulative-lr1-frozen-4 --variant cumulative-lr1-ema \
      --variant cumulative-lr1-16-epochs --variant pretrained-192px --variant cumulative-lr1-192px
    done
    .venv/bin/python benchmarks/quality_study.py --round 7 data-sample1/sweeps/study data-sample2/sweeps/study

    # round 8 (study.RULE_8, issue 28): the hierarchy on top of rank 1, judged per sample against the baseline
    .venv/bin/python scripts/sample_data.py --sample-seed 3 --root data-sample3      # the choice sample
    for seed in 0 1 2; do .venv/bin/hmpcl sweep --data-root data-sample3 --no-mlflow --seeds $seed --name study8 \
      --variant pretrained --variant baseline --variant cumulative-set --variant cumulative-coarse-tau-.2 \
      --variant cumulative; done
    .venv/bin/python benchmarks/quality_study.py --round 8 data-sample3/sweeps/study8

Prints the round's rule (`hmpcl_lib.experiments.study.RULE`, `RULE_2`), the per-sample means of every run (mean ± sd over training seeds), the
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


EXPLORED = "cumulative+untouched"  # not a candidate of RULE: looked at after the results, so it cannot ship by it


def explore_ensemble(sweep_dir: Path) -> None:
    """After the results (so outside RULE): each saved `cumulative` encoder's head output concatenated with the
    untouched backbone's pooled features (each L2-normalised, / sqrt 2: the mean of the two cosines), i.e. two
    backbones per query. Saved as the sweep's `cumulative+untouched/seed=N.parquet` (features "ensemble")."""
    import numpy as np

    from hmpcl_lib.experiments.runs import embed_test
    from hmpcl_lib.experiments.sweep import model_path, run_path
    from hmpcl_lib.io import atomic_path
    from hmpcl_lib.layout import DataLayout
    from hmpcl_lib.modeling.models import build_encoder, load_encoder
    from hmpcl_lib.modeling.pixels import ensure_pixel_store
    from hmpcl_lib.retrieval.evaluation import benchmark_embeddings

    layout = DataLayout(sweep_dir.resolve().parents[1])
    hierarchy, splits = pl.read_parquet(layout.hierarchy_path), pl.read_parquet(layout.splits_path)
    untouched = build_encoder(embed_dim=None, weights="package").eval()
    cached = None
    for saved in sorted((sweep_dir / "cumulative").glob("seed=*.safetensors")):
        seed = int(saved.stem.split("=")[1])
        out = run_path(sweep_dir, EXPLORED, seed)
        if out.exists():
            continue
        model = load_encoder(model_path(sweep_dir, "cumulative", seed))
        size = model.config["image_size"]
        store = ensure_pixel_store(hierarchy, layout.root, size)
        if cached is None:
            cached = embed_test(untouched, hierarchy, splits, size, pixel_store=store)
        ids, head = embed_test(model, hierarchy, splits, size, pixel_store=store)
        assert (ids == cached[0]).all()
        vectors = np.concatenate([head, cached[1]], axis=1) * 2 ** -0.5
        frames = [benchmark_embeddings((ids, vectors), hierarchy, splits, protocol=p).per_query.with_columns(
                  variant=pl.lit(EXPLORED), seed=pl.lit(seed), protocol=pl.lit(p), features=pl.lit("ensemble"))
                  for p in ("deeppatent", "leave_one_out")]
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            pl.concat(frames).write_parquet(tmp)


def backbone_drift(sweep_dirs: dict[str, str | Path]) -> pl.DataFrame:
    """How far each saved encoder's backbone moved from the pretrained weights: |w - w0| / |w0| over the backbone's
    parameters (BatchNorm statistics left out), mean and range over every saved (sample, seed) of a variant. Shows
    whether a pull towards w0 (lower lr, L2-SP, frozen stages, WiSE-FT) acted at all."""
    import torch

    from hmpcl_lib.modeling.models import build_encoder, load_encoder

    start = build_encoder(embed_dim=None, weights="package").backbone
    w0 = {n: p.detach() for n, p in start.named_parameters()}
    norm0 = float(torch.sqrt(sum(p.pow(2).sum() for p in w0.values())))
    rows = []
    for sample, folder in sweep_dirs.items():
        for saved in sorted(Path(folder).glob("*/seed=*.safetensors")):
            state = load_encoder(saved).backbone.state_dict()
            moved = float(torch.sqrt(sum((state[n] - p).pow(2).sum() for n, p in w0.items())))
            rows.append({"variant": saved.parent.name, "sample": sample, "drift": moved / norm0})
    return (pl.DataFrame(rows).group_by("variant").agg(pl.len().alias("runs"), pl.col("drift").mean().round(4)
            .alias("mean |w - w0| / |w0|"), pl.col("drift").min().round(4).alias("min"),
            pl.col("drift").max().round(4).alias("max")).sort("variant"))


def epoch_choice(sweep_dirs: dict[str, str | Path]) -> pl.DataFrame:
    """Per trained run with validation curves (`sweep.curves_path`): the epoch `export_weights="best-val"` would pick,
    its validation score and the last epoch's (validation.selection_score), and the last epoch's validation R@1: is the
    last epoch as good as the best?"""
    from hmpcl_lib.train.validation import best_epoch, selection_score

    rows = []
    for sample, folder in sweep_dirs.items():
        for path in sorted(Path(folder).glob("*/curves-seed=*.parquet")):
            curve = pl.read_parquet(path)
            if "val_patent_map" not in curve.columns:
                continue
            history = curve.to_dicts()
            best = best_epoch(history)
            last = history[-1]
            rows.append({"sample": sample, "variant": path.parent.name, "seed": path.stem.split("=")[1],
                         "best epoch": best, "epochs": len(history),
                         "best score": round(selection_score(history[best]), 4),
                         "last score": round(selection_score(last), 4),
                         "last val R@1": round(last["val_patent_recall_at_1"], 4)})
    return pl.DataFrame(rows) if rows else pl.DataFrame({"runs with validation curves": []})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", help="sweep folders, one per sample (named by their data root)")
    parser.add_argument("--round", type=int, choices=sorted(study.ROUNDS), default=1,
                        help="which round's rule and candidates decide (default 1)")
    parser.add_argument("--explore", action="store_true",
                        help=f"also score {EXPLORED!r} (head + the untouched backbone; exploratory, not in RULE)")
    args = parser.parse_args(argv)
    dirs = {Path(d).resolve().parents[1].name: d for d in args.sweeps}
    if args.explore:
        for d in dirs.values():
            explore_ensemble(Path(d))
    frame = study.load_study(dirs)
    rule, candidates = study.ROUNDS[args.round]
    print(rule)
    means = (frame.group_by("sample", "protocol", "variant", "features", "seed")
             .agg(*[pl.col(m).mean() for m in study.METRICS])
             .group_by("sample", "protocol", "variant", "features")
             .agg(pl.len().alias("seeds"), *[pl.format("{} ± {}", pl.col(m).mean().round(3), pl.col(m).std().round(3)
                                                       .fill_null(0)).alias(m) for m in study.METRICS])
             .sort("protocol", "sample", "variant", "features"))
    print("## Mean ± sd over training seeds, per sample\n")
    print(markdown_table(means, max_rows=means.height, max_chars=60))
    if args.round in (5, 6):  # the confirmation on the default sample: the candidate against the default
        verdict = study.confirm(frame, candidates[0])
        print(f"\n## {candidates[0][0]} minus {study.CURRENT[0]} (head), 95 % intervals\n")
        print("| metric | protocol | difference | seeds |\n|---|---|---|---|")
        for name, d in verdict.numbers.items():
            protocol = "deeppatent" if name == "r1_headline" else "leave_one_out"
            metric = "patent_recall_at_1" if name == "r1_headline" else name
            print(f"| {metric} | {protocol} | {study.interval(d)} | "
                  f"{', '.join(f'{s}: {len(x)}' for s, x in d['seeds'].items())} |")
        print(f"\nChecks: {verdict.checks} -> {'replaces the default' if verdict.passed else 'the default stays'}")
        cand = candidates[0]
        pairs = [(cand, study.CURRENT), (cand, ("pretrained", "head")), (study.CURRENT, ("pretrained", "head")),
                 (cand, study.BASELINE), (study.CURRENT, study.BASELINE)]
        if cand[0] in study.BASELINE_OF:
            pairs.append((cand, (study.BASELINE_OF[cand[0]], "head")))
        print(f"\n## Every pair on this sample (95 % intervals)\n\n{study.pairs_table(frame, pairs)}")
        return 0
    if args.round == 8:  # issue 28's bar, one sample at a time, against the baseline at the same settings
        verdicts = {sample: [study.bar(frame.filter(pl.col("sample") == sample), c) for c in candidates]
                    for sample in sorted(frame["sample"].unique())}
        print("\n## Each candidate minus the baseline, per sample (95 % intervals; R@1 per training seed)\n")
        print(study.bar_table(verdicts))
        untouched = [(c, ("pretrained", "head")) for c in (study.BASELINE, *candidates)]
        print(f"\n## Against the untouched backbone\n\n{study.pairs_table(frame, untouched)}")
        print("\n## Validation curves: the best epoch against the last (runs trained with validation)\n")
        print(markdown_table(epoch_choice(dirs), max_rows=100, max_chars=60))
        return 0
    if args.round == 7:  # one change each to the new default, judged against its runs (C1-C3)
        print(f"\n## Candidates minus {'/'.join(study.NEW_DEFAULT)} on the pooled queries (95 % intervals)\n")
        print(study.pairs_table(frame, [(c, study.NEW_DEFAULT) for c in candidates]))
        print("\n| candidate | passed | failed |\n|---|---|---|")
        for cand in candidates:
            v = study.confirm(frame, cand, study.NEW_DEFAULT, per_sample=True)
            print(f"| {'/'.join(cand)} | {' '.join(k for k, ok in v.checks.items() if ok)} | "
                  f"{' '.join(k for k, ok in v.checks.items() if not ok) if v.numbers else 'not run yet'} |")
        untouched = [(c, (study.UNTOUCHED_OF.get(c[0], "pretrained"), "head")) for c in (study.NEW_DEFAULT, *candidates)]
        print(f"\n## Against the untouched backbone at the same input size\n\n{study.pairs_table(frame, untouched)}")
        print("\n## How far each backbone moved from the pretrained weights\n")
        print(markdown_table(backbone_drift(dirs), max_rows=100, max_chars=60))
        return 0
    shipped, verdicts, why = study.decide(frame, candidates)
    print("\n## Candidates: paired differences on the pooled queries (95 % intervals)\n")
    print(study.report(verdicts))
    print(f"\nShips: {shipped[0]} with {shipped[1]} features ({why}).")
    if args.round > 1:
        print("\n## How far each backbone moved from the pretrained weights\n")
        print(markdown_table(backbone_drift(dirs), max_rows=100, max_chars=60))
    if args.explore:
        explored = study.judge(frame, (EXPLORED, "ensemble"))
        print(f"\n## Exploratory, after the results (not a candidate of the rule)\n\n{study.report([explored])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
