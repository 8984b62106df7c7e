"""The weekly retrain schedule, the new-drawings sensor, the jobs, and `dagster definitions validate`."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from hmpcl_lib.io import file_sha256, write_parquet_atomic
from pipelines.defs.schedules import retrain_schedule
from pipelines.metadata import CONTENT_DIGEST, content_metadata
from pipelines.defs.sensors import changed_years, corpus_follow_up, follow_up_requests, new_drawings_sensor

REPO = Path(__file__).resolve().parents[1]
MONDAY_3AM = dt.datetime(2026, 1, 5, 3, 0, tzinfo=dt.timezone.utc)


# ------------------------------------------------------------------------------------------------ schedule

def test_schedule_defaults_weekly_and_stopped(monkeypatch):
    monkeypatch.delenv("HMPCL_RETRAIN_CRON", raising=False)
    monkeypatch.delenv("HMPCL_RETRAIN_TZ", raising=False)
    schedule = retrain_schedule()
    assert schedule.cron_schedule == "0 3 * * 1"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "retrain"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED  # opt-in: nobody retrains by surprise


def test_schedule_tick_requests_a_retrain_run():
    schedule = retrain_schedule()
    data = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=MONDAY_3AM))
    assert data.skip_message is None
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.job_name in (None, "retrain")  # None = the schedule's own job
    assert request.tags["dagster/schedule_name"] == schedule.name


def test_schedule_cron_and_timezone_from_env_and_arguments(monkeypatch):
    monkeypatch.setenv("HMPCL_RETRAIN_CRON", "30 1 * * 6")
    monkeypatch.setenv("HMPCL_RETRAIN_TZ", "Europe/Amsterdam")
    from_env = retrain_schedule()
    assert (from_env.cron_schedule, from_env.execution_timezone) == ("30 1 * * 6", "Europe/Amsterdam")
    explicit = retrain_schedule(cron="0 0 * * 0", timezone="America/New_York")
    assert (explicit.cron_schedule, explicit.execution_timezone) == ("0 0 * * 0", "America/New_York")
    data = explicit.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=MONDAY_3AM))
    assert len(data.run_requests) == 1


def test_schedule_rejects_a_bad_cron_string():
    with pytest.raises(dg.DagsterInvalidDefinitionError, match="cron"):
        retrain_schedule(cron="every monday")


# ------------------------------------------------------------------------------------------------ sensor

def _write_drawings(path: Path, ids: list[str]) -> Path:
    """A drawings-like table, written the way the pipeline writes it (deterministic Parquet, temp file + rename)."""
    table = pa.table({"drawing_id": ids, "patent_id": [i.split("-")[0] for i in ids]})
    return write_parquet_atomic(table, path)


def _materialize_drawings(instance: dg.DagsterInstance, year: str, path: Path | None, rows: int | None = None) -> None:
    """Report a `drawings` materialization of `year` with the metadata the asset records for the file at `path`
    (None: an event without a digest, as materializations from before the digests)."""
    metadata = {} if rows is None else {"dagster/row_count": rows}
    if path is not None:
        content, _ = content_metadata(path)
        metadata.update(content)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="drawings", partition=year,
                                                                metadata=metadata))


def _tick(instance: dg.DagsterInstance, cursor: str | None):
    """One sensor evaluation; returns (result, cursor after the tick)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = new_drawings_sensor(context)
    if isinstance(result, list):  # one embed_year request per changed year, each carrying the whole change
        assert [r.partition_key for r in result] == result[0].tags["hmpcl/changed_years"].split(",")
        assert len({r.run_key for r in result}) == len(result)
        result = result[0]
    return result, context.cursor


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_sensor_targets_embed_year_and_starts_stopped():
    assert new_drawings_sensor.job_name == "embed_year"
    assert new_drawings_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert corpus_follow_up.default_status == dg.DefaultSensorStatus.STOPPED


def test_sensor_skips_when_nothing_was_materialized(instance):
    result, cursor = _tick(instance, None)
    assert isinstance(result, dg.SkipReason)
    assert "no new drawings" in result.skip_message
    assert cursor is None


