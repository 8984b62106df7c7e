"""DeepPatent2 as people who downloaded it describe it (see SPEC.md, Data): a year's parts concatenate to a ZIP
holding `design{YYYY}.json` + `Segmented.tar.gz` / `Original.tar.gz`; records files named `design*.json` or
`segmentation_*.json`, several per year; numeric label boxes; `classification_locarno` / `classification_national`;
and two runs of one year at once. Every fixture is built here, in tmp_path."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import multiprocessing
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections import namedtuple
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from hmpcl_lib.sources import archives, deeppatent2 as dp
from hmpcl_lib.sources.records import parse_design_record, parse_year, reason_counts
from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError
from test_deeppatent2 import _split as split, _tar_bytes as tar_bytes  # the same part and tar writers

A, B = "USD0836880-20190101", "USD0836881-20190108"  # two design grants of 2019


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=seed % 256).save(buffer, format="PNG")
    return buffer.getvalue()


def record(patent: str, fig: int, sub: int | None = None, rid: int = 1, **extra) -> dict:
    """A per-figure record shaped like Table 4 of the DeepPatent2 paper (numbers as numbers)."""
    sheet = f"{patent}-D{fig:05d}"
    return {
        "id": rid, "patentID": patent, "patentdate": f"{patent[-8:-4]}-{patent[-4:-2]}-{patent[-2:]}", "figid": fig,
        "caption": f"Fig. {fig} is a front view of a pet treat;", "object": "Pet treat", "aspect": "front view",
        "figure_file": f"{sheet}.png", "subfigure_file": None if sub is None else f"{sheet}_{sub}.png",
        "object_title": "Pet treat", "x_figure": 614, "y_figure": 91, "w_figure": 969, "h_figure": 2740,
        "W_label": 0.0439147, "H_label": 0.0502626, "L_label": 0.119197, "T_label": 0.9121, **extra,
    }


def zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():  # how Info-ZIP stores a symlink: mode in external_attr
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


def json_bytes(records: list[dict]) -> bytes:
    return json.dumps(records, indent=1).encode()


RECORDS_2019 = [
    record(A, 1, 1, rid=1, classification_locarno=1403, classification_national="D 8403"),
    record(A, 2, 2, rid=2, classification_locarno="1403", classification_national="D 8403"),
    record(B, 1, 1, rid=3, classification_locarno=602),  # a JSON number that lost its leading zero
    record(B, 2, None, rid=4),  # no classification in this record, no segmented subfigure
]
SEGMENTED = [f"{A}-D00001_1.png", f"{A}-D00002_2.png", f"{B}-D00001_1.png"]
ORIGINAL = [f"{A}-D00001.png", f"{A}-D00002.png", f"{B}-D00001.png", f"{B}-D00002.png"]


def zip_year(records: list[dict], inner: str = "tar.gz") -> bytes:
    """What the downloaders report: a zip of design2019.json + Segmented/Original archives of PNG."""
    def images(folder: str, names: list[str]) -> bytes:
        files = {f"{folder}/{n}": png(i) for i, n in enumerate(names)}
        return zip_bytes(files) if inner == "zip" else tar_bytes(files)

    return zip_bytes({
        "design2019.json": json_bytes(records),
        f"Segmented.{inner}": images("Segmented", SEGMENTED),
        f"Original.{inner}": images("Original", ORIGINAL),
    })


Paths = namedtuple("Paths", "raw extracted drawings quarantine")


def year_paths(root: Path, year: int) -> Paths:
    return Paths(root / "raw" / str(year), root / "extracted" / str(year),
                 root / "parsed" / f"drawings-{year}.parquet", root / "parsed" / f"quarantine-{year}.parquet")


# ---------------------------------------------------------------- a split ZIP year, end to end


@pytest.mark.parametrize("inner", ["tar.gz", "zip"])
def test_split_zip_year_builds_drawings(tmp_path, inner):
    paths = year_paths(tmp_path, 2019)
    parts = split(zip_year(RECORDS_2019, inner), paths.raw, 2019)
    assert archives.detect_format(parts) == "zip"  # judged from the parts, without joining them
    extracted, parsed = dp.build_year(2019, *paths)

    assert extracted.archive_format == "zip"
    assert extracted.inner == {f"Segmented.{inner}": inner, f"Original.{inner}": inner}
    assert extracted.records == (paths.extracted / "design2019.json",)
    assert sorted(p.name for p in paths.extracted.iterdir()) == [
        archives.EXTRACTED_MARKER, "Original", "Segmented", "design2019.json"]  # inner archives consumed
    assert sorted(p.name for p in paths.raw.iterdir()) == [archives.YEAR_LOCK, "2019.aa", "2019.ab", "2019.ac"]

    table = pq.read_table(paths.drawings)
    assert table.schema == schemas.DRAWINGS and table.num_rows == 4
    assert pq.read_table(paths.quarantine).num_rows == 0
    rows = {r["drawing_id"]: r for r in table.to_pylist()}
    first = rows[f"{A}-D00001_1"]
    assert (first["W_label"], first["H_label"], first["L_label"]) == (0.0439147, 0.0502626, 0.119197)
    assert first["record_id"] == "1" and first["x_figure"] == 614.0 and first["grant_date"].isoformat() == "2019-01-01"
    assert first["image_path"].endswith(f"/Segmented/Segmented/{A}-D00001_1.png")
    assert rows[f"{B}-D00002"]["image_path"].endswith(f"/Original/Original/{B}-D00002.png")
    assert [rows[d]["classification_locarno"] for d in sorted(rows)] == ["1403", "1403", "0602", None]
    assert [rows[d]["classification_national"] for d in sorted(rows)] == ["D 8403", "D 8403", None, None]
    assert parsed.files == {str(paths.extracted / "design2019.json"):
                            {"records": 4, "drawings": 4, "quarantined": 0, "exact_duplicates": 0}}


def test_segmentation_json_year_with_original_folders(tmp_path):
    """2007's layout: `segmentation_2007.json`, images under `2007/Original/2007/Original/`, here in a tar.xz."""
    patent = "USD0535000-20070102"
    records = [record(patent, fig, None, rid=fig) for fig in (1, 2)]
    members = {"2007/segmentation_2007.json": json_bytes(records)}
    members |= {f"2007/Original/2007/Original/{patent}-D0000{fig}.png": png(fig) for fig in (1, 2)}
    paths = year_paths(tmp_path, 2007)
    split(tar_bytes(members, "w:xz"), paths.raw, 2007, 2)
    extracted, parsed = dp.build_year(2007, *paths)
    assert extracted.archive_format == "tar.xz" and extracted.inner == {}
    assert [p.name for p in extracted.records] == ["segmentation_2007.json"]
    paths_seen = pq.read_table(paths.drawings).column("image_path").to_pylist()
    assert [Path(p).relative_to(paths.extracted).as_posix() for p in paths_seen] == [
        f"2007/Original/2007/Original/{patent}-D0000{fig}.png" for fig in (1, 2)]


