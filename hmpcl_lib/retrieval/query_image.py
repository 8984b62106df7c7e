"""Query images are hostile: the one decode of every query, a file or uploaded bytes, from the CLI, the search page
or the MLflow pyfunc.

`query_pixels` works in memory: only the formats in UPLOAD_FORMATS, the pixel count checked from the header (PIL opens
lazily) before any pixel is decoded, then (holding that many pixels of a `WorkLimit`, when a server passes one) decoded
by the pixel store's own decode (`pixels.decode_grey`: one grey channel, large images box-reduced first and JPEGs
decoded at reduced scale) and padded and resized exactly as the store stores the corpus (`pixels.eval_pixels`): the
query and the corpus go through the same pixels. A path
outside `data_root` (when set) is refused. `ImageTooLarge` and `UnsupportedImage` are the InputErrors a caller may
want to tell apart (the web app answers 413/415 for them); non-images and truncated files raise InputError naming the
file. Imports only PIL and numpy at module level, so command-line parsers can read the limits cheaply.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from hmpcl_lib.errors import InputError

if TYPE_CHECKING:
    from hmpcl_lib.retrieval.batching import WorkLimit

DEFAULT_MAX_PIXELS = 50_000_000
# after decoding an image of at least this many pixels, the freed memory goes back to the OS (batching.py's
# `release_freed_memory`): a server's decode threads then do not each keep the largest image they ever decoded
RELEASE_AFTER_PIXELS = 4_000_000
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
    from hmpcl_lib.modeling.dataset import load_drawing

    resolved = check_query_path(path, data_root)
    _check_header(resolved, str(path), max_pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return load_drawing(str(resolved), "RGB")


def header_pixels(data: bytes, formats: Sequence[str] = UPLOAD_FORMATS) -> int | None:
    """width x height from the image header alone (no decode), or None when the bytes are not a readable image of
    `formats`; a cheap peek to route work by size before `query_pixels` checks and decodes (and raises)."""
    try:
        width, height = _check_header(io.BytesIO(data), "upload", sys.maxsize, formats)
    except Exception:  # noqa: BLE001  (any failure: the checked decode reports it properly)
        return None
    return width * height


def query_pixels(
    data: bytes, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS, limit: "WorkLimit | None" = None,
    source: str = "upload", formats: Sequence[str] = UPLOAD_FORMATS,
) -> np.ndarray:
    """Image bytes → the eval pixels [image_size, image_size] uint8 the encoder takes (see the module doc). With a
    `limit`, the decode holds width x height of its units, so concurrent decodes stay under its pixel budget."""
    from hmpcl_lib.modeling.pixels import decode_grey, eval_pixels

    if not data:
        raise UnsupportedImage("empty upload: no image bytes", source=source)
    width, height = _check_header(io.BytesIO(data), source, max_pixels, formats)
    with limit.acquire(width * height) if limit is not None else contextlib.nullcontext():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=formats) as img:
                    grey = decode_grey(img, image_size)  # the pixel store's own decode (reduced, JPEGs drafted)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise InputError(f"image cannot be decoded ({type(exc).__name__}: {exc})", source=source) from exc
        pixels = eval_pixels(grey, image_size)
        del grey, img
    if width * height >= RELEASE_AFTER_PIXELS:
        from hmpcl_lib.retrieval.batching import release_freed_memory

        release_freed_memory()
    return pixels


def read_query_file(path: str | os.PathLike, data_root: str | os.PathLike | None = None) -> bytes:
    """The bytes of a query image file, after `check_query_path` (inside `data_root`, a regular file)."""
    return check_query_path(path, data_root).read_bytes()
