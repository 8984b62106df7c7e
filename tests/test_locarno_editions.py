"""The Locarno taxonomy by edition (8..15) and checking codes against the edition their grant declares."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from hmpcl_lib import sample
from hmpcl_lib.errors import InputError
from hmpcl_lib.taxonomy.locarno import (
    EDITIONS,
    LocarnoCode,
    class_titles,
    edition_in_force,
    load_spans,
    load_taxonomy,
    normalise_edition,
    parse_locarno_code,
    subclass_titles,
    taxonomy_edition,
)

NEW_IN_14 = ["07-09", "07-10", "09-10", "12-17", "13-04", "14-06", "23-06", "23-07", "23-08", "24-05", "26-07",
             "27-07", "28-05", "28-06", "30-10", "30-11", "30-12", "32-01", "32-02"]


def test_one_row_per_code_and_edition_and_counts_per_edition():
    tax = load_taxonomy()
    assert tax.group_by("edition", "level", "class_code", "subclass_code").len()["len"].max() == 1  # spans never overlap
    subclasses = {e: n for e, n in tax.filter(pl.col("level") == "subclass").group_by("edition").len().iter_rows()}
    # 11th: 219 (WIPO's count); 14th and 15th: 237 (19 new, 23-02 and 32-00 gone); see LOCARNO_SOURCES.md.
    assert subclasses == {"8": 215, "9": 216, "10": 218, "11": 219, "12": 220, "13": 220, "14": 237, "15": 237}
    spans = load_spans()
    assert spans.filter(pl.col("first_edition") > pl.col("last_edition")).height == 0
    assert set(spans["first_edition"].to_list()) | set(spans["last_edition"].to_list()) <= {int(e) for e in EDITIONS}
    assert spans.filter(pl.col("title").str.strip_chars() == "").height == 0


def test_subclasses_new_in_the_14th_edition():
    for code in NEW_IN_14:
        assert code not in subclass_titles("13") and code in subclass_titles("14") and code in subclass_titles("15"), code
    assert {"23-02", "32-00"} <= set(subclass_titles("13")) and not {"23-02", "32-00"} & set(subclass_titles("14"))


@pytest.mark.parametrize(
    "raw, edition, known",
    [
        ("2302", "8", True),  # sanitary appliances: in editions 8-13 ...
        ("2302", "15", False),  # ... vacant from the 14th (split into 23-06/07/08)
        ("1406", "11", False),  # new in the 14th: flagged under the 11th ...
        ("1406", "14", True),  # ... known under the 14th
        ("3200", "13", True),
        ("3200", "14", False),
        ("32-01", "13", False),
        ("32-01", "14", True),
        ("0602", "8", True),
        ("14-04", "11", True),
        ("15-08", "13", False),  # vacant in every edition
    ],
)
def test_code_is_checked_against_its_own_edition(raw, edition, known):
    code = parse_locarno_code(raw, edition=edition, source="ipg.xml", record="#1")
    assert (code.edition, code.known_subclass) == (edition, known)


def test_undivided_class_32_until_the_13th_edition():
    assert parse_locarno_code("32", edition="11") == LocarnoCode("32", "32-00")
    code = parse_locarno_code("32", edition="14")  # divided from the 14th: the class alone says no subclass
    assert code == LocarnoCode("32", None) and code.known_subclass is None and code.mapped_subclass_code is None
    assert parse_locarno_code("31", edition="15") == LocarnoCode("31", "31-00")


def test_renumbered_and_split_subclasses_map_to_a_stable_label():
    assert parse_locarno_code("3200", edition="9").mapped_subclass_code == "32-01"
    assert parse_locarno_code("3201", edition="14").mapped_subclass_code == "32-01"
    for code in ("2306", "2307", "2308"):
        assert parse_locarno_code(code, edition="14").mapped_subclass_code == "23-02"
    assert parse_locarno_code("2302", edition="12").mapped_subclass_code == "23-02"
    assert parse_locarno_code("1507", edition="12").mapped_subclass_code == "15-07"
    # Every label is a code of some edition.
    every_code = set(load_taxonomy()["subclass_code"].drop_nulls().to_list())
    assert set(load_taxonomy()["mapped_subclass_code"].drop_nulls().to_list()) <= every_code


@pytest.mark.parametrize(
    "raw, expected",
    [("8", "8"), ("9", "9"), ("11", "11"), (" 11 ", "11"), ("09", "9"), ("LOC (9)", "9"), ("LOC(12)", "12"),
     ("(13)", "13"), ("14th edition", "14"), (15, "15"), (None, None), ("", None), ("eleven", None), ("0", None), (True, None)],
)
def test_normalise_edition(raw, expected):
    assert normalise_edition(raw) == expected


def test_taxonomy_edition_for_unknown_or_missing_editions():
    assert taxonomy_edition("7") == "8" and taxonomy_edition("16") == "15"  # nearest edition shipped
    assert taxonomy_edition(None) == "15" and taxonomy_edition("n/a") == "15"  # no context: the newest
    assert taxonomy_edition(None, dt.date(2013, 4, 16)) == "9"  # real ipg130416 grants still declare the 9th
    assert taxonomy_edition(None, dt.date(2019, 1, 1)) == "12"
    assert taxonomy_edition(" 11 ", dt.date(2024, 1, 1)) == "11"  # a declared edition wins over the date
    assert edition_in_force(dt.date(2001, 5, 1)) == "8" and edition_in_force(dt.date(2025, 6, 1)) == "15"
    assert parse_locarno_code("1403").edition == "15"


def test_titles_per_edition():
    assert subclass_titles("12")["14-04"] == "Screen displays and icons"
    assert subclass_titles("13")["14-04"] == "Graphical user interfaces and icons"
    assert class_titles("11")["14"] == "Recording, communication or information retrieval equipment"
    assert class_titles("12")["14"] == "Recording, telecommunication or data processing equipment"
    assert subclass_titles("8")["01-02"] == "Fruit and vegetables"
    assert subclass_titles("15")["01-02"] == "Fruit, vegetables and products made from fruits and vegetables"
    assert class_titles("13")["32"] == "Graphic symbols and logos, surface patterns, ornamentation"
    assert subclass_titles("13")["32-00"] == "Graphic symbols and logos, surface patterns, ornamentation"
    assert class_titles("14")["32"].endswith("arrangement of interiors and exteriors")
    assert subclass_titles("11")["12-11"] == "Cycles and motorcycles"
    assert class_titles() == class_titles("15")


@pytest.mark.parametrize("raw, reason", [("abc", "malformed Locarno code"), ("3301", "invalid Locarno class 33"), ("", "missing")])
def test_bad_codes_raise_naming_the_record_whatever_the_edition(raw, reason):
    with pytest.raises(InputError, match=reason) as err:
        parse_locarno_code(raw, edition="11", source="design2019.json", record="USD0836880-20190101-D00001_1")
    assert "design2019.json" in str(err.value) and "USD0836880-20190101-D00001_1" in str(err.value)


def test_sample_corpus_codes_are_known_to_the_edition_its_xml_declares():
    patents = sample.sample_patents(sample.SampleSpec())
    for subclass, year in patents.select("subclass_code", "year").unique().iter_rows():
        code = parse_locarno_code(subclass, edition=sample.locarno_edition(year))
        assert code.known_subclass and code.mapped_subclass_code == subclass, (subclass, year)
