"""The pipeline at real sizes: a DeepPatent2-shaped corpus of N drawings through the real Dagster assets, per stage
wall seconds, peak memory, bytes written and drawings/s, the growth exponent per stage, a plot and a 2.7M projection.

For each N the harness writes a corpus in DeepPatent2's real layout (per year: Dataverse byte parts `YYYY.aa, .ab…`
that join into a ZIP holding `design{YYYY}.json` and `Segmented.tar.gz` of PNGs; USPTO weekly grant XML
`ipgYYMMDD.xml` for every patent), serves the parts from a local Dataverse API on loopback, and materializes the
assets one process each (so the peak memory printed, VmHWM, is that stage's) in one Dagster instance and one MLflow
store per N, exactly as `make run` does on the sample but with `HMPCL_SOURCE=deeppatent2`:

    raw_archives (download, per year) → drawings (extract + parse, per year) → decoded_drawings (per year) →
    lic_codes → lic_hierarchy → splits → trained_encoder (a short training: not part of the curve) →
    corpus_embeddings (per year) → gallery_index → retrieval_benchmark (both protocols) → champion_model

A per-year stage's seconds are the sum over its years and its peak memory the largest year's (one process each).

Every PNG is a byte copy of one of `--pool` drawings rendered by the sample generator, by default as drawing sheets of
USPTO's size (`--drawings sheet`: bilevel 1-bit PNG, 1,000-2,000 px wide on a page 1.4 times as tall; `--drawings
sample` is the generator's 384 px grey PNG, what docs/SCALE.md's 2026-12-03 tables used) (parsing and indexing
cost does not depend on the picture, decoding does; the labels do not match the pictures, so the benchmark's figures here are cost,
not quality). Above `--real-encoder-max` drawings the encoder is a cheap stand-in (`--standin`, random weights, same
128 px pixel store and 256-d head) so that index and benchmark see N real-sized vectors; the real encoder's cost at
that N is computed from its measured rate.

    .venv/bin/python benchmarks/scale_bench.py --sizes 10000 30000 100000 300000 --plot docs/img/scale.png
    make scale SIZES="2000 6000"                                                        # the trend in a few minutes
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import http.server
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

YEARS = (2017, 2018, 2019, 2020)
STAGES = ["raw_archives", "drawings", "decoded_drawings", "lic_codes", "lic_hierarchy", "splits", "trained_encoder",
          "corpus_embeddings", "gallery_index", "retrieval_benchmark", "champion_model"]
PER_YEAR = {"raw_archives", "drawings", "decoded_drawings", "corpus_embeddings"}  # one run per year partition
NOT_IN_CURVE = {"trained_encoder"}  # a few steps only: training's rate per image is measured by train_throughput.py
DOI = "doi:10.7910/DVN/UG4SBD"
PART_BYTES = 64 << 20
SHORT_TRAINING = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 32, "log_every": 1}
REAL_SIZE = 2_700_000
# stages whose algorithm costs more than linear: the projection uses this exponent (an upper bound) when it exceeds
# the measured one
ALGORITHMIC = {"retrieval_benchmark": (2.0, "exact search: queries x gallery, both ∝ N"),
               "gallery_index": (1.5, "IVF: N vectors x nlist lists, nlist ∝ √N")}


# ---------------------------------------------------------------------------------------------------- the corpus


DRAWINGS = ("sheet", "sample")  # the corpus's drawings: USPTO sheet size (default) or the sample generator's own


def render_pool(size: int, png_size: int, seed: int = 0, drawings: str = "sample") -> list[bytes]:
    """`size` distinct PNGs of the sample generator (patents of every class, their views in turn). "sample": square
    grey PNGs of `png_size` px, as `make run` uses (≈ 3.3 KB at 384 px). "sheet": drawing sheets as USPTO publishes
    them (issue 29): the view drawn at 1,000-2,000 px on a portrait page 1.4 times as tall, bilevel, saved as 1-bit
    PNG (tens of KB, like DeepPatent2's PNGs; `png_size` is then ignored)."""
    from PIL import Image

    from hmpcl_lib.sample import SampleSpec, render_drawing, sample_patents

    if drawings not in DRAWINGS:
        raise ValueError(f"drawings must be one of {DRAWINGS}, got {drawings!r}")
    rng = random.Random(seed)
    spec = SampleSpec(image_size=png_size, seed=seed, patents_per_subclass=max(1, math.ceil(size / 32 / 6)))
    pool = []
    for patent in sample_patents(spec).iter_rows(named=True):
        for view in range(patent["n_views"]):
            buf = io.BytesIO()
            if drawings == "sample":
                render_drawing(spec, patent, view).save(buf, format="PNG")
            else:
                side = rng.randrange(1000, 2001)
                sheet_spec = SampleSpec(image_size=side, seed=seed, patents_per_subclass=spec.patents_per_subclass)
                page = Image.new("L", (side, int(side * 1.4)), 255)
                page.paste(render_drawing(sheet_spec, patent, view).convert("L"), (0, int(side * 0.2)))
                page.point(lambda v: 255 if v >= 128 else 0).convert("1").save(buf, format="PNG", optimize=True)
            pool.append(buf.getvalue())
            if len(pool) == size:
                return pool
    return pool


class _PartWriter(io.RawIOBase):
    """A write-only stream cut into Dataverse parts `YYYY.aa, .ab…` of `part_bytes` each."""

    def __init__(self, folder: Path, year: int, part_bytes: int):
        self.folder, self.year, self.part_bytes = folder, year, part_bytes
        self.paths: list[Path] = []
        self._file, self._left, self.position = None, 0, 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            if self._left == 0:
                self._next()
            n = min(self._left, len(view) - done)
            self._file.write(view[done:done + n])
            self._left -= n
            done += n
        self.position += done
        return done

    def _next(self) -> None:
        if self._file:
            self._file.close()
        i = len(self.paths)
        path = self.folder / f"{self.year}.{chr(97 + i // 26)}{chr(97 + i % 26)}"
        self.paths.append(path)
        self._file, self._left = open(path, "wb"), self.part_bytes

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        super().close()


def build_corpus(root: Path, n: int, pool: list[bytes], years=YEARS, seed: int = 0,
                 part_bytes: int = PART_BYTES) -> dict:
    """N drawings over `years` under root/dataverse/YYYY/ (parts) and root/uspto/ (weekly grant XML); streamed, so
    memory stays at one patent's records. Locarno codes only in the XML (the join `lic_hierarchy` does)."""
    from hmpcl_lib.sample.spec import _tuesdays  # the grant weeks the sample generator uses
    from hmpcl_lib.sample.writers import _grant_xml
    from hmpcl_lib.taxonomy.locarno import load_taxonomy

    rng = random.Random(seed)
    subclasses = load_taxonomy()["subclass_code"].drop_nulls().unique().sort().to_list()
    weights = [1 / (1 + int(s[:2]) % 11) for s in subclasses]  # uneven classes, as in the real data
    per_year = [n // len(years) + (i < n % len(years)) for i in range(len(years))]
    number, patents, stats = 700_000, 0, {"part_bytes": 0, "xml_bytes": 0, "parts": 0}
    (root / "uspto").mkdir(parents=True, exist_ok=True)
    for year, count in zip(years, per_year):
        folder = root / "dataverse" / str(year)
        folder.mkdir(parents=True, exist_ok=True)
        weeks = {w: [] for w in _tuesdays(year)}
        stream = _PartWriter(folder, year, part_bytes)
        with zipfile.ZipFile(stream, "w", allowZip64=True) as archive:
            records = open(folder / "records.json.tmp", "wb")  # one member open at a time: records go in after
            records.write(b"[\n")
            inner = archive.open(f"{year}/Segmented.tar.gz", "w", force_zip64=True)
            gz = gzip.GzipFile(fileobj=inner, mode="wb", compresslevel=1, mtime=0)
            with gz, tarfile.open(fileobj=gz, mode="w|") as tar:
                written = 0
                while written < count:
                    number += 1
                    grant = rng.choice(list(weeks))
                    patent_id = f"USD{number:07d}-{grant:%Y%m%d}"
                    weeks[grant].append((f"D{number:07d}", rng.choices(subclasses, weights)[0]))
                    patents += 1
                    for fig in range(1, min(rng.randint(4, 8), count - written) + 1):
                        stem = f"{patent_id}-D{fig:05d}"
                        record = {"id": written, "patentID": patent_id, "patentdate": f"{grant:%Y%m%d}", "figid": 1,
                                  "caption": f"FIG. {fig} is a view of the design;", "object": "article",
                                  "aspect": "view", "figure_file": f"{stem}.png", "subfigure_file": f"{stem}_1.png",
                                  "object_title": "Article", "x_figure": 10, "y_figure": 12, "w_figure": 300,
                                  "h_figure": 400, "W_label": 0.0439147, "H_label": 0.02, "L_label": 0.4,
                                  "T_label": 0.9}
                        records.write(((",\n" if written else "") + json.dumps(record)).encode())
                        png = pool[rng.randrange(len(pool))]
                        info = tarfile.TarInfo(f"Segmented/{stem}_1.png")
                        info.size, info.mtime, info.mode = len(png), 1_600_000_000, 0o644
                        tar.addfile(info, io.BytesIO(png))
                        written += 1
            inner.close()
            records.write(b"\n]\n")
            records.close()
            archive.write(records.name, f"{year}/design{year}.json", compress_type=zipfile.ZIP_DEFLATED)
            os.unlink(records.name)
        stream.close()
        stats["parts"] += len(stream.paths)
        stats["part_bytes"] += sum(p.stat().st_size for p in stream.paths)
        for grant, docs in weeks.items():
            if docs:
                path = root / "uspto" / f"ipg{grant:%y%m%d}.xml"
                path.write_text("".join(_grant_xml(d, grant, "S1", "Article", code, "The ornamental design.",
                                                   "D 6334") for d, code in docs))
                stats["xml_bytes"] += path.stat().st_size
    return {**stats, "drawings": n, "patents": patents, "years": list(years)}


def dataverse_listing(folder: Path) -> dict:
    """The Dataverse dataset JSON of every part under folder/YYYY/ (MD5 checksums, as Harvard lists them)."""
    files = []
    for i, path in enumerate(sorted(folder.glob("*/*.??"))):
        with open(path, "rb") as f:
            md5 = hashlib.file_digest(f, "md5").hexdigest()
        files.append({"label": path.name, "restricted": False, "dataFile": {
            "id": 9_000_000 + i, "filename": path.name, "filesize": path.stat().st_size,
            "md5": md5, "checksum": {"type": "MD5", "value": md5}, "_path": str(path)}})
    return {"status": "OK", "data": {"id": 1, "latestVersion": {"versionState": "RELEASED", "files": files}}}


class LocalDataverse:
    """The two Dataverse API calls hmpcl makes (listing, file access), served from disk on 127.0.0.1."""

    def __init__(self, folder: Path):
        listing = dataverse_listing(folder)
        paths = {f["dataFile"]["id"]: f["dataFile"].pop("_path") for f in listing["data"]["latestVersion"]["files"]}
        body = json.dumps(listing).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.startswith("/api/datasets/"):
                    self._send(io.BytesIO(body), len(body))
                elif self.path.startswith("/api/access/datafile/"):
                    path = paths.get(int(self.path.rsplit("/", 1)[1]))
                    if path is None:
                        self.send_error(404)
                        return
                    with open(path, "rb") as f:
                        self._send(f, os.path.getsize(path))
                else:
                    self.send_error(404)

            def _send(self, f, size: int) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                shutil.copyfileobj(f, self.wfile, 1 << 20)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------------------------------- the stages


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def stage_child(asset: str, partition: str | None, run_config: dict) -> None:
    """Materialize one asset (one partition) in this process and print its cost as one JSON line."""
    import logging
    import resource

    import dagster as dg

    logging.basicConfig(level=logging.WARNING)
    from pipelines.definitions import defs
    import torch  # noqa: F401  (most stages import it: part of the baseline, not of the work)

    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey(asset)], partition_key=partition,
        run_config=run_config, raise_on_error=False)
    seconds = time.perf_counter() - started
    meta = {}
    for event in result.get_asset_materialization_events():
        for key, value in (event.materialization.metadata or {}).items():
            if isinstance(value.value, (int, float, str)) and len(str(value.value)) < 200:
                meta[key] = value.value
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB: the Pipes training process
    print("STAGE " + json.dumps({"ok": result.success, "seconds": seconds, "vmhwm_kib": _status_kib("VmHWM"),
                                 "baseline_kib": baseline,
                                 "children_maxrss_kib": children, "meta": meta}), flush=True)


