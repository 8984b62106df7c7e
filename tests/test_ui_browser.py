"""The two UIs users live in, driven in headless Chromium: the Dagster asset graph (and a materialization launched
from it) and the MLflow experiment page. Screenshots land in test-artifacts/.

Chromium is Debian's /usr/bin/chromium (scripts/ensure_chromium.sh installs it); Playwright only drives it, so no
browser download is ever needed. Without Chromium the tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ASSETS = ["raw_archives", "lic_codes", "drawings", "lic_hierarchy", "splits", "decoded_drawings", "trained_encoder",
          "corpus_embeddings", "gallery_index", "retrieval_benchmark", "champion_model", "variant_encoder", "variant_benchmark",
          "model_comparison"]
VIEWPORT = {"width": 1800, "height": 900}
ASSETS_BY_GROUP = {"data": ["raw_archives", "lic_codes", "drawings", "lic_hierarchy", "splits", "decoded_drawings"],
                   "model": ["trained_encoder"],
                   "retrieval": ["corpus_embeddings", "gallery_index", "retrieval_benchmark", "champion_model"],
                   "comparison": ["variant_encoder", "variant_benchmark", "model_comparison"]}
# every `expect` polls its condition up to 60 s (Playwright's default is 5 s): a loaded machine is slower, not wrong
expect.set_options(timeout=60_000)


# ------------------------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A UI server in its own process group (dagster dev and mlflow ui both spawn children), logging to a file."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO):
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.proc.args[0]} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        pytest.fail(f"{url} did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left (dagster dev's children can linger)."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            if sig == signal.SIGTERM:  # leader gone: still sweep its children
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            break
        self._log_file.close()


def graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = json.load(resp)
    if body.get("errors"):
        raise AssertionError(f"GraphQL errors: {body['errors']}")
    return body["data"]


def server_env(tmp_path: Path) -> dict[str, str]:
    """Everything the pipeline writes goes under tmp_path: instance, data, MLflow store and artifacts."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    # "seen" marker of the 'Join the Dagster community' dialog (what dagster._core.nux.set_nux_seen writes): without it
    # a fresh instance pops the dialog over the graph a second after load, and dismissing it would race its timer
    (home / ".nux").mkdir(exist_ok=True)
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    return {**os.environ, "DAGSTER_HOME": str(home), "HMPCL_DATA_ROOT": str(tmp_path / "data"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "HMPCL_MLFLOW_ARTIFACTS": str(tmp_path / "mlartifacts"), "HMPCL_SOURCE": "sample",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}


# ------------------------------------------------------------------------------------------------ browser

@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], check=False, timeout=600)
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and scripts/ensure_chromium.sh could not install Debian's chromium "
                    "(needs root and an apt mirror)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def wait_until_still(locator, timeout: float = 60.0, still_reads: int = 5) -> None:
    """Wait until `locator`'s box reads the same `still_reads` times in a row (an animation such as fit-to-view has
    ended), polling with a deadline; for screenshots only, so it never fails the test."""
    deadline, last, same = time.monotonic() + timeout, None, 0
    while time.monotonic() < deadline and same < still_reads:
        box = locator.bounding_box()
        same = same + 1 if box is not None and box == last else 0
        last = box
        time.sleep(0.1)


def open_asset_graph(page: Page, base: str) -> None:
    """Global asset lineage with every group expanded, in the graph (Alt+E) and in the sidebar.
    Expects a fresh browser context: the UI remembers expanded groups, and Alt+E toggles."""
    page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
    expect(page.get_by_role("button", name="Materialize all")).to_be_visible()
    expect(page.locator("foreignObject").get_by_text("retrieval", exact=True).first).to_be_visible()
    page.keyboard.press("Alt+e")
    expect(page.locator("foreignObject").get_by_text("lic_codes", exact=True)).to_be_visible()
    for group, assets in ASSETS_BY_GROUP.items():
        row = page.locator('[class*="AssetSidebarNode_itemContainer"]').filter(has=page.locator(f'[title="{group}"]'))
        expect(row.first).to_be_visible()  # the sidebar has rendered the group: only now is "no asset shown" a fact
        if page.locator(f'[title="{assets[0]}"]').count() == 0:
            row.locator("button").first.click()


