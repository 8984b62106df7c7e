"""The search page's app (hmpcl_lib.serve) through FastAPI's TestClient on a tiny rendered corpus: ranking, class
filter, hostile uploads and ids, thumbnails, the startup checks of `hmpcl serve`."""

from __future__ import annotations

import io
import asyncio
import struct
import zlib
from pathlib import Path

import polars as pl
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from hmpcl_lib.errors import HmpclError
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.retrieval import query_image, search as search_module
from hmpcl_lib.sample import SampleSpec
from hmpcl_lib.cli import serve as serve_cli
from hmpcl_lib.serve.app import Limits, create_app
from benchmarks.demo_corpus import demo_searcher, write_demo_corpus

SPEC = SampleSpec(years=(2019,), n_classes=3, subclasses_per_class=2, patents_per_subclass=1, views=(3, 3),
                  image_size=64, faults=False)  # 3 classes x 2 subclasses x 1 patent x 3 views = 18 drawings


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (decoding it would need huge memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    layout = write_demo_corpus(tmp_path_factory.mktemp("data"), SPEC)
    torch.manual_seed(0)
    model = build_encoder("efficientnet_lite0", embed_dim=16, weights="none", image_size=64)
    searcher = demo_searcher(layout, model)
    hierarchy = pl.read_parquet(layout.hierarchy_path)
    return layout, searcher, hierarchy


@pytest.fixture(scope="module")
def client(corpus):
    layout, searcher, _ = corpus
    limits = Limits(max_upload_bytes=64 * 1024, max_k=20)
    with TestClient(create_app(searcher, layout, limits=limits)) as c:
        yield c


def test_upload_of_a_corpus_drawing_finds_it_first_with_its_metadata(client, corpus):
    _, _, hierarchy = corpus
    row = hierarchy.row(4, named=True)
    body = Path(row["image_path"]).read_bytes()
    resp = client.post("/api/search?k=5", content=body, headers={"Content-Type": "image/png"})
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["query"]["kind"] == "upload" and data["count"] == 5 and data["note"] is None
    first = data["results"][0]
    assert first["drawing_id"] == row["drawing_id"] and first["patent_id"] == row["patent_id"]
    assert first["score"] == pytest.approx(1.0, abs=1e-4)
    assert first["grant_date"] == f"{row['patent_id'][-8:-4]}-{row['patent_id'][-4:-2]}-{row['patent_id'][-2:]}"
    assert first["class_code"] == row["class_code"] and first["class_title"] == row["class_title"]
    assert first["subclass_code"] == row["subclass_code"] and first["subclass_title"] == row["subclass_title"]
    assert first["class_title"] and first["subclass_title"]
    assert first["thumbnail"] == f"/thumb/{row['drawing_id']}"
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4, 5]
    scores = [r["score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert "image_path" not in first  # no server paths leave the app
    assert set(data["timing_ms"]) == {"embed", "search"}


def test_corpus_drawing_query_page_and_api_agree(client, corpus):
    _, _, hierarchy = corpus
    row = hierarchy.row(7, named=True)
    api = client.get("/api/search", params={"drawing_id": row["drawing_id"], "k": 4}).json()
    assert api["query"]["kind"] == "drawing" and api["query"]["patent_id"] == row["patent_id"]
    assert api["results"][0]["drawing_id"] == row["drawing_id"]
    page = client.get("/search", params={"drawing_id": row["drawing_id"], "k": 4})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for r in api["results"]:
        assert f'data-drawing-id="{r["drawing_id"]}"' in page.text
    assert row["class_title"] in page.text
    assert 'class="card same-patent"' in page.text  # the query's own patent is marked


def test_class_filter_returns_only_that_class_and_says_when_fewer_match(client, corpus):
    _, _, hierarchy = corpus
    query = hierarchy.filter(pl.col("class_code") == hierarchy["class_code"][0])["drawing_id"][0]
    other = sorted(set(hierarchy["class_code"]) - {hierarchy["class_code"][0]})[0]
    in_class = hierarchy.filter(pl.col("class_code") == other).height  # 6 drawings per class
    data = client.get("/api/search", params={"drawing_id": query, "k": 3, "class": other}).json()
    assert data["count"] == 3 and {r["class_code"] for r in data["results"]} == {other}
    assert data["note"] is None and data["class"] == other
    data = client.get("/api/search", params={"drawing_id": query, "k": 20, "class": int(other)}).json()
    assert data["count"] == in_class and {r["class_code"] for r in data["results"]} == {other}
    assert f"only {in_class} of the requested 20" in data["note"]
    assert [r["rank"] for r in data["results"]] == list(range(1, in_class + 1))
    empty = client.get("/api/search", params={"drawing_id": query, "k": 5, "class": "31"}).json()
    assert empty["count"] == 0 and "only 0" in empty["note"]
    page = client.get("/search", params={"drawing_id": query, "k": 20, "class": other})
    assert f"only {in_class} of the requested 20" in page.text


def test_bad_parameters_are_4xx_with_a_message(client, corpus):
    _, _, hierarchy = corpus
    drawing = hierarchy["drawing_id"][0]
    for params, status, text in [({"drawing_id": drawing, "k": 0}, 400, "k must be"),
                                 ({"drawing_id": drawing, "k": 21}, 400, "k must be from 1 to 20"),
                                 ({"drawing_id": drawing, "k": "ten"}, 400, "whole number"),
                                 ({"drawing_id": drawing, "class": "6; drop"}, 400, "Locarno class"),
                                 ({}, 400, "drawing_id"),
                                 ({"drawing_id": "USD0000000-20190101-D00001"}, 404, "no drawing")]:
        resp = client.get("/api/search", params=params)
        assert resp.status_code == status and text in resp.json()["error"], (params, resp.text)
    page = client.get("/search", params={"drawing_id": "nope"})
    assert page.status_code == 404 and "no drawing &#39;nope&#39; in the corpus" in page.text


def test_hostile_uploads(client):
    not_image = client.post("/api/search", content=b"%PDF-1.4 definitely not a drawing",
                            headers={"Content-Type": "application/pdf"})
    assert not_image.status_code == 415 and "not an image we can read" in not_image.json()["error"]
    assert "PNG" in not_image.json()["error"]
    eps = client.post("/api/search", content=b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    assert eps.status_code == 415  # PIL could open EPS through Ghostscript: not an accepted format
    assert client.post("/api/search", content=b"").status_code == 400
    png = io.BytesIO()
    Image.new("L", (40, 30), 255).save(png, format="PNG")
    truncated = client.post("/api/search", content=png.getvalue()[:60])
    assert truncated.status_code == 400 and "cannot be read" in truncated.json()["error"]
    too_big = client.post("/api/search", content=b"\0" * (64 * 1024 + 1), headers={"Content-Type": "image/png"})
    assert too_big.status_code == 413 and "limit of 65536 bytes" in too_big.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(100):
            yield b"\0" * 4096

    streamed = client.post("/api/search", content=chunks())
    assert streamed.status_code == 413
    bomb = client.post("/api/search", content=png_claiming_size(100_000, 100_000))
    assert bomb.status_code == 413 and "pixel limit" in bomb.json()["error"]
    form = client.post("/api/search", files={"file": ("x.png", png.getvalue(), "image/png")})
    assert form.status_code == 415 and "not a multipart form" in form.json()["error"]
    # the page's fragment shows the same message
    fragment = client.post("/search", content=b"hello")
    assert fragment.status_code == 415 and 'role="alert"' in fragment.text and "not an image" in fragment.text


def test_pixel_limit_applies_to_uploads(corpus):
    layout, searcher, hierarchy = corpus
    small = search_module.Searcher(searcher.model, searcher.index, hierarchy, data_root=layout.root, max_pixels=1000)
    with TestClient(create_app(small, layout)) as c:
        resp = c.post("/api/search", content=Path(hierarchy["image_path"][0]).read_bytes())
    assert resp.status_code == 413 and "64x64 = 4096 pixels, above the pixel limit of 1000" in resp.json()["error"]


def test_thumbnails_only_by_known_id(client, corpus, tmp_path):
    layout, _, hierarchy = corpus
    resp = client.get(f"/thumb/{hierarchy['drawing_id'][0]}")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert "max-age" in resp.headers["cache-control"]
    assert Image.open(io.BytesIO(resp.content)).size[0] <= 192
    assert client.get("/thumb/USD0000000-20190101-D00001").status_code == 404
    secret = tmp_path / "secret.png"
    Image.new("L", (8, 8), 0).save(secret)
    for attempt in ["../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd", str(secret), "%2Fetc%2Fpasswd",
                    "..", "%00", "%2E%2E"]:
        resp = client.get(f"/thumb/{attempt}")
        # 404, or (`/thumb/..` is normalised to `/` by the client) some page: never an image, never the file
        assert resp.status_code == 404 or attempt == "..", attempt
        assert resp.headers.get("content-type") != "image/png" and "root:" not in resp.text, attempt
    for attempt in ["../../../../etc/passwd", str(secret)]:
        resp = client.get("/api/search", params={"drawing_id": attempt})
        assert resp.status_code == 404 and "root:" not in resp.text
    assert client.get("/static/../app.py").status_code == 404


def test_a_hierarchy_row_pointing_outside_the_data_root_is_never_served(corpus, tmp_path):
    layout, searcher, hierarchy = corpus
    outside = tmp_path / "outside.png"
    Image.new("L", (32, 32), 0).save(outside)
    tampered = hierarchy.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(str(outside))).otherwise(pl.col("image_path"))
        .alias("image_path"))
    from hmpcl_lib.serve.catalog import Catalog

    with TestClient(create_app(searcher, layout, catalog=Catalog(tampered, layout))) as c:
        assert c.get(f"/thumb/{tampered['drawing_id'][0]}").status_code == 404
        resp = c.get("/api/search", params={"drawing_id": tampered["drawing_id"][0]})
        assert resp.status_code == 404 and "outside the data root" in resp.json()["error"]
        assert c.get(f"/thumb/{tampered['drawing_id'][1]}").status_code == 200


def test_home_page_lists_classes_and_examples(client, corpus):
    _, _, hierarchy = corpus
    page = client.get("/")
    assert page.status_code == 200
    for code, title in hierarchy.select("class_code", "class_title").unique().iter_rows():
        assert f'<option value="{code}"' in page.text and title in page.text
    assert "/search?drawing_id=" in page.text and 'type="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    health = client.get("/healthz").json()
    assert {k: health[k] for k in ("status", "drawings", "index")} == {"status": "ok", "drawings": 18, "index": 18}
    assert health["batched_queries"] >= health["batches"] >= 0
    assert client.get("/static/search.js").status_code == 200


def test_grant_dates_come_from_the_drawings_tables_when_present(corpus, tmp_path):
    from hmpcl_lib.layout import DataLayout
    from hmpcl_lib.serve.catalog import Catalog
    import datetime as dt

    _, _, hierarchy = corpus
    layout = DataLayout(tmp_path)
    layout.drawings_path(2019).parent.mkdir(parents=True)
    pl.DataFrame({"drawing_id": [hierarchy["drawing_id"][0]], "grant_date": [dt.date(2001, 2, 3)]}).write_parquet(
        layout.drawings_path(2019))
    catalog = Catalog(hierarchy.drop("class_title", "subclass_title"), layout)
    first, second = catalog.get(hierarchy["drawing_id"][0]), catalog.get(hierarchy["drawing_id"][1])
    assert first["grant_date"] == dt.date(2001, 2, 3)
    assert second["grant_date"].strftime("%Y%m%d") == hierarchy["patent_id"][1][-8:]
    assert first["class_title"] == hierarchy["class_title"][0]  # from the taxonomy of the row's edition
    assert first["subclass_title"] == hierarchy["subclass_title"][0]


def test_host_check():
    for host in ["127.0.0.1", "127.0.0.2", "::1", "localhost"]:
        serve_cli.check_host(host, allow_remote=False)
    for host in ["0.0.0.0", "192.168.1.5", "::", "example.com"]:
        with pytest.raises(HmpclError, match="--allow-remote"):
            serve_cli.check_host(host, allow_remote=False)
        serve_cli.check_host(host, allow_remote=True)
    assert serve_cli.DEFAULT_MAX_PIXELS is query_image.DEFAULT_MAX_PIXELS  # one definition


def test_hmpcl_serve_refuses_remote_hosts_and_says_to_run_make_run(tmp_path, capsys, monkeypatch):
    from hmpcl_lib.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["serve", "--host", "0.0.0.0", "--data-root", str(tmp_path)]) == 1
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["serve", "--data-root", str(tmp_path / "empty")]) == 1
    assert "run `make run` first" in capsys.readouterr().err


