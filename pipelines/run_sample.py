"""`make run`: materialize every asset on the generated sample corpus, in the persistent Dagster instance.

The runs land in $DAGSTER_HOME (so `make dev` shows them in the UI) and in MLflow; the last thing printed is the
pretrained / baseline / hierarchical comparison table.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import dagster as dg


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", dest="overrides", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field for every training of the run, e.g. --set epochs=4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not os.environ.get("DAGSTER_HOME"):
        sys.exit("DAGSTER_HOME is not set: use `make run`, or export DAGSTER_HOME=$PWD/dagster_home")
    from pipelines.definitions import defs
    from hmpcl_lib.io import markdown_table
    from pipelines.defs.assets.comparison import variant_partitions
    from pipelines.defs.resources import DataStore

    from hmpcl_lib.train.config import TrainConfig, config_from_strings

    try:
        changed = config_from_strings(args.overrides)
    except ValueError as exc:
        parser.error(str(exc))
    default = TrainConfig()
    training = {k: getattr(changed, k) for k in TrainConfig.__dataclass_fields__
                if getattr(changed, k) != getattr(default, k)}
    store = DataStore()
    if store.source != "sample":
        print(f"HMPCL_SOURCE={store.source}: ingest years with the `ingest_year` job in the UI instead", file=sys.stderr)
    instance = dg.DagsterInstance.get()
    started = time.perf_counter()
    for year in store.sample_spec().years:
        result = defs.resolve_job_def("ingest_year").execute_in_process(
            instance=instance, partition_key=str(year), raise_on_error=False)
        if not result.success:
            print(f"ingest of {year} failed (run {result.run_id}); see `make dev`", file=sys.stderr)
            return 1
    years = [str(y) for y in store.sample_spec().years]
    # the chain the sensors run in the UI (pipelines.defs.sensors), in order: model, every year's corpus, index
    runs = ([("full_pipeline", None)] + [("embed_year", y) for y in years] + [("publish", None)]
            + [("compare_variants", v) for v in variant_partitions.get_partition_keys()] + [("compare_models", None)])
    for job, partition in runs:
        ops = {"full_pipeline": "trained_encoder", "compare_variants": "variant_encoder"}.get(job)
        run_config = {"ops": {ops: {"config": training}}} if ops and training else None
        result = defs.resolve_job_def(job).execute_in_process(instance=instance, partition_key=partition,
                                                              run_config=run_config, raise_on_error=False)
        if not result.success:
            print(f"{job} {partition or ''} failed (run {result.run_id}); see `make dev`", file=sys.stderr)
            return 1
    table = result.output_for_node("model_comparison")
    print(f"\nAll assets materialized in {time.perf_counter() - started:.0f} s. Data under {store.base}.")
    print("\nModel comparison on the sample test split (patent-level and hierarchy-level retrieval):\n")
    print(markdown_table(table, max_rows=10))
    print("\nDagster UI: make dev  →  http://127.0.0.1:3000    MLflow UI: make mlflow  →  http://127.0.0.1:5000")
    print('Ask the results in SQL: .venv/bin/hmpcl sql --tables   (README "Ask the results")')
    return 0


if __name__ == "__main__":
    sys.exit(main())