def wait_for_run(base: str, asset: str, timeout: float) -> dict:
    query = ("{ runsOrError { ... on Runs { results { runId status assetSelection { path } } } } }")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [r for r in graphql(base, query)["runsOrError"]["results"]
                if [asset] in [a["path"] for a in r["assetSelection"] or []]]
        if runs and runs[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
            return runs[0]
        time.sleep(1)
    raise AssertionError(f"no finished run of {asset} within {timeout:.0f} s (runs: {runs})")


# ------------------------------------------------------------------------------------------------ tests

def start_make_dev(tmp_path: Path) -> tuple[Server, str]:
    """`make dev` as a user starts it (the Makefile's command, on a free port), its state under tmp_path; returns once
    the code location has loaded."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # as a terminal's foreground job: SIGINT at its default action, whatever this process inherited (a shell starts
    # background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt handler in its children)
    as_in_a_terminal = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execvp(sys.argv[1], sys.argv[1:])")
    server = Server([sys.executable, "-c", as_in_a_terminal, "make", "-s", "-C", str(REPO), "dev",
                     f"DAGSTER_PORT={port}"], server_env(tmp_path), tmp_path / "dagster_dev.log")
    try:
        server.wait_http(f"{base}/server_info", timeout=180)
        deadline = time.monotonic() + 240
        while True:  # the code location loads in its own process after the webserver answers
            (entry,) = graphql(base, "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                                     "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
                               )["workspaceOrError"]["locationEntries"]
            if entry["loadStatus"] == "LOADED":
                break
            assert time.monotonic() < deadline, f"code location did not load: {entry}\n{server.log_tail()}"
            time.sleep(1)
        assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry["locationOrLoadError"]
    except BaseException:
        server.stop()
        raise
    return server, base


def test_make_dev_starts_without_warnings_and_ctrl_c_stops_everything_it_started(tmp_path):
    """No warning about its own configuration (`dg dev` as Dagster 1.13 recommends, the instance config in
    DAGSTER_HOME, the project's venv active), and Ctrl-C (SIGINT to the terminal's foreground process group) ends
    make, dg, the webserver, the daemon and the code server. Needs no browser."""
    import psutil

    server, base = start_make_dev(tmp_path)
    # Ctrl-C when the UI is fully up, as a user would: every daemon has reported healthy
    deadline = time.monotonic() + 240
    while True:
        statuses = graphql(base, "{ instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"
                           )["instance"]["daemonHealth"]["allDaemonStatuses"]
        if statuses and all(d["healthy"] for d in statuses if d["required"]):
            break
        assert time.monotonic() < deadline, f"daemons not healthy: {statuses}\n{server.log_tail()}"
        time.sleep(1)
    session = server.proc.pid  # start_new_session: the session (and group) of every process make dev starts
    started = [p for p in psutil.process_iter(["pid", "cmdline"]) if _session_of(p.pid) == session]
    assert len(started) >= 4, [p.info["cmdline"] for p in started]  # make, dg, webserver, daemon, code server...
    try:
        os.killpg(session, signal.SIGINT)
        server.proc.wait(timeout=120)
        deadline = time.monotonic() + 120
        while left := [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
            assert time.monotonic() < deadline, f"still running after Ctrl-C: {[p.info['cmdline'] for p in left]}"
            time.sleep(0.5)
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    warnings = [line for line in log.splitlines() if "warn" in line.lower()]
    assert not warnings, "\n".join(warnings)
    assert "Shutting down Dagster services" in log


def _session_of(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def test_dagster_asset_graph_and_materialize_from_ui(page, tmp_path):
    assert sorted(sum(ASSETS_BY_GROUP.values(), [])) == sorted(ASSETS)
    server, base = start_make_dev(tmp_path)
    try:
        assert graphql(base, "{ shouldShowNux }")["shouldShowNux"] is False  # no welcome dialog over the graph

        open_asset_graph(page, base)
        for name in ASSETS:
            expect(page.locator(f'[title="{name}"]').first).to_be_visible()

        # select the unpartitioned data asset in the graph and materialize it from the UI
        page.locator("foreignObject").get_by_text("lic_codes", exact=True).click()
        page.get_by_role("button", name="Materialize selected").click()
        run = wait_for_run(base, "lic_codes", timeout=300)
        assert run["status"] == "SUCCESS", f"run {run['runId']} ended {run['status']}:\n{server.log_tail()}"
        # ...and the UI shows it: the asset panel's latest materialization links the run
        expect(page.get_by_text("Latest materialization")).to_be_visible()
        expect(page.get_by_role("link", name=run["runId"][:8]).first).to_be_visible()
        assert (tmp_path / "data" / "parsed" / "lic_codes.parquet").is_file()

        fresh = page.context.browser.new_context(viewport=VIEWPORT)
        try:
            shot = fresh.new_page()
            open_asset_graph(shot, base)
            wait_until_still(shot.locator("foreignObject").get_by_text("lic_codes", exact=True))  # fit-to-view ended
            shot.screenshot(path=str(ARTIFACTS / "dagster_asset_graph.png"))
        finally:
            fresh.close()
    finally:
        server.stop()


def test_mlflow_ui_shows_the_experiment_and_its_runs(page, tmp_path):
    import mlflow

    from hmpcl_lib import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tracking.TrackingConfig(tracking_uri=uri, experiment="hmpcl", artifact_root=str(tmp_path / "mlartifacts"))
    for name, loss, metrics in [("train-baseline", "baseline", {"patent_map": 0.48, "class_map_at_100": 0.41}),
                                ("train-hierarchical", "hierarchical", {"patent_map": 0.61, "class_map_at_100": 0.57})]:
        with tracking.start_run(cfg, name, tags={"hmpcl.stage": "train"}):
            mlflow.log_params({"loss": loss, "backbone": "efficientnet_lite0"})
            mlflow.log_metrics(metrics)
    exp_id = tracking.experiment_id(cfg)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Server([str(BIN / "mlflow"), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                     "--port", str(port), "--workers", "1"], server_env(tmp_path), tmp_path / "mlflow_ui.log")
    try:
        server.wait_http(f"{base}/health", timeout=180)
        page.goto(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning", wait_until="domcontentloaded")
        for name in ("train-baseline", "train-hierarchical"):
            expect(page.get_by_role("link", name=name)).to_be_visible()
        expect(page.get_by_role("link", name="hmpcl").first).to_be_visible()  # breadcrumb: the experiment
        assistant_close = page.get_by_role("button", name="Close")
        if assistant_close.count():
            assistant_close.first.click()
        page.locator('label:has(input[value="CHART"])').click()  # metric charts: one bar per run
        expect(page.get_by_text("patent_map", exact=True).first).to_be_visible()
        wait_until_still(page.get_by_text("patent_map", exact=True).first)  # the chart grid has laid out
        page.screenshot(path=str(ARTIFACTS / "mlflow_experiment.png"))
    finally:
        server.stop()