def _tree_bytes(*folders: Path) -> int:
    total = 0
    for folder in folders:
        for base, _, files in os.walk(folder):
            for name in files:
                try:
                    total += os.lstat(os.path.join(base, name)).st_size
                except OSError:
                    pass
    return total


def run_stage(asset: str, partition: str | None, run_config: dict, env: dict, written_in: list[Path],
              log: Path, kill_after: float | None = None) -> dict:
    """One asset (one partition) in its own process; with `kill_after`, SIGKILL it after that many seconds (a lost
    pod) and return {"killed": True, "seconds": ...} instead of its cost."""
    before = _tree_bytes(*written_in)
    command = [sys.executable, __file__, "_stage", asset, "--partition", partition or "",
               "--run-config", json.dumps(run_config)]
    with open(log, "a") as out:
        out.write(f"\n$ {asset} {partition or ''}{' (killed after %.0f s)' % kill_after if kill_after else ''}\n")
        out.flush()
        if kill_after is not None:
            started = time.perf_counter()
            child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=out, cwd=REPO)
            try:
                child.wait(timeout=kill_after)
                raise SystemExit(f"{asset} {partition or ''} ended before it could be killed; see {log}")
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            return {"killed": True, "seconds": time.perf_counter() - started}
        proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=out, text=True, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("STAGE ")]
    if proc.returncode or not lines or not json.loads(lines[-1][6:])["ok"]:
        raise SystemExit(f"{asset} {partition or ''} failed (exit {proc.returncode}); see {log}")
    cost = json.loads(lines[-1][6:])
    cost["bytes_written"] = _tree_bytes(*written_in) - before
    return cost