def test_sensor_fires_on_changed_content_not_on_row_counts(instance, tmp_path):
    f2019, f2020 = tmp_path / "2019.parquet", tmp_path / "2020.parquet"
    _materialize_drawings(instance, "2019", _write_drawings(f2019, ["p1-1", "p1-2", "p2-1"]), rows=3)
    first, cursor = _tick(instance, None)
    assert isinstance(first, dg.RunRequest)
    assert first.tags["hmpcl/changed_years"] == "2019"
    assert json.loads(cursor)["sha256"] == {"2019": file_sha256(f2019)}

    again, cursor = _tick(instance, cursor)  # no new event since the cursor
    assert isinstance(again, dg.SkipReason) and "no new drawings" in again.skip_message

    # re-parsed from the same records: the file is rewritten byte for byte, nothing to learn from
    _materialize_drawings(instance, "2019", _write_drawings(f2019, ["p1-1", "p1-2", "p2-1"]), rows=3)
    same, cursor = _tick(instance, cursor)
    assert isinstance(same, dg.SkipReason) and "same content" in same.skip_message

    # one drawing replaced by another: the same row count, other content
    _materialize_drawings(instance, "2019", _write_drawings(f2019, ["p1-1", "p1-2", "p3-1"]), rows=3)
    edited, cursor = _tick(instance, cursor)
    assert isinstance(edited, dg.RunRequest) and edited.tags["hmpcl/changed_years"] == "2019"
    assert json.loads(cursor)["sha256"] == {"2019": file_sha256(f2019)}

    _materialize_drawings(instance, "2020", _write_drawings(f2020, ["p9-1"]), rows=1)  # a new year partition
    new_year, cursor = _tick(instance, cursor)
    assert isinstance(new_year, dg.RunRequest) and new_year.tags["hmpcl/changed_years"] == "2020"
    assert json.loads(cursor)["sha256"] == {"2019": file_sha256(f2019), "2020": file_sha256(f2020)}

    assert len({first.run_key, edited.run_key, new_year.run_key}) == 3  # distinct keys: none deduplicated away


def test_sensor_batches_several_events_into_one_request_per_changed_year(instance, tmp_path):
    _materialize_drawings(instance, "2018", _write_drawings(tmp_path / "2018.parquet", ["a-1"]))
    _, cursor = _tick(instance, None)
    for year, ids in [("2018", ["a-1"]), ("2019", ["b-1"]), ("2020", ["c-1"]), ("2020", ["c-2"])]:
        _materialize_drawings(instance, year, _write_drawings(tmp_path / f"{year}.parquet", ids))
    result, cursor = _tick(instance, cursor)
    assert isinstance(result, dg.RunRequest)
    assert result.tags["hmpcl/changed_years"] == "2019,2020"
    assert json.loads(cursor)["sha256"] == {y: file_sha256(tmp_path / f"{y}.parquet") for y in ("2018", "2019", "2020")}


def test_sensor_treats_an_event_without_a_digest_as_changed(instance, tmp_path):
    path = _write_drawings(tmp_path / "2019.parquet", ["a-1"])
    _materialize_drawings(instance, "2019", path)
    _, cursor = _tick(instance, None)
    _materialize_drawings(instance, "2019", None, rows=1)  # cannot tell what it wrote: retrain rather than miss it
    unknown, cursor = _tick(instance, cursor)
    assert isinstance(unknown, dg.RunRequest) and unknown.tags["hmpcl/changed_years"] == "2019"
    _materialize_drawings(instance, "2019", path)  # a digest again, but nothing known to compare it with
    after_unknown, cursor = _tick(instance, cursor)
    assert isinstance(after_unknown, dg.RunRequest)
    _materialize_drawings(instance, "2019", path)
    same, _ = _tick(instance, cursor)
    assert isinstance(same, dg.SkipReason)


