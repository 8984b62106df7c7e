"""`hmpcl`: the project's command: MLflow runs and the registry (last runs, a run-vs-run diff, the champion), sweeps,
and the search page.

Why a CLI: the MLflow UI is good for browsing, but "how did the last five trainings do?" should be one command.
Everything is read through MLflow's client API, so it works the same on the local sqlite store and on a server.
mlflow is imported inside the commands to keep `hmpcl --help` instant.

    hmpcl metrics --last 5 [--metric patent_map ...] [--tracking-uri URI] [--experiment hmpcl]
    hmpcl compare RUN_A RUN_B        (run ids or run names; B - A deltas, paired 95 % intervals when both logged
                                      per-query metrics)
    hmpcl champion                   (the registered model's `champion` version and its tags)
    hmpcl sweep --seeds 0 1 2 [--variant NAME ...] [--set epochs=4]
                                     (train a grid of loss/sampler/schedule variants over seeds; MLflow parent run
                                      with one child per run; table with mean ± sd, paired intervals, Pareto front)
    hmpcl sql "SELECT ..." [--csv | --json] | --tables
                                     (ask the results database in SQL: read-only; hmpcl_lib.experiments.results_db)
    hmpcl serve [--port 8000]        (the search page over the champion's index on 127.0.0.1; `make search`;
                                      see hmpcl_lib.cli.serve)
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from hmpcl_lib.layout import DataLayout, default_data_root
from hmpcl_lib import tracking
from hmpcl_lib.errors import HmpclError

KEY_METRICS = ["patent_map", "subclass_map_at_100", "class_map_at_100", "graded_ndcg_at_10", "final_loss"]
PER_CLASS = re.compile(r"^class_[^.]+\.")  # per-main-class metrics (`class_15.patent_map`), hidden unless asked for
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
MISSING = "-"


# ---------------------------------------------------------------------------------------------------- formatting

def format_value(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_delta(a: float | None, b: float | None, digits: int = 4) -> str:
    if a is None or b is None:
        return MISSING
    return f"{b - a:+.{digits}f}"


def format_time(ms: int | None) -> str:
    if ms is None:
        return MISSING
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table (text left, numbers right) that reads well in a terminal and in CI logs."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]
    numeric = [bool(rows) and all(_looks_numeric(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _looks_numeric(text: str) -> bool:
    return text == MISSING or re.fullmatch(r"[+-]?\d+(\.\d+)?", text) is not None


# ---------------------------------------------------------------------------------------------------- MLflow access

def open_store(cfg: tracking.TrackingConfig):
    """An MlflowClient on an existing store; a missing sqlite file is an error (not a new empty store)."""
    if cfg.tracking_uri.startswith("sqlite:///"):
        path = Path(cfg.tracking_uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise HmpclError(f"no MLflow store at {path.resolve()} (tracking URI {cfg.tracking_uri}); "
                             "run the pipeline first (`make run`) or pass --tracking-uri")
    return tracking.client(cfg)


def experiment_of(client, cfg: tracking.TrackingConfig):
    exp = client.get_experiment_by_name(cfg.experiment)
    if exp is None:
        raise HmpclError(f"no experiment {cfg.experiment!r} in {cfg.tracking_uri}; pass --experiment NAME")
    return exp


def resolve_run(client, experiment_id: str, ref: str):
    """A run by id, else the newest run of the experiment with that run name."""
    from mlflow.exceptions import MlflowException

    if RUN_ID.match(ref):
        try:
            return client.get_run(ref)
        except MlflowException:
            pass  # a 32-hex run *name* is unlikely but legal: fall through to the name lookup
    quoted = ref.replace("'", "\\'")
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{quoted}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise HmpclError(f"no run with id or name {ref!r} in experiment {experiment_id}")
    return runs[0]


# ---------------------------------------------------------------------------------------------------- commands

def metrics_command(cfg: tracking.TrackingConfig, last: int, metrics: list[str]) -> str:
    """The last `last` runs (newest first) with their key metrics."""
    experiment_of(open_store(cfg), cfg)  # fail clearly instead of creating the experiment
    runs = tracking.recent_runs(cfg, last=last)
    if runs.height == 0:
        return f"no runs in experiment {cfg.experiment!r} ({cfg.tracking_uri})"
    header = ["run_id", "run_name", "status", "start", *metrics]
    rows = []
    for r in runs.iter_rows(named=True):
        rows.append([r["run_id"], r["run_name"] or MISSING, r["status"], format_time(r["start_time"]),
                     *(format_value(r.get(f"metrics.{m}")) for m in metrics)])
    return render_table(header, rows)


def compare_command(cfg: tracking.TrackingConfig, run_a: str, run_b: str, metrics: list[str] | None = None,
                    per_class: bool = False) -> str:
    """Params that differ, then metrics of both runs side by side with the delta B - A."""
    client = open_store(cfg)
    exp = experiment_of(client, cfg)
    a, b = resolve_run(client, exp.experiment_id, run_a), resolve_run(client, exp.experiment_id, run_b)
    title = (f"A = {a.info.run_name} ({a.info.run_id}, {a.info.status})\n"
             f"B = {b.info.run_name} ({b.info.run_id}, {b.info.status})")

    pa_, pb = a.data.params, b.data.params
    differing = sorted(k for k in pa_.keys() | pb.keys() if pa_.get(k) != pb.get(k))
    if differing:
        params = render_table(["param", "A", "B"], [[k, pa_.get(k, MISSING), pb.get(k, MISSING)] for k in differing])
    else:
        params = "(all params equal)"

    ma, mb = a.data.metrics, b.data.metrics
    names = metrics or sorted(k for k in ma.keys() | mb.keys() if per_class or not PER_CLASS.match(k))
    hidden = 0 if metrics or per_class else sum(bool(PER_CLASS.match(k)) for k in ma.keys() | mb.keys())
    rows = [[k, format_value(ma.get(k)), format_value(mb.get(k)), format_delta(ma.get(k), mb.get(k))] for k in names]
    table = render_table(["metric", "A", "B", "B - A"], rows) if rows else "(no metrics)"
    note = f"\n({hidden} per-class metrics hidden; add --per-class)" if hidden else ""
    return f"{title}\n\nParams that differ:\n{params}\n\nMetrics:\n{table}{note}{_paired_section(cfg, a, b)}"


def _paired_section(cfg: tracking.TrackingConfig, a, b) -> str:
    """Paired bootstrap intervals of B - A over the queries both runs were benchmarked on, per protocol."""
    from hmpcl_lib.experiments.runs import PROTOCOL_PREFIX, per_query_artifact
    from hmpcl_lib.retrieval.metrics import paired_bootstrap

    parts = []
    for protocol in PROTOCOL_PREFIX:
        qa, qb = (per_query_artifact(r.info.run_id, cfg, protocol) for r in (a, b))
        if qa is None or qb is None:
            continue
        try:
            diff = paired_bootstrap(qa, qb)
        except HmpclError as err:
            parts.append(f"\n\n{protocol}: no paired interval ({err})")
            continue
        rows = [[r["metric"], str(r["n"]), format_value(r["diff"]), format_value(r["low"]), format_value(r["high"])]
                for r in diff.iter_rows(named=True)]
        parts.append(f"\n\nB - A per query, {protocol} protocol (paired bootstrap, 95 %):\n"
                     + render_table(["metric", "queries", "mean diff", "low", "high"], rows))
    return "".join(parts)


def sweep_command(data_root: str, variants: list[str], seeds: list[int], overrides: list[str], out: str | None,
                  name: str, cfg: tracking.TrackingConfig | None, protocol: str) -> str:
    """Run (or resume) a sweep and return its summary tables."""
    import polars as pl

    from hmpcl_lib.experiments import sweep
    from hmpcl_lib.experiments.variants import TRAINED, UNTOUCHED, VARIANTS
    from hmpcl_lib.train.config import TrainConfig, config_from_strings

    unknown = [v for v in variants if v not in TRAINED and v not in UNTOUCHED]
    if unknown:
        raise HmpclError(f"unknown variant(s) {unknown} for a sweep, which trains one of: {', '.join(TRAINED)} "
                         f"or scores the untouched backbone: {', '.join(UNTOUCHED)}")
    if "baseline" not in variants:
        variants = ["baseline", *variants]
    layout = DataLayout(Path(data_root))
    paths = [layout.hierarchy_path, layout.splits_path]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise HmpclError(f"missing {missing}: run `make run` (or the data assets) first")
    base = config_from_strings(overrides, TrainConfig())
    out_dir = Path(out) if out else layout.sweeps_dir / name
    frame = sweep.run_sweep(pl.read_parquet(paths[0]), pl.read_parquet(paths[1]),
                            {v: VARIANTS[v] for v in variants if v in TRAINED}, seeds, base, out_dir, cfg, name=name,
                            data_root=layout.root,  # the comparison's evaluation path: the decoded pixel store
                            untouched={v: UNTOUCHED[v] for v in variants if v in UNTOUCHED})
    tables = [f"## {protocol} protocol, {features} features (Δ: paired 95 % interval vs baseline, head features)\n\n"
              + sweep.markdown(sweep.summarise(frame, protocol=protocol, features=features))
              for features in sweep.FEATURES]
    from hmpcl_lib.experiments.results_db import build_results_db

    db = build_results_db(layout, cfg)  # `hmpcl sql` sees the sweep at once
    return f"Sweep {name!r}: {len(variants)} variants x {len(seeds)} seeds, results in {out_dir} (and {db})\n\n" + \
        "\n\n".join(tables)


def sql_command(data_root: str, db: str | None, statement: str | None, list_tables: bool, fmt: str) -> str:
    """The answer of one read-only SELECT on the results database (or its tables), as text, CSV or JSON."""
    from hmpcl_lib.experiments import results_db
    from hmpcl_lib.io import markdown_table

    path = Path(db) if db else DataLayout(Path(data_root)).results_db_path
    if list_tables:
        frame = results_db.tables(path)
    elif statement:
        frame = results_db.query(path, statement)
    else:
        raise HmpclError('pass a statement, e.g. hmpcl sql "SELECT * FROM overall", or --tables')
    if fmt == "csv":  # lists and structs as JSON text: CSV has no nested values
        import json

        import polars as pl

        nested = [c for c, t in frame.schema.items() if t.is_nested()]
        frame = frame.with_columns(pl.Series(c, [json.dumps(v, default=str) for v in frame[c].to_list()],
                                             dtype=pl.String) for c in nested)
        return frame.write_csv().rstrip("\n")
    if fmt == "json":
        return frame.write_json()
    return markdown_table(frame, max_rows=max(frame.height, 1), max_chars=80) + f"\n({frame.height} rows)"


def champion_command(cfg: tracking.TrackingConfig) -> str:
    """The version behind the `champion` alias, its tags, and the key metrics of the run that produced it."""
    client = open_store(cfg)
    version = tracking.current_champion(cfg)
    if version is None:
        return (f"no {tracking.CHAMPION!r} alias on registered model {cfg.registered_model!r} "
                f"({cfg.tracking_uri}); materialize `champion_model` first")
    lines = [f"model:    {cfg.registered_model}",
             f"version:  {version.version} (alias {tracking.CHAMPION})",
             f"run_id:   {version.run_id}",
             f"created:  {format_time(version.creation_timestamp)}",
             f"load:     hmpcl_lib.tracking.load_model(cfg, \"models:/{cfg.registered_model}@{tracking.CHAMPION}\") "
             "(torch module, weights only) or mlflow.pyfunc.load_model(...) (images -> embeddings)",
             f"serve:    mlflow models serve -m models:/{cfg.registered_model}@{tracking.CHAMPION} --env-manager local "
             "(POST {\"dataframe_records\": [{\"image\": <base64 PNG/JPEG>}]} to /invocations)"]
    tags = sorted(version.tags.items())
    lines += ["", "Tags:", render_table(["tag", "value"], [[k, v] for k, v in tags]) if tags else "(no tags)"]
    if version.run_id:
        run_metrics = client.get_run(version.run_id).data.metrics
        rows = [[m, format_value(run_metrics.get(m))] for m in KEY_METRICS if m in run_metrics]
        if rows:
            lines += ["", "Run metrics:", render_table(["metric", "value"], rows)]
    return "\n".join(lines)


def relog_command(cfg: tracking.TrackingConfig, model_uri: str) -> str:
    """Re-log a model logged the old (pickled) way, without retraining (see `tracking.relog`)."""
    open_store(cfg)
    new_uri, version = tracking.relog(cfg, model_uri)
    if new_uri == model_uri:
        return f"{model_uri} is already pickle-free: nothing to do"
    lines = [f"re-logged {model_uri} as {new_uri} (safetensors weights, models-from-code pyfunc)"]
    if version is not None:
        aliases = ", ".join(f"@{a}" for a in tracking.client(cfg).get_model_version(version.name, version.version).aliases)
        lines.append(f"registered as {version.name} version {version.version}" + (f"; aliases moved: {aliases}"
                                                                                  if aliases else ""))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    common.add_argument("--experiment", default=tracking.TrackingConfig.experiment)
    common.add_argument("--registered-model", default=tracking.TrackingConfig.registered_model)

    parser = argparse.ArgumentParser(prog="hmpcl", description="The hmpcl command: MLflow runs and the model registry, sweeps, the search page.")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("metrics", parents=[common], help="table of the last runs and their key metrics")
    m.add_argument("--last", type=int, default=5, help="how many runs, newest first (default 5)")
    m.add_argument("--metric", action="append", dest="metrics", metavar="NAME",
                   help=f"metric column (repeatable; default: {' '.join(KEY_METRICS)})")
    c = sub.add_parser("compare", parents=[common], help="params that differ and metrics side by side")
    c.add_argument("run_a", metavar="RUN_A", help="run id or run name")
    c.add_argument("run_b", metavar="RUN_B", help="run id or run name")
    c.add_argument("--metric", action="append", dest="metrics", metavar="NAME", help="only these metrics")
    c.add_argument("--per-class", action="store_true", help="include per-main-class metrics (class_XX.*)")
    sub.add_parser("champion", parents=[common], help="the registered model's champion version and its tags")
    r = sub.add_parser("relog", parents=[common],
                       help="re-log a model logged the old (pickled) way, without retraining; moves its aliases")
    r.add_argument("model_uri", metavar="MODEL_URI", help="e.g. models:/hmpcl-encoder/3 or models:/hmpcl-encoder@champion")
    w = sub.add_parser("sweep", parents=[common], help="train variants over seeds; summary with paired intervals")
    w.add_argument("--data-root", default=default_data_root())
    w.add_argument("--variant", action="append", dest="variants", metavar="NAME",
                   help="a trained variant of hmpcl_lib.experiments.variants (repeatable; default: its SWEEP; the baseline is "
                        "always in)")
    w.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    w.add_argument("--set", action="append", dest="overrides", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig field for every variant, e.g. --set epochs=4")
    w.add_argument("--protocol", default="leave_one_out", choices=["leave_one_out", "deeppatent"])
    w.add_argument("--out", default=None, help="results folder (default: DATA_ROOT/sweeps/NAME); reruns resume")
    w.add_argument("--name", default="sweep", help="MLflow parent run name")
    w.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    q = sub.add_parser("sql", parents=[common],
                       help="ask the results database (every benchmark, variant, sweep and MLflow run) in SQL")
    q.add_argument("statement", nargs="?", metavar="SQL", help='one SELECT, e.g. "SELECT * FROM overall"')
    q.add_argument("--tables", action="store_true", help="list the tables and views with their row counts")
    q.add_argument("--data-root", default=default_data_root())
    q.add_argument("--db", default=None, help="the database file (default: DATA_ROOT/results.duckdb)")
    shape = q.add_mutually_exclusive_group()
    shape.add_argument("--csv", dest="fmt", action="store_const", const="csv", help="CSV instead of a table")
    shape.add_argument("--json", dest="fmt", action="store_const", const="json", help="JSON rows instead of a table")
    v = sub.add_parser("serve", parents=[common],
                       help="the search page over the champion's index (http://127.0.0.1:8000)")
    from hmpcl_lib.cli.serve import add_arguments as add_serve_arguments  # argparse only; the web stack loads later

    add_serve_arguments(v)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = tracking.TrackingConfig(tracking_uri=args.tracking_uri or tracking.default_tracking_uri(),
                                  experiment=args.experiment, registered_model=args.registered_model)
    try:
        if args.command == "metrics":
            if args.last < 1:
                parser.error("--last must be at least 1")
            out = metrics_command(cfg, args.last, args.metrics or KEY_METRICS)
        elif args.command == "compare":
            out = compare_command(cfg, args.run_a, args.run_b, args.metrics, args.per_class)
        elif args.command == "sweep":
            from hmpcl_lib.experiments.variants import SWEEP

            out = sweep_command(args.data_root, args.variants or list(SWEEP), args.seeds, args.overrides,
                                args.out, args.name, None if args.no_mlflow else cfg, args.protocol)
        elif args.command == "sql":
            out = sql_command(args.data_root, args.db, args.statement, args.tables, args.fmt or "table")
        elif args.command == "relog":
            out = relog_command(cfg, args.model_uri)
        elif args.command == "serve":
            from hmpcl_lib.cli.serve import serve

            out = serve(args, cfg.tracking_uri, cfg.registered_model)
        else:
            out = champion_command(cfg)
    except HmpclError as err:
        print(f"hmpcl {args.command}: error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