def test_hmpcl_serve_startup_errors_with_a_corpus(corpus, tmp_path, capsys):
    from hmpcl_lib.cli import main

    layout, searcher, _ = corpus
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["serve", "--data-root", str(layout.root), "--tracking-uri", uri]) == 1
    assert "no MLflow store" in (err := capsys.readouterr().err) and "make run" in err
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"encoder_config": searcher.model.config, "model": searcher.model.state_dict()}, checkpoint)
    assert main(["serve", "--data-root", str(layout.root), "--model-checkpoint", str(checkpoint)]) == 1
    assert "pass --index" in capsys.readouterr().err
    assert main(["serve", "--data-root", str(layout.root), "--model-checkpoint", str(checkpoint),
                 "--index", str(tmp_path / "none")]) == 1
    assert "no gallery index" in capsys.readouterr().err


def test_load_app_from_a_checkpoint_and_index(corpus, tmp_path):
    import argparse

    layout, searcher, hierarchy = corpus
    checkpoint = tmp_path / "encoder.pt"
    torch.save({"encoder_config": searcher.model.config, "model": searcher.model.state_dict()}, checkpoint)
    index_dir = searcher.index.save(tmp_path / "index")
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--data-root", str(layout.root), "--model-checkpoint", str(checkpoint),
                              "--index", str(index_dir), "--max-upload-mb", "0.001"])
    app, card, loaded = serve_cli.load_app(args, "sqlite:///unused.db", "hmpcl-encoder")
    assert Path(loaded) == Path(index_dir) and card.source == str(checkpoint) and card.run_id is None
    assert "not recorded" in card.summary()  # an encoder file says so: nothing tells what it was trained on
    with TestClient(app) as c:
        assert "what it was trained on is not recorded" in c.get("/").text
        row = hierarchy.row(2, named=True)
        data = c.get("/api/search", params={"drawing_id": row["drawing_id"], "k": 2}).json()
        assert data["results"][0]["drawing_id"] == row["drawing_id"]
        assert c.post("/api/search", content=b"\0" * 2000).status_code == 413  # 0.001 MB = 1048 bytes


