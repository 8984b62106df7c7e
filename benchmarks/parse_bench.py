"""Parse throughput and peak memory on a generated, year-sized DeepPatent2 metadata corpus.

Writes `design{YEAR}.json` (a JSON array of --records per-figure records in DeepPatent2's schema) and the
matching USPTO weekly grant files (`ipgYYMMDD.xml`, with classification-locarno), images optional, then
times `records.parse_year` (and `uspto.read_lic_codes` on the XML) each in a fresh child process, so
that the peak RSS printed is that of the parse alone.

    .venv/bin/python benchmarks/parse_bench.py --records 200000
"""

from __future__ import annotations

import argparse
import io
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ASPECTS = ["front perspective view", "front elevational view", "rear elevational view", "left side elevational view",
           "right side elevational view", "top plan view", "bottom plan view", "rear perspective view"]
OBJECTS = ["chair", "lamp", "bottle", "watch", "cup", "vase", "drill", "speaker", "table", "shoe"]


def _tuesdays(year: int) -> list[date]:
    day = date(year, 1, 1)
    day += timedelta(days=(1 - day.weekday()) % 7)
    return [day + timedelta(weeks=w) for w in range(53) if (day + timedelta(weeks=w)).year == year]


def generate(root: Path, records: int, year: int, images: bool, seed: int = 0) -> dict:
    """Write the corpus under `root`; returns its sizes. Streams to disk: generation memory stays small."""
    from hmpcl_lib.taxonomy.locarno import load_taxonomy

    rng = random.Random(seed)
    weeks = _tuesdays(year)
    subclasses = [c.replace("-", "") for c in load_taxonomy()["subclass_code"].drop_nulls().unique().sort()]
    png = b""
    if images:
        from PIL import Image

        buffer = io.BytesIO()
        Image.new("L", (16, 16), 255).save(buffer, format="PNG")
        png = buffer.getvalue()
        (root / "Original").mkdir(parents=True, exist_ok=True)
        (root / "Segmented").mkdir(parents=True, exist_ok=True)
    patents: dict[date, list[tuple[str, str]]] = {}
    written, number = 0, 800_000
    json_path = root / f"design{year}.json"
    with open(json_path, "w", encoding="utf-8") as out:
        out.write("[\n")
        while written < records:
            number += 1
            grant = weeks[number % len(weeks)]
            patent_id = f"USD{number:07d}-{grant:%Y%m%d}"
            patents.setdefault(grant, []).append((f"D{number:07d}", rng.choice(subclasses)))
            thing = rng.choice(OBJECTS)
            for fig in range(1, min(rng.randint(4, 8), records - written) + 1):
                stem = f"{patent_id}-D{fig:05d}"
                record = {
                    "id": f"{patent_id}-{fig}", "patentID": patent_id, "patentdate": f"{grant:%Y%m%d}", "figid": 1,
                    "caption": f"FIG. {fig} is a {ASPECTS[fig - 1]} of a {thing}, showing our new design;",
                    "object": thing, "aspect": ASPECTS[fig - 1], "figure_file": f"{stem}.png",
                    "subfigure_file": f"{stem}_1.png", "object_title": thing.capitalize(),
                    "x_figure": rng.randint(0, 300), "y_figure": rng.randint(0, 300), "w_figure": rng.randint(100, 900),
                    "h_figure": rng.randint(100, 900), "W_label": round(rng.uniform(0.01, 0.1), 7),
                    "H_label": round(rng.uniform(0.01, 0.1), 7), "L_label": round(rng.random(), 6),
                    "T_label": round(rng.random(), 6), "classification_national": "D6/334",
                }
                out.write((",\n" if written else "") + json.dumps(record))
                if images:
                    (root / "Segmented" / f"{stem}_1.png").write_bytes(png)
                written += 1
        out.write("\n]\n")
    xml_dir = root / "uspto"
    xml_dir.mkdir(exist_ok=True)
    for grant, docs in sorted(patents.items()):
        with open(xml_dir / f"ipg{grant:%y%m%d}.xml", "w", encoding="utf-8") as out:
            for doc_number, code in docs:
                out.write(_grant_xml(doc_number, grant, code))
    return {"json_bytes": json_path.stat().st_size, "patents": sum(map(len, patents.values())),
            "xml_files": len(patents), "xml_bytes": sum(p.stat().st_size for p in xml_dir.iterdir())}


