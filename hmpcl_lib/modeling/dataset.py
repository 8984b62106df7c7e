"""torch Dataset over drawing files: decode with PIL, replicate grey to RGB, apply the encoder's transform.

Items are `(image_tensor, index)`; labels stay in numpy arrays and are looked up by index in the training loop,
so workers never pickle label tensors. An item key may be `(index, seed)`: the transform's randomness is then
seeded per sample, which makes augmentation independent of worker count and of where a resumed run restarts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from hmpcl_lib.errors import InputError


def load_drawing(path: str, mode: str = "RGB", record: str | int | None = None) -> Image.Image:
    """Fully decode an image file (so truncated files fail here) and convert it to `mode`.

    Grey line drawings become 3 identical channels for RGB (ImageNet) stems; palette/alpha PNGs are flattened
    onto white so transparent backgrounds do not turn black.
    """
    with open_drawing(path, record) as img:
        img.load()
        return flatten_drawing(img, mode)


@contextlib.contextmanager
def open_drawing(path: str, record: str | int | None = None) -> Iterator[Image.Image]:
    """The opened image file for the block; a missing file, or one that cannot be opened or decoded inside the block,
    is an InputError naming the file (and the record)."""
    try:
        with Image.open(path) as img:
            yield img
    except FileNotFoundError as e:
        raise InputError("image file is missing", source=path, record=record) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(f"image cannot be decoded ({type(e).__name__}: {e})", source=path, record=record) from e


def flatten_drawing(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """A decoded image in `mode`, palette/alpha flattened onto white (transparent backgrounds must not turn black)."""
    if img.mode in ("RGBA", "LA", "P", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert(mode)


class DrawingDataset(Dataset):
    """Drawings by position: `dataset[i]` or `dataset[(i, seed)]` → `(image tensor, i)`."""

    def __init__(
        self,
        image_paths: Sequence[str],
        labels: dict[str, np.ndarray] | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        mode: str = "RGB",
    ):
        self.image_paths = [str(p) for p in image_paths]
        self.labels = {k: np.asarray(v) for k, v in (labels or {}).items()}
        for name, values in self.labels.items():
            if len(values) != len(self.image_paths):
                raise ValueError(f"labels[{name!r}] has {len(values)} values for {len(self.image_paths)} images")
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        img = load_drawing(self.image_paths[index], self.mode, record=f"#{index}")
        if self.transform is None:
            from torchvision.transforms.functional import pil_to_tensor

            return pil_to_tensor(img), index
        if seed is None:
            return self.transform(img), index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.transform(img), index

    def labels_of(self, indices: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Label tensors (int64) for a batch of dataset indices."""
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        return {name: torch.from_numpy(values[idx].astype(np.int64)) for name, values in self.labels.items()}


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack images; keep dataset indices as an int64 tensor (labels are looked up from them)."""
    images, indices = zip(*batch)
    return torch.stack(images), torch.as_tensor(indices, dtype=torch.int64)
