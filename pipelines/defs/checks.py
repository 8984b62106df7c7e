"""Asset checks. Blocking ones stop bad data from flowing on; warnings flag a weak model without stopping."""


import dagster as dg
import polars as pl

from hmpcl_lib import schemas
from hmpcl_lib.taxonomy import quality
from hmpcl_lib.retrieval.embedding import read_embeddings
from hmpcl_lib.taxonomy.hierarchy import lic_coverage
from pipelines.defs.assets.data import decoded_drawings, lic_hierarchy, splits
from pipelines.defs.assets.comparison import model_comparison
from pipelines.defs.assets.retrieval import Benchmark, corpus_embeddings, retrieval_benchmark
from pipelines.defs.resources import DataStore

ERROR, WARN = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN


def _examples(values: list, n: int = 10) -> dg.MetadataValue:
    return dg.MetadataValue.json([str(v) for v in values[:n]])


@dg.asset_check(asset=lic_hierarchy, blocking=True)
def hierarchy_schema_and_counts(store: DataStore) -> dg.AssetCheckResult:
    """The table has the documented schema, rows, and at least two main classes to learn a hierarchy from."""
    df = pl.read_parquet(store.layout.hierarchy_path)
    problems = quality.schema_differences(df, schemas.LIC_HIERARCHY)
    if df.height == 0:
        problems.append("no rows")
    if df["class_code"].n_unique() < 2:
        problems.append("fewer than 2 main classes")
    return dg.AssetCheckResult(passed=not problems, severity=ERROR,
                               metadata={"problems": _examples(problems), "rows": df.height})


@dg.asset_check(asset=lic_hierarchy, blocking=True)
def unique_drawing_ids(store: DataStore) -> dg.AssetCheckResult:
    df = pl.read_parquet(store.layout.hierarchy_path, columns=["drawing_id"])
    dups = quality.duplicate_values(df, "drawing_id")
    return dg.AssetCheckResult(passed=not dups, severity=ERROR,
                               metadata={"duplicates": len(dups), "examples": _examples(dups)})


@dg.asset_check(asset=lic_hierarchy, blocking=True)
def images_exist(store: DataStore) -> dg.AssetCheckResult:
    """Every drawing's image is on disk (a seeded sample of 20k rows on large corpora)."""
    paths = pl.read_parquet(store.layout.hierarchy_path, columns=["image_path"])["image_path"].to_list()
    missing, checked = quality.missing_files(paths)
    return dg.AssetCheckResult(passed=not missing, severity=ERROR,
                               metadata={"checked": checked, "missing": len(missing), "examples": _examples(missing)})


@dg.asset_check(asset=lic_hierarchy, blocking=True)
def lic_coverage_ratio(store: DataStore) -> dg.AssetCheckResult:
    """Share of parsed drawings that got a Locarno code is at least `DataStore.min_lic_coverage`."""
    drawings = pl.read_parquet(store.layout.drawings_paths(),
                               columns=["drawing_id"])
    coverage = lic_coverage(drawings, pl.read_parquet(store.layout.hierarchy_path, columns=["drawing_id"]))
    return dg.AssetCheckResult(passed=coverage >= store.min_lic_coverage, severity=ERROR,
                               metadata={"coverage": dg.MetadataValue.float(coverage),
                                         "threshold": dg.MetadataValue.float(store.min_lic_coverage)})


