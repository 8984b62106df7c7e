"""DeepPatent2 on disk, one year at a time: the downloaded parts, extracted, parsed and written (`build_year`).

A year is tens of GB of PNG plus JSON arrays of hundreds of MB. The HTTP side (listing, resumable download) lives in
`hmpcl_lib.sources.dataverse`; container detection, reassembly, extraction and the per-year lock in
`hmpcl_lib.sources.archives`; streaming and validating the records in `hmpcl_lib.sources.records`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from hmpcl_lib.errors import InputError
from hmpcl_lib.io import write_parquet_atomic
from hmpcl_lib.sources.archives import RECORDS_PATTERNS, ExtractedYear, extract_parts, year_lock
from hmpcl_lib.sources.dataverse import check_part_sequence, suffix_index
from hmpcl_lib.sources.records import ParsedYear, parse_year


def year_parts(raw_dir: str | os.PathLike, year: int) -> list[Path]:
    """The downloaded parts `YYYY.aa`, `YYYY.ab`, ... in `raw_dir`, in order (a gap is an InputError)."""
    parts = {p.suffix[1:]: p for p in Path(raw_dir).glob(f"{year}.??") if re.fullmatch(r"[a-z]{2}", p.suffix[1:])}
    check_part_sequence(list(parts), year, source=str(raw_dir))
    return [parts[s] for s in sorted(parts, key=suffix_index)]


def build_year(
    year: int,
    raw_dir: str | os.PathLike,
    extracted_dir: str | os.PathLike,
    drawings_path: str | os.PathLike,
    quarantine_path: str | os.PathLike,
    **parse_options: Any,
) -> tuple[ExtractedYear, ParsedYear]:
    """The `drawings` asset without Dagster: under the year's lock, extract the downloaded parts (reused when
    already done from the same parts), parse every records file and write both tables atomically."""
    with year_lock(raw_dir):
        extracted = extract_parts(year_parts(raw_dir, year), Path(extracted_dir))
        if not extracted.records:
            raise InputError(f"no per-figure records file ({' or '.join(RECORDS_PATTERNS)})", str(extracted.root))
        parsed = parse_year(extracted.records, extracted.root, year, **parse_options)
        write_parquet_atomic(parsed.drawings, drawings_path)
        write_parquet_atomic(parsed.quarantine, quarantine_path)
    return extracted, parsed
