"""`hmpcl metrics / compare / champion` against a temporary sqlite MLflow store holding runs logged here."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import pytest

mlflow = pytest.importorskip("mlflow")

from hmpcl_lib import tracking  # noqa: E402
from hmpcl_lib import cli  # noqa: E402

MODEL = "hmpcl-encoder"


# "last runs" is ordered by start time: each run gets its own explicit start time, one second after the previous
# one, instead of relying on the clock moving between two runs
_START_MS = itertools.count(int(time.time() * 1000) - 3_600_000, 1000)


def _log_run(name: str, params: dict, metrics: dict, tags: dict | None = None) -> str:
    created = mlflow.MlflowClient().create_run(mlflow.get_experiment_by_name("hmpcl").experiment_id,
                                               start_time=next(_START_MS), tags=tags or {}, run_name=name)
    with mlflow.start_run(run_id=created.info.run_id) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict:
    """Four runs (oldest first) and a registered model whose `champion` alias points at the hierarchical run."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("hmpcl", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_experiment(experiment_id=exp)
    ids = {
        "old": _log_run("train-old", {"loss": "baseline", "lr": "0.001"}, {"patent_map": 0.1}),
        "baseline": _log_run("train-baseline", {"loss": "baseline", "lr": "0.0003", "epochs": "4"},
                             {"patent_map": 0.5, "subclass_map_at_100": 0.25, "class_map_at_100": 0.4,
                              "graded_ndcg_at_10": 0.6, "final_loss": 2.5, "class_01.patent_map": 0.45}),
        "hierarchical": _log_run("train-hierarchical", {"loss": "hierarchical", "lr": "0.0003", "epochs": "4"},
                                 {"patent_map": 0.625, "subclass_map_at_100": 0.5, "class_map_at_100": 0.75,
                                  "graded_ndcg_at_10": 0.7, "final_loss": 3.0, "class_01.patent_map": 0.55}),
        "comparison": _log_run("model-comparison", {}, {"pretrained.patent_map": 0.3}),
    }
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, source=(root / "artifacts" / "model").as_uri(),
                                          run_id=ids["hierarchical"], tags={"loss": "hierarchical"})
    client.set_model_version_tag(MODEL, version.version, "patent_map", "0.625000")
    client.set_registered_model_alias(MODEL, "champion", version.version)
    client.create_registered_model("no-champion-yet")
    return {"uri": uri, "ids": ids, "root": root, "version": version.version}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(out: str) -> list[list[str]]:
    """Data rows of a rendered table (skips header and rule), split on runs of 2+ spaces."""
    import re

    lines = out.strip().splitlines()
    return [re.split(r"\s{2,}", line.strip()) for line in lines[2:]]


def test_metrics_lists_last_runs_newest_first_with_key_metrics(store, capsys):
    code, out, _ = run_cli(capsys, "metrics", "--last", "3", "--tracking-uri", store["uri"])
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == ["run_id", "run_name", "status", "start", *cli.KEY_METRICS]
    rows = table_rows(out)
    assert [r[1] for r in rows] == ["model-comparison", "train-hierarchical", "train-baseline"]  # old one cut off
    hier = rows[1]
    assert hier[0] == store["ids"]["hierarchical"] and hier[2] == "FINISHED"
    assert hier[4:] == ["0.6250", "0.5000", "0.7500", "0.7000", "3.0000"]
    assert rows[0][4:] == ["-"] * 5  # the comparison run has none of the key metrics


def test_metrics_selected_columns(store, capsys):
    code, out, _ = run_cli(capsys, "metrics", "--last", "10", "--metric", "patent_map",
                           "--metric", "pretrained.patent_map", "--tracking-uri", store["uri"])
    assert code == 0
    assert out.splitlines()[0].split()[-2:] == ["patent_map", "pretrained.patent_map"]
    rows = table_rows(out)
    assert len(rows) == 4
    assert {r[1]: r[-2:] for r in rows} == {
        "model-comparison": ["-", "0.3000"], "train-hierarchical": ["0.6250", "-"],
        "train-baseline": ["0.5000", "-"], "train-old": ["0.1000", "-"]}


def test_tracking_uri_defaults_to_env(store, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store["uri"])
    code, out, _ = run_cli(capsys, "metrics", "--last", "1")
    assert code == 0 and "model-comparison" in out
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.default_tracking_uri() == "sqlite:///mlflow.db"