def run_size(n: int, work: Path, pool: list[bytes], real_encoder_max: int, standin: str) -> dict:
    home = work / f"n{n}"
    if home.exists():
        shutil.rmtree(home)
    src, data, dagster_home = home / "source", home / "data", home / "dagster"
    dagster_home.mkdir(parents=True)
    (dagster_home / "dagster.yaml").symlink_to(REPO / "dagster_home" / "dagster.yaml")  # as `make setup` links it
    started = time.perf_counter()
    corpus = build_corpus(src, n, pool)
    corpus["seconds"] = time.perf_counter() - started
    server = LocalDataverse(src / "dataverse")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "HMPCL_DATA_ROOT": str(data),
           "HMPCL_SOURCE": "deeppatent2", "HMPCL_USPTO_XML_DIR": str(src / "uspto"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}", "HMPCL_MLFLOW_ARTIFACTS": str(home / "mlartifacts"),
           "PYTHONUNBUFFERED": "1"}
    training = dict(SHORT_TRAINING)
    if n > real_encoder_max:
        training.update(backbone=standin, weights="none")
    stages = {}
    try:
        for asset in STAGES:
            config: dict = {"resources": {"store": {"config": {"dataverse_url": server.url, "doi": DOI}}}}
            if asset == "trained_encoder":
                config["ops"] = {"trained_encoder": {"config": training}}
            parts = [str(y) for y in corpus["years"]] if asset in PER_YEAR else [None]
            costs = [run_stage(asset, p, config, env, [data, home / "mlartifacts"], home / "stages.log") for p in parts]
            stages[asset] = {"seconds": sum(c["seconds"] for c in costs),
                             "peak_kib": max(max(c["vmhwm_kib"], c["children_maxrss_kib"]) for c in costs),
                             "work_kib": max(c["vmhwm_kib"] - c["baseline_kib"] for c in costs),
                             "bytes_written": sum(c["bytes_written"] for c in costs),
                             "meta": costs[-1]["meta"]}
            print(f"  N={n:,} {asset}: {stages[asset]['seconds']:.1f} s, "
                  f"{stages[asset]['peak_kib'] / 2**20:.2f} GiB peak", flush=True)
    finally:
        server.close()
    return {"n": n, "corpus": corpus, "stages": stages, "encoder": "real" if n <= real_encoder_max else standin,
            "disk": disk_forms(home)}


