"""The encoder as an MLflow pyfunc model (hmpcl_lib/tracking/pyfunc.py): logged by `tracking.log_encoder` to a
temporary sqlite store, registered with the `champion` alias, then called in-process (`mlflow.pyfunc.load_model`)
and through `mlflow models serve -m models:/hmpcl-encoder@champion` (slow): embeddings equal the library's own,
bad input is a 400 with a clear message."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw

from hmpcl_lib import tracking
from hmpcl_lib.modeling.models import build_encoder
from hmpcl_lib.retrieval.embedding import embed_paths
from hmpcl_lib.tracking.pyfunc import encode_image

IMAGE_SIZE = 64
SMALL_LIMIT = 10_000  # pixels: the 200x200 "huge" image is above it, the 80x60 drawings below
CHAMPION_URI = "models:/hmpcl-encoder@champion"


def _drawing(path: Path, kind: int) -> Path:
    img = Image.new("L" if kind == 0 else "RGB", (80, 60), 255 if kind == 0 else (255, 255, 255))
    d = ImageDraw.Draw(img)
    if kind == 0:
        d.ellipse((10, 5, 70, 55), outline=0, width=2)
    else:
        d.rectangle((15, 10, 65, 50), outline=(0, 0, 0), width=3)
        d.line((15, 10, 65, 50), fill=(0, 0, 0), width=2)
    img.save(path)
    return path


def _png_bytes(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 255).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tiny encoder logged and registered as `hmpcl-encoder` v1 with the `champion` alias; two drawings."""
    root = tmp_path_factory.mktemp("pyfunc")
    cfg = tracking.TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "art"))
    torch.manual_seed(0)
    encoder = build_encoder("resnet10t", embed_dim=16, weights="none", image_size=IMAGE_SIZE).eval()
    with tracking.start_run(cfg, "pyfunc-test") as run:
        model_uri = tracking.log_encoder(encoder)
    version = tracking.register(cfg, run.info.run_id, model_uri, tags={})
    tracking.promote_if_better(cfg, str(version.version), 0.5, None)
    drawings = root / "drawings"
    drawings.mkdir()
    paths = [_drawing(drawings / "a.png", 0), _drawing(drawings / "b.png", 1)]
    expected = embed_paths(encoder, paths, device="cpu", num_workers=0)
    tracking.activate(cfg)
    return {"cfg": cfg, "root": root, "paths": paths, "expected": expected}


def _images(paths) -> pd.DataFrame:
    return pd.DataFrame({"image": [encode_image(Path(p).read_bytes()) for p in paths]})


def test_the_champion_carries_both_flavors_and_predicts_like_the_library(store):
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    assert set(model.metadata.flavors) == {"python_function", "pytorch"}
    assert model.metadata.get_input_schema().input_names() == ["image", "path"]
    out = model.predict(_images(store["paths"]))
    assert list(out.columns) == ["embedding"] and len(out) == 2
    vectors = np.stack(out["embedding"].to_list())
    assert vectors.dtype == np.float32 and vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, store["expected"], atol=1e-5)
    # the pytorch flavor of the same version still loads (what the pipeline and `hmpcl-search` use)
    encoder = tracking.load_model(store["cfg"], CHAMPION_URI)
    assert encoder.config["image_size"] == IMAGE_SIZE and encoder.output_dim == 16


def test_paths_only_under_the_allowed_root(store, monkeypatch, tmp_path):
    monkeypatch.delenv("HMPCL_SERVE_ROOT", raising=False)
    refused = mlflow.pyfunc.load_model(CHAMPION_URI)
    with pytest.raises(mlflow.exceptions.MlflowException, match="image paths are refused"):
        refused.predict(pd.DataFrame({"path": [str(store["paths"][0])]}))

    root = store["paths"][0].parent
    model = mlflow.pyfunc.load_model(CHAMPION_URI, model_config={"serve_root": str(root)})
    out = model.predict(pd.DataFrame({"path": ["a.png", str(store["paths"][1])]}))  # relative to the root, absolute
    np.testing.assert_allclose(np.stack(out["embedding"].to_list()), store["expected"], atol=1e-5)
    outside = tmp_path / "outside.png"
    _drawing(outside, 0)
    for path in (str(outside), "../drawings/../outside.png", "../../../etc/passwd"):
        with pytest.raises(mlflow.exceptions.MlflowException, match="outside the allowed root") as err:
            model.predict(pd.DataFrame({"path": [path]}))
        assert err.value.get_http_status_code() == 400


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"image": [encode_image(b"%PDF-1.4 not an image")]}), "row 0 (image): not a readable image"),
    (pd.DataFrame({"image": ["@@not base64@@"]}), "row 0 (image): not valid base64"),
    (pd.DataFrame({"image": [encode_image(_png_bytes((200, 200)))]}),
     "row 0 (image): image is 200x200 = 40000 pixels, above the pixel limit of 10000"),
    (pd.DataFrame({"image": pd.Series([], dtype=str)}), "empty request"),
    (pd.DataFrame({"picture": ["x"]}), "empty request: send at least one row with a column 'image'"),
    (pd.DataFrame({"image": [encode_image(_png_bytes((8, 8))), None]}), "row 1: give exactly one of"),
])
def test_bad_input_is_a_400_naming_the_problem(store, frame, message):
    model = mlflow.pyfunc.load_model(CHAMPION_URI, model_config={"max_pixels": SMALL_LIMIT})
    with pytest.raises(mlflow.exceptions.MlflowException) as err:
        model.predict(frame)
    assert message in err.value.message
    assert err.value.get_http_status_code() == 400


# ---------------------------------------------------------------- `mlflow models serve`


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(store, tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["cfg"].tracking_uri, "HMPCL_SERVE_MAX_PIXELS": str(SMALL_LIMIT),
           "HMPCL_SERVE_ROOT": str(store["paths"][0].parent), "OMP_NUM_THREADS": "1",
           # the server runs `uvicorn` from PATH: the venv's own, as in an activated venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", CHAMPION_URI,
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"mlflow models serve exited:\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"no /ping:\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
            time.sleep(0.5)

        images = _images(store["paths"])
        status, answer = _post(f"{base}/invocations", {"dataframe_split": images.to_dict(orient="split")})
        assert status == 200, answer
        vectors = np.array([row["embedding"] for row in answer["predictions"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, store["expected"], atol=1e-5)
        status, answer = _post(f"{base}/invocations", {"dataframe_records": [{"path": "b.png"}]})
        assert status == 200, answer
        np.testing.assert_allclose(answer["predictions"][0]["embedding"], store["expected"][1], atol=1e-5)

        bad = [
            ({"dataframe_records": [{"image": encode_image(b"GIF89a? no, just text")}]}, "not a readable image"),
            ({"dataframe_records": [{"image": encode_image(_png_bytes((200, 200)))}]},
             "above the pixel limit of 10000"),
            ({"dataframe_records": []}, "empty request"),
            ({"dataframe_records": [{"path": "/etc/passwd"}]}, "outside the allowed root"),
        ]
        for body, message in bad:
            status, answer = _post(f"{base}/invocations", body)
            assert status == 400, (body, status, answer)
            assert message in answer.get("message", ""), answer
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        log.close()
