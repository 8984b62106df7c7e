"""DeepPatent2 reassembly, extraction, streaming JSON, patent IDs and the parse into drawings/quarantine tables."""

from __future__ import annotations

import io
import json
import random
import tarfile
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hmpcl_lib import schemas
from hmpcl_lib.sources.archives import (
    EXTRACTED_MARKER,
    extract_parts,
    extract_year,
    find_records_files,
    reassemble_parts,
)
from hmpcl_lib.sources.deeppatent2 import year_parts
from hmpcl_lib.sources.records import (
    PatentId,
    RawRecord,
    iter_design_records,
    parse_design_record,
    parse_patent_id,
    parse_year,
    png_index,
    reason_counts,
)
from hmpcl_lib.errors import InputError

FUZZ = dict(deadline=None, derandomize=True, database=None)  # deterministic, no .hypothesis/ folder
FIXTURES = Path(__file__).parent / "fixtures" / "deeppatent2"
DESIGN_2019 = FIXTURES / "design2019.json"
A, B = "USD0836880-20190101", "USD0836881-20190108"
# PNGs the fixture's good records point at; A-D00002_2 (segmented) is missing on purpose: fall back to original.
ORIGINAL_PNGS = [f"{A}-D00001.png", f"{A}-D00002.png", f"{B}-D00001.png", f"{B}-D00002.png"]
SEGMENTED_PNGS = [f"{A}-D00001_1.png", f"{B}-D00001_1.png"]


