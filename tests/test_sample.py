"""The generated sample corpus: deterministic, in DeepPatent2's real layout, faulty only on purpose, learnable."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from hmpcl_lib.sample import (
    FAMILIES,
    SampleSpec,
    contact_sheet,
    generate_sample,
    render_drawing,
    sample_listing,
    sample_patents,
    write_sample_year,
)

SPEC_FIELDS = [
    "id", "patentID", "patentdate", "figid", "caption", "object", "aspect", "figure_file", "subfigure_file",
    "object_title", "x_figure", "y_figure", "w_figure", "h_figure", "W_label", "H_label", "L_label", "T_label",
]
PATENT_ID = re.compile(r"^US(D\d{7})-(\d{8})$")
SMALL = SampleSpec(n_classes=3, subclasses_per_class=2, patents_per_subclass=3, views=(2, 4), image_size=64,
                   part_size=16 * 1024)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample")
    return root, generate_sample(SMALL, root)


def _year_archive(root: Path, year: int) -> tarfile.TarFile:
    parts = sorted((root / "raw" / str(year)).glob(f"{year}.??"))
    return tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:*")


def _member(tar: tarfile.TarFile, pattern: str) -> str:
    names = [n for n in tar.getnames() if re.search(pattern, n)]
    assert len(names) == 1, (pattern, tar.getnames())
    return names[0]


def _records(root: Path, year: int) -> list[dict]:
    tar = _year_archive(root, year)
    return json.load(tar.extractfile(_member(tar, rf"design{year}\.json$")))


def _pngs(root: Path, year: int, kind: str) -> dict[str, bytes]:
    tar = _year_archive(root, year)
    inner = tarfile.open(fileobj=tar.extractfile(_member(tar, rf"(?i){kind}.*\.tar\.gz$")), mode="r:*")
    return {Path(m.name).name: inner.extractfile(m).read() for m in inner.getmembers() if m.isfile()}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ground_truth_uses_real_codes_dates_and_ids():
    spec = SampleSpec()
    patents = sample_patents(spec)
    assert patents.height == 8 * 4 * 10
    assert patents["patent_id"].n_unique() == patents.height
    assert patents["class_code"].n_unique() == 8 and patents["subclass_code"].n_unique() == 32
    assert sorted(patents["year"].unique().to_list()) == [2019, 2020]
    for row in patents.iter_rows(named=True):
        doc, ymd = PATENT_ID.match(row["patent_id"]).groups()
        assert doc == row["doc_number"] and ymd == f"{row['grant_date']:%Y%m%d}"
        assert row["grant_date"].weekday() == 1 and row["grant_date"].year == row["year"]  # a Tuesday
        assert re.fullmatch(r"\d\d-\d\d", row["subclass_code"]) and row["subclass_code"][:2] == row["class_code"]
        assert 4 <= row["n_views"] <= 8
    # doc numbers rise with the grant date within a year, as at the USPTO
    for _, group in patents.sort("doc_number").group_by("year"):
        dates = group.sort("doc_number")["grant_date"].to_list()
        assert dates == sorted(dates)


def test_spec_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="n_classes"):
        SampleSpec(n_classes=len(FAMILIES) + 1)
    with pytest.raises(ValueError, match="views"):
        SampleSpec(views=(5, 3))
    with pytest.raises(ValueError, match="not in spec.years"):
        write_sample_year(SMALL, 2007, "/nonexistent")


def test_generation_is_byte_identical(corpus, tmp_path):
    root, counts = corpus
    again = generate_sample(SMALL, tmp_path)
    assert again == counts
    assert _tree_digest(tmp_path) == _tree_digest(root)
    other_seed = SampleSpec(**{**SMALL.__dict__, "seed": 1})
    assert render_drawing(other_seed, sample_patents(other_seed).row(0, named=True), 0).tobytes() != \
        render_drawing(SMALL, sample_patents(SMALL).row(0, named=True), 0).tobytes()


def test_parts_reassemble_into_the_year_layout(corpus):
    root, counts = corpus
    tops = {}
    for year in SMALL.years:
        parts = sorted((root / "raw" / str(year)).glob(f"{year}.??"))
        assert [p.name for p in parts][:2] == [f"{year}.aa", f"{year}.ab"]
        assert all(p.stat().st_size == SMALL.part_size for p in parts[:-1]) and 0 < parts[-1].stat().st_size <= SMALL.part_size
        tar = _year_archive(root, year)
        names = tar.getnames()
        tops[year] = {n.split("/")[0] for n in names}
        assert len(tops[year]) == 1
        assert names == sorted(names)
        assert all(m.mtime == tar.getmembers()[0].mtime and m.uid == 0 for m in tar.getmembers())
        _member(tar, rf"design{year}\.json$")
        _member(tar, r"(?i)original.*\.tar\.gz$")
        _member(tar, r"(?i)segmented.*\.tar\.gz$")
    assert tops[2019] != tops[2020] and tops[2019] == {"2019"}
    assert sum(counts["parts"].values()) == len(list((root / "raw").rglob("*.??")))


def test_json_records_follow_the_schema_and_images_exist(corpus):
    root, _ = corpus
    truth = sample_patents(SMALL)
    faults = dict(truth.filter(pl.col("fault").is_not_null()).select("patent_id", "fault").iter_rows())
    seen_patents = set()
    for year in SMALL.years:
        records = _records(root, year)
        originals, segmented = _pngs(root, year, "original"), _pngs(root, year, "segmented")
        extra = ["classification_national"] if year % 2 == 0 else []
        assert [r["id"] for r in records] == list(range(len(records)))
        for r in records:
            assert list(r) == SPEC_FIELDS + extra
            stem = r["figure_file"][:-4]
            patent_id, fig = re.fullmatch(r"(US.+)-D(\d{5})", stem).groups()
            assert r["subfigure_file"] == f"{stem}_{r['figid']}.png" and r["caption"].startswith(f"FIG. {int(fig)} ")
            assert r["patentdate"] == patent_id[-8:]
            seen_patents.add(patent_id)
            if faults.get(patent_id) == "malformed_patent_id" and r["patentID"] != patent_id:
                assert not PATENT_ID.match(r["patentID"])
            else:
                assert r["patentID"] == patent_id and PATENT_ID.match(patent_id)
            if r["figure_file"] not in originals:
                assert faults.get(patent_id) == "missing_image" and r["subfigure_file"] not in segmented
                continue
            seg = Image.open(io.BytesIO(segmented[r["subfigure_file"]]))
            orig = Image.open(io.BytesIO(originals[r["figure_file"]]))
            assert seg.mode == "L" and seg.size == (SMALL.image_size, SMALL.image_size)
            assert orig.width > seg.width and orig.height > seg.height
            x, y, w, h = r["x_figure"], r["y_figure"], r["w_figure"], r["h_figure"]
            assert 0 <= x and 0 <= y and x + w <= orig.width and y + h <= orig.height and w > 4 and h > 4
            ink = np.asarray(orig)[y:y + h, x:x + w] < 128
            assert ink[0].any() and ink[-1].any() and ink[:, 0].any() and ink[:, -1].any()  # tight box on the drawing
            assert r["T_label"] >= y + h  # the "FIG. n" label sits below the drawing
    assert seen_patents == set(truth["patent_id"])


def _xml_documents(path: Path) -> list[ET.Element]:
    text = path.read_text(encoding="utf-8")
    chunks = text.split('<?xml version="1.0" encoding="UTF-8"?>\n')
    assert chunks[0] == ""
    return [ET.fromstring(chunk.split("]>\n", 1)[1]) for chunk in chunks[1:]]


def test_uspto_xml_is_well_formed_and_carries_the_locarno_codes(corpus):
    root, counts = corpus
    truth = {r["doc_number"]: r for r in sample_patents(SMALL).iter_rows(named=True)}
    files = sorted((root / "uspto").glob("ipg*.xml"))
    assert len(files) == counts["xml_files"] == len({r["grant_date"] for r in truth.values()})
    found = {}
    for path in files:
        docs = _xml_documents(path)
        kinds = [d.findtext("us-bibliographic-data-grant/publication-reference/document-id/kind") for d in docs]
        assert "B2" in kinds and "S1" in kinds  # a utility patent among the designs, as in real weekly files
        for doc in docs:
            bib = doc.find("us-bibliographic-data-grant")
            number = bib.findtext("publication-reference/document-id/doc-number")
            date = dt.datetime.strptime(bib.findtext("publication-reference/document-id/date"), "%Y%m%d").date()
            assert path.name == f"ipg{date:%y%m%d}.xml" and bib.findtext("invention-title")
            if number.startswith("D"):
                found[number] = (date, bib.findtext("classification-locarno/main-classification"),
                                 bib.findtext("classification-locarno/edition"))
            else:
                assert bib.find("classification-locarno") is None
    assert set(found) == set(truth)
    for number, (date, raw, edition) in found.items():
        row = truth[number]
        assert date == row["grant_date"]
        if row["fault"] == "lic_missing":
            assert raw is None
        elif row["fault"] == "lic_class_only":
            assert raw == row["class_code"]
        else:
            assert edition == "12" and re.sub(r"[-/]", "", raw) == row["subclass_code"].replace("-", "")


def test_faults_are_present_and_rare():
    patents = sample_patents(SampleSpec())
    faulty = patents.filter(pl.col("fault").is_not_null())
    assert set(faulty["fault"]) == {"malformed_patent_id", "missing_image", "lic_missing", "lic_class_only"}
    assert faulty.height / patents.height < 0.05
    record_faults = faulty.filter(pl.col("fault").is_in(["malformed_patent_id", "missing_image"])).height
    assert 0 < record_faults / patents["n_views"].sum() < 0.05
    assert (faulty["n_views"] >= 2).all()
    clean = sample_patents(SampleSpec(faults=False))
    assert clean["fault"].null_count() == clean.height


def test_listing_matches_the_parts(corpus):
    root, _ = corpus
    listing = sample_listing(SMALL, root / "raw")
    assert listing == json.loads((root / "raw" / "dataverse_listing.json").read_text())
    files = [f["dataFile"] for f in listing["data"]["latestVersion"]["files"]]
    parts = sorted(p for year in SMALL.years for p in (root / "raw" / str(year)).glob(f"{year}.??"))
    assert sorted(f["filename"] for f in files) == [p.name for p in parts]
    assert len({f["id"] for f in files}) == len(files)
    for f in files:
        path = root / "raw" / f["filename"][:4] / f["filename"]
        assert f["filesize"] == path.stat().st_size and f["md5"] == hashlib.md5(path.read_bytes()).hexdigest()


def test_rewriting_a_year_drops_stale_parts(tmp_path):
    small_parts = write_sample_year(SMALL, 2019, tmp_path)
    big = SampleSpec(**{**SMALL.__dict__, "part_size": 1 << 24})
    assert write_sample_year(big, 2019, tmp_path) == [tmp_path / "2019.aa"]
    assert len(small_parts) > 1 and sorted(tmp_path.iterdir()) == [tmp_path / "2019.aa"]


def _features(img: Image.Image) -> np.ndarray:
    return 255 - np.asarray(img.resize((32, 32), Image.Resampling.BOX), np.float32).ravel()


def test_hierarchy_is_learnable_by_nearest_neighbour():
    """Held-out patents' drawings get their main class (and subclass) from 1-NN on raw pixels, far above chance."""
    spec = SampleSpec(subclasses_per_class=2, patents_per_subclass=4, views=(3, 5), image_size=64)
    rows = sample_patents(spec).to_dicts()
    feats, klass, sub, patent = [], [], [], []
    for row in rows:
        for view in range(row["n_views"]):
            feats.append(_features(render_drawing(spec, row, view)))
            klass.append(row["class_code"]), sub.append(row["subclass_code"]), patent.append(row["patent_index"])
    x = np.stack(feats)
    x -= x.mean(1, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    klass, sub, patent = map(np.asarray, (klass, sub, patent))
    test = patent % 2 == 1
    nearest = (x[test] @ x[~test].T).argmax(1)
    class_acc = (klass[~test][nearest] == klass[test]).mean()
    sub_acc = (sub[~test][nearest] == sub[test]).mean()
    assert class_acc > 3 / spec.n_classes, class_acc
    assert sub_acc > 3 / (spec.n_classes * spec.subclasses_per_class), sub_acc
    # views of one patent differ a lot: a drawing's nearest neighbour is usually not another view of its patent
    within = x[test] @ x[test].T
    np.fill_diagonal(within, -np.inf)
    assert (patent[test][within.argmax(1)] == patent[test]).mean() < 0.6


def test_views_of_a_patent_differ_and_patents_differ():
    spec = SampleSpec()
    rows = sample_patents(spec).filter(pl.col("class_code") == "07").to_dicts()
    mug_a, mug_b = rows[0], rows[1]
    front_a, top_a = (np.asarray(render_drawing(spec, mug_a, v), np.float32) for v in (1, 3))
    front_b = np.asarray(render_drawing(spec, mug_b, 1), np.float32)
    assert np.abs(front_a - top_a).mean() > 10
    assert np.abs(front_a - front_b).mean() > 3
    assert (front_a < 128).mean() > 0.01  # there is a drawing, in black on white
    assert (front_a > 200).mean() > 0.7


def test_contact_sheet_has_one_row_per_class():
    spec = SampleSpec(image_size=32)
    sheet = contact_sheet(spec, per_class=4)
    assert sheet.size == (4 * 32, 8 * 32)
    rows = np.asarray(sheet).reshape(8, 32, 4 * 32)
    assert ((rows < 128).mean(axis=(1, 2)) > 0.005).all()