def test_a_full_decode_budget_answers_503_with_retry_after_and_frees_up(corpus):
    """With the decode budget held and no wait queue, an upload (and a corpus query) is refused at once with 503 and
    Retry-After, the page too; once the budget is back the same request is answered."""
    layout, searcher, hierarchy = corpus
    row = hierarchy.row(1, named=True)
    body = Path(row["image_path"]).read_bytes()
    app = create_app(searcher, layout, limits=Limits(max_inflight_pixels=searcher.max_pixels, max_queue=0,
                                                     retry_after_s=3))
    service = app.state.service
    with TestClient(app) as c:
        with service.limit.acquire(service.limit.capacity):
            busy = c.post("/api/search", content=body, headers={"Content-Type": "image/png"})
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "3"
            assert "busy" in busy.json()["error"]
            assert c.get("/api/search", params={"drawing_id": row["drawing_id"]}).status_code == 503
            page = c.post("/search", content=body, headers={"Content-Type": "image/png"})
            assert page.status_code == 503 and page.headers["Retry-After"] == "3"
        ok = c.post("/api/search?k=1", content=body, headers={"Content-Type": "image/png"})
        assert ok.status_code == 200 and ok.json()["results"][0]["drawing_id"] == row["drawing_id"]
    assert service.limit.in_flight == 0


