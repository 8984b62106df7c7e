"""Decode once: every drawing of a table decoded, letterboxed and resized into a memory-mapped uint8 store.

Training epochs and embedding runs otherwise decode every PNG again (PIL decode + pad + resize dominate a CPU
epoch). `ensure_pixel_store(rows, data_root, image_size)` decodes each (drawing_id, image_path) row once into

    <data_root>/pixels/[<group>/]<image_size>-<fingerprint[:16]>/     (the pipeline: one group per year, `year=2019`)
        eval.npy     uint8 [N, S, S]   S = image_size: the eval transform's pixels (pad to a white square, PIL
                                       bilinear antialiased resize), so store embeddings equal PNG embeddings; a
                                       drawing larger than REDUCING_GAP x T (a real 2,600 px sheet) is box-reduced
                                       by an integer factor first (`decode_grey`), within a grey level of them
        train.npy    uint8 [N, T, T]   T = train_side(image_size) ≈ 1.3 S: room for the training crop (below)
        index.parquet drawing_id, image_path, file_size, mtime_ns (row order = array order)
        meta.json    format, image_size, train_side, margin, count, fingerprint, mode, build time

Grey ("L", 1 channel): drawings are black on white and the PNG path replicates grey to 3 channels anyway, so one
channel is stored and expanded at tensor time (3x less memory). A colour PNG is stored as its luma (ITU-R 601,
PIL's "L"): the one case where the store's input differs from the PNG path's.

Key: the image size and a fingerprint of the table as (drawing_id, image_path, file size, mtime_ns) rows sorted
by drawing_id: one stat per file, no read, and any rewrite of a file changes its mtime. A matching store is
reused; anything else builds a new one beside it (old ones are left for `prune_pixel_stores`). `PixelStoreSet` reads
several stores (the years) as one. The build writes
into a temp folder under `pixels/` and renames it into place, so a crash or a bad image (an `InputError` naming
the file and the drawing) leaves nothing half-written. Decoding runs on a thread pool: PIL releases the GIL
while it decodes and resizes.

Training margin: the train transform (`build_transform(train=True)`) crops TRAIN_CROP_SCALE (≥ 70 %) of the
padded square's area at an aspect in TRAIN_CROP_RATIO, then resizes it to S. The smallest crop side is
sqrt(0.7 / 1.18) ≈ 0.77 of the square, so storing T = ceil(S * sqrt(1.18 / 0.7)) ≈ 1.3 S means a crop is never
upscaled from the store, like the PNG path which crops the full-resolution drawing.
`PixelTrainDataset` draws the same crop and affine parameters (per-sample seeds, as `DrawingDataset`) and
`augment_batch` applies crop + rotation + shift + scale as ONE batched `grid_sample` (bilinear, white fill) on
the device, instead of two per-sample resamplings on PIL images: same distribution, one interpolation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
import torch
import torch.nn.functional as F

from hmpcl_lib.io import atomic_dir
from hmpcl_lib.diskspace import pixel_store_bytes, require_free_disk
from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.dataset import open_drawing
from hmpcl_lib.modeling.models import (PadToSquare, TRAIN_AFFINE_DEGREES, TRAIN_AFFINE_SCALE, TRAIN_AFFINE_TRANSLATE,
                                       TRAIN_CROP_RATIO, TRAIN_CROP_SCALE)

log = logging.getLogger(__name__)

FORMAT = "hmpcl-pixels-v2"  # v2: sheets larger than REDUCING_GAP x the train side are box-reduced first (decode_grey)
MODE = "L"
# side of the stored training pixels over the image size: the smallest training crop is not upscaled (module doc)
TRAIN_MARGIN = math.sqrt(TRAIN_CROP_RATIO[1] / TRAIN_CROP_SCALE[0])
_CHUNK = 2048  # images decoded per progress step
_LOG_EVERY_S = 10.0


def train_side(image_size: int) -> int:
    """Side of the stored training pixels for `image_size` (≈ 1.3 x; see the module doc)."""
    return int(math.ceil(image_size * TRAIN_MARGIN - 1e-9))


# Reduce before padding and resizing (as PIL's `Image.resize(reducing_gap=...)` does): a drawing whose longer side is
# at least REDUCING_GAP x the train side is first shrunk by an integer factor with PIL's box `reduce` (JPEGs are decoded
# at that scale by `draft`), so the padding and the antialiased resizes touch a fraction of a 2,600 px sheet's pixels
# and no full-size copy but the decode's own is made. A gap of 3 keeps the pixels within a grey level or two of the
# full-resolution path on real sheets (tests/test_pixels.py states the tolerance); smaller drawings (the generated
# sample's 384 px) are not reduced and their pixels are unchanged.
REDUCING_GAP = 3.0


def reduction_factor(size: tuple[int, int], image_size: int) -> int:
    """The integer box-reduction factor of a (width, height) drawing stored or queried at `image_size`."""
    return max(1, int(max(size) // (REDUCING_GAP * train_side(image_size))))


def decode_grey(img: Image.Image, image_size: int) -> Image.Image:
    """An opened, not yet loaded PIL image → its grey drawing ("L"), box-reduced by `reduction_factor` and flattened
    onto white: the one decode of the pixel store and of every query (so query and corpus get the same pixels).

    Memory: the decoded image in its own mode plus at most one full-size grey copy (no full-size RGBA, composite or
    padded square): 1-2 bytes per pixel for bilevel, grey and palette images, 4 for RGB and alpha images (Pillow
    holds them in 32 bits)."""
    factor = reduction_factor(img.size, image_size)
    if img.format == "JPEG" and factor > 1:  # decoded at 1/2..1/8 scale straight to luma
        img.draft("L", (img.width // factor, img.height // factor))
        factor = reduction_factor(img.size, image_size)
    img.load()
    if img.mode == "P" and "transparency" in img.info:  # onto white through the palette: one byte per pixel
        img = _palette_onto_white(img)
    if img.mode == "PA":  # the one alpha mode `reduce` does not take
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):  # alpha onto white, after the reduction: transparent must not turn black
        return _onto_white((img.reduce(factor) if factor > 1 else img).convert("RGBA"))
    if img.mode == "RGB":
        return (img.reduce(factor) if factor > 1 else img).convert("L")
    grey = img if img.mode == "L" else img.convert("L")  # "1" (bilevel sheets), opaque "P", "I;16", CMYK...
    return grey.reduce(factor) if factor > 1 else grey.copy()


def _onto_white(rgba: Image.Image) -> Image.Image:
    """An RGBA image composited onto white, as grey ("L")."""
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("L")


def _palette_onto_white(img: Image.Image) -> Image.Image:
    """A palette image with transparency (one index, or an alpha per index) as an opaque palette image of greys, each
    entry its colour composited onto white by its alpha and taken as luma (`_onto_white` on the palette's n entries):
    the drawing flattened onto white without an RGBA copy of it."""
    rgb = img.getpalette("RGB") or []
    n = len(rgb) // 3
    alpha = [255] * n
    transparency = img.info.get("transparency")
    if isinstance(transparency, int) and transparency < n:
        alpha[transparency] = 0
    elif isinstance(transparency, (bytes, bytearray)):
        alpha[:len(transparency)] = list(transparency[:n])
    entries = Image.frombytes("RGB", (n, 1), bytes(rgb[:3 * n])).convert("RGBA")  # the palette as an image
    entries.putalpha(Image.frombytes("L", (n, 1), bytes(alpha)))
    greys = _onto_white(entries).tobytes()  # the same composite and luma as an RGBA image gets
    img.putpalette([v for grey in greys for v in (grey, grey, grey)])  # the caller's own opened image: no copy
    img.info.pop("transparency", None)
    return img


def decode_file(path: str, image_size: int, record: str | int | None = None) -> Image.Image:
    """`decode_grey` of an image file; an `InputError` naming the file (and the record) when it cannot be decoded."""
    with open_drawing(path, record) as img:
        return decode_grey(img, image_size)


def pixel_store_root(data_root: str | os.PathLike) -> Path:
    """Where every pixel store of a data root lives: `<data_root>/pixels/`."""
    return Path(data_root) / "pixels"


def pixel_store_path(data_root: str | os.PathLike, image_size: int, fingerprint: str, group: str = "") -> Path:
    """`<data_root>/pixels/[<group>/]<image_size>-<fingerprint[:16]>/`: the store for this table and size. A group
    (`year=2019`) keeps one part of the corpus's stores apart from another's, so each part is rebuilt and pruned on
    its own."""
    return pixel_store_root(data_root) / group / f"{int(image_size)}-{fingerprint[:16]}"


# ---------------------------------------------------------------- the table and its fingerprint


@dataclass
class _Rows:
    drawing_ids: list[str]
    image_paths: list[str]
    sizes: np.ndarray  # int64
    mtimes: np.ndarray  # int64 ns


def _table_rows(rows: Any) -> tuple[list[str], list[str]]:
    """(drawing_ids, image_paths) from a polars DataFrame / pyarrow Table with those columns, sorted by id."""
    import polars as pl
    import pyarrow as pa

    frame = pl.from_arrow(rows) if isinstance(rows, pa.Table) else rows
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"rows must be a polars DataFrame or pyarrow Table, got {type(rows).__name__}")
    missing = [c for c in ("drawing_id", "image_path") if c not in frame.columns]
    if missing:
        raise InputError(f"table lacks columns {missing} (has {frame.columns})", source="pixel store")
    for column in ("drawing_id", "image_path"):
        nulls = frame.with_row_index("row").filter(pl.col(column).is_null())
        if nulls.height:
            record = nulls["drawing_id"][0] if column == "image_path" else f"#{nulls['row'][0]}"
            raise InputError(f"{column} is null", source="pixel store", record=record)
    frame = frame.select(pl.col("drawing_id").cast(pl.String), pl.col("image_path").cast(pl.String))
    frame = frame.unique(maintain_order=True).sort("drawing_id", "image_path")
    return frame["drawing_id"].to_list(), frame["image_path"].to_list()


def _stat_rows(ids: list[str], paths: list[str], workers: int) -> _Rows:
    def stat(i: int) -> tuple[int, int]:
        try:
            st = os.stat(paths[i])
        except FileNotFoundError as e:
            raise InputError("image file is missing", source=paths[i], record=ids[i]) from e
        return st.st_size, st.st_mtime_ns

    stats: list[tuple[int, int]] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:  # in chunks: one future per file at once is a lot at 1M
        for lo in range(0, len(paths), _CHUNK):
            stats.extend(pool.map(stat, range(lo, min(len(paths), lo + _CHUNK))))
    sizes = np.array([s for s, _ in stats], dtype=np.int64).reshape(-1)
    mtimes = np.array([m for _, m in stats], dtype=np.int64).reshape(-1)
    return _Rows(ids, paths, sizes, mtimes)


def _fingerprint(r: _Rows, image_size: int) -> str:
    h = hashlib.sha256(f"{FORMAT}\n{MODE}\n{int(image_size)}\n{train_side(image_size)}\n".encode())
    for i in range(len(r.image_paths)):
        h.update(f"{r.drawing_ids[i]}\t{r.image_paths[i]}\t{r.sizes[i]}\t{r.mtimes[i]}\n".encode())
    return h.hexdigest()


def table_fingerprint(rows: Any, image_size: int, workers: int | None = None) -> str:
    """Key of the store for `rows` (drawing_id, image_path) at `image_size`: one stat per file, no read."""
    ids, paths = _table_rows(rows)
    return _fingerprint(_stat_rows(ids, paths, workers or _default_workers()), image_size)


def _default_workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


# ---------------------------------------------------------------- the store


@dataclass
class PixelStore:
    """An opened store: memory-mapped arrays (`eval`, `train`) and the rows they hold (see the module doc)."""

    path: Path
    meta: dict[str, Any]
    drawing_ids: list[str]
    image_paths: list[str]
    eval: np.ndarray  # uint8 [N, S, S], memory-mapped read-only
    train: np.ndarray  # uint8 [N, T, T], memory-mapped read-only
    built: bool = False  # True when the call that returned it decoded the drawings
    _position: dict[str, int] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "PixelStore":
        import pyarrow.parquet as pq

        path = Path(path)
        meta_path = path / "meta.json"
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError as e:
            raise InputError("not a pixel store (no meta.json)", source=str(path)) from e
        except json.JSONDecodeError as e:
            raise InputError(f"meta.json is not JSON ({e})", source=str(meta_path)) from e
        if meta.get("format") != FORMAT:
            raise InputError(f"pixel store format {meta.get('format')!r}, expected {FORMAT!r}", source=str(path))
        index = pq.read_table(path / "index.parquet", columns=["drawing_id", "image_path"])
        return cls(
            path=path,
            meta=meta,
            drawing_ids=index.column("drawing_id").to_pylist(),
            image_paths=index.column("image_path").to_pylist(),
            eval=np.load(path / "eval.npy", mmap_mode="r"),
            train=np.load(path / "train.npy", mmap_mode="r"),
        )

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def train_side(self) -> int:
        return int(self.meta["train_side"])

    @property
    def fingerprint(self) -> str:
        return str(self.meta["fingerprint"])

    def __len__(self) -> int:
        return int(self.meta["count"])

    def eval_rows(self, rows: np.ndarray) -> np.ndarray:
        """Eval pixels of `rows` ([len(rows), S, S] uint8, a copy). A run of consecutive rows is one `pread` from
        the file, so reading the whole store in order (corpus embedding) never leaves it mapped in this process's
        memory; any other order reads through the memory map."""
        rows = np.asarray(rows, dtype=np.int64)
        s = self.image_size
        if len(rows) == 0 or not (np.all(np.diff(rows) == 1) and 0 <= rows[0] and rows[-1] < len(self)):
            return np.asarray(self.eval[rows])
        out = np.empty((len(rows), s, s), np.uint8)
        with open(self.path / "eval.npy", "rb") as f:
            n = os.preadv(f.fileno(), [out.data], self.eval.offset + int(rows[0]) * s * s)
        if n != out.nbytes:
            raise InputError(f"eval.npy is shorter than its header says ({n} of {out.nbytes} bytes read)",
                             source=str(self.path))
        return out

    def train_pixels(self, row: int) -> np.ndarray:
        """The train pixels of one row ([T, T] uint8, a copy)."""
        return np.array(self.train[int(row)])

    def positions(self, image_paths: Sequence[str]) -> np.ndarray:
        """Row of each image path in the store (int64); an image the store lacks is an InputError naming it."""
        if self._position is None:
            self._position = {}
            for i, p in enumerate(self.image_paths):
                self._position.setdefault(p, i)
        return _rows_of(self._position, image_paths, f"not in the pixel store {self.path} (rebuild it with "
                                                     "ensure_pixel_store for this table)")

    def verify(self, rows: Any = None, check_files: bool = False) -> dict[str, Any]:
        """Consistency facts for an asset check: {'ok': bool, 'problems': [...], 'count': N, ...}.

        Always: the arrays' shape/dtype against meta.json and the index. With `rows`: the store holds exactly the
        table's (drawing_id, image_path) rows. With `check_files` too: no file changed size or mtime since the build.
        """
        problems: list[str] = []
        n, s, t = len(self), self.image_size, self.train_side
        for name, array, side in (("eval", self.eval, s), ("train", self.train, t)):
            if array.dtype != np.uint8 or array.shape != (n, side, side):
                problems.append(f"{name}.npy is {array.dtype}{list(array.shape)}, expected uint8{[n, side, side]}")
        if len(self.drawing_ids) != n:
            problems.append(f"index.parquet has {len(self.drawing_ids)} rows, meta.json says {n}")
        if rows is not None:
            ids, paths = _table_rows(rows)
            if (ids, paths) != (self.drawing_ids, self.image_paths):
                wanted, held = set(zip(ids, paths)), set(zip(self.drawing_ids, self.image_paths))
                problems.append(f"rows differ from the table: {len(wanted - held)} missing, {len(held - wanted)} extra")
            elif check_files:
                fresh = _fingerprint(_stat_rows(ids, paths, _default_workers()), s)
                if fresh != self.fingerprint:
                    problems.append("image files changed (size or mtime) since the store was built")
        return {"ok": not problems, "problems": problems, "count": n, "image_size": s, "train_side": t,
                "fingerprint": self.fingerprint, "path": str(self.path),
                "bytes": int(self.eval.nbytes + self.train.nbytes)}


def ensure_pixel_store(
    rows: Any,
    data_root: str | os.PathLike,
    image_size: int,
    workers: int | None = None,
    group: str = "",
) -> PixelStore:
    """The store of `rows` (drawing_id, image_path; polars or pyarrow) at `image_size` under
    `data_root/pixels/[group/]`: reused when its key matches, else decoded (in parallel, atomically). `.built` says
    which happened. The pipeline keeps one store per year (`group="year=2019"`, keyed by that year's own rows)."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    workers = workers or _default_workers()
    ids, paths = _table_rows(rows)
    table = _stat_rows(ids, paths, workers)
    fingerprint = _fingerprint(table, image_size)
    final = pixel_store_path(data_root, image_size, fingerprint, group)
    if (final / "meta.json").exists():
        store = PixelStore.open(final)
        if store.fingerprint == fingerprint and len(store) == len(paths):
            log.info("pixel store %s reused (%d drawings at %d px)", final, len(store), image_size)
            return store
        log.warning("pixel store %s does not match its key; rebuilding it", final)
        shutil.rmtree(final)
    n, text = len(paths), sum(len(i.encode()) + len(p.encode()) for i, p in zip(ids, paths))
    require_free_disk(f"the pixel store ({n:,} drawings at {image_size} px)", final.parent,
                      pixel_store_bytes(n, image_size, train_side(image_size), text))
    with atomic_dir(final, replace=False) as tmp:  # another process that finished the same store first wins
        _build(tmp, table, image_size, fingerprint, workers)
    store = PixelStore.open(final)
    store.built = True
    return store


def eval_pixels(image: Image.Image, size: int) -> np.ndarray:
    """A decoded grey drawing → its eval pixels [size, size] uint8: padded to a white square and resized exactly as
    build_transform does (PIL bilinear, antialiased). The store's rows and every search query go through this."""
    from torchvision.transforms import functional as TF

    return np.array(TF.resize(PadToSquare(255)(image), [size, size], antialias=True))  # a writable copy


def _decode_one(path: str, record: str, eval_size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """One drawing → (eval pixels [S, S], train pixels [T, T]) uint8, exactly as build_transform pads and resizes."""
    from torchvision.transforms import functional as TF

    square = PadToSquare(255)(decode_file(path, eval_size, record=record))
    small = np.asarray(TF.resize(square, [eval_size, eval_size], antialias=True))
    large = np.asarray(TF.resize(square, [side, side], antialias=True))
    return small, large


def _npy_writer(path: Path, shape: tuple[int, ...]):
    """An open file holding a uint8 `.npy` header for `shape`: rows are appended in order with plain writes, so the
    build keeps one chunk in memory whatever N is (a writable memmap would keep every written page resident)."""
    out = open(path, "wb")
    np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return out


def _build(tmp: Path, table: _Rows, image_size: int, fingerprint: str, workers: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, side = len(table.image_paths), train_side(image_size)
    log.info("pixel store: decoding %d drawings at %d px (train side %d) with %d threads into %s",
             n, image_size, side, workers, tmp.parent)
    start = last_log = time.perf_counter()
    with (_npy_writer(tmp / "eval.npy", (n, image_size, image_size)) as eval_out,
          _npy_writer(tmp / "train.npy", (n, side, side)) as train_out,
          ThreadPoolExecutor(max_workers=workers) as pool):
        for lo in range(0, n, _CHUNK):
            hi = min(n, lo + _CHUNK)
            eval_chunk = np.empty((hi - lo, image_size, image_size), np.uint8)
            train_chunk = np.empty((hi - lo, side, side), np.uint8)

            def work(i: int) -> None:
                eval_chunk[i - lo], train_chunk[i - lo] = _decode_one(table.image_paths[i], table.drawing_ids[i],
                                                                      image_size, side)

            for _ in pool.map(work, range(lo, hi)):  # re-raises the first InputError
                pass
            eval_out.write(eval_chunk.data)
            train_out.write(train_chunk.data)
            now = time.perf_counter()
            if now - last_log >= _LOG_EVERY_S:
                log.info("pixel store: %d / %d drawings decoded (%.0f /s)", hi, n, hi / (now - start))
                last_log = now
    seconds = time.perf_counter() - start
    pq.write_table(pa.table({"drawing_id": pa.array(table.drawing_ids, pa.string()),
                             "image_path": pa.array(table.image_paths, pa.string()),
                             "file_size": pa.array(table.sizes, pa.int64()),
                             "mtime_ns": pa.array(table.mtimes, pa.int64())}), tmp / "index.parquet")
    meta = {"format": FORMAT, "mode": MODE, "image_size": int(image_size), "train_side": side,
            "margin": side / image_size, "count": n, "fingerprint": fingerprint,
            "build_seconds": round(seconds, 3),
            "preprocessing": "PIL decode (alpha flattened on white) -> grey 'L' -> pad to a white square -> "
                             "torchvision resize (PIL bilinear, antialias) to image_size (eval) and train_side"}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    log.info("pixel store: %d drawings decoded in %.1f s (%.0f /s)", n, seconds, n / max(seconds, 1e-9))


def prune_pixel_stores(data_root: str | os.PathLike, keep: Sequence[str | os.PathLike], group: str = "") -> list[Path]:
    """Delete the stores (and leftover temp folders) under `data_root/pixels/[group/]` other than `keep`; returns
    them. Without a group, the group folders (`year=...`) are left alone."""
    root, kept = pixel_store_root(data_root) / group, {Path(k).resolve() for k in keep}
    removed = []
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and child.resolve() not in kept and (group or "=" not in child.name):
            shutil.rmtree(child)
            removed.append(child)
    return removed


class PixelStoreSet:
    """Several stores read as one (the pipeline's per-year stores): rows numbered across the members in order, with
    the `PixelStore` interface that embedding, training and validation use (`positions`, `eval_rows`,
    `train_pixels`, `image_size`, `train_side`, `len`). Its `path` is the members' folders joined by `os.pathsep`
    (as PATH is), which `open_pixel_store` and `TrainConfig.pixel_store` take back."""

    def __init__(self, stores: Sequence[PixelStore]):
        if not stores:
            raise InputError("no pixel stores to read", source="pixel store set")
        sizes = {(s.image_size, s.train_side) for s in stores}
        if len(sizes) > 1:
            raise InputError(f"pixel stores of different sizes {sorted(sizes)}", source=self._joined(stores))
        self.stores = list(stores)
        self.offsets = np.cumsum([0] + [len(s) for s in self.stores])
        self.meta = {"image_size": self.stores[0].image_size, "train_side": self.stores[0].train_side,
                     "count": int(self.offsets[-1])}
        self._position: dict[str, int] | None = None

    @staticmethod
    def _joined(stores: Sequence[PixelStore]) -> str:
        return os.pathsep.join(str(s.path) for s in stores)

    @property
    def path(self) -> str:
        return self._joined(self.stores)

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def train_side(self) -> int:
        return int(self.meta["train_side"])

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(s.fingerprint for s in self.stores).encode()).hexdigest()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _split(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        member = np.searchsorted(self.offsets, rows, side="right") - 1
        return member, rows - self.offsets[member]

    def eval_rows(self, rows: np.ndarray) -> np.ndarray:
        """Eval pixels of `rows` (a copy); runs of rows inside one member are read as that member reads them."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.image_size, self.image_size), np.uint8)
        member, local = self._split(rows)
        for m in np.unique(member):
            at = np.flatnonzero(member == m)
            out[at] = self.stores[m].eval_rows(local[at])
        return out

    def train_pixels(self, row: int) -> np.ndarray:
        member, local = self._split(np.array([int(row)]))
        return self.stores[int(member[0])].train_pixels(int(local[0]))

    def positions(self, image_paths: Sequence[str]) -> np.ndarray:
        """Row of each image path across the members (int64); a path no member holds is an InputError naming it."""
        if self._position is None:
            self._position = {}
            for offset, store in zip(self.offsets, self.stores):
                for i, p in enumerate(store.image_paths):
                    self._position.setdefault(p, int(offset) + i)
        return _rows_of(self._position, image_paths, f"in none of the pixel stores {self.path}")


def _rows_of(position: dict[str, int], image_paths: Sequence[str], missing: str) -> np.ndarray:
    """The row of each image path in `position` (int64); a path it lacks is an InputError `missing`, naming it."""
    out = np.empty(len(image_paths), dtype=np.int64)
    for k, p in enumerate(image_paths):
        i = position.get(str(p))
        if i is None:
            raise InputError(missing, source=str(p), record=f"#{k}")
        out[k] = i
    return out


def open_pixel_store(store: "PixelStore | PixelStoreSet | str | os.PathLike") -> "PixelStore | PixelStoreSet":
    """A store, a set of stores, a store's folder, or several folders joined by `os.pathsep` (a set's `path`)."""
    if isinstance(store, (PixelStore, PixelStoreSet)):
        return store
    paths = [p for p in str(store).split(os.pathsep) if p]
    if len(paths) == 1:
        return PixelStore.open(paths[0])
    return PixelStoreSet([PixelStore.open(p) for p in paths])


# ---------------------------------------------------------------- tensors from the store


def _normalise_grey(x01: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, S, S] grey in [0, 1] → (x - mean[c]) / std[c] as [B, C, S, S] in channels_last memory: one plane per
    distinct (mean, std), then a single layout copy (broadcasting into channels_last is ~3x slower on CPU)."""
    stats = list(zip((float(m) for m in mean), (float(s) for s in std)))
    b, h, w = x01.shape
    if len(set(stats)) == 1:  # e.g. the TF-Lite 0.5 / 0.5: one plane, replicated
        m, s = stats[0]
        plane = x01.sub(m).div_(s).unsqueeze(-1)
        return plane.expand(b, h, w, len(stats)).contiguous().permute(0, 3, 1, 2)
    planes = torch.stack([x01.sub(m).div_(s) for m, s in stats], dim=1)
    return planes.contiguous(memory_format=torch.channels_last)


def eval_batch(pixels: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float],
               device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B, S, S] eval pixels → normalised float [B, 3, S, S] channels_last on `device`, computed as the
    PNG path's ToTensor + Normalize compute it (x / 255, - mean, / std), so the two give the same numbers."""
    device = torch.device(device)
    x = torch.as_tensor(pixels).to(device, non_blocking=True)
    b, s = x.shape[0], x.shape[-1]
    return _normalise_grey(x.view(b, s, s).float().div(255), mean, std)


def sample_augmentation(seed: int | None, out_size: int, generator: np.random.Generator | None = None) -> np.ndarray:
    """The [2, 3] `affine_grid` matrix of one training sample: RandomResizedCrop then RandomAffine, drawn with the
    ranges of `build_transform(train=True)`, in normalised coordinates (output → source square)."""
    rng = generator if generator is not None else np.random.default_rng(seed)
    log_ratio = np.log(TRAIN_CROP_RATIO)
    w = h = 1.0
    for _ in range(10):  # torchvision's rejection loop, in fractions of the square
        area = rng.uniform(*TRAIN_CROP_SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if cw <= 1.0 and ch <= 1.0:
            w, h = cw, ch
            break
    x0, y0 = rng.uniform(0.0, 1.0 - w), rng.uniform(0.0, 1.0 - h)
    cx, cy = 2 * x0 + w - 1, 2 * y0 + h - 1  # crop centre in [-1, 1]
    angle = math.radians(rng.uniform(-TRAIN_AFFINE_DEGREES, TRAIN_AFFINE_DEGREES))
    tx, ty = (2 * round(rng.uniform(-TRAIN_AFFINE_TRANSLATE, TRAIN_AFFINE_TRANSLATE) * out_size) / out_size
              for _ in range(2))
    scale = rng.uniform(*TRAIN_AFFINE_SCALE)
    # output u → crop coords v = A^-1 (u - t), A = scale * R(angle); v → source = centre + diag(w, h) v
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    inv = np.array([[cos, sin], [-sin, cos]])
    crop = np.diag([w, h])
    lin = crop @ inv
    shift = np.array([cx, cy]) - lin @ np.array([tx, ty])
    return np.concatenate([lin, shift[:, None]], axis=1).astype(np.float32)


def augment_batch(pixels: torch.Tensor, theta: torch.Tensor, out_size: int, mean: Sequence[float],
                  std: Sequence[float], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [B, T, T] (or [B, 1, T, T]) train pixels + [B, 2, 3] matrices → normalised float [B, 3, S, S]
    channels_last: crop, rotation, shift and scale in one batched bilinear `grid_sample`, white outside."""
    device = torch.device(device)
    x = pixels.to(device, non_blocking=True)
    b, t = x.shape[0], x.shape[-1]
    ink = x.view(b, 1, t, t).float().mul_(-1.0 / 255).add_(1.0)  # 1 - x/255: zero padding = white paper
    ink = F.grid_sample(ink, _affine_grid(theta.to(device, torch.float32), out_size), mode="bilinear",
                        padding_mode="zeros", align_corners=False)
    return _normalise_grey(ink.view(b, out_size, out_size).neg_().add_(1.0), mean, std)


def _affine_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """`F.affine_grid(theta, [B, 1, size, size], align_corners=False)` as one broadcast add of a per-column and a
    per-row term (its batched 3-wide matmul is ~10x slower on CPU); pixel centres at (2k + 1) / size - 1."""
    b = theta.shape[0]
    c = ((torch.arange(size, device=theta.device, dtype=torch.float32) * 2 + 1) / size - 1).view(1, size, 1)
    from_x = c * theta[:, :, 0].reshape(b, 1, 2)  # [B, W, 2]
    from_y = c * theta[:, :, 1].reshape(b, 1, 2) + theta[:, :, 2].reshape(b, 1, 2)  # [B, H, 2]
    return from_y.view(b, size, 1, 2) + from_x.view(b, 1, size, 2)


class PixelTrainDataset(torch.utils.data.Dataset):
    """Training items from a store: `dataset[(i, seed)]` → (uint8 [T, T] pixels, [2, 3] augmentation, i).

    Drop-in for `DrawingDataset` in the training loop (same keys, same `labels_of`), but the tensors are made per
    batch: `collate` stacks uint8 pixels, and `model_input(pixels, theta, device)` augments and normalises the
    whole batch on the device. The augmentation depends only on the per-sample seed, as with DrawingDataset.
    """

    def __init__(self, store: "PixelStore | PixelStoreSet | str | os.PathLike", image_paths: Sequence[str],
                 labels: dict[str, np.ndarray] | None, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.store = open_pixel_store(store)
        if self.store.image_size != image_size:
            raise InputError(f"pixel store holds {self.store.image_size} px drawings, training wants {image_size} px",
                             source=str(self.store.path))
        self.rows = self.store.positions([str(p) for p in image_paths])
        self.labels = {k: np.asarray(v) for k, v in (labels or {}).items()}
        for name, values in self.labels.items():
            if len(values) != len(self.rows):
                raise ValueError(f"labels[{name!r}] has {len(values)} values for {len(self.rows)} images")
        self.image_size, self.mean, self.std = int(image_size), list(mean), list(std)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, np.ndarray, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        pixels = torch.from_numpy(self.store.train_pixels(self.rows[index]))
        return pixels, sample_augmentation(seed, self.image_size), index

    def labels_of(self, indices: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64)
        return {name: torch.from_numpy(values[idx].astype(np.int64)) for name, values in self.labels.items()}

    @staticmethod
    def collate(batch: list[tuple[torch.Tensor, np.ndarray, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels, thetas, indices = zip(*batch)
        return (torch.stack(pixels), torch.from_numpy(np.stack(thetas)),
                torch.as_tensor(indices, dtype=torch.int64))

    def model_input(self, pixels: torch.Tensor, theta: torch.Tensor, device: torch.device) -> torch.Tensor:
        return augment_batch(pixels, theta, self.image_size, self.mean, self.std, device)
