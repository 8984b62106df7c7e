"""The user query path: an image file in, the nearest corpus drawings out (patent id, LIC class, score).

Query images come from users, so they are treated as hostile: a path outside `data_root` (when set) is refused,
the header is read first (PIL opens lazily) and images above `max_pixels` are refused before any pixel is
decoded, so memory stays bounded; non-images and truncated files raise InputError naming the file.
Every query, a file or uploaded bytes, from the CLI, the search page or the MLflow pyfunc, is decoded by ONE
function, `query_pixels`: in memory, only the formats in UPLOAD_FORMATS, the pixel count checked from the header,
then (holding that many pixels of a `WorkLimit`, when the server passes one) decoded straight to one grey channel
(a JPEG at reduced scale through PIL's draft mode) and padded and resized exactly as the pixel store stores the
corpus (`pixels.eval_pixels`): the query and the corpus go through the same pixels. `ImageTooLarge` and
`UnsupportedImage` are the InputErrors a caller may want to tell apart (the web app answers 413/415 for them).

CLI: python -m hmpcl_lib.retrieval.search --image drawing.png -k 10 [--model-uri models:/hmpcl-encoder@champion]
     [--model-checkpoint encoder.pt] [--index data/index] [--hierarchy data/parsed/lic_hierarchy.parquet]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import polars as pl
import torch
from PIL import Image, UnidentifiedImageError

from hmpcl_lib.modeling.dataset import flatten_drawing, load_drawing
from hmpcl_lib.errors import HmpclError, InputError
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.tracking.mlflow_store import default_tracking_uri
from hmpcl_lib.modeling.models import IMAGENET_MEAN, IMAGENET_STD, load_encoder

if TYPE_CHECKING:
    from typing import Callable

    from hmpcl_lib.retrieval.batching import DynamicBatcher, WorkLimit

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MODEL_URI = "models:/hmpcl-encoder@champion"
RESULT_COLUMNS = ["rank", "drawing_id", "patent_id", "class_code", "subclass_code", "score", "image_path"]
HIERARCHY_COLUMNS = ["drawing_id", "patent_id", "class_code", "subclass_code", "image_path"]
# What an upload may be: PIL decodes many more formats (some through external programs, e.g. EPS via Ghostscript).
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")


class ImageTooLarge(InputError):
    """The image's header claims more pixels than the limit (nothing was decoded)."""


class UnsupportedImage(InputError):
    """Not an image PIL can identify (among the allowed formats)."""


def check_query_path(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> Path:
    """Resolve `path` (symlinks included) and refuse it when it escapes `data_root` or is not a file."""
    resolved = Path(path).expanduser().resolve()
    if data_root is not None and not resolved.is_relative_to(Path(data_root).expanduser().resolve()):
        raise InputError(f"query image is outside the data root {data_root}", source=str(path))
    if not resolved.is_file():
        raise InputError("query image does not exist or is not a regular file", source=str(path))
    return resolved


def _check_header(
    fp: Any, source: str, max_pixels: int, formats: Sequence[str] | None = None
) -> tuple[int, int]:
    """(width, height) from the header only; refuse non-images and images above `max_pixels` before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            with Image.open(fp, formats=formats) as img:
                width, height = img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image is too large, above the pixel limit ({exc})", source=source) from exc
    except UnidentifiedImageError as exc:
        allowed = f" (accepted: {', '.join(formats)})" if formats else ""
        raise UnsupportedImage(f"not a readable image{allowed} ({type(exc).__name__}: {exc})", source=source) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"not a readable image ({type(exc).__name__}: {exc})", source=source) from exc
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the pixel limit of {max_pixels}", source=source
        )
    return width, height


def open_query_image(
    path: str | os.PathLike, data_root: str | os.PathLike | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Checked, fully decoded RGB image; the size is checked from the header before decoding."""
    resolved = check_query_path(path, data_root)
    _check_header(resolved, str(path), max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return load_drawing(str(resolved), "RGB")


def query_pixels(
    data: bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, limit: "WorkLimit | None" = None,
    source: str = "upload", formats: Sequence[str] = UPLOAD_FORMATS,
) -> np.ndarray:
    """Image bytes → the eval pixels [image_size, image_size] uint8 the encoder takes (see the module doc). With a
    `limit`, the decode holds width x height of its units, so concurrent decodes stay under its pixel budget."""
    from hmpcl_lib.modeling.pixels import eval_pixels

    if not data:
        raise UnsupportedImage("empty upload: no image bytes", source=source)
    width, height = _check_header(io.BytesIO(data), source, max_pixels, formats)
    with limit.acquire(width * height) if limit is not None else contextlib.nullcontext():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=formats) as img:
                    if img.format == "JPEG":  # decode at 1/2..1/8 scale straight to luma: a fraction of the memory
                        img.draft("L", (2 * image_size, 2 * image_size))
                    img.load()
                    grey = flatten_drawing(img, "L")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"image cannot be decoded ({type(exc).__name__}: {exc})", source=source) from exc
        return eval_pixels(grey, image_size)