def test_the_library_config_takes_the_environment_the_readme_sets(monkeypatch, tmp_path):
    """`tracking.TrackingConfig()` (the README's Python snippet) opens the store, artifacts and UI the environment
    names, like every entry point, not a store in whatever folder the snippet runs from."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    monkeypatch.setenv("HMPCL_MLFLOW_ARTIFACTS", str(tmp_path / "art"))
    monkeypatch.setenv("HMPCL_MLFLOW_UI", "http://127.0.0.1:5001")
    cfg = tracking.TrackingConfig()
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'elsewhere.db'}" and cfg.artifact_root == str(tmp_path / "art")
    assert cfg.ui_url == "http://127.0.0.1:5001"
    for name in ("MLFLOW_TRACKING_URI", "HMPCL_MLFLOW_ARTIFACTS", "HMPCL_MLFLOW_UI"):
        monkeypatch.delenv(name)
    assert tracking.TrackingConfig() == tracking.TrackingConfig(tracking.DEFAULT_TRACKING_URI, "hmpcl", "hmpcl-encoder",
                                                                "mlartifacts", "http://127.0.0.1:5000")


def test_missing_store_is_a_clear_error_and_creates_nothing(tmp_path, capsys):
    db = tmp_path / "nothing.db"
    code, out, err = run_cli(capsys, "metrics", "--tracking-uri", f"sqlite:///{db}")
    assert code == 1 and out == ""
    assert "no MLflow store" in err and str(db) in err
    assert not db.exists()


def test_missing_experiment_is_a_clear_error(store, capsys):
    code, _, err = run_cli(capsys, "metrics", "--tracking-uri", store["uri"], "--experiment", "nope")
    assert code == 1 and "no experiment 'nope'" in err
    assert mlflow.MlflowClient(store["uri"]).get_experiment_by_name("nope") is None  # a read never creates one


def test_last_must_be_positive(store, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["metrics", "--last", "0", "--tracking-uri", store["uri"]])
    assert exc.value.code == 2
    assert "--last must be at least 1" in capsys.readouterr().err


def test_compare_by_name_shows_differing_params_and_deltas(store, capsys):
    code, out, _ = run_cli(capsys, "compare", "train-baseline", "train-hierarchical", "--tracking-uri", store["uri"])
    assert code == 0
    assert f"A = train-baseline ({store['ids']['baseline']}" in out
    assert f"B = train-hierarchical ({store['ids']['hierarchical']}" in out
    params = out.split("Params that differ:\n")[1].split("\n\n")[0]
    assert table_rows(params) == [["loss", "baseline", "hierarchical"]]  # lr and epochs are equal: not listed
    metrics = out.split("Metrics:\n")[1]
    rows = {r[0]: r[1:] for r in table_rows(metrics) if not r[0].startswith("(")}
    assert rows["patent_map"] == ["0.5000", "0.6250", "+0.1250"]
    assert rows["final_loss"] == ["2.5000", "3.0000", "+0.5000"]
    assert rows["class_map_at_100"] == ["0.4000", "0.7500", "+0.3500"]
    assert "class_01.patent_map" not in rows
    assert "(1 per-class metrics hidden; add --per-class)" in out


def test_compare_by_id_with_per_class_and_missing_values(store, capsys):
    ids = store["ids"]
    code, out, _ = run_cli(capsys, "compare", ids["old"], ids["hierarchical"], "--per-class",
                           "--tracking-uri", store["uri"])
    assert code == 0
    params = {r[0]: r[1:] for r in table_rows(out.split("Params that differ:\n")[1].split("\n\n")[0])}
    assert params == {"epochs": ["-", "4"], "loss": ["baseline", "hierarchical"], "lr": ["0.001", "0.0003"]}
    rows = {r[0]: r[1:] for r in table_rows(out.split("Metrics:\n")[1])}
    assert rows["class_01.patent_map"] == ["-", "0.5500", "-"]
    assert rows["patent_map"] == ["0.1000", "0.6250", "+0.5250"]


def test_compare_selected_metrics_and_same_run(store, capsys):
    code, out, _ = run_cli(capsys, "compare", "train-old", "train-old", "--metric", "patent_map",
                           "--tracking-uri", store["uri"])
    assert code == 0
    assert "(all params equal)" in out
    assert table_rows(out.split("Metrics:\n")[1]) == [["patent_map", "0.1000", "0.1000", "+0.0000"]]


def test_compare_unknown_run_names_it(store, capsys):
    code, _, err = run_cli(capsys, "compare", "train-old", "no-such-run", "--tracking-uri", store["uri"])
    assert code == 1 and "no-such-run" in err
    code, _, err = run_cli(capsys, "compare", "0" * 32, "train-old", "--tracking-uri", store["uri"])
    assert code == 1 and "0" * 32 in err


def test_champion_prints_version_tags_and_run_metrics(store, capsys):
    code, out, _ = run_cli(capsys, "champion", "--tracking-uri", store["uri"])
    assert code == 0
    assert f"version:  {store['version']} (alias champion)" in out
    assert f"run_id:   {store['ids']['hierarchical']}" in out
    tags = {r[0]: r[1] for r in table_rows(out.split("Tags:\n")[1].split("\n\n")[0])}
    assert tags == {"loss": "hierarchical", "patent_map": "0.625000"}
    metrics = {r[0]: r[1] for r in table_rows(out.split("Run metrics:\n")[1])}
    assert metrics["patent_map"] == "0.6250" and metrics["final_loss"] == "3.0000"


def test_champion_without_alias_says_so(store, capsys):
    code, out, _ = run_cli(capsys, "champion", "--registered-model", "no-champion-yet", "--tracking-uri", store["uri"])
    assert code == 0
    assert "no 'champion' alias on registered model 'no-champion-yet'" in out


def test_render_table_aligns_text_left_numbers_right():
    text = cli.render_table(["name", "value"], [["a", "1.5000"], ["longer", "-"]])
    assert text.splitlines() == ["name     value", "------  ------", "a       1.5000", "longer       -"]


def test_module_entry_point(store):
    proc = subprocess.run([sys.executable, "-m", "hmpcl_lib.cli", "metrics", "--last", "1",
                           "--tracking-uri", store["uri"]], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert "model-comparison" in proc.stdout