def _png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), color=seed % 256).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_images(root: Path, original_dir: str = "Original/2019", segmented_dir: str = "Segmented") -> Path:
    for folder, names in ((original_dir, ORIGINAL_PNGS), (segmented_dir, SEGMENTED_PNGS)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate(names):
            (root / folder / name).write_bytes(_png_bytes(seed))
    return root


def _tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _year_archive(top: str, json_at: str, original_name: str, segmented_name: str) -> bytes:
    """A DeepPatent2-shaped year: top folder with the JSON and two inner tar.gz of PNGs (names as given)."""
    original = _tar_bytes({f"orig/{n}": _png_bytes(i) for i, n in enumerate(ORIGINAL_PNGS)})
    segmented = _tar_bytes({f"seg/sub/{n}": _png_bytes(i) for i, n in enumerate(SEGMENTED_PNGS)})
    return _tar_bytes(
        {
            f"{top}/{json_at}": DESIGN_2019.read_bytes(),
            f"{top}/{original_name}": original,
            f"{top}/{segmented_name}": segmented,
        }
    )


def _split(data: bytes, folder: Path, year: int, n_parts: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // n_parts)
    paths = []
    for i in range(n_parts):
        path = folder / f"{year}.a{'abcdefghij'[i]}"
        path.write_bytes(data[i * size : (i + 1) * size])
        paths.append(path)
    return paths


# ---------------------------------------------------------------- reassembly + extraction


def test_reassemble_parts_in_suffix_order(tmp_path):
    data = random.Random(1).randbytes(10_000)
    parts = _split(data, tmp_path / "raw", 2019)
    out = reassemble_parts([parts[2], parts[0], parts[1]], tmp_path / "2019.tar")
    assert out.read_bytes() == data


def test_reassemble_missing_part_names_year(tmp_path):
    parts = _split(b"x" * 300, tmp_path, 2019)
    with pytest.raises(InputError, match=r"year 2019: part 2019\.ab is missing"):
        reassemble_parts([parts[0], parts[2]], tmp_path / "out")
    with pytest.raises(InputError, match="several years"):
        reassemble_parts([parts[0], tmp_path / "2018.ab"], tmp_path / "out")
    with pytest.raises(InputError, match="YYYY.aa"):
        reassemble_parts([tmp_path / "2019.tar"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "top, json_at, original_name, segmented_name",
    [
        ("2019", "design2019.json", "Original_2019.tar.gz", "Segmented_2019.tar.gz"),
        ("DesignPatent2019", "meta/design2019.json", "2019-original-images.tgz", "SegmentedImages.tar.gz"),
    ],
)
def test_extract_year_finds_everything_by_pattern(tmp_path, top, json_at, original_name, segmented_name):
    parts = _split(_year_archive(top, json_at, original_name, segmented_name), tmp_path / "raw", 2019)
    archive = reassemble_parts(parts, tmp_path / "2019.tar.gz")
    out = tmp_path / "extracted" / "2019"
    year = extract_year(archive, out)
    assert year.records == (out / "design2019.json",) and year.records[0].read_bytes() == DESIGN_2019.read_bytes()
    assert year.archive_format == "tar.gz" and sorted(year.inner.values()) == ["tar.gz", "tar.gz"]
    index = png_index(out)
    assert set(index) == set(ORIGINAL_PNGS + SEGMENTED_PNGS)
    assert all("/Segmented/" in index[n] for n in SEGMENTED_PNGS)
    assert all("/Original/" in index[n] for n in ORIGINAL_PNGS)
    assert not list(out.rglob("*.tar.gz")) and not list(out.rglob("*.tgz"))  # inner archives consumed
    assert (out / EXTRACTED_MARKER).exists()
    assert sorted(p.name for p in out.iterdir()) == [EXTRACTED_MARKER, "Original", "Segmented", "design2019.json"]
    assert [p.name for p in out.parent.iterdir()] == ["2019"]  # no temp folder left

    archive.unlink()  # idempotent: a marked extraction is reused without the archive
    assert extract_year(archive, out) == year


def test_extract_replaces_unmarked_leftover(tmp_path):
    archive = tmp_path / "2019.tar.gz"
    archive.write_bytes(_year_archive("2019", "design2019.json", "Original.tar.gz", "Segmented.tar.gz"))
    out = tmp_path / "extracted"
    out.mkdir()
    (out / "half-written.png").write_bytes(b"junk")
    extract_year(archive, out)
    assert not (out / "half-written.png").exists() and (out / EXTRACTED_MARKER).exists()


def test_truncated_archive_is_input_error_naming_file(tmp_path):
    data = _year_archive("2019", "design2019.json", "Original.tar.gz", "Segmented.tar.gz")
    archive = tmp_path / "2019.tar.gz"
    archive.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "extracted" / "2019"
    with pytest.raises(InputError, match=rf"{archive}.*truncated or corrupt"):
        extract_year(archive, out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_truncated_inner_archive_is_input_error(tmp_path):
    inner = _tar_bytes({f"x/{n}": _png_bytes() for n in ORIGINAL_PNGS})
    archive = tmp_path / "y.tar"
    archive.write_bytes(
        _tar_bytes({"2019/design2019.json": b"[]", "2019/Original.tar.gz": inner[: len(inner) // 2]}, mode="w")
    )
    with pytest.raises(InputError, match=r"Original\.tar\.gz.*truncated or corrupt"):
        extract_year(archive, tmp_path / "out")


def test_unsafe_member_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(_tar_bytes({"2019/design2019.json": b"[]", "../escaped.txt": b"x"}, mode="w"))
    with pytest.raises(InputError, match="unsafe archive member"):
        extract_year(archive, tmp_path / "sub" / "out")
    assert not (tmp_path / "sub" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()


def test_year_parts_and_extract_parts_as_the_pipeline_calls_them(tmp_path):
    raw = tmp_path / "raw" / "2019"
    _split(_year_archive("DesignPatent2019", "design2019.json", "a_original.tar.gz", "b_segmented.tar.gz"), raw, 2019, 4)
    (raw / "2019.ae.part").write_bytes(b"unfinished download")
    (raw / "2018.aa").write_bytes(b"other year")
    parts = year_parts(raw, 2019)
    assert [p.name for p in parts] == ["2019.aa", "2019.ab", "2019.ac", "2019.ad"]
    out = tmp_path / "extracted" / "2019"
    assert extract_parts(parts, out).root == out
    assert find_records_files(out) == [out / "design2019.json"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["2019"]  # reassembled archive removed
    first_marker = (out / EXTRACTED_MARKER).stat().st_mtime_ns
    extract_parts(parts, out)  # same parts: nothing redone
    assert (out / EXTRACTED_MARKER).stat().st_mtime_ns == first_marker
    parts[-1].write_bytes(parts[-1].read_bytes()[:-300])  # changed input: re-extracted, and here it is now truncated
    with pytest.raises(InputError, match="truncated or corrupt"):
        extract_parts(parts, out)
    parts[1].unlink()
    with pytest.raises(InputError, match=r"year 2019: part 2019\.ab is missing"):
        year_parts(raw, 2019)


def test_archive_without_design_json(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar_bytes({"2019/readme.txt": b"x"}, mode="w"))
    with pytest.raises(InputError, match=r"a\.tar.*no per-figure records file \(design\*\.json or segmentation_"):
        extract_year(archive, tmp_path / "out")


# ---------------------------------------------------------------- streaming JSON


@pytest.mark.parametrize("buf_size", [1, 7, 1 << 20])
def test_array_stream_matches_json_load(buf_size):
    expected = json.loads(DESIGN_2019.read_text(encoding="utf-8"))
    records = list(iter_design_records(DESIGN_2019, buf_size=buf_size))
    assert [r.data for r in records] == expected and [r.index for r in records] == list(range(len(expected)))
    assert all(type(r.data["W_label"]) is float for r in records)  # numbers come back as float, not Decimal


def test_array_edge_cases(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b"\xef\xbb\xbf  [ 1 , 23456 ,\n{\"a\": [1, 2]} ]  \n")
    assert [r.data for r in iter_design_records(path, buf_size=2)] == [1, 23456, {"a": [1, 2]}]
    path.write_text("[ ]")
    assert list(iter_design_records(path)) == []


def test_malformed_array_element_names_record_and_context(tmp_path):
    path = tmp_path / "design2019.json"
    text = '[{"id": 1},\n {"id": 2},\n {"id": 3, "x": },\n {"id": 4}]'
    path.write_text(text)
    for buf_size in (5, 1 << 16):  # yajl quotes the text around the error from its current buffer
        with pytest.raises(InputError) as excinfo:
            list(iter_design_records(path, buf_size=buf_size))
        assert str(path) in str(excinfo.value) and "record #2: malformed JSON record" in str(excinfo.value)
    assert '"x": }' in str(excinfo.value)


@pytest.mark.parametrize(
    "data, match",
    [
        (b'[{"id": 1}, {"id": 2}', "truncated"),
        (b'[{"id": 1}, {"id": 2', "truncated"),
        (b'[{"id": 1}, {"id" 2}]', r"record #1: malformed JSON record"),
        (b'[{"id": 1} {"id": 2}]', "expect ',' or ']'"),
        (b'[1, "\xff"]', r"record #1: malformed JSON record \(lexical error: invalid bytes in UTF8 string"),
        (b'[{"id": 1}] {"id": 2}', "after the closing"),
        (b"[" * 200_000, "nests deeper than"),  # refused before ijson's memory grows with depth squared
        (b"", "empty"),
    ],
)
def test_broken_arrays(tmp_path, data, match):
    path = tmp_path / "d.json"
    path.write_bytes(data)
    with pytest.raises(InputError, match=match):
        list(iter_design_records(path, buf_size=3 if len(data) < 100 else 1 << 16))


def test_json_lines_resyncs_after_malformed_line(tmp_path):
    path = tmp_path / "design2019.jsonl"
    path.write_bytes(b'{"id": 1}\n\n{"id": 2, oops\n{"id": 3}\n\xff\xfe\n{"id": 4}')
    records = list(iter_design_records(path))
    assert [r.data for r in records] == [{"id": 1}, None, {"id": 3}, None, {"id": 4}]
    assert records[1].error.startswith("malformed JSON: line 3 at byte 11")
    assert records[1].line == 3 and records[4].line == 6 and records[3].error is not None


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], **FUZZ)
@given(data=st.binary(max_size=200) | st.text(alphabet='[]{},:"0123456789 \n\\aeu-.', max_size=80).map(str.encode))
def test_stream_never_raises_anything_but_input_error(tmp_path, data):
    path = tmp_path / "fuzz.json"
    path.write_bytes(data)
    try:
        for record in iter_design_records(path, buf_size=4):
            assert isinstance(record, RawRecord)
    except InputError:
        pass


# ---------------------------------------------------------------- patent IDs and records


def test_parse_patent_id():
    assert parse_patent_id("USD0836880-20190101") == PatentId("D0836880", date(2019, 1, 1))
    for bad in ("USD0836880-20190230", "USD0836880", "D0836880-20190101", "USD0836880-20190101\n", " USD0836880-20190101",
                "USD08368٨0-20190101", None, 836880):
        with pytest.raises(InputError, match="bad patentID"):
            parse_patent_id(bad)


@settings(**FUZZ)
@given(st.one_of(st.text(max_size=30), st.from_regex(r"US[A-Z]{0,3}[0-9]{4,9}-[0-9]{8}", fullmatch=True)))
def test_patent_id_parser_only_raises_input_error(text):
    try:
        parsed = parse_patent_id(text)
    except InputError:
        return
    assert f"US{parsed.doc_number}-{parsed.grant_date:%Y%m%d}" == text


@settings(**FUZZ)
@given(st.dates(min_value=date(1790, 1, 1)), st.integers(0, 9_999_999))
def test_patent_id_round_trip(day, number):
    text = f"USD{number:07d}-{day:%Y%m%d}"
    assert parse_patent_id(text) == PatentId(f"D{number:07d}", day)


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
_GOOD = json.loads(DESIGN_2019.read_text(encoding="utf-8"))[0]


@settings(max_examples=300, **FUZZ)
@given(st.dictionaries(st.sampled_from(sorted(_GOOD)), _VALUES, max_size=8), st.booleans(), _VALUES)
def test_record_parser_only_raises_input_error(overrides, keep_rest, whole):
    for candidate in ({**_GOOD, **overrides} if keep_rest else overrides, whole):
        try:
            row = parse_design_record(candidate, 2019)
        except InputError:
            continue
        row["image_path"] = None
        pa.RecordBatch.from_pylist([row], schema=schemas.DRAWINGS)  # whatever passes must fit the table


def test_record_parser_row():
    row = parse_design_record(_GOOD, 2019)
    assert row["drawing_id"] == f"{A}-D00001_1" and row["doc_number"] == "D0836880"
    assert row["grant_date"] == date(2019, 1, 1) and row["figid"] == 1 and row["w_figure"] == 310.0
    assert row["h_figure"] is None and row["caption"].endswith("café chair — view 1")
    assert (row["W_label"], row["H_label"], row["L_label"], row["T_label"]) == (0.0439147, None, 0.119197, 0.8113)
    assert (row["classification_locarno"], row["classification_national"]) == ("1403", "D 8403")


# ---------------------------------------------------------------- parse_year


def test_parse_year_rows_and_quarantine(tmp_path):
    root = _write_images(tmp_path / "extracted")
    parsed = parse_year(DESIGN_2019, root, 2019, max_bad_fraction=1.0)
    drawings, quarantine = parsed.drawings, parsed.quarantine
    assert drawings.schema == schemas.DRAWINGS and quarantine.schema == schemas.QUARANTINE
    rows = {r["drawing_id"]: r for r in drawings.to_pylist()}
    assert sorted(rows) == [f"{A}-D00001_1", f"{A}-D00002_2", f"{B}-D00001_1", f"{B}-D00002"]
    assert rows[f"{A}-D00001_1"]["image_path"] == str((root / "Segmented" / f"{A}-D00001_1.png").resolve())
    assert rows[f"{A}-D00002_2"]["image_path"] == str((root / "Original/2019" / f"{A}-D00002.png").resolve())
    assert rows[f"{B}-D00002"]["subfigure_file"] is None and rows[f"{B}-D00002"]["year"] == 2019

    by_record = {r["record"]: r["reason"] for r in quarantine.to_pylist()}
    assert set(quarantine.column("source").to_pylist()) == {str(DESIGN_2019)}
    assert set(quarantine.column("stage").to_pylist()) == {"parse"}
    assert reason_counts(quarantine) == {
        "bad patentID": 1, "missing field": 1, "bad patentdate": 1, "bad figure_file": 1,
        "duplicate drawing_id": 1, "missing image": 1, "wrong year": 1, "bad figid": 1,
    }
    assert by_record["dup-of-first"] == f"duplicate drawing_id: {A}-D00001_1 (first in record {A}-1-1)"
    assert "USD0836882-20190115-D00001_1.png" in by_record["USD0836882-20190115-1-1"]


def test_parse_year_too_many_bad_records_fails_with_counts(tmp_path):
    root = _write_images(tmp_path)
    with pytest.raises(InputError) as excinfo:
        parse_year(DESIGN_2019, root, 2019)
    message = str(excinfo.value)
    assert str(DESIGN_2019) in message and "8 of 12 records are bad" in message and "missing image: 1" in message


def test_parse_year_without_images(tmp_path):
    parsed = parse_year(DESIGN_2019, None, 2019, max_bad_fraction=1.0, require_images=False)
    drawings, quarantine = parsed.drawings, parsed.quarantine
    assert drawings.num_rows == 5 and drawings.column("image_path").null_count == 5  # C has no image but passes
    assert "missing image" not in reason_counts(quarantine)
    with pytest.raises(InputError, match="image_root is required"):
        parse_year(DESIGN_2019, None, 2019)


def test_parse_year_verify_images_quarantines_undecodable(tmp_path):
    root = _write_images(tmp_path)
    broken = root / "Segmented" / f"{B}-D00001_1.png"
    broken.write_bytes(broken.read_bytes()[:30])
    parsed = parse_year(DESIGN_2019, root, 2019, max_bad_fraction=1.0, verify_images=True)
    drawings, quarantine = parsed.drawings, parsed.quarantine
    assert f"{B}-D00001_1" not in drawings.column("drawing_id").to_pylist()
    assert reason_counts(quarantine)["undecodable image"] == 1


def test_parse_year_json_lines_and_small_batches(tmp_path):
    root = _write_images(tmp_path)
    records = json.loads(DESIGN_2019.read_text(encoding="utf-8"))[:4]
    path = tmp_path / "design2019.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records[:2]) + "\n{broken\n" + "\n".join(json.dumps(r) for r in records[2:]))
    parsed = parse_year(path, root, 2019, max_bad_fraction=0.5, batch_size=1)
    drawings, quarantine = parsed.drawings, parsed.quarantine
    reference = parse_year(DESIGN_2019, root, 2019, max_bad_fraction=1.0).drawings
    assert drawings.to_pylist() == reference.to_pylist()
    assert quarantine.to_pylist() == [
        {"source": str(path), "record": "#2", "reason": "malformed JSON: line 3 at byte " + str(
            len("\n".join(json.dumps(r) for r in records[:2])) + 1) + ": Expecting property name enclosed in double quotes",
         "stage": "parse"}
    ]


def test_parse_year_empty_file(tmp_path):
    path = tmp_path / "design2019.json"
    path.write_text("[]")
    with pytest.raises(InputError, match="no records"):
        parse_year(path, tmp_path, 2019)