def read_query_file(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> bytes:
    """The bytes of a query image file, after `check_query_path` (inside `data_root`, a regular file)."""
    return check_query_path(path, data_root).read_bytes()


def embed_pixels(model: torch.nn.Module, pixels: np.ndarray, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu") -> np.ndarray:
    """[B, S, S] uint8 eval pixels → [B, D] float32 unit vectors in one forward pass (the Searcher's and the MLflow
    pyfunc's batched step)."""
    from hmpcl_lib.modeling.pixels import eval_batch

    batch = eval_batch(np.ascontiguousarray(pixels), mean, std, device)
    with torch.inference_mode():
        vectors = model(batch)
    return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy()


def encoder_batcher(embed: "Callable[[list[np.ndarray]], Sequence[np.ndarray]]", device: str | torch.device,
                    max_batch: int, window_ms: float, streams: int, name: str = "hmpcl-batcher") -> "DynamicBatcher":
    """The dynamic batcher of a server's encoder (`batching.DynamicBatcher`): on a CPU, `streams` worker threads
    (at most one per core) that split the torch threads between them; on a GPU, one."""
    from hmpcl_lib.retrieval.batching import DynamicBatcher

    cores = torch.get_num_threads()
    streams = max(1, min(streams, cores)) if torch.device(device).type == "cpu" else 1
    threads = max(1, cores // streams)
    return DynamicBatcher(embed, max_batch=max_batch, window_s=window_ms / 1000, name=name, streams=streams,
                          on_start=lambda: torch.set_num_threads(threads))


class Searcher:
    """Embeds a query image with the encoder and looks it up in the gallery index."""

    def __init__(
        self,
        model: torch.nn.Module,
        index: VectorIndex,
        hierarchy: pl.DataFrame,
        data_root: str | os.PathLike | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        device: str | torch.device = "cpu",
        image_size: int | None = None,
    ):
        config: dict[str, Any] = dict(getattr(model, "config", None) or {})
        image_size = image_size or config.get("image_size")
        if not image_size:
            raise ValueError("image_size not given and model.config has no 'image_size'")
        output_dim = getattr(model, "output_dim", None)
        if output_dim is not None and output_dim != index.dim:
            raise InputError(f"model gives {output_dim}-d embeddings but the index holds {index.dim}-d", source="index")
        missing = [c for c in HIERARCHY_COLUMNS if c not in hierarchy.columns]
        if missing:
            raise InputError(f"hierarchy table lacks columns {missing}", source="hierarchy")
        self.device = torch.device(device)
        # channels_last like the corpus embedding (`embedding._embed_batches`): eval_batch gives that layout
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.index = index
        self.hierarchy = hierarchy.select(HIERARCHY_COLUMNS).unique("drawing_id", keep="first", maintain_order=True)
        self.data_root = data_root
        self.max_pixels = max_pixels
        self.image_size = int(image_size)
        self.mean, self.std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)

    def pixels_of_bytes(self, data: bytes, source: str = "upload", limit=None) -> np.ndarray:
        """Eval pixels [S, S] of an image held in memory (`query_pixels`: checked, decoded to grey, letterboxed)."""
        return query_pixels(data, self.image_size, self.max_pixels, limit, source)

    def pixels_of_file(self, path: str | os.PathLike, limit=None) -> np.ndarray:
        """Eval pixels of an image file (inside the data root when one is set), by the same checks and decode."""
        return self.pixels_of_bytes(read_query_file(path, self.data_root), str(path), limit)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B, S, S] uint8 eval pixels → [B, D] float32 unit vectors (one forward pass: the batched step)."""
        return embed_pixels(self.model, pixels, self.mean, self.std, self.device)

    def embed_image(self, path: str | os.PathLike) -> np.ndarray:
        """[1, D] float32 unit vector of the query image (after the hostile-input checks)."""
        return self.embed_pixels(self.pixels_of_file(path)[None])

    def embed_bytes(self, data: bytes, source: str = "upload") -> np.ndarray:
        """[1, D] unit vector of an image held in memory (an upload), after the same checks as `embed_image`."""
        return self.embed_pixels(self.pixels_of_bytes(data, source)[None])

    def embed_pil(self, image: Image.Image) -> np.ndarray:
        """[1, D] unit vector of an already checked and decoded image (taken as its grey luma, like the corpus)."""
        from hmpcl_lib.modeling.pixels import eval_pixels

        return self.embed_pixels(eval_pixels(flatten_drawing(image, "L"), self.image_size)[None])

    def search_vector(self, vector: np.ndarray, k: int = 10) -> pl.DataFrame:
        ids, scores = self.index.search(vector, k)
        found = np.array([i is not None for i in ids[0]], dtype=bool)
        hits = pl.DataFrame(
            {
                "rank": np.arange(1, found.sum() + 1, dtype=np.int64),
                "drawing_id": pl.Series(ids[0][found].tolist(), dtype=pl.String),
                "score": scores[0][found].astype(np.float64),
            }
        )
        joined = hits.join(self.hierarchy, on="drawing_id", how="left", maintain_order="left")
        return joined.select(RESULT_COLUMNS)

    def search_image(self, path: str | os.PathLike, k: int = 10) -> pl.DataFrame:
        """Top-k gallery drawings for a query image: RESULT_COLUMNS, best first (fewer rows if the index is small)."""
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}", source="search")
        return self.search_vector(self.embed_image(path), k)


def _load_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.model_checkpoint:
        return load_encoder(args.model_checkpoint)
    from hmpcl_lib import tracking  # noqa: PLC0415 - only the MLflow path needs it

    return tracking.load_model(tracking.TrackingConfig(tracking_uri=args.tracking_uri), args.model_uri)


def _model_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The MLflow run behind `models:/name@alias` or `models:/name/version` (None for other URIs)."""
    import mlflow  # noqa: PLC0415

    if not model_uri.startswith("models:/"):
        return model_uri.split("/")[1] if model_uri.startswith("runs:/") else None
    name, _, ref = model_uri[len("models:/"):].partition("@")
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        if ref:
            return client.get_model_version_by_alias(name, ref).run_id
        name, _, version = name.partition("/")
        return client.get_model_version(name, version).run_id if version else None
    except mlflow.exceptions.MlflowException as exc:
        raise InputError(f"cannot resolve the model in {tracking_uri}: {exc}", source=model_uri) from exc


def default_index_dir(args: argparse.Namespace, layout: DataLayout) -> Path:
    """The `gallery_index` asset writes the index of the model's MLflow run: pick the one built by this model."""
    run_id = None if args.model_checkpoint else _model_run_id(args.model_uri, args.tracking_uri)
    if run_id is None:
        raise InputError("pass --index DIR (cannot tell which index belongs to this model)", source="search")
    return layout.index_dir(run_id)


def _parser() -> argparse.ArgumentParser:
    layout = DataLayout.from_env()
    p = argparse.ArgumentParser(prog="python -m hmpcl_lib.retrieval.search", description="Find the drawings nearest to an image.")
    p.add_argument("--image", required=True, help="query image file")
    p.add_argument("-k", "--k", type=int, default=10, help="number of results")
    p.add_argument("--model-uri", default=DEFAULT_MODEL_URI, help="MLflow model URI")
    p.add_argument("--model-checkpoint", help="encoder file instead of MLflow (torch.save'd Encoder or checkpoint)")
    p.add_argument("--index", default=os.environ.get("HMPCL_INDEX_DIR"),
                   help="index directory (default: the gallery_index of the model's MLflow run)")
    p.add_argument("--hierarchy", default=str(layout.hierarchy_path), help="lic_hierarchy Parquet")
    p.add_argument("--tracking-uri", default=default_tracking_uri())
    p.add_argument("--data-root", help="refuse query images outside this folder")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-png", help="also save a picture of the query and its results")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        hierarchy_path = Path(args.hierarchy)
        if not hierarchy_path.is_file():
            raise InputError("hierarchy table not found", source=str(hierarchy_path))
        index_dir = args.index or default_index_dir(args, DataLayout.from_env())
        searcher = Searcher(
            _load_model(args),
            VectorIndex.load(index_dir),
            pl.read_parquet(hierarchy_path),
            data_root=args.data_root,
            max_pixels=args.max_pixels,
            device=args.device,
        )
        results = searcher.search_image(args.image, args.k)
    except HmpclError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    table_style = dict(tbl_rows=max(args.k, 10), tbl_cols=-1, fmt_str_lengths=60, tbl_width_chars=200)
    with pl.Config(**table_style, tbl_hide_dataframe_shape=True):
        print(results.drop("image_path"))
    if args.out_png:
        from hmpcl_lib.retrieval.plots import results_grid_png  # noqa: PLC0415

        query_path = str(Path(args.image).resolve())
        same_file = searcher.hierarchy.filter(pl.col("image_path") == query_path)
        query_patent = same_file["patent_id"][0] if same_file.height else None
        results_grid_png(args.image, results, args.out_png, query_patent_id=query_patent)
        print(f"picture: {args.out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
