"""USPTO weekly grant files as they really are: interleaved non-grant documents, DTD v4.1..v4.3, `.zip` delivery.

The fixtures are written here in the layout of real weekly files (`ipg060103`, `ipg070102`, `ipg130416`): every
document starts with its own `<?xml` line and DOCTYPE, designs are kind S1 with `appl-type="design"`, a statutory
invention registration is kind H1 with `appl-type="sir"`, and `<sequence-cwu>` sequence listings of biotech grants
sit between the grants.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from pathlib import Path

import pytest

from hmpcl_lib import schemas
from hmpcl_lib.errors import InputError
from hmpcl_lib.sources.uspto import GrantFileCounts, iter_grant_lic, read_lic_codes, summarise_grant_counts

DTDS = {
    "v4.1": ("v4.1 2005-08-25", "us-patent-grant-v41-2005-08-25.dtd"),
    "v4.2": ("v4.2 2006-08-23", "us-patent-grant-v42-2006-08-23.dtd"),
    "v4.3": ("v4.3 2012-12-04", "us-patent-grant-v43-2012-12-04.dtd"),
}


def grant(doc_number: str, date: str, kind: str, appl_type: str, locarno: tuple[str, str] | None, dtd: str = "v4.2") -> str:
    """A grant document in the real layout (bibliographic part, then a body that is never parsed)."""
    version, dtd_file = DTDS[dtd]
    lic = (
        f"<classification-locarno>\n<edition>{locarno[0]}</edition>\n"
        f"<main-classification>{locarno[1]}</main-classification>\n</classification-locarno>\n"
        if locarno
        else ""
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<!DOCTYPE us-patent-grant SYSTEM "{dtd_file}" [ ]>\n'
        f'<us-patent-grant lang="EN" dtd-version="{version}" file="US{doc_number}-{date}.XML" status="PRODUCTION" '
        f'id="us-patent-grant" country="US" date-produced="20051218" date-publ="{date}">\n'
        "<us-bibliographic-data-grant>\n<publication-reference>\n<document-id>\n<country>US</country>\n"
        f"<doc-number>{doc_number}</doc-number>\n<kind>{kind}</kind>\n<date>{date}</date>\n"
        "</document-id>\n</publication-reference>\n"
        f'<application-reference appl-type="{appl_type}">\n<document-id>\n<country>US</country>\n'
        "<doc-number>29230187</doc-number>\n<date>20050516</date>\n</document-id>\n</application-reference>\n"
        "<us-application-series-code>29</us-application-series-code>\n"
        + lic
        + "<classification-national>\n<country>US</country>\n<main-classification>D 6601</main-classification>\n"
        "</classification-national>\n<invention-title id=\"d0e71\">Lamp</invention-title>\n"
        "</us-bibliographic-data-grant>\n"
        '<drawings id="DRAWINGS">\n<figure id="Fig-EMI-D00000" num="00000"><img id="EMI-D00000" he="214.55mm" '
        'wi="173.65mm" file="USD0513425-20060103-D00000.TIF" alt="embedded image" img-content="drawing" '
        'img-format="tif"/></figure>\n</drawings>\n'
        '<claims id="claims">\n<claim id="CLM-00001" num="00001">\n<claim-text>The ornamental design.</claim-text>\n'
        "</claim>\n</claims>\n</us-patent-grant>\n"
    )


def sequence_listing(doc_number: str, date: str, body: str = "") -> str:
    """A `<sequence-cwu>` document as weekly files interleave them."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE sequence-cwu SYSTEM "us-sequence-listing-2004-03-09.dtd" [ ]>\n'
        '<sequence-cwu id="SEQLST-1">\n<publication-reference>\n<document-id>\n<country>US</country>\n'
        f"<doc-number>{doc_number}</doc-number>\n<kind>B2</kind>\n<date>{date}</date>\n"
        "</document-id>\n</publication-reference>\n<number>1</number>\n"
        "<sequence-list-new-rules>\n<s100>\n<s160>13</s160>\n</s100>\n<s200>\n<s210>1</s210>\n<s211>20</s211>\n"
        "<s212>DNA</s212>\n<s213>Artificial</s213>\n</s200>\n<s400>ctgccatacg ccaaagtgtc</s400>\n"
        + body
        + "</sequence-list-new-rules>\n</sequence-cwu>\n"
    )


def week_060103() -> str:
    """Two designs (edition 8), a SIR (H1), a utility grant and two sequence listings, one between the grants."""
    return (
        grant("D0513425", "20060103", "S1", "design", ("8", "2102"), dtd="v4.1")
        + sequence_listing("06982156", "20060103")
        + grant("D0513434", "20060103", "S1", "design", ("8", "2304"), dtd="v4.1")
        + grant("H0002140", "20060103", "H1", "sir", None, dtd="v4.1")
        + grant("06981234", "20060103", "B2", "utility", None, dtd="v4.1")
        + sequence_listing("06982157", "20060103")
    )