def test_two_records_files_exact_and_conflicting_duplicates(tmp_path):
    """design2019.json + design2019part3.json in their own folders; part3 repeats one record exactly (dropped,
    counted) and one drawing with other content (quarantined, naming both files)."""
    main = RECORDS_2019[:3]
    part3 = [dict(RECORDS_2019[0]), dict(RECORDS_2019[1], caption="Fig. 2 is a rear view;"), RECORDS_2019[3]]
    images = tar_bytes({f"Segmented/{n}": png(i) for i, n in enumerate(SEGMENTED + ORIGINAL)})
    outer = zip_bytes({"2019/design2019.json": json_bytes(main), "2019part3/design2019part3.json": json_bytes(part3),
                       "Segmentednew.tar.gz": images})
    paths = year_paths(tmp_path, 2019)
    split(outer, paths.raw, 2019)
    extracted, parsed = dp.build_year(2019, *paths, max_bad_fraction=0.5)
    first, third = paths.extracted / "design2019.json", paths.extracted / "design2019part3.json"
    assert extracted.records == (first, third)
    assert extracted.inner == {"Segmentednew.tar.gz": "tar.gz"}
    assert parsed.exact_duplicates == 1 and parsed.drawings.num_rows == 4
    assert parsed.files == {
        str(first): {"records": 3, "drawings": 3, "quarantined": 0, "exact_duplicates": 0},
        str(third): {"records": 3, "drawings": 1, "quarantined": 1, "exact_duplicates": 1},
    }
    assert parsed.quarantine.to_pylist() == [{
        "source": str(third), "record": "2", "stage": "parse",
        "reason": f"duplicate drawing_id: {A}-D00002_2 (first in record 2 of {first})"}]
    kept = {r["drawing_id"]: r for r in parsed.drawings.to_pylist()}
    assert kept[f"{A}-D00002_2"]["caption"] == RECORDS_2019[1]["caption"]  # the first one wins


