"""Pixel store (hmpcl_lib/modeling/pixels.py): decode once, reuse by key, atomic build, and the training and
embedding paths over it agree with the PNG paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, ImageDraw

from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling import pixels
from hmpcl_lib.modeling.dataset import DrawingDataset, collate
from hmpcl_lib.modeling.models import build_encoder, build_transform
from hmpcl_lib.modeling.pixels import (PixelStore, prune_pixel_stores, PixelTrainDataset, augment_batch, ensure_pixel_store, eval_batch,
                                       pixel_store_root, sample_augmentation, train_side)
from hmpcl_lib.retrieval.embedding import embed_paths, embed_table
from hmpcl_lib.train.config import TrainConfig
from hmpcl_lib.train.loop import train

SIZE = 48


def _drawing(path: Path, seed: int, size: tuple[int, int], mode: str) -> str:
    rng = np.random.default_rng(seed)
    img = Image.new("L", size, 255)
    pen = ImageDraw.Draw(img)
    for _ in range(5):
        pen.line([tuple(int(v) for v in rng.integers(0, min(size), 2)) for _ in range(2)], fill=0, width=2)
    if mode == "LA":  # transparent background, as some PNG exports have: must become white, not black
        alpha = Image.eval(img, lambda v: 255 - v)
        img = Image.merge("LA", (Image.new("L", size, 0), alpha))
    else:
        img = img.convert(mode)
    img.save(path)
    return str(path)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def table(tmp_path) -> pl.DataFrame:
    """9 drawings: non-square sizes both ways, grey, RGB-grey and transparent PNGs; listed out of id order."""
    folder = tmp_path / "png"
    folder.mkdir()
    shapes = [(90, 60), (50, 80), (64, 64)]
    modes = ["L", "RGB", "LA"]
    rows = [{"drawing_id": f"d{i}", "image_path": _drawing(folder / f"d{i}.png", i, shapes[i % 3], modes[i // 3])}
            for i in range(9)]
    return pl.DataFrame(rows[::-1])


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_encoder("efficientnet_lite0", embed_dim=16, weights="none", image_size=SIZE).eval()


def test_store_layout_shapes_and_mmap(table, tmp_path):
    store = ensure_pixel_store(table, tmp_path / "data", SIZE, workers=2)
    assert store.built and store.path.parent == pixel_store_root(tmp_path / "data")
    assert store.path.name.startswith(f"{SIZE}-")
    assert sorted(p.name for p in store.path.iterdir()) == ["eval.npy", "index.parquet", "meta.json", "train.npy"]
    again = PixelStore.open(store.path)
    assert isinstance(again.eval, np.memmap) and isinstance(again.train, np.memmap)
    assert again.eval.dtype == np.uint8 and again.eval.shape == (9, SIZE, SIZE)
    side = train_side(SIZE)
    assert side == 63 and again.train.shape == (9, side, side)  # ceil(48 * sqrt(1.18 / 0.7))
    assert again.drawing_ids == [f"d{i}" for i in range(9)]  # sorted by id, whatever the table order
    assert again.meta["count"] == 9 and again.meta["image_size"] == SIZE and again.meta["format"] == pixels.FORMAT
    report = again.verify(table, check_files=True)
    assert report["ok"] and report["problems"] == [] and report["count"] == 9
    # transparent background flattened on white: the corners are paper
    assert (again.eval[:, 0, 0] == 255).all() and (again.train[:, 0, 0] == 255).all()


def test_second_call_reuses_without_decoding(table, tmp_path, monkeypatch):
    first = ensure_pixel_store(table, tmp_path / "data", SIZE, workers=2)
    mtime = (first.path / "eval.npy").stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(pixels, "_decode_one", lambda *a: calls.append(a))
    second = ensure_pixel_store(table.reverse(), tmp_path / "data", SIZE)  # row order is not part of the key
    assert not second.built and calls == [] and second.path == first.path
    assert (second.path / "eval.npy").stat().st_mtime_ns == mtime


def test_a_new_size_or_a_changed_table_builds_a_new_store(table, tmp_path):
    root = tmp_path / "data"
    base = ensure_pixel_store(table, root, SIZE)
    other_size = ensure_pixel_store(table, root, 32)
    assert other_size.built and other_size.path != base.path and other_size.eval.shape == (9, 32, 32)

    fewer = ensure_pixel_store(table.head(5), root, SIZE)
    assert fewer.built and fewer.path != base.path and len(fewer) == 5

    path = table["image_path"][0]
    Image.open(path).rotate(90).save(path)  # rewritten in place: new size/mtime
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not PixelStore.open(base.path).verify(table, check_files=True)["ok"]
    rebuilt = ensure_pixel_store(table, root, SIZE)
    assert rebuilt.built and rebuilt.path != base.path
    assert sorted(p.name for p in pixel_store_root(root).iterdir() if p.name.startswith(".")) == []  # no temp left
    removed = pixels.prune_pixel_stores(root, keep=[rebuilt.path])
    assert set(removed) == {base.path, other_size.path, fewer.path}


def test_a_bad_image_names_file_and_drawing_and_leaves_nothing(table, tmp_path):
    broken = tmp_path / "png" / "broken.png"
    broken.write_bytes(Path(table["image_path"][0]).read_bytes()[:50])
    bad = pl.concat([table, pl.DataFrame({"drawing_id": ["zz-broken"], "image_path": [str(broken)]})])
    root = tmp_path / "data"
    with pytest.raises(InputError, match=r"broken\.png, record zz-broken: image cannot be decoded"):
        ensure_pixel_store(bad, root, SIZE, workers=2)
    assert list(pixel_store_root(root).iterdir()) == []  # neither a store nor a temp folder

    missing = pl.concat([table, pl.DataFrame({"drawing_id": ["gone"], "image_path": [str(tmp_path / "gone.png")]})])
    with pytest.raises(InputError, match=r"gone\.png, record gone: image file is missing"):
        ensure_pixel_store(missing, root, SIZE)
    with pytest.raises(InputError, match="lacks columns"):
        ensure_pixel_store(table.drop("drawing_id"), root, SIZE)


def test_eval_pixels_are_exactly_the_png_transform(table, tmp_path):
    store = ensure_pixel_store(table, tmp_path / "data", SIZE)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.5, 1.0)  # per-channel values: the grey→RGB expansion must be right
    paths = table["image_path"].to_list()
    from_store = eval_batch(store.eval[store.positions(paths)], mean, std)
    dataset = DrawingDataset(paths, transform=build_transform(SIZE, False, mean, std))
    from_png, _ = collate([dataset[i] for i in range(len(paths))])
    assert from_store.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(from_store, from_png, rtol=0, atol=0)


def test_embeddings_from_the_store_equal_the_png_embeddings(table, tmp_path, model):
    store = ensure_pixel_store(table, tmp_path / "data", SIZE)
    png = embed_table(model, table, batch_size=4, device="cpu", num_workers=0)
    stored = embed_table(model, table, batch_size=4, device="cpu", pixel_store=store)
    assert stored.column("drawing_id").to_pylist() == table["drawing_id"].to_list()  # table order, not store order
    a = np.asarray(png.column("embedding").to_pylist(), dtype=np.float32)
    b = np.asarray(stored.column("embedding").to_pylist(), dtype=np.float32)
    assert (np.sum(a * b, axis=1) >= 0.9999).all()
    np.testing.assert_allclose(b, a, atol=1e-5)
    # a store opened from its path works too; a path the store lacks and a size mismatch are clear errors
    by_path = embed_paths(model, table["image_path"].to_list()[:2], device="cpu", pixel_store=str(store.path))
    np.testing.assert_allclose(by_path, a[:2], atol=1e-5)
    with pytest.raises(InputError, match=r"elsewhere\.png.*not in the pixel store"):
        embed_paths(model, [str(tmp_path / "elsewhere.png")], device="cpu", pixel_store=store)
    with pytest.raises(InputError, match="holds 48 px drawings, embedding wants 32 px"):
        embed_paths(model, table["image_path"].to_list(), image_size=32, device="cpu", pixel_store=store)


def test_augmentation_is_seeded_and_white_outside():
    side, out = train_side(SIZE), SIZE
    a, b = sample_augmentation(7, out), sample_augmentation(7, out)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, sample_augmentation(8, out))
    thetas = np.stack([sample_augmentation(s, out) for s in range(200)])
    scale_x = np.hypot(thetas[:, 0, 0], thetas[:, 1, 0])  # crop width x affine 1/scale
    assert scale_x.min() > 0.7 and scale_x.max() <= 1.0 / 0.95 + 1e-6
    white = torch.full((3, side, side), 255, dtype=torch.uint8)
    images = augment_batch(white, torch.from_numpy(thetas[:3]), out, (0.0,) * 3, (1.0,) * 3)
    assert images.shape == (3, 3, out, out)
    torch.testing.assert_close(images, torch.ones_like(images))  # rotated corners are filled white, not black
    # identity matrix: the whole square resampled ≈ the eval pixels
    identity = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    ramp = torch.linspace(0, 255, side).round().to(torch.uint8).expand(side, side)[None]
    got = augment_batch(ramp, identity, out, (0.0,) * 3, (1.0,) * 3)[0, 0]
    assert torch.allclose(got[0], torch.linspace(0, 1, out), atol=0.02)


def test_training_one_tiny_epoch_from_the_store(table, tmp_path):
    store = ensure_pixel_store(table, tmp_path / "data", SIZE)
    labelled = table.sort("drawing_id").with_columns(
        class_label=pl.Series([0, 0, 0, 0, 1, 1, 1, 1, 1], dtype=pl.Int32),
        subclass_label=pl.Series([0, 0, 1, 1, 2, 2, 3, 3, 3], dtype=pl.Int32),
        patent_label=pl.Series([0, 0, 1, 1, 2, 2, 3, 3, 3], dtype=pl.Int32),
    )
    config = TrainConfig(weights="none", embed_dim=16, image_size=SIZE, batch_size=8, epochs=1, steps_per_epoch=2,
                         lr=1e-3, warmup_steps=1, log_every=1, seed=0, pixel_store=str(store.path))
    result = train(config, labelled, tmp_path / "run")
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # the dataset gives the loop what it expects: uint8 pixels and one matrix per item, seeded per sample
    dataset = PixelTrainDataset(store, labelled["image_path"].to_list(), None, SIZE, (0.5,) * 3, (0.5,) * 3)
    pix, theta, idx = dataset.collate([dataset[(0, 11)], dataset[(3, 12)]])
    assert pix.dtype == torch.uint8 and pix.shape == (2, train_side(SIZE), train_side(SIZE))
    assert theta.shape == (2, 2, 3) and idx.tolist() == [0, 3]
    np.testing.assert_array_equal(dataset[(0, 11)][1], theta[0].numpy())
    # resuming with the store at another path is allowed (same pixels); switching to PNGs is not
    moved = tmp_path / "moved"
    store.path.rename(moved)
    train(TrainConfig(**{**config.to_dict(), "pixel_store": str(moved)}), labelled, tmp_path / "run")
    with pytest.raises(Exception, match="config differs"):
        train(TrainConfig(**{**config.to_dict(), "pixel_store": ""}), labelled, tmp_path / "run")


def test_batched_grid_is_torchs_affine_grid():
    thetas = torch.from_numpy(np.stack([sample_augmentation(s, 20) for s in range(4)]))
    expected = torch.nn.functional.affine_grid(thetas, [4, 1, 20, 20], align_corners=False)
    torch.testing.assert_close(pixels._affine_grid(thetas, 20), expected, atol=1e-6, rtol=0)


def test_build_spans_chunks_and_eval_rows_reads_any_order(table, tmp_path, monkeypatch):
    """A build written chunk by chunk (here 3 rows a chunk) holds exactly the one-chunk build's pixels, and
    `eval_rows` gives the memory map's rows for a consecutive run (one pread) and for any other order."""
    whole = ensure_pixel_store(table, tmp_path / "a", SIZE, workers=1)
    monkeypatch.setattr(pixels, "_CHUNK", 3)
    chunked = ensure_pixel_store(table, tmp_path / "b", SIZE, workers=2)
    assert len(table) > 3
    np.testing.assert_array_equal(chunked.eval, whole.eval)
    np.testing.assert_array_equal(chunked.train, whole.train)
    for rows in ([1, 2, 3], [0], list(range(len(table))), [3, 1, 2], [2, 2], []):
        np.testing.assert_array_equal(chunked.eval_rows(np.array(rows, dtype=np.int64)), chunked.eval[rows])


