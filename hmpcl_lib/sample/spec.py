"""The sample corpus's spec and ground truth: `SampleSpec`, `sample_patents` (true codes + injected faults),
and `render_drawing` / `contact_sheet` (one patent's drawing from one view).

Injected faults (`faults=True`), deterministic and rare (well under 5 % of records), as real data has them;
`sample_patents()` names them in its `fault` column:

* ``malformed_patent_id`` - one figure record's `patentID` lost its '-' separator (`USD0836880D20190101`-like);
  its PNGs are present, the record itself is bad.
* ``missing_image``       - one figure record whose original and segmented PNGs are absent from the archives.
* ``lic_missing``         - a design patent whose grant XML has no `classification-locarno` element.
* ``lic_class_only``      - a design patent whose Locarno code is the class only (e.g. `15`), subclass unknown.

Each kind hits max(1, round(0.5 % of patents)) patents, chosen among patents with >= 2 drawings so the
patent stays usable.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl
from PIL import Image

from hmpcl_lib.sample.render import render_object
from hmpcl_lib.sample.shapes import FAMILIES, Style, _FAMILY_BY_CLASS

# --------------------------------------------------------------------------------------------------------------
# Spec and ground truth
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSpec:
    """Size and shape of the generated corpus; every output is a pure function of it."""

    years: tuple[int, ...] = (2019, 2020)
    n_classes: int = 8
    subclasses_per_class: int = 4
    patents_per_subclass: int = 10
    views: tuple[int, int] = (4, 8)  # min, max drawings per patent (inclusive)
    image_size: int = 128
    seed: int = 0
    part_size: int = 256 * 1024  # bytes per Dataverse part
    faults: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.n_classes <= len(FAMILIES):
            raise ValueError(f"n_classes must be in 1..{len(FAMILIES)}, got {self.n_classes}")
        if not 1 <= self.subclasses_per_class <= 4:
            raise ValueError(f"subclasses_per_class must be in 1..4, got {self.subclasses_per_class}")
        if self.patents_per_subclass < 1 or not self.years:
            raise ValueError("need at least one patent per subclass and one year")
        lo, hi = self.views
        if not 1 <= lo <= hi <= len(VIEWS):
            raise ValueError(f"views must satisfy 1 <= min <= max <= {len(VIEWS)}, got {self.views}")
        if self.image_size < 32 or self.part_size < 1024:
            raise ValueError("image_size must be >= 32 and part_size >= 1024")

VIEWS: tuple[tuple[str, float, float, bool], ...] = (
    # (aspect, yaw deg, pitch deg, perspective) in the order real design patents number their figures
    ("front perspective view", 35.0, 25.0, True),
    ("front elevational view", 0.0, 0.0, False),
    ("right side elevational view", 90.0, 0.0, False),
    ("top plan view", 0.0, 90.0, False),
    ("rear elevational view", 180.0, 0.0, False),
    ("left side elevational view", -90.0, 0.0, False),
    ("bottom plan view", 0.0, -90.0, False),
    ("rear perspective view", 215.0, 25.0, True),
)

GRANT_WEEKS_PER_YEAR = 8
FAULT_RATE = 0.005
FAULT_KINDS = ("malformed_patent_id", "missing_image", "lic_missing", "lic_class_only")


def _rng(spec: SampleSpec, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, *keys]))


def _tuesdays(year: int) -> list[dt.date]:
    first = dt.date(year, 1, 1)
    first += dt.timedelta(days=(1 - first.weekday()) % 7)
    return [first + dt.timedelta(weeks=w) for w in range(53) if (first + dt.timedelta(weeks=w)).year == year]


def _patent_style(spec: SampleSpec, patent_index: int) -> Style:
    r = _rng(spec, 1, patent_index)
    return Style(
        wide=float(r.uniform(0.78, 1.3)),
        tall=float(r.uniform(0.78, 1.3)),
        bulge=float(r.uniform(-0.2, 0.35)),
        decor=int(r.integers(0, 4)),
        ndecor=int(r.integers(1, 5)),
        detail=float(r.uniform()),
        detail2=float(r.uniform()),
    )


def sample_patents(spec: SampleSpec | None = None) -> pl.DataFrame:
    """Ground truth of the corpus: one row per design patent with its true Locarno codes and injected fault."""
    spec = spec or SampleSpec()
    rows = []
    index = 0
    for family in FAMILIES[: spec.n_classes]:
        for variant, (subclass, _title) in enumerate(family.subclasses[: spec.subclasses_per_class]):
            for k in range(spec.patents_per_subclass):
                r = _rng(spec, 2, index)
                rows.append(
                    dict(
                        patent_index=index,
                        year=spec.years[index % len(spec.years)],
                        class_code=family.class_code,
                        subclass_code=subclass,
                        variant=variant,
                        n_views=int(r.integers(spec.views[0], spec.views[1] + 1)),
                        week_pick=int(r.integers(0, 1 << 30)),
                        order_key=float(r.uniform()),
                    )
                )
                index += 1
    # grant dates: a few Tuesdays per year; doc numbers rise with the date as at the USPTO
    for year in spec.years:
        r = _rng(spec, 3, year)
        weeks = sorted(r.choice(len(_tuesdays(year)), size=GRANT_WEEKS_PER_YEAR, replace=False).tolist())
        in_year = sorted((row for row in rows if row["year"] == year), key=lambda x: (x["week_pick"] % len(weeks), x["order_key"]))
        number = 836_000 + (year - 2019) * 36_000 + int(r.integers(0, 500))
        for row in in_year:
            row["grant_date"] = _tuesdays(year)[weeks[row["week_pick"] % len(weeks)]]
            number += int(r.integers(1, 40))
            row["doc_number"] = f"D0{number:06d}" if number < 1_000_000 else f"D{number:07d}"
    for row in rows:
        row["patent_id"] = f"US{row['doc_number']}-{row['grant_date']:%Y%m%d}"
        row["fault"] = None
    if spec.faults:
        r = _rng(spec, 4)
        eligible = [row for row in rows if row["n_views"] >= 2]
        per_kind = max(1, round(FAULT_RATE * len(rows)))
        picked = r.choice(len(eligible), size=min(len(eligible), per_kind * len(FAULT_KINDS)), replace=False)
        for j, i in enumerate(picked.tolist()):
            eligible[i]["fault"] = FAULT_KINDS[j % len(FAULT_KINDS)]
    frame = pl.DataFrame(rows, infer_schema_length=None).select(  # faults may first appear after row 100
        "patent_id", "doc_number", "grant_date", "year", "class_code", "subclass_code", "n_views",
        "patent_index", "variant", "fault",
    )
    return frame.with_columns(pl.col("year").cast(pl.Int16), pl.col("fault").cast(pl.String)).sort("patent_index")

def contact_sheet(spec: SampleSpec, per_class: int = 8) -> Image.Image:
    """One row per main class, drawings of different subclasses, patents and views: for eyeballing the corpus."""
    patents = sample_patents(spec)
    size = spec.image_size
    sheet = Image.new("L", (size * per_class, size * spec.n_classes), 255)
    for row, family in enumerate(FAMILIES[: spec.n_classes]):
        members = patents.filter(pl.col("class_code") == family.class_code).sort("variant", "patent_index").to_dicts()
        for col in range(per_class):
            patent = members[(col * len(members)) // per_class]
            sheet.paste(render_drawing(spec, patent, col % patent["n_views"]), (col * size, row * size))
    return sheet


def render_drawing(spec: SampleSpec, patent: dict, view_index: int) -> Image.Image:
    """Segmented drawing (image_size x image_size, 'L') of one patent from one view, jittered per drawing."""
    family = _FAMILY_BY_CLASS[patent["class_code"]]
    prims = family.build(int(patent["variant"]), _patent_style(spec, int(patent["patent_index"])))
    _aspect, yaw, pitch, persp = VIEWS[view_index]
    r = _rng(spec, 5, int(patent["patent_index"]), view_index)
    big = 2 * spec.image_size  # drawn at 2x, box-filtered down: anti-aliased lines
    lw = int(r.integers(2, 5)) * big // 256 + 1
    img = render_object(
        prims, yaw + float(r.uniform(-6, 6)), pitch + float(r.uniform(-4, 4)), persp, big, lw,
        fill=float(r.uniform(0.78, 0.92)), shift=(float(r.uniform(-0.03, 0.03)), float(r.uniform(-0.03, 0.03))),
    )
    return img.reduce(2)