# ---------------------------------------------------------------- record fields


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"W_label": 0.0439147, "T_label": None}, {"W_label": 0.0439147, "T_label": None}),
        ({"W_label": "0.05", "H_label": "", "L_label": 1}, {"W_label": 0.05, "H_label": None, "L_label": 1.0}),
        ({"classification_locarno": 1403}, {"classification_locarno": "1403"}),
        ({"classification_locarno": 602.0}, {"classification_locarno": "0602"}),
        ({"classification_locarno": 15}, {"classification_locarno": "15"}),  # class only, not class 00
        ({"classification_locarno": "15-07"}, {"classification_locarno": "15-07"}),  # raw text: the hierarchy parses
        ({"classification_national": "D12 91"}, {"classification_national": "D12 91"}),
        ({}, {"classification_locarno": None, "classification_national": None}),
    ],
)
def test_numeric_labels_and_classifications(overrides, expected):
    row = parse_design_record({**record(A, 1, 1), **overrides}, 2019)
    assert {k: row[k] for k in expected} == expected
    assert all(type(row[k]) in (float, type(None)) for k in ("W_label", "H_label", "L_label", "T_label"))


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"W_label": "left"}, "bad number: W_label='left'"),
        ({"T_label": "FIG. 1"}, "bad number: T_label='FIG. 1'"),
        ({"H_label": [0.1]}, "bad number: H_label=[0.1]"),
        ({"L_label": True}, "bad number: L_label=True"),
        ({"classification_locarno": True}, "bad classification_locarno: True is not a code"),
        ({"classification_locarno": 14.03}, "bad classification_locarno: 14.03 is not a code"),
        ({"classification_locarno": -1}, "bad classification_locarno: -1 is not a code"),
    ],
)
def test_bad_label_or_code_goes_to_quarantine_naming_the_field(tmp_path, overrides, reason):
    path = tmp_path / "design2019.json"
    path.write_bytes(json_bytes([record(A, 1, 1, rid=1), {**record(A, 2, 2, rid=2), **overrides}]))
    parsed = parse_year(path, None, 2019, max_bad_fraction=1.0, require_images=False)
    assert parsed.drawings.num_rows == 1
    assert parsed.quarantine.to_pylist() == [{"source": str(path), "record": "2", "reason": reason, "stage": "parse"}]


def test_sample_corpus_year_is_accepted(tmp_path):
    """The generated sample writes *_label as numbers (pixels): every drawing it means to be good still parses."""
    from hmpcl_lib.sample import SampleSpec, write_sample_year

    spec = SampleSpec(n_classes=2, subclasses_per_class=2, patents_per_subclass=2, views=(2, 3), image_size=64,
                      years=(2019,), part_size=64 * 1024)
    paths = year_paths(tmp_path, 2019)
    write_sample_year(spec, 2019, paths.raw)
    extracted, parsed = dp.build_year(2019, *paths, max_bad_fraction=1.0)
    assert extracted.archive_format == archives.detect_format(dp.year_parts(paths.raw, 2019))
    reasons = reason_counts(parsed.quarantine)
    assert not {"bad number", "bad classification_locarno"} & set(reasons), reasons
    assert parsed.drawings.num_rows > 0 and parsed.drawings.column("W_label").null_count == 0


# ---------------------------------------------------------------- container detection and safe extraction


