"""MLflow-native serving: the encoder as an `mlflow.pyfunc` model that takes drawings in and gives embeddings out,
logged without a single pickled object.

`tracking.log_encoder` logs ONE `python_function` model as MLflow *models-from-code*: the model's code is
`pyfunc_entry.py` (shipped in the model with the `hmpcl_lib` package, it calls `mlflow.models.set_model(
EncoderModel())`), its weights the artifact `encoder` = `encoder.safetensors` (tensors + the encoder's config as JSON
in the file's metadata: `models.save_encoder_safetensors`), and the MLmodel's metadata says `hmpcl_model_format`.
So nothing is cloudpickled (no `python_model.pkl`) and no `pytorch` flavour pickles the module: the champion loads
with `MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`. Internal loads (`tracking.load_model`: the search page,
`champion_model`, the comparison, notebooks) read only the safetensors file and run none of the model's code; a
version logged the old way is refused with the command that re-logs it (`hmpcl relog`).

`models:/hmpcl-encoder@champion` serves as is: `mlflow models serve -m models:/hmpcl-encoder@champion
--env-manager local` answers `/invocations`, and `mlflow.pyfunc.load_model(uri).predict(df)` works in a notebook.

Input: a DataFrame with a column `image` (base64-encoded PNG/JPEG/GIF/BMP/TIFF/WEBP bytes) or a column `path` (an
image file under the allowed root: `model_config={"serve_root": ...}` at load time, else $HMPCL_SERVE_ROOT; without
one, paths are refused; relative paths are taken from the root). One of the two per row. Bytes are decoded in
memory by the search page's own function (`query_image.query_pixels`: format allow-list, pixel limit read from the
header before any pixel is decoded, then straight to grey). The pixel limit is `model_config["max_pixels"]`, else
$HMPCL_SERVE_MAX_PIXELS, else search's DEFAULT_MAX_PIXELS. Concurrent requests share a decode budget of
`max_inflight_pixels` (model_config / $HMPCL_SERVE_MAX_INFLIGHT_PIXELS, default twice the pixel limit) and a wait
queue of `max_queue` requests (default `retrieval.limits.Limits.max_queue`, the search page's): beyond it a request
is answered 503 at once. Decoded queries are
embedded together by a dynamic batcher (`retrieval.batching`), so concurrent requests share forward passes.
Output: a DataFrame with one row per input row and a column `embedding` (float32 unit vector).
Bad input raises MlflowException(INVALID_PARAMETER_VALUE), which the scoring server answers with a 400 and the
message (an unexpected exception would be a 400 with a generic message and a stack trace).
"""

from __future__ import annotations

import base64
import binascii
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

ENCODER_ARTIFACT = "encoder"
WEIGHTS_FILE = "encoder.safetensors"
ENTRY_POINT = str(Path(__file__).with_name("pyfunc_entry.py"))  # the models-from-code file MLflow runs at load
FORMAT_KEY, FORMAT = "hmpcl_model_format", "pyfunc-code+safetensors-1"  # in the MLmodel's metadata
MAX_INFLIGHT_ENV = "HMPCL_SERVE_MAX_INFLIGHT_PIXELS"
MAX_QUEUE_ENV = "HMPCL_SERVE_MAX_QUEUE"
SERVE_ROOT_ENV = "HMPCL_SERVE_ROOT"
MAX_PIXELS_ENV = "HMPCL_SERVE_MAX_PIXELS"
INPUT_COLUMNS = ("image", "path")
# logged with the model so that `load_model(..., model_config={...})` may set them (MLflow ignores unknown keys);
# None: $HMPCL_SERVE_ROOT / $HMPCL_SERVE_MAX_PIXELS, else no paths / search's limit
MODEL_CONFIG = {"serve_root": None, "max_pixels": None, "max_inflight_pixels": None, "max_queue": None}
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "safetensors", "pillow", "numpy", "pandas", "polars")


def bad_input(message: str) -> MlflowException:
    """The error the scoring server answers with HTTP 400 and `message`."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def signature():
    """Input: optional string columns `image` (base64) and `path`; output: `embedding`, an array of floats."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    inputs = Schema([ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([ColSpec(Array("float"), "embedding")]))


def encode_image(data: bytes) -> str:
    """Image file bytes → the base64 text the `image` column takes."""
    return base64.b64encode(data).decode("ascii")