def test_queries_embed_through_the_batcher_like_the_searcher(corpus):
    """The page's embedding (decode budget + dynamic batcher) gives the Searcher's own vectors."""
    import numpy as np

    layout, searcher, hierarchy = corpus
    paths = hierarchy["image_path"].to_list()[:4]
    app = create_app(searcher, layout)
    service = app.state.service
    async def embed_all():
        return await asyncio.gather(*(service.embed(service.upload_pixels(Path(p).read_bytes())) for p in paths))

    batched = np.concatenate(asyncio.run(embed_all()))
    direct = np.concatenate([searcher.embed_image(p) for p in paths])
    np.testing.assert_allclose(batched, direct, atol=1e-5)
    assert service.batcher.items == 4


def test_page_results_equal_the_searchers_table_with_and_without_a_class_filter(client, corpus):
    """The service's per-position lookups (no dataframe join per query) give the Searcher's own ranking and rows."""
    _, searcher, hierarchy = corpus
    for row in hierarchy.head(3).iter_rows(named=True):
        vector = searcher.embed_image(row["image_path"])
        for code in (None, row["class_code"]):
            expected = searcher.search_vector(vector, 18)
            if code is not None:
                expected = expected.filter(pl.col("class_code") == code)
            expected = expected.head(5)
            params = {"drawing_id": row["drawing_id"], "k": 5, **({"class": code} if code else {})}
            got = client.get("/api/search", params=params).json()["results"]
            assert [r["drawing_id"] for r in got] == expected["drawing_id"].to_list()
            assert [r["patent_id"] for r in got] == expected["patent_id"].to_list()
            assert [r["subclass_code"] for r in got] == expected["subclass_code"].to_list()
            assert [r["score"] for r in got] == pytest.approx(expected["score"].to_list(), abs=1e-6)


