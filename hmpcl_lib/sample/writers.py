"""Writers of the sample corpus in the real layouts: the DeepPatent2 year archive (records, nested tar.gz, Dataverse
parts and listing) and the weekly USPTO grant XML carrying the Locarno codes; `generate_sample` writes it all."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import polars as pl
from PIL import Image, ImageDraw

from hmpcl_lib.io import atomic_path
from hmpcl_lib.sample.shapes import object_title
from hmpcl_lib.sample.spec import SampleSpec, VIEWS, _rng, render_drawing, sample_patents

_TAR_MTIME = 1_600_000_000  # fixed member mtime: same spec -> same bytes


# --------------------------------------------------------------------------------------------------------------
# DeepPatent2 year archive: records, figures, nested tar.gz, Dataverse parts
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _YearLayout:
    """Folder and archive names inside a year's archive: they differ by year in the real data."""

    top: str
    original_archive: str
    segmented_archive: str
    original_dir: str  # "" = PNGs at the archive root
    segmented_dir: str
    national_class: bool  # this year's records carry `classification_national`


def year_layout(year: int) -> _YearLayout:
    if year % 2:
        return _YearLayout(f"{year}", f"Original_{year}.tar.gz", f"Segmented_{year}.tar.gz",
                           f"Original_{year}/", f"Segmented_{year}/", False)
    return _YearLayout(f"DesignPatent{year}", f"{year}_original_png.tar.gz", f"{year}_segmented_png.tar.gz",
                       "", "segmented/", True)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    """Deterministic tar.gz: sorted members, parent folders listed, fixed mtime/owner, gzip mtime 0."""
    dirs = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name in sorted(dirs | set(files)):
                info = tarfile.TarInfo(name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = _TAR_MTIME, 0, 0, "", ""
                if name in files:
                    info.size, info.mode = len(files[name]), 0o644
                    tar.addfile(info, io.BytesIO(files[name]))
                else:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
    return buf.getvalue()


def _figure_label_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(10, size // 9))
    except (TypeError, OSError):  # Pillow without FreeType: the bitmap default font
        return ImageFont.load_default()


def _aspect_short(aspect: str) -> str:
    return aspect.replace(" elevational", "").replace(" plan", "").replace(" view", "")


def _year_figures(spec: SampleSpec, year: int) -> tuple[list[dict], dict[str, bytes], dict[str, bytes]]:
    """Per-figure records plus original and segmented PNG bytes (by file name) of one year."""
    patents = sample_patents(spec).filter(pl.col("year") == year).sort("patent_id").to_dicts()
    layout = year_layout(year)
    font = _figure_label_font(spec.image_size)
    records, originals, segmented = [], {}, {}
    for patent in patents:
        title = object_title(patent["class_code"], patent["variant"])
        national = f"D{int(patent['class_code'])}/{100 + patent['patent_index'] % 800}"
        for view in range(patent["n_views"]):
            fig = view + 1
            seg = render_drawing(spec, patent, view)
            r = _rng(spec, 6, patent["patent_index"], view)
            width, height = int(spec.image_size * 1.5), int(spec.image_size * 1.8)
            x0 = int(r.integers(4, width - spec.image_size - 4))
            y0 = int(r.integers(4, height - spec.image_size - spec.image_size // 4))
            original = Image.new("L", (width, height), 255)
            original.paste(seg, (x0, y0))
            draw = ImageDraw.Draw(original)
            label = f"FIG. {fig}"
            lx, ly = x0 + int(r.integers(0, spec.image_size // 3)), y0 + spec.image_size + 4
            lbox = draw.textbbox((lx, ly), label, font=font)
            draw.text((lx, ly), label, fill=0, font=font)
            ink = seg.point(lambda v: 255 if v < 128 else 0).getbbox() or (0, 0, spec.image_size, spec.image_size)
            figure_file = f"{patent['patent_id']}-D{fig:05d}.png"
            subfigure_file = f"{figure_file[:-4]}_1.png"
            aspect = VIEWS[view][0]
            article = "an" if title[0].lower() in "aeiou" else "a"
            record = {
                "id": 0,
                "patentID": patent["patent_id"],
                "patentdate": f"{patent['grant_date']:%Y%m%d}",
                "figid": 1,
                "caption": f"FIG. {fig} is a {aspect} of {article} {title.lower()}"
                + (", showing our new design;" if fig == 1 else ";"),
                "object": title.lower(),
                "aspect": _aspect_short(aspect),
                "figure_file": figure_file,
                "subfigure_file": subfigure_file,
                "object_title": title,
                "x_figure": x0 + ink[0], "y_figure": y0 + ink[1],
                "w_figure": ink[2] - ink[0], "h_figure": ink[3] - ink[1],
                "W_label": lbox[2] - lbox[0], "H_label": lbox[3] - lbox[1], "L_label": lbox[0], "T_label": lbox[1],
            }
            if layout.national_class:
                record["classification_national"] = national
            last = fig == patent["n_views"]
            if last and patent["fault"] == "malformed_patent_id":
                record["patentID"] = patent["patent_id"].replace("-", "")
            records.append(record)
            if last and patent["fault"] == "missing_image":
                continue
            originals[layout.original_dir + figure_file] = _png(original)
            segmented[layout.segmented_dir + subfigure_file] = _png(seg)
    for i, record in enumerate(records):
        record["id"] = i
    return records, originals, segmented


def _part_suffix(i: int) -> str:
    if i >= 26 * 26:
        raise ValueError("more than 676 parts: raise SampleSpec.part_size")
    return chr(97 + i // 26) + chr(97 + i % 26)


def write_sample_year(spec: SampleSpec, year: int, raw_dir: str | Path) -> list[Path]:
    """Write one year as Dataverse parts raw_dir/YYYY.aa, .ab, ... (byte slices of one tar.gz); stale parts go."""
    if year not in spec.years:
        raise ValueError(f"year {year} not in spec.years {spec.years}")
    raw_dir = Path(raw_dir)
    layout = year_layout(year)
    records, originals, segmented = _year_figures(spec, year)
    top = layout.top + "/"
    archive = _tar_gz({
        f"{top}design{year}.json": json.dumps(records, indent=1).encode(),
        top + layout.original_archive: _tar_gz(originals),
        top + layout.segmented_archive: _tar_gz(segmented),
    })
    paths = []
    for i, start in enumerate(range(0, len(archive), spec.part_size)):
        path = raw_dir / f"{year}.{_part_suffix(i)}"
        with atomic_path(path) as tmp:
            tmp.write_bytes(archive[start:start + spec.part_size])
        paths.append(path)
    for stale in raw_dir.glob(f"{year}.??"):
        if stale not in paths:
            stale.unlink()
    return paths


def sample_listing(spec: SampleSpec, raw_root: str | Path) -> dict:
    """Dataverse dataset JSON (`/api/datasets/:persistentId/`) listing the parts under raw_root/YYYY/."""
    raw_root = Path(raw_root)
    files = []
    for y, year in enumerate(spec.years):
        for p, path in enumerate(sorted((raw_root / str(year)).glob(f"{year}.??"))):
            md5 = hashlib.md5(path.read_bytes()).hexdigest()
            files.append({
                "label": path.name, "restricted": False, "version": 1, "datasetVersionId": 300001,
                "dataFile": {
                    "id": 6_100_000 + 1000 * y + p, "persistentId": "", "filename": path.name,
                    "contentType": "application/octet-stream", "filesize": path.stat().st_size,
                    "storageIdentifier": f"s3://dvn-cloud:{md5[:12]}", "rootDataFileId": -1,
                    "md5": md5, "checksum": {"type": "MD5", "value": md5},
                },
            })
    return {
        "status": "OK",
        "data": {
            "id": 4500000, "identifier": "DVN/UG4SBD", "persistentUrl": "https://doi.org/10.7910/DVN/UG4SBD",
            "protocol": "doi", "authority": "10.7910", "publisher": "Harvard Dataverse",
            "latestVersion": {"id": 300001, "versionState": "RELEASED", "versionNumber": 1,
                              "versionMinorNumber": 0, "files": files},
        },
    }


# --------------------------------------------------------------------------------------------------------------
# USPTO weekly grant XML carrying the Locarno codes
# --------------------------------------------------------------------------------------------------------------


def locarno_edition(year: int) -> str:
    for since, edition in ((2023, "14"), (2021, "13"), (2019, "12"), (2017, "11"), (2013, "10"), (2009, "9")):
        if year >= since:
            return edition
    return "8"


def _grant_xml(doc_number: str, date: dt.date, kind: str, title: str, locarno: str | None, claim: str,
               national: str) -> str:
    ymd = f"{date:%Y%m%d}"
    design = kind == "S1"
    lic = (f"<classification-locarno>\n<edition>{locarno_edition(date.year)}</edition>\n"
           f"<main-classification>{locarno}</main-classification>\n</classification-locarno>\n") if locarno else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ ]>\n'
        f'<us-patent-grant lang="EN" dtd-version="v4.5 2014-04-03" file="US{doc_number}-{ymd}.XML" '
        f'status="PRODUCTION" id="us-patent-grant" country="US" date-produced="{ymd}" date-publ="{ymd}">\n'
        "<us-bibliographic-data-grant>\n"
        "<publication-reference>\n<document-id>\n<country>US</country>\n"
        f"<doc-number>{doc_number}</doc-number>\n<kind>{kind}</kind>\n<date>{ymd}</date>\n"
        "</document-id>\n</publication-reference>\n"
        f'<application-reference appl-type="{"design" if design else "utility"}">\n<document-id>\n'
        f"<country>US</country>\n<doc-number>{'29' if design else '15'}{int(doc_number.lstrip('D')) % 1000000:06d}</doc-number>\n"
        f"<date>{date.year - 2}0615</date>\n</document-id>\n</application-reference>\n"
        f"<us-application-series-code>{'29' if design else '15'}</us-application-series-code>\n"
        + ("<us-term-of-grant>\n<length-of-grant>15</length-of-grant>\n</us-term-of-grant>\n" if design else "")
        + lic
        + ("" if design else "<classifications-ipcr>\n<classification-ipcr>\n<section>G</section>\n<class>06</class>\n"
           "<subclass>F</subclass>\n<main-group>16</main-group>\n<subgroup>00</subgroup>\n"
           "</classification-ipcr>\n</classifications-ipcr>\n")
        + f"<classification-national>\n<country>US</country>\n<main-classification>{national}</main-classification>\n"
        "</classification-national>\n"
        f'<invention-title id="d2e53">{escape(title)}</invention-title>\n'
        "</us-bibliographic-data-grant>\n"
        f'<claims id="claims">\n<claim id="CLM-00001" num="00001">\n<claim-text>{escape(claim)}</claim-text>\n'
        "</claim>\n</claims>\n</us-patent-grant>\n"
    )


def _locarno_raw(spec: SampleSpec, patent: dict) -> str | None:
    if patent["fault"] == "lic_missing":
        return None
    klass, sub = patent["subclass_code"].split("-")
    if patent["fault"] == "lic_class_only":
        return klass
    pick = float(_rng(spec, 7, patent["patent_index"]).uniform())
    return f"{klass}-{sub}" if pick < 0.05 else f"{klass}/{sub}" if pick < 0.10 else f"{klass}{sub}"


def write_sample_uspto(spec: SampleSpec, uspto_dir: str | Path) -> list[Path]:
    """Weekly grant files uspto_dir/ipgYYMMDD.xml, one per grant Tuesday used, each with a utility patent too."""
    uspto_dir = Path(uspto_dir)
    patents = sample_patents(spec)
    paths = []
    for w, (date,) in enumerate(patents.select("grant_date").unique().sort("grant_date").iter_rows()):
        utility_number = f"{10_150_000 + 350_000 * (date.year - 2019) + 7_000 * w:08d}"
        docs = [_grant_xml(utility_number, date, "B2", "Method and system for indexing data records",
                           None, "1. A method comprising: receiving a data record; and indexing it.", "707741")]
        for patent in patents.filter(pl.col("grant_date") == date).sort("doc_number").iter_rows(named=True):
            title = object_title(patent["class_code"], patent["variant"])
            docs.append(_grant_xml(
                patent["doc_number"], date, "S1", title, _locarno_raw(spec, patent),
                f"The ornamental design for a {title.lower()}, as shown and described.",
                f"D{int(patent['class_code']):>2}{100 + patent['patent_index'] % 800}",
            ))
        path = uspto_dir / f"ipg{date:%y%m%d}.xml"
        with atomic_path(path) as tmp:
            tmp.write_bytes("".join(docs).encode("utf-8"))
        paths.append(path)
    return paths


def generate_sample(spec: SampleSpec, root: str | Path) -> dict:
    """Whole corpus: root/raw/YYYY/ parts, root/raw/dataverse_listing.json, root/uspto/ipg*.xml; returns counts."""
    root = Path(root)
    parts = {year: write_sample_year(spec, year, root / "raw" / str(year)) for year in spec.years}
    listing = sample_listing(spec, root / "raw")
    with atomic_path(root / "raw" / "dataverse_listing.json") as tmp:
        tmp.write_text(json.dumps(listing, indent=1))
    xml_files = write_sample_uspto(spec, root / "uspto")
    patents = sample_patents(spec)
    faults = patents.filter(pl.col("fault").is_not_null())
    return {
        "patents": patents.height,
        "records": int(patents["n_views"].sum()),
        "drawings": int(patents["n_views"].sum()) - faults.filter(pl.col("fault") == "missing_image").height,
        "classes": patents["class_code"].n_unique(),
        "subclasses": patents["subclass_code"].n_unique(),
        "parts": {str(y): len(p) for y, p in parts.items()},
        "bytes": sum(p.stat().st_size for ps in parts.values() for p in ps),
        "xml_files": len(xml_files),
        "faults": dict(sorted(faults.group_by("fault").len().iter_rows())),
    }