def disk_forms(home: Path) -> dict[str, int]:
    """Bytes of each stored form after a run: what `disk per drawing` is made of."""
    data = home / "data"
    return {
        "archive parts (downloaded)": _tree_bytes(data / "raw"),
        "extracted PNGs + records": _tree_bytes(data / "extracted"),
        "Parquet tables": _tree_bytes(data / "parsed"),
        "pixel store": _tree_bytes(data / "pixels"),
        "embeddings": _tree_bytes(data / "embeddings"),
        "index": _tree_bytes(data / "index"),
        "USPTO XML": _tree_bytes(home / "source" / "uspto"),
    }


# ---------------------------------------------------------------------------------------------------- the report


def exponent(results: list[dict], stage: str, key: str) -> float | None:
    """log-log slope of `key` between the two largest N."""
    a, b = results[-2], results[-1]
    ya, yb = a["stages"][stage][key], b["stages"][stage][key]
    if ya <= 0 or yb <= 0:
        return None
    return math.log(yb / ya) / math.log(b["n"] / a["n"])


def report(results: list[dict], out: Path) -> str:
    lines = []
    for r in results:
        n = r["n"]
        lines += [f"\n**N = {n:,} drawings** ({r['corpus']['patents']:,} patents, {len(r['corpus']['years'])} years; "
                  f"encoder: {r['encoder']}; corpus written in {r['corpus']['seconds']:.0f} s)\n",
                  "| stage | wall s | peak memory MiB | of which the work MiB | written MiB | drawings/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for stage, c in r["stages"].items():
            mark = " (not in the curve)" if stage in NOT_IN_CURVE else ""
            lines.append(f"| {stage}{mark} | {c['seconds']:.1f} | {c['peak_kib'] / 1024:,.0f} | "
                         f"{c['work_kib'] / 1024:,.0f} | "
                         f"{c['bytes_written'] / 2**20:,.1f} | {n / c['seconds']:,.0f} |")
    if len(results) >= 2:
        a, b = results[-2]["n"], results[-1]["n"]
        lines += [f"\n**Growth exponents between N = {a:,} and {b:,}** (log-log slope; 1 = linear)\n",
                  "| stage | time | peak memory | the work's memory | bytes written |", "|---|---:|---:|---:|---:|"]
        for stage in results[-1]["stages"]:
            if stage in NOT_IN_CURVE:
                continue
            e = [exponent(results, stage, k) for k in ("seconds", "peak_kib", "work_kib", "bytes_written")]
            lines.append(f"| {stage} | " + " | ".join("—" if x is None else f"{x:.2f}" for x in e) + " |")
    last = results[-1]
    lines += [f"\n**Disk per drawing** (N = {last['n']:,}) and at {REAL_SIZE:,} drawings\n",
              "| stored form | bytes/drawing | GiB at 2.7M |", "|---|---:|---:|"]
    for form, size in last["disk"].items():
        lines.append(f"| {form} | {size / last['n']:,.0f} | {size / last['n'] * REAL_SIZE / 2**30:,.1f} |")
    lines += projection(results)
    text = "\n".join(lines)
    (out / "scale.md").write_text(text + "\n")
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    return text


def real_encoder_rate(results: list[dict]) -> tuple[int, float] | None:
    """(N, drawings/s) of corpus_embeddings at the largest N embedded by the real encoder."""
    real = [r for r in results if r["encoder"] == "real"]
    if not real:
        return None
    r = real[-1]
    return r["n"], r["n"] / r["stages"]["corpus_embeddings"]["seconds"]


def projection(results: list[dict]) -> list[str]:
    """Each stage's time at 2.7M drawings on this machine: t(N_max) x (2.7M / N_max)^e, e = the measured time
    exponent but never below 1 (no stage is assumed to get cheaper per drawing) nor below the algorithm's own
    (ALGORITHMIC: an upper bound); the real encoder's time from its measured rate."""
    last = results[-1]
    lines = [f"\n**Projection to {REAL_SIZE:,} drawings on this machine** (t(N) x (2.7M / N)^e, e = max(1, measured, "
             f"algorithmic), N = {last['n']:,})\n", "| stage | t at N, s | e used | projected hours |",
             "|---|---:|---:|---:|"]
    total = 0.0
    for stage, c in last["stages"].items():
        if stage in NOT_IN_CURVE:
            continue
        algorithmic, why = ALGORITHMIC.get(stage, (1.0, ""))
        e = max(1.0, algorithmic, (exponent(results, stage, "seconds") or 1.0) if len(results) > 1 else 1.0)
        hours = c["seconds"] * (REAL_SIZE / last["n"]) ** e / 3600
        note = f" ({why}: upper bound)" if why and e == algorithmic else ""
        if stage == "corpus_embeddings" and last["encoder"] != "real" and (rate := real_encoder_rate(results)):
            hours, note = REAL_SIZE / rate[1] / 3600, f" (real encoder: {rate[1]:,.0f} drawings/s measured at N = {rate[0]:,})"
        total += hours
        lines.append(f"| {stage}{note} | {c['seconds']:.1f} | {e:.2f} | {hours:,.2f} |")
    lines.append(f"| **all stages** | | | **{total:,.1f}** |")
    return lines


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    ns = [r["n"] for r in results]
    for stage in results[-1]["stages"]:
        if stage in NOT_IN_CURVE:
            continue
        line, = left.plot(ns, [r["stages"][stage]["seconds"] for r in results], marker="o", label=stage)
        rate = real_encoder_rate(results)
        if stage == "corpus_embeddings" and rate:  # stand-in points: the real encoder's time from its rate, dashed
            stand_in = [r["n"] for r in results if r["encoder"] != "real"]
            if stand_in:
                left.plot([rate[0], *stand_in], [rate[0] / rate[1], *(n / rate[1] for n in stand_in)], "--",
                          color=line.get_color(), label="corpus_embeddings, real encoder (from its rate)")
        right.plot(ns, [r["stages"][stage]["peak_kib"] / 1024 for r in results], marker="o", label=stage)
    for ax, label in ((left, "wall seconds"), (right, "peak memory (VmHWM), MiB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("drawings (N)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    left.plot(ns, [results[0]["stages"]["decoded_drawings"]["seconds"] * n / ns[0] for n in ns], "k:",
              label="linear (slope 1)")
    left.legend(fontsize=7, loc="upper left")
    fig.suptitle("hmpcl stages vs corpus size (2 CPU cores)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 6000])
    parser.add_argument("--work", type=Path, default=REPO / "data" / "scale", help="corpora and runs (big disk)")
    parser.add_argument("--pool", type=int, default=1000, help="distinct rendered drawings the corpus copies")
    parser.add_argument("--png-size", type=int, default=384, help="rendered drawing side, px (--drawings sample)")
    parser.add_argument("--drawings", choices=DRAWINGS, default="sheet",
                        help="sheet: bilevel 1-bit PNG sheets of USPTO's size (1,000-2,000 x 1,400-2,800 px; the "
                             "default); sample: the generator's 384 px grey PNGs (docs/SCALE.md's 2026-12-03 tables)")
    parser.add_argument("--real-encoder-max", type=int, default=30_000,
                        help="above this N, embed with --standin (its cost reported; the real one's computed)")
    parser.add_argument("--standin", default="mobilenetv3_small_050", help="timm name of the cheap stand-in encoder")
    parser.add_argument("--plot", type=Path, default=None, help="the picture (default: WORK/scale.png; the README's "
                        "is docs/img/scale.png)")
    parser.add_argument("--keep", action="store_true", help="keep each N's corpus and data (default: delete)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report and plot from WORK/scale.json")
    parser.add_argument("--merge", action="store_true",
                        help="add to WORK/scale.json: the sizes run now replace the same sizes there, others stay")
    args = parser.parse_args(argv)
    print(f"$ python {' '.join(sys.argv)}\n{os.cpu_count()} cores, {datetime_now()}", flush=True)
    if args.report_only:
        results = json.loads((args.work / "scale.json").read_text())
        print(report(results, args.work))
        plot(results, args.plot or args.work / "scale.png")
        return 0
    started = time.perf_counter()
    pool = render_pool(args.pool, args.png_size, drawings=args.drawings)
    print(f"pool: {len(pool)} drawings rendered in {time.perf_counter() - started:.0f} s "
          f"({sum(map(len, pool)) / len(pool):,.0f} bytes per PNG)", flush=True)
    saved = args.work / "scale.json"
    previous = json.loads(saved.read_text()) if args.merge and saved.exists() else []
    results = [r for r in previous if r["n"] not in args.sizes]
    for n in sorted(args.sizes):
        results = sorted([*results, run_size(n, args.work, pool, args.real_encoder_max, args.standin)],
                         key=lambda r: r["n"])
        if not args.keep:
            shutil.rmtree(args.work / f"n{n}", ignore_errors=True)
        report(results, args.work)
    print(report(results, args.work))
    if len(results) >= 2:
        plot(results, args.plot or args.work / "scale.png")
        print(f"\nplot: {args.plot or args.work / 'scale.png'}")
    return 0


def datetime_now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        child = argparse.ArgumentParser()
        child.add_argument("_", help="_stage")
        child.add_argument("asset")
        child.add_argument("--partition", default="")
        child.add_argument("--run-config", default="{}")
        a = child.parse_args()
        stage_child(a.asset, a.partition or None, json.loads(a.run_config))
    else:
        sys.exit(main())