def test_sensor_reads_a_row_count_cursor_from_before_the_digests(instance, tmp_path):
    """An old cursor keeps its position in the event log (old events are not read again); each year's next
    materialization counts as changed once."""
    _materialize_drawings(instance, "2019", None, rows=10)
    _, new_cursor = _tick(instance, None)
    old_cursor = json.dumps({"after": json.loads(new_cursor)["after"], "rows": {"2019": 10}})
    nothing, _ = _tick(instance, old_cursor)
    assert isinstance(nothing, dg.SkipReason) and "no new drawings" in nothing.skip_message
    _materialize_drawings(instance, "2019", _write_drawings(tmp_path / "2019.parquet", ["a-1"]), rows=10)
    result, cursor = _tick(instance, old_cursor)
    assert isinstance(result, dg.RunRequest) and result.tags["hmpcl/changed_years"] == "2019"
    assert set(json.loads(cursor)) == {"after", "sha256"}


def test_sensor_ignores_other_assets(instance):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="lic_codes",
                                                                metadata={"dagster/row_count": 99}))
    result, _ = _tick(instance, None)
    assert isinstance(result, dg.SkipReason)


def test_sensor_tick_through_the_framework_keeps_the_cursor(instance, tmp_path):
    """evaluate_tick is what the daemon calls: the run request and the cursor come back together."""
    _materialize_drawings(instance, "2019", _write_drawings(tmp_path / "2019.parquet", ["a-1"]))
    from pipelines.definitions import defs

    repository = defs.get_repository_def()  # partitioned run requests are checked against the job's partitions
    data = new_drawings_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=repository))
    assert len(data.run_requests) == 1 and data.run_requests[0].tags["hmpcl/changed_years"] == "2019"
    assert data.run_requests[0].partition_key == "2019"
    data = new_drawings_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=data.cursor,
                                                                     repository_def=repository))
    assert data.run_requests == [] and data.skip_message


def test_drawings_asset_records_the_digest_the_sensor_compares(instance, tmp_path):
    """Through the real asset on a tiny generated year: the metadata and the data version are the SHA-256 of the
    Parquet file it wrote, and re-materializing from the same archive writes the same bytes, so the sensor skips."""
    from pipelines.defs.assets.data import drawings, raw_archives
    from pipelines.defs.resources import DataStore

    store = DataStore(root=str(tmp_path / "data"), source="sample", sample_n_classes=2, sample_subclasses_per_class=1,
                      sample_patents_per_subclass=2, sample_views_min=1, sample_views_max=2, sample_image_size=32,
                      max_bad_fraction=0.5)  # the generator plants a bad record or two; a tiny year is mostly them
    year = str(store.sample_years[0])

    def materialize():
        result = dg.materialize([raw_archives, drawings], partition_key=year, resources={"store": store},
                                instance=instance)
        assert result.success
        event = [m for m in result.asset_materializations_for_node("drawings")][0]
        return event

    event = materialize()
    digest = file_sha256(store.layout.drawings_path(int(year)))
    assert event.metadata[CONTENT_DIGEST].value == digest
    assert event.tags["dagster/data_version"] == digest
    first, cursor = _tick(instance, None)
    assert isinstance(first, dg.RunRequest) and json.loads(cursor)["sha256"] == {year: digest}
    materialize()
    again, _ = _tick(instance, cursor)
    assert isinstance(again, dg.SkipReason) and "same content" in again.skip_message


@pytest.mark.parametrize(
    ("known", "events", "changed", "digests"),
    [
        ({}, [], [], {}),
        ({}, [("2019", "a")], ["2019"], {"2019": "a"}),
        ({"2019": "a"}, [("2019", "a")], [], {"2019": "a"}),
        ({"2019": "a"}, [("2019", "b")], ["2019"], {"2019": "b"}),
        ({"2019": "a"}, [("2020", "x"), ("2019", "b"), ("2020", "y")], ["2019", "2020"], {"2019": "b", "2020": "y"}),
        ({"2019": "a"}, [("2019", "b"), ("2019", "a")], ["2019"], {"2019": "a"}),  # changed within the batch
        ({"2019": "a"}, [("2019", None)], ["2019"], {"2019": None}),  # no digest: cannot tell, so changed
        ({"2019": None}, [("2019", "a")], ["2019"], {"2019": "a"}),
    ],
)
def test_changed_years(known, events, changed, digests):
    before = dict(known)
    assert changed_years(known, events) == (changed, digests)
    assert known == before  # the caller's state is not mutated


