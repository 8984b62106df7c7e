"""The README's pictures, taken from what `make run` left behind (never from a test fixture).

    make run && make screenshots

Starts the Dagster webserver, the MLflow UI and the search page on free loopback ports over the same instance, data
root and MLflow store as `make run` (DAGSTER_HOME, HMPCL_DATA_ROOT, MLFLOW_TRACKING_URI from the Makefile), and saves
with headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):

    docs/img/dagster_pipeline_materialized.png   the asset graph, every group expanded, with its materializations
    docs/img/mlflow_experiment.png               the experiment's runs as metric charts (patent mAP, class mAP, ...)
    docs/img/search_page.png                     the search page: a test drawing uploaded, its top results
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import polars as pl
from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
VIEWPORT = {"width": 1800, "height": 900}
GROUPS = ["data", "model", "retrieval", "comparison"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
            return
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def dagster_graph(page, base: str, out: Path) -> None:
    page.goto(f"{base}/asset-groups", wait_until="domcontentloaded")
    expect(page.get_by_role("button", name="Materialize all")).to_be_visible(timeout=90_000)
    skip = page.get_by_role("button", name="Skip")  # a fresh instance's welcome dialog
    try:
        skip.wait_for(state="visible", timeout=3_000)
        skip.click()
    except Exception:  # noqa: BLE001 - no dialog
        pass
    expect(page.locator("foreignObject").get_by_text("retrieval", exact=True).first).to_be_visible()
    page.keyboard.press("Alt+e")  # expand every group
    expect(page.locator("foreignObject").get_by_text("lic_codes", exact=True)).to_be_visible(timeout=15_000)
    page.wait_for_timeout(2_000)
    page.screenshot(path=str(out))


def mlflow_runs(page, base: str, out: Path) -> None:
    from hmpcl_lib import tracking

    exp_id = tracking.experiment_id(tracking.TrackingConfig(tracking_uri=tracking.default_tracking_uri()))
    page.goto(f"{base}/#/experiments/{exp_id}/runs?workflowType=machine_learning", wait_until="domcontentloaded")
    expect(page.get_by_role("link", name="train-hierarchical").first).to_be_visible(timeout=90_000)
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()
    runs_filter = page.get_by_placeholder('metrics.rmse < 1 and params.model = "tree"')
    if runs_filter.count():  # the model runs (they carry the benchmark), not the comparison's summary run
        runs_filter.first.fill("metrics.patent_map > 0")
        runs_filter.first.press("Enter")
        page.wait_for_timeout(2_000)
    page.locator('label:has(input[value="CHART"])').click()
    search = page.get_by_placeholder("Search metric charts")
    if search.count():  # many metrics (per class and protocol): show the headline ones
        search.first.fill("_map")
    expect(page.get_by_text("patent_map").first).to_be_visible(timeout=30_000)
    page.wait_for_timeout(3_000)
    page.screenshot(path=str(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=str(REPO / "docs" / "img"))
    p.add_argument("--logs", default=str(REPO / "test-artifacts"))
    args = p.parse_args(argv)
    out, logs = Path(args.out_dir), Path(args.logs)
    out.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    from hmpcl_lib.layout import DataLayout
    from hmpcl_lib.tracking import default_tracking_uri

    tracking_uri = default_tracking_uri()

    layout = DataLayout.from_env()
    hier, splits = pl.read_parquet(layout.hierarchy_path), pl.read_parquet(layout.splits_path)
    query = hier.join(splits.filter(pl.col("role") == "query"), on="drawing_id").sort("drawing_id")["image_path"][0]

    ports = {name: free_port() for name in ("dagster", "mlflow", "search")}
    procs = {
        "dagster": start([str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1",
                          "-p", str(ports["dagster"])], logs / "docs_dagster.log"),
        "mlflow": start([str(BIN / "mlflow"), "ui", "--backend-store-uri", tracking_uri,
                         "--host", "127.0.0.1", "--port", str(ports["mlflow"]), "--workers", "1"],
                        logs / "docs_mlflow.log"),
        "search": start([str(BIN / "hmpcl"), "serve", "--host", "127.0.0.1", "--port", str(ports["search"])],
                        logs / "docs_search.log"),
    }
    try:
        urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        wait_http(f"{urls['dagster']}/server_info", procs["dagster"], logs / "docs_dagster.log")
        wait_http(f"{urls['mlflow']}/health", procs["mlflow"], logs / "docs_mlflow.log")
        wait_http(f"{urls['search']}/healthz", procs["search"], logs / "docs_search.log")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for name, shoot, file in (("dagster", dagster_graph, "dagster_pipeline_materialized.png"),
                                      ("mlflow", mlflow_runs, "mlflow_experiment.png")):
                context = browser.new_context(viewport=VIEWPORT)
                context.set_default_timeout(30_000)
                shoot(context.new_page(), urls[name], out / file)
                context.close()
                print(f"saved {out / file}")
            browser.close()
        subprocess.run([sys.executable, str(REPO / "scripts" / "screenshot_search.py"), "--url", urls["search"],
                        "--image", query, "--out", str(out / "search_page.png")], check=True)
    finally:
        for proc in procs.values():
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