def week_130416() -> str:
    """v4.3 designs of edition 9, indented as some published excerpts are, then two sequence listings."""
    designs = grant("D0680087", "20130416", "S1", "design", ("9", "1403"), dtd="v4.3") + grant(
        "D0680199", "20130416", "S1", "design", ("9", "2301"), dtd="v4.3"
    )
    indented = "\n".join(line if line.startswith("<?xml") else "  " + line for line in designs.splitlines()) + "\n"
    return indented + sequence_listing("08420000", "20130416") + sequence_listing("08420001", "20130416")


EXPECTED_0601 = [
    ("D0513425", dt.date(2006, 1, 3), "S1", "8", "2102"),
    ("D0513434", dt.date(2006, 1, 3), "S1", "8", "2304"),
]


def _zip(path: Path, members: dict[str, str], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def _summary(records: list[dict]) -> list[tuple]:
    return [(r["doc_number"], r["grant_date"], r["kind"], r["lic_edition"], r["lic_raw"]) for r in records]


# ---------------------------------------------------------------------------------------------- non-grant documents


def test_sequence_listings_are_counted_not_reported(tmp_path):
    path = tmp_path / "ipg060103.xml"
    path.write_text(week_060103())
    counts = GrantFileCounts(str(path))
    records = list(iter_grant_lic(path, on_error=pytest.fail, counts=counts))
    assert _summary(records) == EXPECTED_0601
    assert [r["index"] for r in records] == [0, 2]  # document numbers count the sequence listing in between
    assert counts == GrantFileCounts(str(path), documents=6, grants=4, design_grants=2, skipped={"sequence-cwu": 2}, errors=0)


def test_non_grant_body_is_never_parsed_and_other_roots_are_counted_by_tag(tmp_path):
    # A sequence listing is skipped at its root tag: even a broken body is not an error (it can be huge).
    path = tmp_path / "ipg070102.xml"
    broken = sequence_listing("07157266", "20070102", body="<s400>unclosed <b>tag</s400>\n")
    other = '<?xml version="1.0" encoding="UTF-8"?>\n<us-patent-application><x/></us-patent-application>\n'
    path.write_text(
        broken
        + grant("D0534340", "20070102", "S1", "design", ("8", "0299"))
        + other
        + grant("D0534463", "20070102", "S1", "design", ("8", "1216"))
    )
    counts = GrantFileCounts(str(path))
    records = list(iter_grant_lic(path, on_error=pytest.fail, counts=counts))
    assert [(r["index"], r["doc_number"], r["lic_raw"]) for r in records] == [(1, "D0534340", "0299"), (3, "D0534463", "1216")]
    assert counts.skipped == {"sequence-cwu": 1, "us-patent-application": 1}
    assert (counts.documents, counts.grants, counts.design_grants, counts.errors) == (4, 2, 2, 0)


def test_read_lic_codes_quarantines_nothing_for_sequence_listings_and_reports_counts(tmp_path):
    a, b = tmp_path / "ipg060103.xml", tmp_path / "ipg130416.xml"
    a.write_text(week_060103())
    head = week_130416() + grant("D0680300", "20130416", "S1", "design", None, dtd="v4.3")
    b.write_text(head + '<?xml version="1.0"?>\n<us-patent-grant><us-bibl')  # cut off: the file ends mid-document
    counts: list[GrantFileCounts] = []
    codes, quarantine = read_lic_codes([b, a], counts=counts)
    assert codes.schema == schemas.LIC_CODES
    assert [(r["doc_number"], r["lic_edition"], r["subclass_code"]) for r in codes.to_pylist()] == [
        ("D0513425", "8", "21-02"),
        ("D0513434", "8", "23-04"),
        ("D0680087", "9", "14-03"),
        ("D0680199", "9", "23-01"),
    ]
    # Only real problems are quarantined: a design without a code and a truncated grant, never a sequence listing.
    assert [(r["source"], r["record"]) for r in quarantine.to_pylist()] == [
        (str(b), "#4 (D0680300)"),
        (str(b), f"#5 (line {head.count(chr(10)) + 1})"),
    ]
    assert [c.source for c in counts] == [str(a), str(b)]  # sorted file order
    # The truncated grant is an error, not a grant read.
    assert counts[1] == GrantFileCounts(str(b), documents=6, grants=3, design_grants=3, skipped={"sequence-cwu": 2}, errors=1)
    summary = summarise_grant_counts(counts)
    assert summary["grants"] == 7 and summary["design_grants"] == 5 and summary["errors"] == 1
    assert summary["skipped"] == {"sequence-cwu": 4}
    assert summary["per_file"]["ipg060103.xml"] == {"documents": 6, "grants": 4, "design_grants": 2, "skipped": {"sequence-cwu": 2}, "errors": 0}


# ---------------------------------------------------------------------------------------------- .zip delivery


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_zip_weekly_file_is_read_like_the_xml(tmp_path, compression):
    xml = tmp_path / "plain" / "ipg060103.xml"
    xml.parent.mkdir()
    xml.write_text(week_060103())
    archive = _zip(tmp_path / "ipg060103.zip", {"ipg060103.xml": week_060103()}, compression)
    before = sorted(tmp_path.rglob("*"))
    counts: list[GrantFileCounts] = []
    codes, quarantine = read_lic_codes([archive], counts=counts)
    plain_codes, _ = read_lic_codes([xml])
    assert codes.drop_columns(["source"]).equals(plain_codes.drop_columns(["source"]))
    assert set(codes.column("source").to_pylist()) == {f"{archive}!ipg060103.xml"}
    assert quarantine.num_rows == 0
    assert counts == [GrantFileCounts(str(archive), documents=6, grants=4, design_grants=2, skipped={"sequence-cwu": 2})]
    assert sorted(tmp_path.rglob("*")) == before  # streamed out of the archive: nothing extracted


def test_zip_errors_name_the_archive_and_member(tmp_path):
    text = week_130416() + '<?xml version="1.0"?>\n<us-patent-grant><x>'
    archive = _zip(tmp_path / "ipg130416.zip", {"ipg130416.xml": text})
    errors: list[InputError] = []
    records = list(iter_grant_lic(archive, on_error=errors.append))
    assert [r["doc_number"] for r in records] == ["D0680087", "D0680199"]
    assert [(e.source, e.record) for e in errors] == [(f"{archive}!ipg130416.xml", f"#4 (line {week_130416().count(chr(10)) + 1})")]


def test_zip_detected_by_bytes_and_several_xml_members_all_read(tmp_path):
    # A zip that does not say so in its name, with the XML in a folder, a second XML member and a non-XML member.
    archive = _zip(
        tmp_path / "ipg060103.xml",
        {"README.txt": "USPTO", "2006/ipg060103.xml": week_060103(), "2013/ipg130416.xml": week_130416()},
    )
    counts = GrantFileCounts(str(archive))
    records = list(iter_grant_lic(archive, on_error=pytest.fail, counts=counts))
    assert [r["doc_number"] for r in records] == ["D0513425", "D0513434", "D0680087", "D0680199"]
    assert {r["source"] for r in records} == {f"{archive}!2006/ipg060103.xml", f"{archive}!2013/ipg130416.xml"}
    assert counts.documents == 10 and counts.skipped == {"sequence-cwu": 4}


def test_zip_without_xml_member_is_input_error(tmp_path):
    archive = _zip(tmp_path / "ipg060103.zip", {"ipg060103.txt": "not here", "docs/": ""})
    with pytest.raises(InputError, match=r"zip archive has no \.xml member \(members: ipg060103\.txt") as err:
        read_lic_codes([archive])
    assert err.value.source == str(archive)


def test_truncated_zip_is_input_error(tmp_path):
    good = _zip(tmp_path / "good.zip", {"ipg060103.xml": week_060103()})
    archive = tmp_path / "ipg060103.zip"
    archive.write_bytes(good.read_bytes()[:300])  # the download stopped early: no central directory
    with pytest.raises(InputError, match="corrupt or unreadable zip archive") as err:
        read_lic_codes([archive])
    assert err.value.source == str(archive)


def test_corrupt_zip_member_is_input_error(tmp_path):
    archive = _zip(tmp_path / "ipg060103.zip", {"ipg060103.xml": week_060103()}, zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    at = data.index(b"D0513434")  # flip bytes inside the stored member: the CRC no longer matches
    data[at : at + 8] = b"D0999999"
    archive.write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupt zip member") as err:
        read_lic_codes([archive])
    assert err.value.source == f"{archive}!ipg060103.xml"


# ---------------------------------------------------------------------------------------------- lic_codes asset


def test_lic_codes_asset_reads_xml_and_zip_and_reports_counts(tmp_path):
    import dagster as dg
    import polars as pl

    from pipelines.defs.assets.data import lic_codes
    from pipelines.defs.resources import DataStore

    weekly = tmp_path / "uspto"
    weekly.mkdir()
    (weekly / "ipg060103.xml").write_text(week_060103())
    _zip(weekly / "ipg130416.zip", {"ipg130416.xml": week_130416()})
    store = DataStore(root=str(tmp_path / "data"), source="deeppatent2", uspto_xml_dir=str(weekly))
    result = dg.materialize([lic_codes], resources={"store": store}, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    meta = result.asset_materializations_for_node("lic_codes")[0].metadata
    assert meta["xml_files"].value == 2 and meta["quarantined"].value == 0
    assert meta["grants_read"].value == 6 and meta["design_grants"].value == 4
    assert meta["non_grant_documents_skipped"].value == {"sequence-cwu": 4}
    assert meta["per_file"].value["ipg130416.zip"]["skipped"] == {"sequence-cwu": 2}
    assert pl.read_parquet(store.layout.lic_codes_path)["doc_number"].to_list() == ["D0513425", "D0513434", "D0680087", "D0680199"]
