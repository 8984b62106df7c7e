"""Locarno taxonomy, code normalisation and USPTO grant XML extraction (fixtures in the real weekly format)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError
from hmpcl_lib.sources.uspto import iter_grant_lic, normalise_doc_number, read_lic_codes
from hmpcl_lib.taxonomy.locarno import (
    LocarnoCode,
    class_titles,
    load_taxonomy,
    parse_locarno_code,
    subclass_titles,
)

FIXTURES = Path(__file__).parent / "fixtures" / "uspto"
WEEK1 = FIXTURES / "ipg190101.xml"
WEEK2 = FIXTURES / "ipg190108.xml"

HEADER = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ ]>\n'
)


def grant_doc(doc_number: str, date: str = "20190101", kind: str = "S1", locarno: str | None = "1507", tail: str = "") -> str:
    """One grant document in the USPTO layout (bibliographic part only, plus an optional tail)."""
    lic = (
        f"<classification-locarno>\n<edition>11</edition>\n<main-classification>{locarno}</main-classification>\n"
        "</classification-locarno>\n"
        if locarno is not None
        else ""
    )
    return (
        HEADER
        + '<us-patent-grant lang="EN" dtd-version="v4.5 2014-04-03" country="US">\n<us-bibliographic-data-grant>\n'
        + "<publication-reference>\n<document-id>\n<country>US</country>\n"
        + f"<doc-number>{doc_number}</doc-number>\n<kind>{kind}</kind>\n<date>{date}</date>\n"
        + "</document-id>\n</publication-reference>\n"
        + lic
        + "<invention-title id=\"t\">Thing</invention-title>\n</us-bibliographic-data-grant>\n"
        + tail
        + "<claims id=\"claims\"><claim id=\"CLM-00001\" num=\"00001\"><claim-text>x</claim-text></claim></claims>\n"
        + "</us-patent-grant>\n"
    )


# ---------------------------------------------------------------------------------------------- taxonomy


@pytest.mark.parametrize("edition", ["8", "9", "10", "11", "12", "13", "14", "15"])
def test_taxonomy_has_all_32_classes_and_consistent_subclasses(edition):
    tax = load_taxonomy(edition)
    assert tax.columns == ["edition", "level", "class_code", "subclass_code", "title", "mapped_subclass_code", "confidence", "source"]
    assert set(tax["edition"].to_list()) == {edition}
    assert set(tax["confidence"].to_list()) <= {"high", "medium", "low"} and tax["source"].null_count() == 0
    classes = tax.filter(tax["level"] == "class")
    assert classes["class_code"].to_list() == [f"{i:02d}" for i in range(1, 33)]
    assert classes["subclass_code"].null_count() == 32
    subs = tax.filter(tax["level"] == "subclass")
    codes = subs["subclass_code"].to_list()
    assert len(codes) == len(set(codes))
    assert 200 <= len(codes) <= 250
    assert all(code[:2] == klass and code[2] == "-" and len(code) == 5 for code, klass in subs.select("subclass_code", "class_code").iter_rows())
    assert all(t and t.strip() == t and "vacant" not in t.lower() for t in tax["title"].to_list())
    # Every class but the undivided ones (31; 32 before the 14th: single subclass -00) has a Miscellaneous -99 subclass.
    undivided = ("31", "32") if int(edition) <= 13 else ("31",)
    for klass in classes["class_code"].to_list():
        if klass == "32" and klass not in undivided:
            assert {"32-01", "32-02"} <= set(codes)
            continue
        expected = f"{klass}-00" if klass in undivided else f"{klass}-99"
        assert expected in codes, expected


def test_taxonomy_titles_are_the_official_ones():
    assert subclass_titles()["15-07"] == "Refrigeration machinery and apparatus"
    assert subclass_titles()["06-01"] == "Seats"
    assert subclass_titles()["12-08"] == "Motor cars, buses and lorries"
    assert subclass_titles()["21-99"] == "Miscellaneous"
    assert class_titles()["15"] == "Machines, not elsewhere specified"
    assert class_titles()["01"] == "Foodstuffs"
    assert "15-08" not in subclass_titles()  # vacant


# ---------------------------------------------------------------------------------------------- codes


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1507", LocarnoCode("15", "15-07")),
        ("15-07", LocarnoCode("15", "15-07")),
        ("15/07", LocarnoCode("15", "15-07")),
        ("15.07", LocarnoCode("15", "15-07")),
        (" 15 07 ", LocarnoCode("15", "15-07")),
        ("\t1507\n", LocarnoCode("15", "15-07")),
        ("15-7", LocarnoCode("15", "15-07")),
        ("15", LocarnoCode("15", None)),
        (" 15 ", LocarnoCode("15", None)),
        ("6", LocarnoCode("06", None)),
        ("0602", LocarnoCode("06", "06-02")),
        ("602", LocarnoCode("06", "06-02")),  # leading zero lost: 3 digits read as D + SS
        ("1-04", LocarnoCode("01", "01-04")),  # WIPO's own notation
        ("LOC (11) Cl. 15-07", LocarnoCode("15", "15-07")),
        ("Cl. 8-05", LocarnoCode("08", "08-05")),
        ("0299", LocarnoCode("02", "02-99")),
        ("31", LocarnoCode("31", "31-00")),  # undivided class: the class determines the subclass
        ("3200", LocarnoCode("32", "32-00")),
        (1507, LocarnoCode("15", "15-07")),
    ],
)
def test_parse_locarno_code_normalises(raw, expected):
    assert parse_locarno_code(raw) == expected


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "missing Locarno code"),
        ("None", "missing Locarno code"),
        ("", "missing Locarno code"),
        ("   ", "missing Locarno code"),
        ("null", "missing Locarno code"),
        ("00", "invalid Locarno class 00"),
        ("0007", "invalid Locarno class 00"),
        ("33", "invalid Locarno class 33"),
        ("3301", "invalid Locarno class 33"),
        ("abc", "malformed Locarno code"),
        ("15-07-01", "malformed Locarno code"),
        ("15--07", "malformed Locarno code"),
        ("150701", "malformed Locarno code"),
        ("15,07", "malformed Locarno code"),
        ("１５０７", "malformed Locarno code"),  # full-width digits are not ASCII codes
        (15.07, "must be text"),
        (True, "must be text"),
    ],
)
def test_parse_locarno_code_rejects_with_reason(raw, reason):
    with pytest.raises(InputError) as err:
        parse_locarno_code(raw, source="ipg190101.xml", record="#3")
    assert reason in err.value.reason
    assert "ipg190101.xml" in str(err.value) and "#3" in str(err.value)


@pytest.mark.parametrize("raw, subclass", [("15-08", "15-08"), ("1500", "15-00"), ("15-77", "15-77")])
def test_unknown_subclass_is_kept_and_flagged(raw, subclass):
    # A valid class with a subclass the edition does not list (vacant 15-08, 15-00, 15-77) is kept, never raised.
    code = parse_locarno_code(raw, edition="12")
    assert code == LocarnoCode("15", subclass)
    assert (code.known_subclass, code.edition, code.mapped_subclass_code) == (False, "12", subclass)
    with pytest.raises(InputError, match="invalid Locarno class"):
        parse_locarno_code("3301", edition="12")


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.from_regex(r"\s*(LOC \(1[0-4]\) )?(Cl\. )?\d{1,4}([-/. ]\d{1,3})?\s*", fullmatch=True),
        st.integers(min_value=-10, max_value=10**6),
    )
)
def test_parse_locarno_code_returns_code_or_input_error(raw):
    try:
        code = parse_locarno_code(raw)
    except InputError as err:
        assert err.reason
        return
    assert isinstance(code, LocarnoCode)
    assert len(code.class_code) == 2 and code.class_code.isascii() and 1 <= int(code.class_code) <= 32
    assert code.edition == "15"  # no edition given: the newest
    assert code.known_subclass == (None if code.subclass_code is None else code.subclass_code in subclass_titles(code.edition))


# ---------------------------------------------------------------------------------------------- doc numbers


@pytest.mark.parametrize(
    "raw, expected",
    [("D836880", "D0836880"), ("D0836880", "D0836880"), (" d 836880 ", "D0836880"), ("D000123", "D0000123"), ("10165721", "10165721"), ("RE049123", "RE049123")],
)
def test_normalise_doc_number(raw, expected):
    assert normalise_doc_number(raw) == expected


@pytest.mark.parametrize("raw", ["", "D12345678", "D-836880", "USD0836880", "hello"])
def test_normalise_doc_number_rejects(raw):
    with pytest.raises(InputError, match="malformed doc-number"):
        normalise_doc_number(raw, source="f.xml", record="#0")


# ---------------------------------------------------------------------------------------------- grant XML


def test_iter_grant_lic_on_weekly_files():
    errors: list[InputError] = []
    week1 = list(iter_grant_lic(WEEK1, on_error=errors.append))
    assert [(r["index"], r["doc_number"], r["lic_raw"]) for r in week1] == [
        (0, "D0836880", "1507"),  # index 1 is a utility patent without Locarno code: skipped
        (2, "D0836881", "15/07"),
        (3, "D0836882", "None"),
    ]
    assert week1[0] == {
        "source": str(WEEK1),
        "index": 0,
        "doc_number": "D0836880",
        "grant_date": dt.date(2019, 1, 1),
        "kind": "S1",
        "lic_edition": "11",
        "lic_raw": "1507",
    }
    assert errors == []

    week2 = list(iter_grant_lic(WEEK2, on_error=errors.append))
    # The malformed document #1 is reported and the documents after it are still read.
    assert [(r["index"], r["doc_number"], r["lic_edition"], r["lic_raw"]) for r in week2] == [
        (0, "D0837001", "11", "15"),  # D837001 normalised, whitespace stripped
        (2, "D0837003", "12", "15-08"),
        (3, "D0837004", None, None),  # design without classification-locarno
    ]
    assert len(errors) == 1
    assert errors[0].source == str(WEEK2) and errors[0].record == "#1 (line 32)"
    assert "malformed XML document" in errors[0].reason and "mismatched tag" in errors[0].reason


def test_iter_grant_lic_default_logs_and_keeps_going(caplog):
    records = list(iter_grant_lic(WEEK2))
    assert len(records) == 3
    assert "ipg190108.xml" in caplog.text and "#1" in caplog.text


def test_utility_patent_with_locarno_code_is_kept_and_body_is_not_parsed(tmp_path):
    # The tail after the bibliographic data is broken XML: it is never parsed, so the record still comes out.
    broken_tail = "<description><p>unclosed <b>bold</p></description>\n"
    path = tmp_path / "ipg200107.xml"
    path.write_text(grant_doc("10500001", "20200107", kind="B2", locarno="2101", tail=broken_tail) + grant_doc("10500002", "20200107", kind="B1", locarno=None))
    records = list(iter_grant_lic(path, on_error=pytest.fail))
    assert [(r["doc_number"], r["kind"], r["lic_raw"]) for r in records] == [("10500001", "B2", "2101")]


def test_bad_date_and_truncated_doc_are_reported_other_roots_are_not(tmp_path):
    # A <sequence-cwu> document is a normal part of a weekly file (counted, see test_uspto.py), not an error.
    path = tmp_path / "ipg190115.xml"
    truncated = grant_doc("D0900003")[:400]  # cut inside the bibliographic data, at the end of the file
    other_root = HEADER + "<sequence-cwu><x/></sequence-cwu>\n"
    path.write_text(grant_doc("D0900001", date="20191301") + grant_doc("D0900002") + other_root + truncated)
    errors: list[InputError] = []
    records = list(iter_grant_lic(path, on_error=errors.append))
    assert [r["doc_number"] for r in records] == ["D0900002"]
    by_record = {e.record.split()[0]: e.reason for e in errors}
    assert set(by_record) == {"#0", "#3"}
    assert "bad grant date '20191301'" in by_record["#0"]
    assert "malformed XML document" in by_record["#3"]
    assert all(e.source == str(path) for e in errors)


def test_named_entities_from_the_dtd_do_not_break_parsing(tmp_path):
    path = tmp_path / "ipg190122.xml"
    doc = grant_doc("D0900010").replace("<invention-title id=\"t\">Thing", "<invention-title id=\"t\">&lsquo;Thing&rsquo; &mdash; &amp;")
    path.write_text(doc)
    assert [r["doc_number"] for r in iter_grant_lic(path, on_error=pytest.fail)] == ["D0900010"]


def test_file_without_xml_declaration_is_rejected(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a grant file\n")
    with pytest.raises(InputError, match="XML declaration") as err:
        list(iter_grant_lic(path))
    assert str(path) in str(err.value)


def test_read_lic_codes_tables_and_quarantine():
    codes, quarantine = read_lic_codes([WEEK2, WEEK1])
    assert codes.schema == schemas.LIC_CODES
    assert quarantine.schema == schemas.QUARANTINE
    assert codes.to_pylist() == [
        {"doc_number": "D0836880", "grant_date": dt.date(2019, 1, 1), "lic_edition": "11", "lic_raw": "1507", "class_code": "15", "subclass_code": "15-07", "source": str(WEEK1)},
        {"doc_number": "D0836881", "grant_date": dt.date(2019, 1, 1), "lic_edition": "11", "lic_raw": "15/07", "class_code": "15", "subclass_code": "15-07", "source": str(WEEK1)},
        {"doc_number": "D0837001", "grant_date": dt.date(2019, 1, 8), "lic_edition": "11", "lic_raw": " 15 ".strip(), "class_code": "15", "subclass_code": None, "source": str(WEEK2)},
        # 15-08 is vacant in the 12th edition: a valid class with an unknown subclass is kept (flagged downstream).
        {"doc_number": "D0837003", "grant_date": dt.date(2019, 1, 8), "lic_edition": "12", "lic_raw": "15-08", "class_code": "15", "subclass_code": "15-08", "source": str(WEEK2)},
    ]
    rows = [(r["source"], r["record"], r["stage"]) for r in quarantine.to_pylist()]
    assert rows == [
        (str(WEEK1), "#3 (D0836882)", "lic_codes"),
        (str(WEEK2), "#1 (line 32)", "lic_codes"),
        (str(WEEK2), "#3 (D0837004)", "lic_codes"),
    ]
    reasons = quarantine.column("reason").to_pylist()
    assert "missing Locarno code" in reasons[0]
    assert "malformed XML document" in reasons[1]
    assert "without classification-locarno" in reasons[2]


def test_read_lic_codes_is_order_independent_and_handles_repeats(tmp_path):
    a, b = tmp_path / "ipg190101.xml", tmp_path / "ipg190101_rerun.xml"
    shutil.copy(WEEK1, a)
    # The same grant again with the same code (harmless) and one with a different code (quarantined).
    b.write_text(grant_doc("D0836880", locarno="15-07") + grant_doc("D0836881", locarno="0602"))
    codes1, q1 = read_lic_codes([a, b])
    codes2, q2 = read_lic_codes([b, a])
    assert codes1.equals(codes2) and q1.equals(q2)
    assert codes1.column("doc_number").to_pylist() == ["D0836880", "D0836881"]
    assert codes1.column("subclass_code").to_pylist() == ["15-07", "15-07"]
    conflicts = [r for r in q1.to_pylist() if "conflicting" in r["reason"]]
    assert len(conflicts) == 1 and conflicts[0]["source"] == str(b) and "D0836881" in conflicts[0]["reason"]
