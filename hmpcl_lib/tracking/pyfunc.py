"""MLflow-native serving: the encoder as an `mlflow.pyfunc` model that takes drawings in and gives embeddings out.

`tracking.log_encoder` logs ONE model with two flavors, through `save_model` below (an MLflow "custom flavor"
module, called by `mlflow.models.Model.log`):

- `python_function`: `EncoderModel`, a PythonModel whose `load_context` rebuilds the encoder from the artifact
  `encoder` (`{"encoder_config", "model"}` saved with torch.save, read by `models.load_encoder`: no pickled class)
  and whose `predict` does the library's own preprocessing (`models.transform_for`: the encoder's image size,
  mean and std) and the query path's hostile-input rules (`search.open_query_image`: the pixel limit is checked
  from the header before decoding, non-images are refused);
- `pytorch`: the same encoder as `mlflow.pytorch.log_model` stores it (`data/model.pth`), so
  `mlflow.pytorch.load_model` and `tracking.load_model` keep working on the same URI.

So `models:/hmpcl-encoder@champion` serves as is: `mlflow models serve -m models:/hmpcl-encoder@champion
--env-manager local` answers `/invocations`, and `mlflow.pyfunc.load_model(uri).predict(df)` works in a notebook.

Input: a DataFrame with a column `image` (base64-encoded PNG/JPEG bytes) or a column `path` (an image file under
the allowed root: `model_config={"serve_root": ...}` at load time, else $HMPCL_SERVE_ROOT; without one, paths are
refused; relative paths are taken from the root). One of the two per row. The pixel limit is
`model_config["max_pixels"]`, else $HMPCL_SERVE_MAX_PIXELS, else search's DEFAULT_MAX_PIXELS.
Output: a DataFrame with one row per input row and a column `embedding` (float32 unit vector).
Bad input raises MlflowException(INVALID_PARAMETER_VALUE), which the scoring server answers with a 400 and the
message (an unexpected exception would be a 400 with a generic message and a stack trace).
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

ENCODER_ARTIFACT = "encoder"
SERVE_ROOT_ENV = "HMPCL_SERVE_ROOT"
MAX_PIXELS_ENV = "HMPCL_SERVE_MAX_PIXELS"
INPUT_COLUMNS = ("image", "path")
BATCH_SIZE = 32  # rows decoded and embedded at a time: memory stays bounded by batch x pixel limit
# logged with the model so that `load_model(..., model_config={...})` may set them (MLflow ignores unknown keys);
# None: $HMPCL_SERVE_ROOT / $HMPCL_SERVE_MAX_PIXELS, else no paths / search's limit
MODEL_CONFIG = {"serve_root": None, "max_pixels": None}
REQUIREMENTS = ("mlflow", "torch", "torchvision", "timm", "pillow", "numpy", "pandas", "polars")


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
        from hmpcl_lib.modeling.models import load_encoder, transform_for
        from hmpcl_lib.retrieval.search import DEFAULT_MAX_PIXELS

        config = dict(context.model_config or {})
        self.encoder = load_encoder(context.artifacts[ENCODER_ARTIFACT]).eval()
        self.transform = transform_for(self.encoder.config)
        root = config.get("serve_root") or os.environ.get(SERVE_ROOT_ENV) or None
        self.serve_root = None if root is None else Path(root).expanduser().resolve()
        self.max_pixels = int(config.get("max_pixels") or os.environ.get(MAX_PIXELS_ENV) or DEFAULT_MAX_PIXELS)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        columns = [c for c in INPUT_COLUMNS if c in frame.columns]
        if frame.empty or not columns:
            raise bad_input("empty request: send at least one row with a column 'image' (base64-encoded PNG/JPEG) "
                            f"or 'path' (an image under the allowed root); got columns {list(frame.columns)} "
                            f"and {len(frame)} rows")
        rows = frame[columns].to_dict("records")
        vectors = []
        for start in range(0, len(rows), BATCH_SIZE):
            batch = [self._open(start + i, row) for i, row in enumerate(rows[start:start + BATCH_SIZE])]
            with torch.inference_mode():
                z = self.encoder(torch.stack([self.transform(image) for image in batch]))
            vectors.extend(F.normalize(z.float(), dim=-1).numpy())
        return pd.DataFrame({"embedding": [v.astype(np.float32) for v in vectors]})

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

    def _open_path(self, value: str):
        from hmpcl_lib.errors import InputError
        from hmpcl_lib.retrieval.search import open_query_image

        if self.serve_root is None:
            raise InputError(f"image paths are refused: this server has no allowed root (set ${SERVE_ROOT_ENV} or "
                             "model_config serve_root); send the image bytes base64-encoded in 'image'")
        path = (self.serve_root / value).resolve()  # an absolute `value` replaces the root
        if not path.is_relative_to(self.serve_root):
            raise InputError(f"{value} is outside the allowed root")
        return open_query_image(path, self.serve_root, self.max_pixels)

    def _open_bytes(self, value: Any):
        """Base64 text → the bytes, written to a private temp file and opened by search's own checked opener (the
        header's pixel count is checked before any pixel is decoded; non-images are refused)."""
        from hmpcl_lib.errors import InputError
        from hmpcl_lib.retrieval.search import open_query_image

        if not isinstance(value, str):
            raise InputError(f"expected base64 text, got {type(value).__name__}")
        try:
            data = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"not valid base64 ({exc})") from None
        with tempfile.TemporaryDirectory(prefix="hmpcl-serve-") as tmp:
            path = Path(tmp) / "image"
            path.write_bytes(data)
            try:
                return open_query_image(path, tmp, self.max_pixels)
            except InputError as exc:  # the temp file's name means nothing to the caller
                raise InputError(exc.reason.replace(f"'{path}'", "").replace(str(path), "")) from None


def save_model(path: str, mlflow_model, encoder: torch.nn.Module, code_paths: list[str], signature=None,
               input_example=None, pip_requirements=None, **kwargs) -> None:
    """MLflow's custom-flavor hook (`Model.log(flavor=this module, encoder=...)`): the pyfunc model (EncoderModel
    + the encoder artifact) and, in the same folder, the `pytorch` flavor's `data/` (the pickled module, whose
    class loads from the shipped `code/`)."""
    import mlflow.pytorch

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="hmpcl-encoder-") as tmp:
        encoder_file = Path(tmp) / "encoder.pt"
        torch.save({"encoder_config": encoder.config, "model": encoder.state_dict()}, encoder_file)
        mlflow.pyfunc.save_model(str(path), python_model=EncoderModel(), artifacts={ENCODER_ARTIFACT: str(encoder_file)},
                                 code_paths=code_paths, mlflow_model=mlflow_model, signature=signature,
                                 input_example=input_example, pip_requirements=pip_requirements,
                                 model_config=dict(MODEL_CONFIG))
        torch_dir = Path(tmp) / "torch"
        mlflow.pytorch.save_model(encoder, str(torch_dir), serialization_format="pickle",
                                  pip_requirements=pip_requirements)
        shutil.move(torch_dir / "data", path / "data")
    code = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME].get("code")
    mlflow_model.add_flavor("pytorch", model_data="data", pytorch_version=str(torch.__version__), code=code)
    mlflow_model.save(str(path / "MLmodel"))
