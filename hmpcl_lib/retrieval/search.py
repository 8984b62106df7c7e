"""The user query path: an image in, the nearest corpus drawings out (patent id, LIC class, score).

`Searcher` takes a loaded encoder and a gallery index: `pixels_of_bytes` / `pixels_of_file` decode a query through
`query_image.query_pixels` (the hostile-input checks), `embed_pixels` embeds a batch, `search_vector` looks it up.
`encoder_batcher` is the dynamic batcher a server puts in front of the encoder. The `hmpcl-search` command is
`hmpcl_lib.cli.search`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import polars as pl
import torch
from PIL import Image

from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.dataset import flatten_drawing
from hmpcl_lib.modeling.models import IMAGENET_MEAN, IMAGENET_STD
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.retrieval.query_image import DEFAULT_MAX_PIXELS, query_pixels, read_query_file

if TYPE_CHECKING:
    from typing import Callable

    from hmpcl_lib.retrieval.batching import DynamicBatcher

RESULT_COLUMNS = ["rank", "drawing_id", "patent_id", "class_code", "subclass_code", "score", "image_path"]
HIERARCHY_COLUMNS = ["drawing_id", "patent_id", "class_code", "subclass_code", "image_path"]


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
