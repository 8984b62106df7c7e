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
import pytest

from pipelines.defs.schedules import retrain_schedule
from pipelines.defs.sensors import changed_years, new_drawings_sensor

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

def _materialize_drawings(instance: dg.DagsterInstance, year: str, rows: int | None) -> None:
    metadata = {} if rows is None else {"dagster/row_count": rows}
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="drawings", partition=year,
                                                                metadata=metadata))


def _tick(instance: dg.DagsterInstance, cursor: str | None):
    """One sensor evaluation; returns (result, cursor after the tick)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = new_drawings_sensor(context)
    return result, context.cursor


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_sensor_targets_retrain_and_starts_stopped():
    assert new_drawings_sensor.job_name == "retrain"
    assert new_drawings_sensor.default_status == dg.DefaultSensorStatus.STOPPED


def test_sensor_skips_when_nothing_was_materialized(instance):
    result, cursor = _tick(instance, None)
    assert isinstance(result, dg.SkipReason)
    assert "no new drawings" in result.skip_message
    assert cursor is None


def test_sensor_first_event_then_same_count_then_changes(instance):
    _materialize_drawings(instance, "2019", 10)
    first, cursor = _tick(instance, None)
    assert isinstance(first, dg.RunRequest)
    assert first.tags["hmpcl/changed_years"] == "2019"
    assert json.loads(cursor)["rows"] == {"2019": 10}

    again, cursor = _tick(instance, cursor)  # no new event since the cursor
    assert isinstance(again, dg.SkipReason) and "no new drawings" in again.skip_message

    _materialize_drawings(instance, "2019", 10)  # re-materialized, same rows: nothing to learn from
    same, cursor = _tick(instance, cursor)
    assert isinstance(same, dg.SkipReason) and "same row counts" in same.skip_message

    _materialize_drawings(instance, "2019", 12)  # new rows in a known year
    grown, cursor = _tick(instance, cursor)
    assert isinstance(grown, dg.RunRequest) and grown.tags["hmpcl/changed_years"] == "2019"

    _materialize_drawings(instance, "2020", 5)  # a new year partition
    new_year, cursor = _tick(instance, cursor)
    assert isinstance(new_year, dg.RunRequest) and new_year.tags["hmpcl/changed_years"] == "2020"
    assert json.loads(cursor)["rows"] == {"2019": 12, "2020": 5}

    assert len({first.run_key, grown.run_key, new_year.run_key}) == 3  # distinct keys: none deduplicated away


def test_sensor_batches_several_events_into_one_request(instance):
    _materialize_drawings(instance, "2018", 3)
    _, cursor = _tick(instance, None)
    for year, rows in [("2018", 3), ("2019", 7), ("2020", 1), ("2020", 2)]:
        _materialize_drawings(instance, year, rows)
    result, cursor = _tick(instance, cursor)
    assert isinstance(result, dg.RunRequest)
    assert result.tags["hmpcl/changed_years"] == "2019,2020"
    assert json.loads(cursor)["rows"] == {"2018": 3, "2019": 7, "2020": 2}


def test_sensor_ignores_other_assets(instance):
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="lic_codes",
                                                                metadata={"dagster/row_count": 99}))
    result, _ = _tick(instance, None)
    assert isinstance(result, dg.SkipReason)


def test_sensor_tick_through_the_framework_keeps_the_cursor(instance):
    """evaluate_tick is what the daemon calls: the run request and the cursor come back together."""
    _materialize_drawings(instance, "2019", 10)
    data = new_drawings_sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert len(data.run_requests) == 1 and data.run_requests[0].tags["hmpcl/changed_years"] == "2019"
    data = new_drawings_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=data.cursor))
    assert data.run_requests == [] and data.skip_message


@pytest.mark.parametrize(
    ("known", "events", "changed", "counts"),
    [
        ({}, [], [], {}),
        ({}, [("2019", 10)], ["2019"], {"2019": 10}),
        ({"2019": 10}, [("2019", 10)], [], {"2019": 10}),
        ({"2019": 10}, [("2019", 8)], ["2019"], {"2019": 8}),  # fewer rows is a change too
        ({"2019": 10}, [("2020", 1), ("2019", 11), ("2020", 2)], ["2019", "2020"], {"2019": 11, "2020": 2}),
        ({"2019": 10}, [("2019", 11), ("2019", 10)], ["2019"], {"2019": 10}),  # changed within the batch
    ],
)
def test_changed_years(known, events, changed, counts):
    before = dict(known)
    assert changed_years(known, events) == (changed, counts)
    assert known == before  # the caller's state is not mutated


# ------------------------------------------------------------------------------------------------ definitions

def test_jobs_select_the_documented_assets():
    from pipelines.definitions import defs

    def selected(job: str) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}

    assert selected("retrain") == {"lic_hierarchy", "splits", "decoded_drawings", "trained_encoder", "corpus_embeddings",
                                   "gallery_index", "retrieval_benchmark", "champion_model"}
    assert "lic_codes" in selected("full_pipeline") and "model_comparison" not in selected("full_pipeline")
    assert selected("compare_variants") == {"variant_encoder", "variant_benchmark"}
    assert selected("compare_models") == {"model_comparison"}
    assert defs.resolve_job_def("compare_variants").partitions_def.get_partition_keys() == [
        "pretrained", "baseline", "hierarchical"]
    assert defs.get_assets_def("variant_encoder").op.pool == "gpu"
    assert defs.get_assets_def("variant_encoder").op.tags["dagster-k8s/config"]
    assert selected("ingest_year") == {"raw_archives", "drawings"}
    assert defs.get_assets_def("trained_encoder").op.pool == "gpu"
    assert defs.get_assets_def("corpus_embeddings").op.pool == "gpu"
    assert defs.get_assets_def("raw_archives").op.retry_policy is None  # the download itself retries (one layer)


def test_dagster_definitions_validate(tmp_path):
    """The CLI check users and CI run; with the project's dagster.yaml as instance config."""
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "HMPCL_DATA_ROOT": str(tmp_path / "data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.run([str(dagster), "definitions", "validate", "-m", "pipelines.definitions"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Validation successful" in proc.stdout + proc.stderr