def _grant_xml(doc_number: str, grant: date, code: str) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE us-patent-grant SYSTEM "us-patent-grant-v45-2014-04-03.dtd" [ ]>
<us-patent-grant lang="EN" dtd-version="v4.5 2014-04-03" file="US{doc_number}-{grant:%Y%m%d}.XML" status="PRODUCTION" id="us-patent-grant" country="US" date-produced="{grant - timedelta(days=14):%Y%m%d}" date-publ="{grant:%Y%m%d}">
<us-bibliographic-data-grant>
<publication-reference>
<document-id>
<country>US</country>
<doc-number>{doc_number}</doc-number>
<kind>S1</kind>
<date>{grant:%Y%m%d}</date>
</document-id>
</publication-reference>
<application-reference appl-type="design">
<document-id>
<country>US</country>
<doc-number>29612345</doc-number>
<date>{grant.year - 2}0801</date>
</document-id>
</application-reference>
<us-application-series-code>29</us-application-series-code>
<us-term-of-grant>
<length-of-grant>15</length-of-grant>
</us-term-of-grant>
<classification-locarno>
<edition>11</edition>
<main-classification>{code}</main-classification>
</classification-locarno>
<classification-national>
<country>US</country>
<main-classification>D 6334</main-classification>
</classification-national>
<invention-title id="d2e53">Chair</invention-title>
</us-bibliographic-data-grant>
<drawings id="DRAWINGS">
<figure id="Fig-EMI-D00000" num="00000">
<img id="EMI-D00000" he="229.95mm" wi="145.03mm" file="US{doc_number}-{grant:%Y%m%d}-D00000.TIF" alt="embedded image" img-content="drawing" img-format="tif"/>
</figure>
</drawings>
<description id="description">
<description-of-drawings>
<p id="p-0001" num="0001">FIG. 1 is a front perspective view of a chair showing our new design;</p>
</description-of-drawings>
</description>
<us-claim-statement>I claim:</us-claim-statement>
<claims id="claims">
<claim id="CLM-00001" num="00001">
<claim-text>The ornamental design for a chair, as shown and described.</claim-text>
</claim>
</claims>
</us-patent-grant>
"""


def _peak_rss_kib() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _measure(kind: str, root: Path, year: int, images: bool, batch_size: int) -> dict:
    """Run in the child: time one parse and report its peak RSS."""
    if kind == "drawings":
        from hmpcl_lib.sources.records import parse_year

        def run():
            parsed = parse_year(root / f"design{year}.json", root if images else None, year,
                                require_images=images, batch_size=batch_size)
            return parsed.drawings, parsed.quarantine
    elif kind == "lic_codes":
        from hmpcl_lib.sources.uspto import read_lic_codes

        def run():
            return read_lic_codes(sorted((root / "uspto").glob("*.xml")))
    else:  # naive reference: the whole array in one json.load

        def run():
            with open(root / f"design{year}.json", encoding="utf-8") as f:
                return json.load(f), []

    rss_before = _peak_rss_kib()
    start, cpu_start = time.perf_counter(), time.process_time()
    table, quarantine = run()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _peak_rss_kib()
    rows = len(table)
    return {"kind": kind, "rows": rows, "quarantined": len(quarantine), "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2), "rows_per_s": round(rows / seconds),
            "rss_after_imports_mb": round(rss_before / 1024), "peak_rss_mb": round(peak / 1024),
            "result_arrow_mb": round(getattr(table, "nbytes", 0) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="per-figure records to generate")
    parser.add_argument("--year", type=int, default=2019)
    parser.add_argument("--images", action="store_true", help="also write a tiny PNG per record and require them")
    parser.add_argument("--json-load", action="store_true", help="also time a naive json.load for reference")
    parser.add_argument("--batch-size", type=int, default=10_000, help="parse_year's Arrow batch size")
    parser.add_argument("--dir", type=Path, help="work here and keep the corpus (default: a temp dir, removed)")
    parser.add_argument("--reuse", action="store_true", help="with --dir: parse the corpus already there")
    parser.add_argument("--measure", choices=["drawings", "lic_codes", "json_load"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(_measure(args.measure, args.dir, args.year, args.images, args.batch_size)))
        return

    with tempfile.TemporaryDirectory(prefix="parse_bench.") as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        if not (args.reuse and (root / f"design{args.year}.json").exists()):
            sizes = generate(root, args.records, args.year, args.images)
            print(f"generated {args.records} records ({sizes['json_bytes'] / 2**20:.0f} MiB JSON), {sizes['patents']} "
                  f"patents in {sizes['xml_files']} weekly XML files ({sizes['xml_bytes'] / 2**20:.0f} MiB) "
                  f"in {time.perf_counter() - start:.1f} s under {root}")
        kinds = ["drawings", "lic_codes"] + (["json_load"] if args.json_load else [])
        for kind in kinds:
            command = [sys.executable, __file__, "--measure", kind, "--dir", str(root), "--year", str(args.year),
                       "--batch-size", str(args.batch_size)]
            result = subprocess.run(command + (["--images"] if args.images else []), capture_output=True, text=True)
            if result.returncode:
                print(f"{kind}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                sys.exit(result.returncode)
            r = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{kind:>9}: {r['rows']} rows ({r['quarantined']} quarantined) in {r['seconds']} s = "
                  f"{r['rows_per_s']} rows/s (CPU {r['cpu_seconds']} s); peak RSS {r['peak_rss_mb']} MiB "
                  f"(after imports {r['rss_after_imports_mb']} MiB, result table {r['result_arrow_mb']} MiB)")


if __name__ == "__main__":
    main()