def test_detect_format_by_bytes(tmp_path):
    tar = tar_bytes({"a.txt": b"hello"}, mode="w")
    cases = {
        "zip": zip_bytes({"a.txt": b"hello"}),
        "tar": tar,
        "tar.gz": gzip.compress(tar),
        "tar.bz2": bz2.compress(tar),
        "tar.xz": lzma.compress(tar),
        "gz (not a tar inside)": gzip.compress(b"just text"),
        "7z": b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(100),
        "empty": b"",
        "unknown (first bytes 3c 3f 78 6d 6c 20 76 65)": b'<?xml version="1.0"?><x/>',
    }
    for expected, data in cases.items():
        path = tmp_path / "archive.bin"  # the name says nothing: only the bytes count
        path.write_bytes(data)
        assert archives.detect_format(path) == expected
    path.write_bytes(b"#!/bin/sh\nexit 0\n" + cases["zip"])  # data in front of a zip (self-extracting style)
    assert archives.detect_format(path) == "zip"
    gz = gzip.compress(tar)
    path.write_bytes(gz[:12])
    assert archives.detect_format(path).startswith("gz (truncated or corrupt")


@pytest.mark.parametrize(
    "data, detected",
    [
        (b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(100), "7z"),
        (b"Rar!\x1a\x07\x01\x00" + bytes(100), "rar"),
        (gzip.compress(b'[{"id": 1}]', mtime=0), r"gz \(not a tar inside\)"),
        (b"\x00\x01garbage" * 10, "unknown"),
    ],
)
def test_unknown_container_names_format_and_file(tmp_path, data, detected):
    paths = year_paths(tmp_path, 2019)
    split(data, paths.raw, 2019, 2)
    with pytest.raises(InputError, match=rf"file {paths.raw}/2019\.aa\+2019\.ab: not a zip or tar archive: "
                                         rf"its bytes say {detected}") as excinfo:
        dp.build_year(2019, *paths)
    assert "corrupt" not in str(excinfo.value)
    assert not paths.extracted.parent.exists()  # found on the parts: nothing joined, nothing extracted


def test_truncated_zip(tmp_path):
    data = zip_year(RECORDS_2019)
    archive = tmp_path / "2019.zip"
    archive.write_bytes(data[: len(data) - 200])  # the central directory is gone
    assert archives.detect_format(archive) == "zip"
    out = tmp_path / "extracted" / "2019"
    with pytest.raises(InputError, match=rf"file {archive}: cannot extract zip archive \(truncated or corrupt\)"):
        archives.extract_year(archive, out)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize(
    "members, symlinks, why",
    [
        ({"design2019.json": b"[]", "../evil.txt": b"x"}, None, r"'\.\./evil\.txt' is absolute or climbs out"),
        ({"design2019.json": b"[]", "2019/../../evil.txt": b"x"}, None, "climbs out"),
        ({"design2019.json": b"[]", "/etc/evil.txt": b"x"}, None, "absolute"),
        ({"design2019.json": b"[]"}, {"Segmented": "../../outside"}, r"'Segmented' is a symbolic link"),
    ],
)
def test_unsafe_zip_refused_and_nothing_extracted(tmp_path, members, symlinks, why):
    archive = tmp_path / "sub" / "2019.zip"
    archive.parent.mkdir()
    archive.write_bytes(zip_bytes(members, symlinks))
    out = tmp_path / "sub" / "extracted" / "2019"
    with pytest.raises(InputError, match=rf"{archive}: unsafe archive member refused: .*{why}"):
        archives.extract_year(archive, out)
    assert list(out.parent.iterdir()) == []  # not even the design JSON that came before it
    assert not list(tmp_path.rglob("evil.txt")) and not (tmp_path / "outside").exists()


def test_unsafe_member_of_inner_archive_refused(tmp_path):
    archive = tmp_path / "2019.zip"
    inner = tar_bytes({"Segmented/ok.png": png(), "../../../escaped.png": png()})
    archive.write_bytes(zip_bytes({"design2019.json": b"[]", "Segmented.tar.gz": inner}))
    with pytest.raises(InputError, match=r"Segmented\.tar\.gz: unsafe archive member refused"):
        archives.extract_year(archive, tmp_path / "extracted" / "2019")
    assert not list(tmp_path.rglob("escaped.png")) and list((tmp_path / "extracted").iterdir()) == []