def test_an_indexed_drawing_missing_from_the_catalog_is_answered_by_its_id(corpus):
    from hmpcl_lib.serve.catalog import Catalog

    layout, searcher, hierarchy = corpus
    missing = hierarchy["drawing_id"][0]
    with TestClient(create_app(searcher, layout, catalog=Catalog(hierarchy.slice(1), layout))) as c:
        body = Path(hierarchy["image_path"][0]).read_bytes()
        first = c.post("/api/search?k=3", content=body, headers={"Content-Type": "image/png"}).json()["results"][0]
    assert first["drawing_id"] == missing and first["patent_id"] is None and first["class_title"] is None


def test_large_uploads_decode_in_the_low_priority_lane_and_small_ones_do_not(corpus, monkeypatch):
    """An upload whose header is above `Limits.large_upload_pixels` decodes on a thread of the large-decode lane
    (lower OS priority on Linux), a small one on the normal pool; both answer the same results as before."""
    import os
    import sys
    import threading

    layout, searcher, hierarchy = corpus
    row = hierarchy.row(2, named=True)
    small = Path(row["image_path"]).read_bytes()
    with Image.open(io.BytesIO(small)) as img:
        side = img.size
    buf = io.BytesIO()
    Image.open(io.BytesIO(small)).resize((side[0] * 3, side[1] * 3)).save(buf, "PNG")
    large = buf.getvalue()
    threshold = side[0] * side[1] * 2  # between the two
    seen = []
    decode = searcher.pixels_of_bytes

    def spy(data, *args, **kwargs):
        tid = threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, tid) if sys.platform.startswith("linux") else None
        seen.append((len(data), threading.current_thread().name, nice))
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(searcher, "pixels_of_bytes", spy)
    app = create_app(searcher, layout, limits=Limits(large_upload_pixels=threshold))
    with TestClient(app) as c:
        for body in (small, large):
            resp = c.post("/api/search?k=3", content=body, headers={"Content-Type": "image/png"})
            assert resp.status_code == 200 and resp.json()["results"][0]["patent_id"] == row["patent_id"]
        assert c.post("/api/search", content=b"not an image").status_code == 415  # no header: the normal lane
    lanes = {size: (name, nice) for size, name, nice in seen}
    assert lanes[len(large)][0].startswith("large-decode") and not lanes[len(small)][0].startswith("large-decode")
    if sys.platform.startswith("linux"):
        assert lanes[len(large)][1] > lanes[len(small)][1]  # a lower priority (a higher nice value)
    assert app.state.service.large_lane._shutdown  # the app's shutdown stopped the lane