# ------------------------------------------------------------------------------------- real-size sheets (issue 29)

def _sheet(mode: str, size: tuple[int, int] = (1500, 2100), seed: int = 0) -> Image.Image:
    """A drawing sheet of USPTO's size: black lines and circles on white, in `mode` (transparent background for the
    alpha and transparent-palette modes)."""
    rng = np.random.default_rng(seed)
    img = Image.new("L", size, 255)
    pen = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, [size[0], size[1], size[0], size[1]]))
        pen.line((x0, y0, x1, y1), fill=0, width=int(rng.integers(2, 7)))
        pen.ellipse((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=0, width=3)
    if mode in ("RGBA", "LA"):
        return Image.merge("LA", (Image.new("L", size, 0), Image.eval(img, lambda v: 255 - v))).convert(mode)
    if mode == "P-transparent":
        pal = img.convert("P")
        pal.info["transparency"] = pal.getpixel((0, 0))  # the background's index: transparent white
        return pal
    return img.convert(mode)


def _full_resolution(img: Image.Image, size: int) -> np.ndarray:
    """The eval pixels without reduction: grey at full size, padded, one antialiased resize (the PNG eval path)."""
    from torchvision.transforms import functional as TF

    from hmpcl_lib.modeling.dataset import flatten_drawing
    from hmpcl_lib.modeling.models import PadToSquare

    return np.asarray(TF.resize(PadToSquare(255)(flatten_drawing(img, "L")), [size, size], antialias=True))


@pytest.mark.parametrize("suffix, save", [(".tif", {"compression": "group4"}), (".png", {})])
def test_a_bilevel_sheet_is_reduced_before_resizing_within_a_stated_tolerance(tmp_path, suffix, save):
    """A 1,500 x 2,100 bilevel sheet (G4 TIFF as USPTO publishes it, or 1-bit PNG) is box-reduced first; its eval
    pixels stay within the tolerance of the full-resolution path: mean |diff| <= 1 grey level, <= 2 % of pixels off
    by more than 8 (on real USPTO sheets: 0.53 and 0.9 %, benchmarks/decode_bench.py)."""
    size = 128
    img = _sheet("1")
    path = tmp_path / f"sheet{suffix}"
    img.save(path, **save)
    assert pixels.reduction_factor(img.size, size) == 4  # 2100 // (3 x 167)
    eval_px, train_px = pixels._decode_one(str(path), "d0", size, train_side(size))
    assert eval_px.shape == (size, size) and train_px.shape == (train_side(size),) * 2
    diff = np.abs(eval_px.astype(np.int16) - _full_resolution(img, size).astype(np.int16))
    assert diff.mean() <= 1.0 and (diff > 8).mean() <= 0.02, (diff.mean(), (diff > 8).mean())
    assert eval_px.min() < 128 < eval_px.max()  # lines survive the reduction


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "LA", "P", "P-transparent", "JPEG"])
def test_query_and_store_decode_every_mode_to_the_same_pixels(tmp_path, mode):
    """An upload and the same file in the store get the same eval pixels, whatever the mode; transparent backgrounds
    become white, never black; and each stays within the tolerance of the full-resolution path."""
    from hmpcl_lib.retrieval.query_image import query_pixels

    size = 64
    img = _sheet("L" if mode == "JPEG" else mode, size=(900, 1300))
    path = tmp_path / ("sheet.jpg" if mode == "JPEG" else "sheet.png")
    img.save(path, quality=95) if mode == "JPEG" else img.save(path)
    stored, _ = pixels._decode_one(str(path), "d0", size, train_side(size))
    np.testing.assert_array_equal(query_pixels(path.read_bytes(), size), stored)
    assert stored[:, 0].min() == 255 and np.median(stored) >= 200  # the padding (left) and the background: white, not black
    with Image.open(path) as saved:
        saved.load()
        diff = np.abs(stored.astype(np.int16) - _full_resolution(saved, size).astype(np.int16))
    assert diff.mean() <= 1.0 and (diff > 8).mean() <= 0.02, (diff.mean(), (diff > 8).mean())


