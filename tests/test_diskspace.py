"""Free-disk checks (hmpcl_lib/diskspace.py): each big stage fails before writing a byte when a fake small disk
(a patched `shutil.disk_usage`) cannot hold its estimate, with an error naming the stage, the folder and the bytes;
with room it runs, and what it writes stays within its estimate."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from hmpcl_lib import diskspace
from hmpcl_lib.diskspace import (MARGIN, SIZES, InsufficientDiskError, embeddings_bytes, extract_bytes, index_bytes,
                                 pixel_store_bytes, require_free_disk)
from hmpcl_lib.errors import InputError
from hmpcl_lib.modeling.pixels import ensure_pixel_store, pixel_store_root, train_side
from hmpcl_lib.retrieval.embedding import embeddings_table, write_embeddings
from hmpcl_lib.retrieval.index import VectorIndex
from hmpcl_lib.sources import dataverse
from hmpcl_lib.sources.dataverse import DataverseFile, download_year
from hmpcl_lib.sources.archives import extract_parts, extract_year

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture
def disk(monkeypatch):
    """`disk(free)`: from now on the disk reports `free` bytes; `.asked` lists the folders it was asked about."""
    real = shutil.disk_usage

    class Disk:
        def __init__(self) -> None:
            self.asked: list[Path] = []

        def __call__(self, free: int) -> "Disk":
            def fake(path):
                self.asked.append(Path(path))
                return real(path)._replace(free=free)

            monkeypatch.setattr(diskspace.shutil, "disk_usage", fake)
            return self

    return Disk()


def tree(root: Path) -> list[tuple[str, int]]:
    """Every file and folder under `root` with its size: equal before and after means nothing was written."""
    return sorted((p.relative_to(root).as_posix(), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


def refused(excinfo, stage: str, folder: Path, at_least: int) -> InsufficientDiskError:
    err = excinfo.value
    assert isinstance(err, InputError) and stage in str(err) and str(folder) in str(err)
    assert err.folder == str(folder) and err.needed >= at_least and f"{err.needed:,} bytes" in str(err)
    assert f"({err.free:,} bytes) are free" in str(err) and "HMPCL_DATA_ROOT" in str(err)
    return err


def du(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the check itself


def test_require_free_disk_asks_the_nearest_existing_folder_and_creates_nothing(tmp_path, disk):
    disk(free=1_000)
    folder = tmp_path / "not" / "yet"
    with pytest.raises(InsufficientDiskError) as excinfo:
        require_free_disk("the test stage", folder, 2_000_000)
    err = refused(excinfo, "the test stage", folder, 2_000_000)
    assert err.needed == int(2_000_000 * (1 + MARGIN)) and err.free == 1_000
    assert "2,100,000 bytes, the estimate + 5% margin" in str(err) and "2.0 MiB" in str(err)
    assert disk.asked == [tmp_path] and not (tmp_path / "not").exists()
    assert require_free_disk("the test stage", folder, 1_000, margin=0) == 1_000  # exactly enough passes
    with pytest.raises(InsufficientDiskError):
        require_free_disk("the test stage", folder, 1_000)  # ... but not with the margin on top


# ---------------------------------------------------------------- download of a year


def test_download_year_counts_what_is_already_there(tmp_path, disk, monkeypatch):
    parts = [DataverseFile(1, "2019.aa", 30_000, None), DataverseFile(2, "2019.ab", 20_000, None)]
    monkeypatch.setattr(dataverse, "list_dataset_files", lambda *a, **k: parts + [DataverseFile(3, "2020.aa", 9, None)])
    raw = tmp_path / "raw" / "2019"
    disk(free=10_000)
    with pytest.raises(InsufficientDiskError) as excinfo:  # never reaches the (unreachable) server
        download_year(2019, raw, base_url="http://127.0.0.1:9")
    assert refused(excinfo, "downloading year 2019", raw, 50_000).needed == int(50_000 * (1 + MARGIN))
    assert not (tmp_path / "raw").exists()

    raw.mkdir(parents=True)
    (raw / "2019.aa").write_bytes(bytes(30_000))  # complete
    (raw / "2019.ab.part").write_bytes(bytes(15_000))  # 5,000 bytes to go
    before = tree(tmp_path)
    disk(free=1_000)
    with pytest.raises(InsufficientDiskError) as excinfo:
        download_year(2019, raw, base_url="http://127.0.0.1:9")
    assert refused(excinfo, "downloading year 2019", raw, 5_000).needed == int(5_000 * (1 + MARGIN))
    assert tree(tmp_path) == before

    (raw / "2019.ab.part").rename(raw / "2019.ab")
    (raw / "2019.ab").write_bytes(bytes(20_000))
    disk(free=0)  # everything is here: nothing to download, no space needed
    assert [p.name for p in download_year(2019, raw, base_url="http://127.0.0.1:9")] == ["2019.aa", "2019.ab"]


# ---------------------------------------------------------------- extraction of a year


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (24, 24), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _year_zip() -> bytes:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tar:
        for i in range(4):
            data = _png(i)
            info = tarfile.TarInfo(f"seg/USD0836880-20190101-D0000{i}_1.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("DesignPatent2019/design2019.json", json.dumps([{"id": i} for i in range(200)]))
        zf.writestr("DesignPatent2019/Segmented.tar.gz", inner.getvalue())
    return out.getvalue()


def test_extract_year_refuses_before_making_any_folder(tmp_path, disk):
    archive = tmp_path / "2019.zip"
    archive.write_bytes(_year_zip())
    with zipfile.ZipFile(archive) as zf:
        unpacked = sum(i.file_size for i in zf.infolist())
    out = tmp_path / "extracted" / "2019"
    disk(free=1_000)
    with pytest.raises(InsufficientDiskError) as excinfo:
        extract_year(archive, out)
    err = refused(excinfo, f"extracting {archive}", out.parent, extract_bytes(unpacked))
    assert err.needed == int(extract_bytes(unpacked) * (1 + MARGIN))
    assert not (tmp_path / "extracted").exists()


def test_extract_parts_refuses_before_joining_the_parts(tmp_path, disk):
    data, raw = _year_zip(), tmp_path / "raw" / "2019"
    raw.mkdir(parents=True)
    parts = []
    for i, suffix in enumerate(("aa", "ab")):
        parts.append(raw / f"2019.{suffix}")
        parts[-1].write_bytes(data[i * len(data) // 2:(i + 1) * len(data) // 2])
    out = tmp_path / "extracted" / "2019"
    before = tree(tmp_path)
    disk(free=1_000)
    with pytest.raises(InsufficientDiskError) as excinfo:
        extract_parts(parts, out)
    refused(excinfo, "extracting " + str(raw / "2019.aa+2019.ab"), out.parent, extract_bytes(len(data), len(data)))
    assert tree(tmp_path) == before  # no joined archive, no temp folder

    disk(free=10 ** 9)  # room: extracted as usual
    done = extract_parts(parts, out)
    assert [p.name for p in done.records] == ["design2019.json"] and len(list(out.rglob("*.png"))) == 4
    assert du(out) <= extract_bytes(len(data), len(data))


# ---------------------------------------------------------------- pixel store


@pytest.fixture
def table(tmp_path) -> pl.DataFrame:
    folder = tmp_path / "png"
    folder.mkdir()
    rows = []
    for i in range(3):
        path = folder / f"d{i}.png"
        path.write_bytes(_png(i))
        rows.append({"drawing_id": f"d{i}", "image_path": str(path)})
    return pl.DataFrame(rows)


def test_pixel_store_refused_before_its_folder_exists(table, tmp_path, disk):
    size, data = 32, tmp_path / "data"
    arrays = 3 * (size ** 2 + train_side(size) ** 2)
    disk(free=arrays // 2)
    with pytest.raises(InsufficientDiskError) as excinfo:
        ensure_pixel_store(table, data, size, workers=1)
    refused(excinfo, "the pixel store (3 drawings at 32 px)", pixel_store_root(data), arrays)
    assert not data.exists()


def test_pixel_store_with_room_is_built_and_its_arrays_are_exactly_the_estimate(table, tmp_path, disk):
    size = 32
    disk(free=10 ** 9)
    store = ensure_pixel_store(table, tmp_path / "data", size, workers=1)
    arrays = (store.path / "eval.npy").stat().st_size + (store.path / "train.npy").stat().st_size
    assert arrays == 3 * (size ** 2 + train_side(size) ** 2) + 2 * SIZES["npy_header"]
    assert du(store.path) <= pixel_store_bytes(3, size, train_side(size), 0)


# ---------------------------------------------------------------- corpus embeddings


@pytest.mark.parametrize("float16", [False, True])
def test_embeddings_refused_then_written_within_the_estimate(tmp_path, disk, float16):
    vectors = np.random.default_rng(0).standard_normal((500, 64)).astype(np.float32)
    table = embeddings_table([f"USD0836880-20190101-D{i:05d}_1" for i in range(500)], vectors, float16)
    path = tmp_path / "embeddings" / "run1.parquet"
    disk(free=10_000)
    with pytest.raises(InsufficientDiskError) as excinfo:
        write_embeddings(table, path)
    refused(excinfo, "the corpus embeddings (500 x 64", path.parent, 500 * 64 * (2 if float16 else 4))
    assert not path.parent.exists()

    disk(free=10 ** 9)
    write_embeddings(table, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["run1.parquet"]
    assert path.stat().st_size <= embeddings_bytes(500, 64, float16, table.column("drawing_id").nbytes)


# ---------------------------------------------------------------- FAISS index


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_save_refused_leaves_the_old_index_then_saves_within_the_estimate(tmp_path, disk, kind):
    vectors = np.random.default_rng(1).standard_normal((800, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.array([f"D{i:05d}" for i in range(len(vectors))])
    index = VectorIndex.build(ids, vectors, kind=kind, nlist=8, use_gpu=False)
    target = tmp_path / "indexes" / "gallery"
    disk(free=10_000)
    with pytest.raises(InsufficientDiskError) as excinfo:
        index.save(target)
    refused(excinfo, "the FAISS index (800 vectors", target.parent, 800 * 16 * 4)
    assert not (tmp_path / "indexes").exists()

    disk(free=10 ** 9)
    index.save(target)
    assert du(target) <= index_bytes(800, 16, index.meta.kind, index.meta.nlist, index.meta.hnsw_m,
                                     ids.astype(str).nbytes)
    before = tree(tmp_path)
    disk(free=10_000)  # an existing index is left as it was, with no temp folder beside it
    with pytest.raises(InsufficientDiskError):
        index.save(target)
    assert tree(tmp_path) == before