def test_the_app_warms_up_before_its_first_request(corpus):
    """Startup runs one search through the whole path (decode, batched forward, index, catalog), so the first real
    request of a fresh server does not pay for imports and the first forward pass; a plain app does nothing yet."""
    layout, searcher, _ = corpus
    app = create_app(searcher, layout)
    service = app.state.service
    assert service.batcher.batches == 0
    with TestClient(app) as c:
        assert service.batcher.batches == 1 and service.batcher.items == 1  # before any request
        assert c.get("/healthz").json()["batches"] == 1


def test_the_model_card_says_what_the_model_was_trained_on(tmp_path, corpus):
    """The card comes from the model's MLflow run (loss, drawings, the pipeline's data source tag): a model of the
    generated sample is called a demonstration in /healthz and in the page's footer."""
    import mlflow

    from hmpcl_lib.tracking.model_source import DATA_SOURCE_TAG, model_card

    from hmpcl_lib import tracking

    cfg = tracking.TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                  artifact_root=str(tmp_path / "artifacts"))
    uri = cfg.tracking_uri
    runs = {}
    for source in ("sample", "deeppatent2", None):
        with tracking.start_run(cfg, "train-baseline", tags={DATA_SOURCE_TAG: source} if source else {}) as run:
            mlflow.log_params({"loss": "baseline", "train_drawings": 1356})
        runs[source] = run.info.run_id
    with tracking.start_run(cfg, "pretrained", tags={"hmpcl.stage": "pretrained"}) as run:
        runs["pretrained"] = run.info.run_id

    sample = model_card(f"runs:/{runs['sample']}/model", None, uri)
    assert sample.demo and (sample.loss, sample.train_drawings, sample.run_name) == ("baseline", 1356, "train-baseline")
    assert "trained on 1,356 drawings of the generated sample corpus" in sample.summary()
    assert "a demonstration of the pipeline, not a model for real drawings" in sample.summary()
    real = model_card(f"runs:/{runs['deeppatent2']}/model", None, uri)
    assert not real.demo and "trained on 1,356 DeepPatent2 drawings" in real.summary()
    assert "demonstration" not in real.summary()
    assert "source not recorded" in model_card(f"runs:/{runs[None]}/model", None, uri).summary()
    assert "untouched ImageNet backbone" in model_card(f"runs:/{runs['pretrained']}/model", None, uri).summary()

    layout, searcher, _ = corpus
    with TestClient(create_app(searcher, layout, model_card=sample)) as c:
        assert c.get("/healthz").json()["model"] == sample.summary()
        page = c.get("/").text
        assert '<footer id="model-card" class="demo">' in page and "not a model for real drawings" in page
    with TestClient(create_app(searcher, layout)) as c:  # no card given: no footer, nothing made up
        assert 'id="model-card"' not in c.get("/").text and c.get("/healthz").json()["model"] is None
