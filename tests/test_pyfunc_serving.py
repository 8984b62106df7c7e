"""The encoder as an MLflow pyfunc model (hmpcl_lib/tracking/pyfunc.py): logged by `tracking.log_encoder` to a
temporary sqlite store, registered with the `champion` alias, then called in-process (`mlflow.pyfunc.load_model`)
and through `mlflow models serve -m models:/hmpcl-encoder@champion` (slow): embeddings equal the library's own,
bad input is a 400 with a clear message. Nothing is unpickled: loading runs with MLflow's pickle switch off and
Python's unpicklers replaced by a tripwire; a model logged the old (pickled) way is refused and `hmpcl relog`
re-logs it without retraining."""

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


@pytest.fixture
def no_unpickling(monkeypatch):
    """MLflow's own switch off, and every unpickler of Python and cloudpickle replaced by a tripwire."""
    import _pickle
    import pickle

    import cloudpickle

    def tripwire(*args, **kwargs):
        raise AssertionError("something was unpickled")

    class Tripwire:
        def __init__(self, *args, **kwargs):
            tripwire()

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    for module in (pickle, _pickle, cloudpickle):
        for name in ("load", "loads"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, tripwire)
        if hasattr(module, "Unpickler"):
            monkeypatch.setattr(module, "Unpickler", Tripwire)


def test_the_champion_is_pickle_free_and_predicts_like_the_library(store, no_unpickling):
    model = mlflow.pyfunc.load_model(CHAMPION_URI)
    assert set(model.metadata.flavors) == {"python_function"}  # no pickled `pytorch` flavour
    pyfunc_conf = model.metadata.flavors["python_function"]
    assert "model_code_path" in pyfunc_conf and "python_model" not in pyfunc_conf  # models-from-code, no .pkl
    assert pyfunc_conf["artifacts"]["encoder"]["path"].endswith("encoder.safetensors")
    assert model.metadata.metadata["hmpcl_model_format"] == "pyfunc-code+safetensors-1"
    assert model.metadata.get_input_schema().input_names() == ["image", "path"]
    out = model.predict(_images(store["paths"]))
    assert list(out.columns) == ["embedding"] and len(out) == 2
    vectors = np.stack(out["embedding"].to_list())
    assert vectors.dtype == np.float32 and vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, store["expected"], atol=1e-5)
    # the torch module the pipeline, the search page and notebooks use: read from the safetensors weights only
    encoder = tracking.load_model(store["cfg"], CHAMPION_URI)
    assert encoder.config["image_size"] == IMAGE_SIZE and encoder.output_dim == 16
    local = Path(mlflow.artifacts.download_artifacts(CHAMPION_URI))
    assert not list(local.rglob("*.pkl")) and not list(local.rglob("*.pth"))


def test_a_model_logged_the_old_way_is_refused_and_relogged_without_retraining(store, tmp_path, monkeypatch, capsys):
    """The old layout: a cloudpickled PythonModel whose `encoder` artifact is a torch.save'd state dict."""
    from hmpcl_lib import cli
    from hmpcl_lib.tracking import pyfunc

    cfg = store["cfg"]
    name = "hmpcl-legacy"
    torch.manual_seed(1)
    encoder = build_encoder("resnet10t", embed_dim=16, weights="none", image_size=IMAGE_SIZE).eval()
    old = tmp_path / "encoder.pt"
    torch.save({"encoder_config": encoder.config, "model": encoder.state_dict()}, old)
    with tracking.start_run(cfg, "legacy") as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=pyfunc.EncoderModel(),
                                       artifacts={"encoder": str(old)})
    client = tracking.client(cfg)
    version = mlflow.register_model(info.model_uri, name, tags={"loss": "hierarchical"})
    client.set_registered_model_alias(name, "champion", version.version)
    uri = f"models:/{name}@champion"

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    with pytest.raises(tracking.LegacyModelError, match=f"hmpcl relog {uri}"):
        tracking.load_model(cfg, uri)
    with pytest.raises(mlflow.exceptions.MlflowException, match="pickle"):  # MLflow's own refusal
        mlflow.pyfunc.load_model(uri)

    assert cli.main(["relog", uri, "--tracking-uri", cfg.tracking_uri, "--registered-model", name]) == 0
    printed = capsys.readouterr().out
    assert "registered as hmpcl-legacy version 2; aliases moved: @champion" in printed
    moved = client.get_model_version_by_alias(name, "champion")
    assert str(moved.version) == "2" and moved.run_id == run.info.run_id and moved.tags["loss"] == "hierarchical"
    again = tracking.load_model(cfg, uri)
    for key, value in encoder.state_dict().items():  # the same weights, not a retrained model
        torch.testing.assert_close(again.state_dict()[key], value)
    assert cli.main(["relog", uri, "--tracking-uri", cfg.tracking_uri, "--registered-model", name]) == 0
    assert "already pickle-free" in capsys.readouterr().out


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
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "HMPCL_SERVE_ROOT": str(store["paths"][0].parent), "OMP_NUM_THREADS": "1",
           # the server runs `uvicorn` from PATH: the venv's own, as in an activated venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", CHAMPION_URI,
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # the server imports torch and loads the model: slow on a busy machine
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


def test_the_readmes_python_snippets_work_from_any_folder(store, tmp_path):
    """Every ```python block of the README, run as written by the venv's Python from an unrelated folder, with only
    the environment the README sets (MLFLOW_TRACKING_URI, HMPCL_MLFLOW_ARTIFACTS) pointing at a registry store."""
    import re
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert snippets, "the README has no Python snippet"
    root = tmp_path / "store"
    shutil.copytree(store["root"], root)  # a copy: the run added below stays out of the module's store
    cfg = tracking.TrackingConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=str(root / "art"))
    with tracking.start_run(cfg, "train-baseline"):
        mlflow.log_metrics({"patent_map": 0.5, "class_map_at_100": 0.25})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HMPCL_"))}
    env.update(MLFLOW_TRACKING_URI=cfg.tracking_uri, HMPCL_MLFLOW_ARTIFACTS=cfg.artifact_root)
    for code in snippets:
        done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"README snippet failed:\n{code}\n{done.stderr[-3000:]}"
    assert "train-baseline" in done.stdout
