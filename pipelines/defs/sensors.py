"""Sensors that chain the jobs: a year lands (`ingest_year`: parsed and decoded) → that year embedded by the current
model (`embed_year`) → the index; a new model → every year embedded → index, benchmark and champion (`publish`).

`new_drawings_sensor` starts `embed_year` for each year whose parsed table is new or changed; `corpus_follow_up`
watches finished runs: after `retrain` / `full_pipeline` it starts `embed_year` for every parsed year (the re-embed
backfill; unchanged pixels are not decoded again), and after an `embed_year` run it starts `refresh_index` (a model
already benchmarked: the index only) or `publish` once every year is embedded by the current model.

Content, not row counts: the `drawings` asset records the SHA-256 of the year's Parquet file as it wrote it
(`content_sha256` metadata and the materialization's data version, `pipelines.metadata.content_metadata`). The writer
is deterministic (`hmpcl_lib.io.write_parquet_atomic`: no timestamps in the file), so re-parsing the same records gives
the same digest, and any edited, added or removed drawing gives another, whatever the row count (a pyarrow upgrade that
changes the writer's bytes counts as a change once). The sensor reads digests from the event log and never opens a
table: a tick costs one event-log query; the hashing is one streamed pass, in the asset, over the file it has just
written (all parsed tables together are ≈ 77 bytes per drawing, so well under 100 MB per year at 2.7M drawings).
"""


import json

import dagster as dg

from pipelines.defs.jobs import embed_year, full_pipeline, publish, refresh_index, retrain
from pipelines.defs.resources import DataStore
from pipelines.metadata import CONTENT_DIGEST

DRAWINGS = dg.AssetKey("drawings")


def changed_years(known: dict[str, str | None], events: list[tuple[str, str | None]]
                  ) -> tuple[list[str], dict[str, str | None]]:
    """Years whose content digest differs from the last one seen (a new year, or changed content; a change that is
    undone within the batch still counts), and the updated digests. A digest of None (a materialization that
    recorded none) equals nothing: it counts as changed, and so does the next event of that year."""
    known = dict(known)
    changed = []
    for year, digest in events:
        if digest is None or known.get(year) != digest:
            changed.append(year)
        known[year] = digest
    return sorted(set(changed)), known


def _digest(record) -> str | None:
    value = record.asset_materialization.metadata.get(CONTENT_DIGEST)
    return str(value.value) if value is not None else None


@dg.sensor(job=embed_year, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def new_drawings_sensor(context: dg.SensorEvaluationContext):
    """Cursor: the last event-log storage id read and the content digest (SHA-256 of the Parquet file) per year.
    A cursor from before the digests (`{"after", "rows"}`) keeps its position; each year's next materialization then
    counts as changed once."""
    state = json.loads(context.cursor) if context.cursor else {}
    after, known = state.get("after", 0), state.get("sha256", {})
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRAWINGS, after_storage_id=after or None), limit=1000, ascending=True)
    if not result.records:
        return dg.SkipReason("no new drawings materializations")
    events = [(record.partition_key or "", _digest(record)) for record in result.records]
    changed, digests = changed_years(known, events)
    last_id = result.records[-1].storage_id
    context.update_cursor(json.dumps({"after": last_id, "sha256": digests}, sort_keys=True))
    if not changed:
        return dg.SkipReason("drawings re-materialized with the same content (same SHA-256 per year)")
    return [dg.RunRequest(run_key=f"drawings-{last_id}-{year}", partition_key=year,
                          tags={"hmpcl/changed_years": ",".join(changed)}) for year in changed]


TRAINED_ENCODER = dg.AssetKey("trained_encoder")
MODEL_JOBS = (retrain.name, full_pipeline.name)


def follow_up_requests(finished_job: str, finished_run: str, years: list[str], model_run: str | None,
                       embedded_years: set[str], benchmarked: bool) -> list[dg.RunRequest] | dg.SkipReason:
    """What follows a finished run (the rule of `corpus_follow_up`, kept apart to be tested as it is):
    - a model job → `embed_year` for every parsed year (reused where the model and the pixels are unchanged);
    - a `embed_year` run → once every parsed year is embedded by the current model (`model_run`), `refresh_index`
      when that model is already benchmarked, else `publish`; until then a skip naming the years still to embed.
    Run keys are unique per finished run (and per year), so a tick that is evaluated twice starts nothing twice."""
    if finished_job in MODEL_JOBS:
        if not years:
            return dg.SkipReason("no parsed years to embed")
        return [dg.RunRequest(run_key=f"{finished_run}-{year}", partition_key=year, job_name=embed_year.name,
                              tags={"hmpcl/after_run": finished_run}) for year in years]
    if model_run is None:
        return dg.SkipReason("no trained_encoder materialization yet: nothing to index")
    waiting = [year for year in years if year not in embedded_years]
    if waiting:
        return dg.SkipReason(f"years {waiting} are not embedded by model run {model_run} yet")
    job = refresh_index if benchmarked else publish
    return [dg.RunRequest(run_key=f"{job.name}-{finished_run}", job_name=job.name,
                          tags={"hmpcl/after_run": finished_run, "hmpcl/model_run": model_run})]


def current_model_run(instance: dg.DagsterInstance) -> str | None:
    """The MLflow run id of the latest `trained_encoder` materialization (the model `corpus_embeddings` uses)."""
    event = instance.get_latest_materialization_event(TRAINED_ENCODER)
    value = event.asset_materialization.metadata.get("mlflow_run_id") if event else None
    return str(value.value) if value is not None else None


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[retrain, full_pipeline, embed_year],
                      request_jobs=[embed_year, publish, refresh_index], minimum_interval_seconds=30,
                      default_status=dg.DefaultSensorStatus.STOPPED)
def corpus_follow_up(context: dg.RunStatusSensorContext, store: DataStore):
    """After a model job: every year embedded. After a year embedded: the index (and the benchmark and champion for a
    model not benchmarked yet) once every year is embedded by the current model. See `follow_up_requests`."""
    layout, run = store.layout, context.dagster_run
    model_run = current_model_run(context.instance)
    years = layout.years()
    embedded = {y for y in years if model_run and layout.year_embeddings_paths(model_run, y)}
    benchmarked = bool(model_run) and layout.benchmark_path(model_run).exists()
    return follow_up_requests(run.job_name, run.run_id, years, model_run, embedded, benchmarked)