# ------------------------------------------------------------------------------------------------ definitions

def test_jobs_select_the_documented_assets():
    from pipelines.definitions import defs

    def selected(job: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}

    assert selected("retrain") == {"lic_hierarchy", "splits", "trained_encoder"}
    assert selected("embed_year") == {"corpus_embeddings"}
    assert selected("publish") == {"gallery_index", "retrieval_benchmark", "champion_model"}
    assert selected("refresh_index") == {"gallery_index"}
    assert "lic_codes" in selected("full_pipeline") and "model_comparison" not in selected("full_pipeline")
    assert selected("compare_variants") == {"variant_encoder", "variant_benchmark"}
    assert selected("compare_models") == {"model_comparison", "results_db"}
    assert defs.resolve_job_def("compare_variants").partitions_def.get_partition_keys() == [
        "pretrained", "baseline", "hierarchical"]
    assert defs.get_assets_def("variant_encoder").op.pool == "gpu"
    assert defs.get_assets_def("variant_encoder").op.tags["dagster-k8s/config"]
    assert selected("ingest_year") == {"raw_archives", "drawings", "decoded_drawings"}
    assert defs.resolve_job_def("embed_year").partitions_def == defs.resolve_job_def("ingest_year").partitions_def
    assert defs.get_assets_def("trained_encoder").op.pool == "gpu"
    assert defs.get_assets_def("corpus_embeddings").op.pool == "gpu"
    assert defs.get_assets_def("raw_archives").op.retry_policy is None  # the download itself retries (one layer)


def test_dagster_definitions_validate(tmp_path):
    """The CLI check users and CI run; with the project's dagster.yaml as instance config."""
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "HMPCL_DATA_ROOT": str(tmp_path / "data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(dagster), "definitions", "validate", "-m", "pipelines.definitions"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation successful" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ corpus_follow_up

def test_a_new_model_embeds_every_year_then_publishes():
    after_training = follow_up_requests("retrain", "run-a", ["2019", "2020"], "m1", set(), benchmarked=False)
    assert [(r.job_name, r.partition_key) for r in after_training] == [("embed_year", "2019"), ("embed_year", "2020")]
    assert len({r.run_key for r in after_training}) == 2
    assert follow_up_requests("full_pipeline", "run-b", ["2019"], "m1", set(), False)[0].job_name == "embed_year"
    waiting = follow_up_requests("embed_year", "run-c", ["2019", "2020"], "m1", {"2019"}, benchmarked=False)
    assert isinstance(waiting, dg.SkipReason) and "['2020']" in waiting.skip_message
    (publish,) = follow_up_requests("embed_year", "run-d", ["2019", "2020"], "m1", {"2019", "2020"}, False)
    assert publish.job_name == "publish" and publish.tags["hmpcl/model_run"] == "m1"


def test_a_new_year_for_a_benchmarked_model_only_rebuilds_the_index():
    (request,) = follow_up_requests("embed_year", "run-e", ["2019", "2020", "2021"], "m1", {"2019", "2020", "2021"},
                                    benchmarked=True)
    assert request.job_name == "refresh_index"
    nothing = follow_up_requests("embed_year", "run-f", ["2019"], None, set(), benchmarked=False)
    assert isinstance(nothing, dg.SkipReason) and "trained_encoder" in nothing.skip_message


def test_follow_up_sensor_watches_the_model_and_embedding_jobs():
    from pipelines.definitions import defs

    from pipelines.defs.sensors import MODEL_JOBS

    sensor = defs.get_sensor_def("corpus_follow_up")
    assert {t.job_name for t in sensor.targets} == {"embed_year", "publish", "refresh_index"}
    assert set(MODEL_JOBS) == {"retrain", "full_pipeline"} and sensor.default_status == dg.DefaultSensorStatus.STOPPED
