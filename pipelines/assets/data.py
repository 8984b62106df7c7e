"""Data assets: raw DeepPatent2 archives → parsed drawings (per year) + Locarno codes → hierarchy → splits."""


import dagster as dg
import polars as pl

from hmpcl_lib import deeppatent2, hierarchy, locarno
from hmpcl_lib.io import write_parquet_atomic
from pipelines.metadata import counts_markdown, table_metadata
from pipelines.resources import DataStore

YEARS = [str(y) for y in range(2007, 2021)]
year_partitions = dg.StaticPartitionsDefinition(YEARS)

download_retry = dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


@dg.asset(partitions_def=year_partitions, group_name="data", retry_policy=download_retry, kinds={"python"})
def raw_archives(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """The year's DeepPatent2 archive parts (`YYYY.aa`, `YYYY.ab`, ...): downloaded from Harvard Dataverse with
    resume and md5 checks, or generated offline when the store's source is the sample corpus."""
    year = int(context.partition_key)
    dest = store.raw_dir(year)
    if store.source == "sample":
        spec = store.sample_spec()
        if year not in spec.years:
            raise dg.Failure(f"the sample corpus covers the years {list(spec.years)}, not {year}; "
                             "set HMPCL_SOURCE=deeppatent2 for real data")
        from hmpcl_lib.sample import write_sample_year

        parts = write_sample_year(spec, year, dest)
    elif store.source == "deeppatent2":
        parts = deeppatent2.download_year(year, dest, base_url=store.dataverse_url, doi=store.doi)
    else:
        raise dg.Failure(f"unknown source {store.source!r}: use 'sample' or 'deeppatent2'")
    sizes = {p.name: p.stat().st_size for p in parts}
    return dg.MaterializeResult(metadata={
        "source": store.source,
        "parts": dg.MetadataValue.json(sizes),
        "total_bytes": sum(sizes.values()),
        "path": dg.MetadataValue.path(str(dest)),
    })


@dg.asset(group_name="data", kinds={"parquet"})
def lic_codes(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """Locarno codes per design patent, streamed from USPTO weekly grant XML (DeepPatent2 does not carry them)."""
    xml_dir = store.uspto_dir()
    if store.source == "sample":
        from hmpcl_lib.sample import write_sample_uspto

        write_sample_uspto(store.sample_spec(), xml_dir)
    files = sorted(xml_dir.glob("*.xml"))
    if not files:
        raise dg.Failure(f"no USPTO grant XML files (*.xml) in {xml_dir}; set HMPCL_USPTO_XML_DIR")
    codes, quarantine = locarno.read_lic_codes(files)
    write_parquet_atomic(codes, store.lic_codes_path)
    write_parquet_atomic(quarantine, store.lic_quarantine_path)
    df, bad = pl.from_arrow(codes), pl.from_arrow(quarantine)
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.lic_codes_path),
        "xml_files": len(files),
        "quarantined": bad.height,
        "quarantine_by_reason": dg.MetadataValue.md(counts_markdown(bad, "reason")),
        "class_only_codes": int(df["subclass_code"].null_count()),
    })


@dg.asset(partitions_def=year_partitions, deps=[raw_archives], group_name="data", kinds={"parquet"})
def drawings(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """One row per DeepPatent2 drawing of the year (SPEC fields + image path); bad records go to quarantine."""
    year = int(context.partition_key)
    parts = deeppatent2.year_parts(store.raw_dir(year), year)
    extracted = deeppatent2.extract_parts(parts, store.extracted_dir(year))
    table, quarantine = deeppatent2.parse_year(deeppatent2.find_design_json(extracted, year), extracted, year,
                                               max_bad_fraction=store.max_bad_fraction)
    write_parquet_atomic(table, store.drawings_path(year))
    write_parquet_atomic(quarantine, store.quarantine_path(year))
    df, bad = pl.from_arrow(table), pl.from_arrow(quarantine)
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.drawings_path(year)),
        "patents": df["patent_id"].n_unique(),
        "quarantined": bad.height,
        "quarantine_by_reason": dg.MetadataValue.md(counts_markdown(bad, "reason")),
    })


@dg.asset(deps=[drawings, lic_codes], group_name="data", kinds={"parquet"})
def lic_hierarchy(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """drawing → patent → Locarno subclass → main class (with titles and integer labels), over every parsed year."""
    files = sorted((store.base / "parsed" / "drawings").glob("year=*.parquet"))
    if not files:
        raise dg.Failure("no parsed drawings yet: materialize `drawings` for at least one year first")
    all_drawings = pl.read_parquet(files)
    codes = pl.read_parquet(store.lic_codes_path)
    table, quarantine = hierarchy.build_lic_hierarchy(all_drawings, codes)
    write_parquet_atomic(table, store.hierarchy_path)
    write_parquet_atomic(quarantine, store.hierarchy_quarantine_path)
    df = pl.from_arrow(table)
    coverage = hierarchy.lic_coverage(all_drawings, df)
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.hierarchy_path),
        "years": dg.MetadataValue.json([f.stem.split("=")[1] for f in files]),
        "lic_coverage": dg.MetadataValue.float(coverage),
        "main_classes": df["class_code"].n_unique(),
        "subclasses": df["subclass_code"].drop_nulls().n_unique(),
        "patents": df["patent_id"].n_unique(),
        "drawings_per_class": dg.MetadataValue.md(counts_markdown(df, "class_code")),
        "quarantined": pl.from_arrow(quarantine).height,
    })


class SplitConfig(dg.Config):
    seed: int = 0
    train_fraction: float = 0.7
    val_fraction: float = 0.1
    test_fraction: float = 0.2


@dg.asset(deps=[lic_hierarchy], group_name="data", kinds={"parquet"})
def splits(context: dg.AssetExecutionContext, config: SplitConfig, store: DataStore) -> dg.MaterializeResult:
    """Train/val/test by patent (seeded, stable); in test each patent's first drawing is the query."""
    hier = pl.read_parquet(store.hierarchy_path)
    table = hierarchy.build_splits(hier, seed=config.seed,
                                   fractions=(config.train_fraction, config.val_fraction, config.test_fraction))
    write_parquet_atomic(table, store.splits_path)
    df = pl.from_arrow(table)
    by = df.group_by("split", "role").agg(pl.len().alias("drawings"), pl.col("patent_id").n_unique().alias("patents"))
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.splits_path),
        "by_split": dg.MetadataValue.md(counts_markdown(df, "role")),
        "patents_by_split": dg.MetadataValue.json({r["split"]: r["patents"] for r in by.filter(
            pl.col("role") != "gallery").iter_rows(named=True)}),
    })
