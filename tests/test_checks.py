"""Every asset check in pipelines/defs/checks.py, passing on good tables and failing on crafted bad ones.

The checks are invoked directly (asset checks are callable) against a DataStore rooted in tmp_path, whose Parquet
files are written here with the project's Arrow schemas.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from hmpcl_lib import schemas
from hmpcl_lib.io import write_parquet_atomic
from pipelines.defs import checks
from pipelines.defs.assets.retrieval import Benchmark
from pipelines.defs.resources import DataStore

# patent -> (main class, subclass, split, number of drawings)
PATENTS = {
    "USD0000001-20190101": ("01", "01-01", "train", 2),
    "USD0000002-20190101": ("01", "01-02", "val", 1),
    "USD0000003-20190101": ("02", "02-01", "test", 2),
    "USD0000004-20190101": ("02", None, "test", 3),
}


def _write(df: pl.DataFrame, schema: pa.Schema, path: Path) -> None:
    write_parquet_atomic(df.select(schema.names).to_arrow().cast(schema), path)


def hierarchy_frame(image_dir: Path) -> pl.DataFrame:
    rows = []
    for p, (klass, sub, _, n) in PATENTS.items():
        for fig in range(1, n + 1):
            rows.append({"drawing_id": f"{p}-D{fig:05d}", "patent_id": p, "figid": fig,
                         "image_path": str(image_dir / f"{p}-D{fig:05d}.png"), "class_code": klass,
                         "class_title": f"class {klass}", "subclass_code": sub,
                         "subclass_title": None if sub is None else f"subclass {sub}", "lic_edition": "11",
                         "known_subclass": None if sub is None else True, "mapped_subclass_code": sub,
                         "lic_source": "uspto_xml", "lic_xml_code": sub or klass})
    df = pl.DataFrame(rows)
    return df.with_columns(
        class_label=pl.col("class_code").rank("dense").cast(pl.Int32) - 1,
        subclass_label=(pl.col("subclass_code").rank("dense").cast(pl.Int32) - 1).fill_null(-1),
        patent_label=pl.col("patent_id").rank("dense").cast(pl.Int32) - 1,
    )


def splits_frame(hierarchy: pl.DataFrame) -> pl.DataFrame:
    split = pl.col("patent_id").replace_strict({p: v[2] for p, v in PATENTS.items()})
    first = pl.col("drawing_id") == pl.col("drawing_id").min().over("patent_id")
    return hierarchy.select("drawing_id", "patent_id").with_columns(split=split).with_columns(
        role=pl.when(pl.col("split") != "test").then(pl.col("split"))
        .when(first).then(pl.lit("query")).otherwise(pl.lit("gallery")))


def drawings_frame(drawing_ids: list[str], image_paths: list[str] | None = None) -> pl.DataFrame:
    """A drawings table with the ids (and image paths) filled and every other column of the schema null (all the
    checks read)."""
    df = pl.DataFrame({"drawing_id": drawing_ids, "image_path": image_paths or [None] * len(drawing_ids)},
                      schema={"drawing_id": pl.String, "image_path": pl.String})
    return df.with_columns([pl.lit(None).alias(n) for n in schemas.DRAWINGS.names if n not in df.columns])


@pytest.fixture
def store(tmp_path: Path) -> DataStore:
    """A consistent data root: drawings (2019), hierarchy with images on disk, splits."""
    store = DataStore(root=str(tmp_path / "data"))
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    hier = hierarchy_frame(image_dir)
    for path in hier["image_path"]:
        Path(path).write_bytes(b"\x89PNG\r\n\x1a\n")
    _write(hier, schemas.LIC_HIERARCHY, store.layout.hierarchy_path)
    _write(drawings_frame(hier["drawing_id"].to_list(), hier["image_path"].to_list()), schemas.DRAWINGS,
           store.layout.drawings_path(2019))
    _write(splits_frame(hier), schemas.SPLITS, store.layout.splits_path)
    return store


def hierarchy(store: DataStore) -> pl.DataFrame:
    return pl.read_parquet(store.layout.hierarchy_path)


def rewrite_hierarchy(store: DataStore, df: pl.DataFrame, schema: pa.Schema = schemas.LIC_HIERARCHY) -> None:
    _write(df, schema, store.layout.hierarchy_path)


def rewrite_splits(store: DataStore, df: pl.DataFrame) -> None:
    _write(df, schemas.SPLITS, store.layout.splits_path)


def meta(result: dg.AssetCheckResult, key: str):
    value = result.metadata[key]
    return getattr(value, "value", getattr(value, "data", value))


def test_the_crafted_store_passes_every_data_check(store):
    for check in (checks.hierarchy_schema_and_counts, checks.unique_drawing_ids, checks.images_exist,
                  checks.lic_coverage_ratio, checks.no_patent_in_two_splits, checks.test_split_has_queries):
        result = check(store=store)
        assert result.passed, (check.check_key.name, result.metadata)


def test_blocking_and_severity_declared():
    """Bad data must not flow on: every check blocks except the model-quality warning."""
    for check in checks.ALL_CHECKS:
        (spec,) = check.check_specs
        assert spec.blocking == (check is not checks.fine_tuning_beats_pretrained), spec.name
    assert len(checks.ALL_CHECKS) == 10


# ------------------------------------------------------------------------------------------------ lic_hierarchy

def test_hierarchy_schema_missing_column_fails(store):
    rewrite_hierarchy(store, hierarchy(store).drop("subclass_title"),
                      pa.schema([f for f in schemas.LIC_HIERARCHY if f.name != "subclass_title"]))
    result = checks.hierarchy_schema_and_counts(store=store)
    assert not result.passed and result.severity == dg.AssetCheckSeverity.ERROR
    assert "missing column subclass_title" in meta(result, "problems")


def test_hierarchy_schema_wrong_type_fails(store):
    df = hierarchy(store).with_columns(pl.col("class_label").cast(pl.Int64))
    write_parquet_atomic(df.to_arrow(), store.layout.hierarchy_path)
    result = checks.hierarchy_schema_and_counts(store=store)
    assert not result.passed
    assert "class_label: int64 != int32" in meta(result, "problems")


def test_hierarchy_single_class_or_empty_fails(store):
    one_class = hierarchy(store).with_columns(class_code=pl.lit("01"))
    rewrite_hierarchy(store, one_class)
    result = checks.hierarchy_schema_and_counts(store=store)
    assert not result.passed and "fewer than 2 main classes" in meta(result, "problems")

    rewrite_hierarchy(store, hierarchy(store).head(0))
    result = checks.hierarchy_schema_and_counts(store=store)
    assert not result.passed and "no rows" in meta(result, "problems") and meta(result, "rows") == 0


def test_duplicate_drawing_ids_fail(store):
    df = hierarchy(store)
    rewrite_hierarchy(store, pl.concat([df, df.head(1)]))
    result = checks.unique_drawing_ids(store=store)
    assert not result.passed
    assert meta(result, "duplicates") == 1
    assert meta(result, "examples") == [df["drawing_id"][0]]


def test_missing_image_fails_and_names_it(store):
    gone = hierarchy(store)["image_path"][2]
    Path(gone).unlink()
    result = checks.images_exist(store=store)
    assert not result.passed
    assert meta(result, "missing") == 1 and meta(result, "checked") == 8
    assert meta(result, "examples") == [gone]


def test_low_lic_coverage_fails_and_threshold_is_configurable(store):
    ids = hierarchy(store)["drawing_id"].to_list()
    uncoded = [f"USD0999999-20190101-D{i:05d}" for i in range(1, 9)]  # parsed drawings without a Locarno code
    _write(drawings_frame(ids + uncoded), schemas.DRAWINGS, store.layout.drawings_path(2019))
    result = checks.lic_coverage_ratio(store=store)
    assert not result.passed
    assert meta(result, "coverage") == pytest.approx(0.5) and meta(result, "threshold") == pytest.approx(0.9)

    lenient = DataStore(root=store.root, min_lic_coverage=0.5)
    assert checks.lic_coverage_ratio(store=lenient).passed


def test_lic_coverage_counts_every_parsed_year(store):
    _write(drawings_frame([f"USD0888888-20200107-D{i:05d}" for i in range(1, 4)]), schemas.DRAWINGS,
           store.layout.drawings_path(2020))
    result = checks.lic_coverage_ratio(store=store)
    assert not result.passed and meta(result, "coverage") == pytest.approx(8 / 11)


# ------------------------------------------------------------------------------------------------ splits

def test_patent_leaking_into_two_splits_fails(store):
    leaked = "USD0000001-20190101"
    df = pl.read_parquet(store.layout.splits_path).with_columns(
        split=pl.when(pl.col("drawing_id") == f"{leaked}-D00002").then(pl.lit("test")).otherwise(pl.col("split")))
    rewrite_splits(store, df)
    result = checks.no_patent_in_two_splits(store=store)
    assert not result.passed
    assert meta(result, "leaking_patents") == 1 and meta(result, "examples") == [leaked]


def test_test_patent_with_two_queries_fails(store):
    df = pl.read_parquet(store.layout.splits_path).with_columns(
        role=pl.when(pl.col("split") == "test").then(pl.lit("query")).otherwise(pl.col("role")))
    rewrite_splits(store, df)
    result = checks.test_split_has_queries(store=store)
    assert not result.passed
    assert sorted(meta(result, "patents_without_one_query")) == ["USD0000003-20190101", "USD0000004-20190101"]


def test_test_split_without_evaluable_query_fails(store):
    df = pl.read_parquet(store.layout.splits_path).filter(pl.col("role") != "gallery")  # only lone queries left
    rewrite_splits(store, df)
    result = checks.test_split_has_queries(store=store)
    assert not result.passed and meta(result, "evaluable_queries") == 0


def test_missing_table_is_an_error_naming_the_file(tmp_path):
    empty = DataStore(root=str(tmp_path / "nothing"))
    with pytest.raises(Exception, match="lic_hierarchy.parquet"):
        checks.unique_drawing_ids(store=empty)


# ------------------------------------------------------------------------------------------------ embeddings

def write_embeddings(path: Path, vectors: np.ndarray, float16: bool = False) -> str:
    schema = schemas.embeddings_schema(vectors.shape[1], float16)
    values = pa.array(vectors.reshape(-1).astype(np.float16 if float16 else np.float32),
                      type=schema.field("embedding").type.value_type)
    table = pa.Table.from_arrays(
        [pa.array([f"d{i}" for i in range(len(vectors))]), pa.FixedSizeListArray.from_arrays(values, vectors.shape[1])],
        schema=schema)
    write_parquet_atomic(table, path)
    return str(path)


def unit_vectors(n: int = 6, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(0).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("float16", [False, True])
def test_normalised_embeddings_pass(tmp_path, float16):
    emb = write_embeddings(tmp_path / "e.parquet", unit_vectors(), float16)
    result = checks.embeddings_report(emb)
    assert result.passed and meta(result, "rows") == 6


def test_nan_embedding_fails(tmp_path):
    v = unit_vectors()
    v[3, 2] = np.nan
    result = checks.embeddings_report(write_embeddings(tmp_path / "e.parquet", v))
    assert not result.passed
    assert meta(result, "non_finite_rows") == 1 and meta(result, "bad_norm_rows") == 0


def test_unnormalised_embedding_fails(tmp_path):
    v = unit_vectors()
    v[[0, 5]] *= 2.0
    result = checks.embeddings_report(write_embeddings(tmp_path / "e.parquet", v))
    assert not result.passed
    assert meta(result, "bad_norm_rows") == 2 and meta(result, "non_finite_rows") == 0


# ------------------------------------------------------------------------------------------------ benchmark

def benchmark(**overall) -> Benchmark:
    return Benchmark("run", "unused.parquet", overall, "fingerprint")


def test_metrics_in_range_pass():
    result = checks.metrics_in_unit_range(retrieval_benchmark=benchmark(
        patent_map=0.5, patent_recall_at_1=0.0, graded_ndcg_at_10=1.0, n_queries=40, n_excluded=2))
    assert result.passed


@pytest.mark.parametrize("bad", [{"patent_map": 1.2}, {"class_map_at_100": -0.1}, {"patent_mrr_at_10": float("nan")}])
def test_metrics_out_of_range_fail(bad):
    result = checks.metrics_in_unit_range(retrieval_benchmark=benchmark(**{"patent_map": 0.5, "n_queries": 40, **bad}))
    assert not result.passed
    assert list(meta(result, "out_of_range")) == list(bad)


def test_benchmark_without_queries_fails():
    assert not checks.metrics_in_unit_range(retrieval_benchmark=benchmark(patent_map=0.5, n_queries=0)).passed
    assert not checks.metrics_in_unit_range(retrieval_benchmark=benchmark(patent_map=0.5)).passed


def comparison(**patent_map: float) -> pl.DataFrame:
    return pl.DataFrame({"model": list(patent_map), "patent_map": list(patent_map.values())})


def test_fine_tuned_better_than_pretrained_passes():
    result = checks.fine_tuning_beats_pretrained(
        model_comparison=comparison(pretrained=0.30, baseline=0.45, hierarchical=0.55))
    assert result.passed and meta(result, "worse_than_pretrained") == {}


def test_fine_tuned_worse_than_pretrained_warns():
    result = checks.fine_tuning_beats_pretrained(
        model_comparison=comparison(pretrained=0.50, baseline=0.40, hierarchical=0.55))
    assert not result.passed
    assert result.severity == dg.AssetCheckSeverity.WARN
    assert meta(result, "worse_than_pretrained") == {"baseline (deeppatent)": {"patent_map": 0.40}}


def test_fine_tuned_worse_on_recall_under_leave_one_out_warns():
    table = pl.DataFrame({"model": ["pretrained", "hierarchical"] * 2,
                          "protocol": ["deeppatent"] * 2 + ["leave_one_out"] * 2,
                          "patent_map": [0.3, 0.4, 0.2, 0.3], "patent_recall_at_1": [0.5, 0.6, 0.45, 0.40]})
    result = checks.fine_tuning_beats_pretrained(model_comparison=table)
    assert not result.passed
    assert meta(result, "worse_than_pretrained") == {"hierarchical (leave_one_out)": {"patent_recall_at_1": 0.40}}


# ------------------------------------------------------------------------------------------------ decoded_drawings

def test_pixel_store_check_passes_then_catches_a_drawing_changed_after_decoding(store):
    from PIL import Image

    from pipelines.defs.assets.data import decoded_drawings

    for path in hierarchy(store)["image_path"]:
        Image.new("L", (40, 30), 255).save(path)
    instance, resources = dg.DagsterInstance.ephemeral(), {"store": store}
    run_config = {"ops": {"decoded_drawings": {"config": {"image_size": 32}}}}
    first = dg.materialize([decoded_drawings, checks.pixel_store_matches_drawings], resources=resources,
                           instance=instance, run_config=run_config, partition_key="2019")
    assert first.success
    assert {e.asset_check_key.name: e.passed for e in first.get_asset_check_evaluations()} == {
        "pixel_store_matches_drawings": True}
    Image.new("L", (40, 31), 0).save(hierarchy(store)["image_path"][0])  # rewritten after the store was built
    # the check's own report on the store the run recorded (Dagster runs a check alone only unpartitioned)
    path = first.get_asset_materialization_events()[0].materialization.metadata["path"].value
    evaluation = checks.pixel_store_report(store, "2019", path)
    assert not evaluation.passed
    assert "changed" in str(evaluation.metadata["problems"].value)