def input_example() -> pd.DataFrame:
    """One small white PNG (logged with the model: the UI shows it, and MLflow checks it scores)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (32, 32), 255).save(buf, format="PNG")
    return pd.DataFrame({"image": [encode_image(buf.getvalue())]})


def requirements() -> list[str]:
    """Pinned to what is installed here (given explicitly: MLflow's inference would load the model in a
    subprocess)."""
    return [f"{name}=={metadata.version(name)}" for name in REQUIREMENTS]


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and value != ""


class EncoderModel(mlflow.pyfunc.PythonModel):
    """Drawings (base64 `image` or `path` column) → L2-normalised embeddings (`embedding` column, float32)."""

    def load_context(self, context) -> None:
        from hmpcl_lib.modeling.models import IMAGENET_MEAN, IMAGENET_STD, load_encoder
        from hmpcl_lib.retrieval.batching import WorkLimit
        from hmpcl_lib.retrieval.limits import Limits
        from hmpcl_lib.retrieval.query_image import DEFAULT_MAX_PIXELS
        from hmpcl_lib.retrieval.search import encoder_batcher

        config = dict(context.model_config or {})
        self.encoder = load_encoder(context.artifacts[ENCODER_ARTIFACT]).eval()  # safetensors: no code runs
        self.image_size = int(self.encoder.config["image_size"])
        self.mean = self.encoder.config.get("mean", IMAGENET_MEAN)
        self.std = self.encoder.config.get("std", IMAGENET_STD)
        root = config.get("serve_root") or os.environ.get(SERVE_ROOT_ENV) or None
        self.serve_root = None if root is None else Path(root).expanduser().resolve()
        self.max_pixels = int(config.get("max_pixels") or os.environ.get(MAX_PIXELS_ENV) or DEFAULT_MAX_PIXELS)
        budget = int(config.get("max_inflight_pixels") or os.environ.get(MAX_INFLIGHT_ENV) or 2 * self.max_pixels)
        waiting = int(config.get("max_queue") or os.environ.get(MAX_QUEUE_ENV) or Limits.max_queue)
        self.limit = WorkLimit(max(budget, self.max_pixels), queue=waiting)
        self.batcher = encoder_batcher(self._embed, "cpu", Limits.batch_size, Limits.batch_window_ms,
                                       Limits.encoder_streams, name="hmpcl-pyfunc-batcher")  # the page's defaults

    def _embed(self, pixels: list[np.ndarray]) -> list[np.ndarray]:
        """One forward pass over the queries of concurrent requests (the batcher's function)."""
        from hmpcl_lib.retrieval.search import embed_pixels

        return list(embed_pixels(self.encoder, np.stack(pixels), self.mean, self.std))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        from hmpcl_lib.retrieval.batching import Overloaded

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        columns = [c for c in INPUT_COLUMNS if c in frame.columns]
        if frame.empty or not columns:
            raise bad_input("empty request: send at least one row with a column 'image' (base64-encoded PNG/JPEG) "
                            f"or 'path' (an image under the allowed root); got columns {list(frame.columns)} "
                            f"and {len(frame)} rows")
        rows = frame[columns].to_dict("records")
        try:  # each decode holds its pixel count of the shared budget; the decoded pixels are small (S x S)
            pixels = [self._open(i, row) for i, row in enumerate(rows)]
        except Overloaded as exc:
            raise MlflowException(f"server busy, retry later: {exc}", error_code=TEMPORARILY_UNAVAILABLE) from None
        futures = [self.batcher.submit(p) for p in pixels]
        return pd.DataFrame({"embedding": [f.result() for f in futures]})

    def _open(self, i: int, row: dict):
        from hmpcl_lib.errors import InputError

        given = {k: v for k, v in row.items() if _given(v)}
        if len(given) != 1:
            raise bad_input(f"row {i}: give exactly one of 'image' (base64) or 'path', got {sorted(given) or 'none'}")
        (column, value), = given.items()
        try:
            if column == "path":
                return self._open_path(str(value))
            return self._open_bytes(value)
        except InputError as exc:
            raise bad_input(f"row {i} ({column}): {exc.reason}") from None

    def _open_path(self, value: str) -> np.ndarray:
        from hmpcl_lib.errors import InputError
        from hmpcl_lib.retrieval.query_image import query_pixels, read_query_file

        if self.serve_root is None:
            raise InputError(f"image paths are refused: this server has no allowed root (set ${SERVE_ROOT_ENV} or "
                             "model_config serve_root); send the image bytes base64-encoded in 'image'")
        path = (self.serve_root / value).resolve()  # an absolute `value` replaces the root
        if not path.is_relative_to(self.serve_root):
            raise InputError(f"{value} is outside the allowed root")
        return query_pixels(read_query_file(path, self.serve_root), self.image_size, self.max_pixels, self.limit,
                            source=value)

    def _open_bytes(self, value: Any) -> np.ndarray:
        """Base64 text → the bytes → eval pixels, decoded in memory by the search page's own function
        (`query_image.query_pixels`: allow-listed formats, pixel limit from the header, straight to grey)."""
        from hmpcl_lib.errors import InputError
        from hmpcl_lib.retrieval.query_image import query_pixels

        if not isinstance(value, str):
            raise InputError(f"expected base64 text, got {type(value).__name__}")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"not valid base64 ({exc})") from None
        return query_pixels(data, self.image_size, self.max_pixels, self.limit, source="image")
