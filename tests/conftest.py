"""Shared test fixtures."""

import shutil
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, spinning OpenMP threads make tiny steps 10x slower.
    Modules that train or embed use it with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


STATE_ENV = ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "HMPCL_DATA_ROOT", "HMPCL_MLFLOW_ARTIFACTS")


@pytest.fixture(scope="session", autouse=True)
def state_outside_the_checkout(tmp_path_factory):
    """`make test` runs pytest with the Makefile's exports, which point DAGSTER_HOME, MLFLOW_TRACKING_URI,
    HMPCL_DATA_ROOT and HMPCL_MLFLOW_ARTIFACTS at `make run`'s state in the checkout (dagster_home/, mlflow.db, data/,
    mlartifacts/). Tests give their own state a tmp_path; this points those defaults at a session temp folder too, so
    a test that relies on a default writes neither into the checkout nor into the user's pipeline state."""
    root = tmp_path_factory.mktemp("state")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).resolve().parents[1] / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    values = {"DAGSTER_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
              "HMPCL_DATA_ROOT": str(root / "data"), "HMPCL_MLFLOW_ARTIFACTS": str(root / "mlartifacts")}
    with pytest.MonkeyPatch.context() as mp:
        for key in STATE_ENV:
            mp.setenv(key, values[key])
        yield root