def test_a_truncated_sheet_names_its_file_and_drawing(tmp_path):
    path = tmp_path / "sheet.png"
    _sheet("1").save(path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(InputError, match="image cannot be decoded") as info:
        pixels._decode_one(str(path), "USD0000001-20200101-D00001", 128, train_side(128))
    assert str(path) in str(info.value) and "USD0000001-20200101-D00001" in str(info.value)


def test_a_palette_with_alpha_per_index_is_flattened_onto_white_like_its_rgba(tmp_path):
    """tRNS with an alpha per palette index (half-transparent greys): the palette route equals compositing the RGBA
    image onto white, within a grey level of rounding, without making the RGBA copy."""
    from hmpcl_lib.modeling.dataset import flatten_drawing

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 4, (40, 60), dtype=np.uint8), "P")
    img.putpalette([0, 0, 0, 90, 30, 200, 255, 255, 255, 200, 100, 0])
    path = tmp_path / "alpha.png"
    img.save(path, transparency=bytes([255, 128, 0, 40]))
    with Image.open(path) as saved:
        assert isinstance(saved.info["transparency"], bytes)
        grey = np.asarray(pixels.decode_grey(saved, 128))
    with Image.open(path) as saved:
        saved.load()
        reference = np.asarray(flatten_drawing(saved, "L"))
    assert np.abs(grey.astype(np.int16) - reference).max() <= 1