def test_deflate64_zip_is_a_clear_error(tmp_path):
    """Windows writes large zips with Deflate64 (method 9), which Python's zipfile cannot decompress."""
    data = bytearray(zip_bytes({"design2019.json": b"[]"}))
    for signature, method_at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local header, central directory
        start = data.index(signature)
        data[start + method_at : start + method_at + 2] = struct.pack("<H", 9)
    archive = tmp_path / "2019.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"2019\.zip: zip member 'design2019\.json' is compressed with Deflate64"):
        archives.extract_year(archive, tmp_path / "out")


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_size_bounded_by_free_disk(tmp_path, monkeypatch, fmt):
    members = {"design2019.json": b"[]", "Segmented/a.png": bytes(50_000)}
    archive = tmp_path / "2019.archive"
    archive.write_bytes(zip_bytes(members) if fmt == "zip" else tar_bytes(members))
    real = archives.shutil.disk_usage
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda p: real(p)._replace(free=10_000))
    # a zip lists what it unpacks to: refused before any folder is made; a tar only says so member by member
    with pytest.raises(InputError, match=r"not enough free disk for (extracting|unpacking the tar\.gz archive) "
                                         r".*2019\.archive.*\(10,000 bytes\) are free"):
        archives.extract_year(archive, tmp_path / "extracted" / "2019")
    assert not (tmp_path / "extracted").exists() or list((tmp_path / "extracted").iterdir()) == []


# ---------------------------------------------------------------- two runs of one year at once


def test_two_processes_build_the_same_year(tmp_path):
    paths = year_paths(tmp_path, 2019)
    many = [record(A if i % 2 else B, i + 1, 1, rid=i + 1) for i in range(400)]
    names = [f"{r['subfigure_file']}" for r in many]
    images = tar_bytes({f"Segmented/{n}": png(i) for i, n in enumerate(names)})
    split(zip_bytes({"design2019.json": json_bytes(many), "Segmented.tar.gz": images}), paths.raw, 2019, 5)
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as two Dagster run workers are
    workers = [context.Process(target=dp.build_year, args=(2019, *paths)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]

    table = pq.read_table(paths.drawings)
    assert table.num_rows == 400 and table.column("drawing_id").to_pylist() == [n[:-4] for n in names]
    assert all(Path(p).is_file() for p in table.column("image_path").to_pylist())
    assert pq.read_table(paths.quarantine).num_rows == 0
    assert sorted(p.name for p in paths.extracted.parent.iterdir()) == ["2019"]  # no temp folder, no joined archive
    assert sorted(p.name for p in paths.drawings.parent.iterdir()) == [paths.drawings.name, paths.quarantine.name]
    _, again = dp.build_year(2019, *paths)  # and a third, alone, gives the same table
    assert again.drawings.equals(table)


LOCK_CHILD = textwrap.dedent("""
    import sys, time
    from hmpcl_lib.sources.archives import year_lock
    try:
        with year_lock(sys.argv[1], timeout=float(sys.argv[2])):
            print("locked", flush=True)
            time.sleep(float(sys.argv[3]))
    except TimeoutError as exc:
        print("timeout:", exc, flush=True)
""")


def _child(folder: Path, timeout: float, hold: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOCK_CHILD, str(folder), str(timeout), str(hold)],
                            stdout=subprocess.PIPE, text=True)


def test_year_lock_excludes_another_process_and_dies_with_its_holder(tmp_path):
    folder = tmp_path / "raw" / "2019"
    with archives.year_lock(folder) as lock:
        assert lock == folder / archives.YEAR_LOCK
        out, _ = _child(folder, 0.3, 0).communicate(timeout=60)
        assert out.startswith("timeout:") and str(lock) in out
    out, _ = _child(folder, 5, 0).communicate(timeout=60)
    assert out == "locked\n"

    holder = _child(folder, 5, 60)  # takes the lock, then is killed while holding it
    assert holder.stdout.readline() == "locked\n"
    holder.kill()
    holder.wait(timeout=60)
    with archives.year_lock(folder, timeout=5):  # the OS released it with the process
        pass
    with pytest.raises(TimeoutError):  # and it is not reentrant: a second take in one process waits
        with archives.year_lock(folder), archives.year_lock(folder, timeout=0.1):
            pass