def _partition_metadata(context: dg.AssetCheckExecutionContext, key: dg.AssetKey) -> dict:
    """The metadata of the latest materialization of the check's partition of `key` (this run's, when it ran)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[context.partition_key]), limit=1, ascending=False)
    return records.records[0].asset_materialization.metadata if records.records else {}


@dg.asset_check(asset=decoded_drawings, blocking=True)
def pixel_store_matches_drawings(context: dg.AssetCheckExecutionContext, store: DataStore) -> dg.AssetCheckResult:
    """The year's pixel store holds exactly the year's parsed drawings, unchanged on disk since they were decoded."""
    return pixel_store_report(store, context.partition_key,
                              _partition_metadata(context, decoded_drawings.key)["path"].value)


def pixel_store_report(store: DataStore, year: str, path: str) -> dg.AssetCheckResult:
    from hmpcl_lib.modeling.pixels import PixelStore

    report = PixelStore.open(path).verify(store.year_drawings(year), check_files=True)
    return dg.AssetCheckResult(passed=report["ok"], severity=ERROR,
                               metadata={"problems": _examples(report["problems"]), "count": report["count"],
                                         "path": dg.MetadataValue.path(report["path"])})


@dg.asset_check(asset=splits, blocking=True)
def no_patent_in_two_splits(store: DataStore) -> dg.AssetCheckResult:
    leaks = quality.leaking_patents(pl.read_parquet(store.layout.splits_path))
    return dg.AssetCheckResult(passed=not leaks, severity=ERROR,
                               metadata={"leaking_patents": len(leaks), "examples": _examples(leaks)})


@dg.asset_check(asset=splits, blocking=True)
def test_split_has_queries(store: DataStore) -> dg.AssetCheckResult:
    """One query per test patent, and at least one query with a relevant gallery item to evaluate."""
    df = pl.read_parquet(store.layout.splits_path).filter(pl.col("split") == "test")
    per_patent = df.group_by("patent_id").agg((pl.col("role") == "query").sum().alias("q"), pl.len().alias("n"))
    bad = per_patent.filter(pl.col("q") != 1)["patent_id"].to_list()
    usable = per_patent.filter(pl.col("n") > 1).height
    return dg.AssetCheckResult(passed=not bad and usable > 0, severity=ERROR,
                               metadata={"test_patents": per_patent.height, "evaluable_queries": usable,
                                         "patents_without_one_query": _examples(bad)})


@dg.asset_check(asset=corpus_embeddings, blocking=True)
def embeddings_finite_and_normalised(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """Every vector of the year's embeddings file is finite and of unit norm."""
    path = _partition_metadata(context, corpus_embeddings.key)["path"].value
    return embeddings_report(path)


def embeddings_report(path: str) -> dg.AssetCheckResult:
    _, vectors = read_embeddings(path)
    problems = quality.embedding_problems(vectors)
    return dg.AssetCheckResult(passed=problems["non_finite_rows"] == 0 and problems["bad_norm_rows"] == 0,
                               severity=ERROR, metadata={**problems, "path": dg.MetadataValue.path(path)})


@dg.asset_check(asset=retrieval_benchmark, blocking=True)
def metrics_in_unit_range(retrieval_benchmark: Benchmark) -> dg.AssetCheckResult:
    bad = quality.metrics_out_of_range(retrieval_benchmark.overall)
    return dg.AssetCheckResult(passed=not bad and retrieval_benchmark.overall.get("n_queries", 0) > 0,
                               severity=ERROR, metadata={"out_of_range": dg.MetadataValue.json(bad)})


@dg.asset_check(asset=model_comparison)
def fine_tuning_beats_pretrained(model_comparison: pl.DataFrame) -> dg.AssetCheckResult:
    """Warn when a fine-tuned model is worse than the untouched pretrained backbone on patent-level mAP or R@1,
    under any protocol of the comparison."""
    metrics = [m for m in ("patent_map", "patent_recall_at_1") if m in model_comparison.columns]
    frame = model_comparison if "protocol" in model_comparison.columns else model_comparison.with_columns(
        protocol=pl.lit("deeppatent"))
    scores, worse = {}, {}
    for row in frame.iter_rows(named=True):
        scores.setdefault(row["protocol"], {})[row["model"]] = {m: row[m] for m in metrics}
    for protocol, by_model in scores.items():
        base = by_model.get("pretrained")
        for model, values in by_model.items():
            lost = {m: v for m, v in values.items() if model != "pretrained" and base is not None and v < base[m]}
            if lost:
                worse[f"{model} ({protocol})"] = lost
    return dg.AssetCheckResult(passed=not worse, severity=WARN,
                               metadata={"scores": dg.MetadataValue.json(scores),
                                         "worse_than_pretrained": dg.MetadataValue.json(worse)})


ALL_CHECKS = [hierarchy_schema_and_counts, unique_drawing_ids, images_exist, lic_coverage_ratio, pixel_store_matches_drawings,
              no_patent_in_two_splits, test_split_has_queries, embeddings_finite_and_normalised,
              metrics_in_unit_range, fine_tuning_beats_pretrained]