# ---------------------------------------------------------------- one store per year, read as one


def test_year_stores_read_as_one_set(table, tmp_path, model):
    """Two groups' stores (the pipeline's years) read through a PixelStoreSet give each row's own pixels, the same
    embeddings as one store of the whole table, and a set's `path` opens the same set again."""
    from hmpcl_lib.modeling.pixels import PixelStoreSet, open_pixel_store

    root = tmp_path / "data"
    first, second = table.head(5), table.tail(table.height - 5)
    a = ensure_pixel_store(first, root, SIZE, group="year=2019")
    b = ensure_pixel_store(second, root, SIZE, group="year=2020")
    assert a.path.parent.name == "year=2019" and b.path.parent.name == "year=2020"
    whole = ensure_pixel_store(table, root, SIZE)
    both = PixelStoreSet([a, b])
    assert len(both) == len(table) and both.image_size == SIZE
    paths = table["image_path"].to_list()[::-1]  # any order, across the members
    rows = both.positions(paths)
    np.testing.assert_array_equal(both.eval_rows(rows), whole.eval_rows(whole.positions(paths)))
    row = int(both.positions([second["image_path"][0]])[0])
    np.testing.assert_array_equal(both.train_pixels(row), whole.train_pixels(int(whole.positions([second["image_path"][0]])[0])))
    again = open_pixel_store(both.path)
    assert isinstance(again, PixelStoreSet) and [s.path for s in again.stores] == [a.path, b.path]
    from_set = embed_table(model, table, batch_size=4, device="cpu", pixel_store=both.path)
    from_whole = embed_table(model, table, batch_size=4, device="cpu", pixel_store=whole)
    np.testing.assert_array_equal(from_set.column("embedding").to_pylist(), from_whole.column("embedding").to_pylist())
    with pytest.raises(InputError, match="in none of the pixel stores") as err:
        both.positions([str(tmp_path / "elsewhere.png")])
    assert err.value.source.endswith("elsewhere.png")
    with pytest.raises(InputError, match="different sizes"):
        PixelStoreSet([a, ensure_pixel_store(second, root, 32, group="year=2020")])
    # pruning a group leaves the other groups (and the ungrouped stores) alone
    removed = prune_pixel_stores(root, keep=[], group="year=2019")
    assert removed == [a.path] and b.path.is_dir() and whole.path.is_dir()


def test_a_year_store_is_keyed_by_its_own_rows(table, tmp_path, monkeypatch):
    """Another year's change does not touch this year's store: no decode, same folder, same files."""
    root = tmp_path / "data"
    first = ensure_pixel_store(table.head(5), root, SIZE, group="year=2019")
    stamp = {p.name: p.stat().st_mtime_ns for p in first.path.iterdir()}
    ensure_pixel_store(table.tail(3), root, SIZE, group="year=2020")
    monkeypatch.setattr(pixels, "_build", lambda *a, **k: pytest.fail("decoded an unchanged year"))
    again = ensure_pixel_store(table.head(5), root, SIZE, group="year=2019")
    assert not again.built and again.path == first.path
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == stamp
