"""Data assets: raw DeepPatent2 archives → parsed drawings (per year) + Locarno codes → hierarchy → splits."""


import time
from pathlib import Path

import dagster as dg
import polars as pl

from hmpcl_lib.io import write_parquet_atomic
from hmpcl_lib.sources import archives, dataverse, deeppatent2, uspto
from hmpcl_lib.taxonomy import hierarchy
from hmpcl_lib.train.config import TrainConfig
from pipelines.metadata import content_metadata, counts_markdown, table_metadata
from pipelines.defs.resources import DataStore

YEARS = [str(y) for y in range(2007, 2021)]
year_partitions = dg.StaticPartitionsDefinition(YEARS)



# One retry layer: the library retries each download with backoff and resumes it (hmpcl_lib.sources.dataverse), so
# the asset has no RetryPolicy on top (that multiplied the tries: 4 asset attempts x 6 downloads).
@dg.asset(partitions_def=year_partitions, group_name="data", kinds={"python"})
def raw_archives(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """The year's DeepPatent2 archive parts (`YYYY.aa`, `YYYY.ab`, ...): downloaded from Harvard Dataverse with
    resume and checksum checks, or generated offline when the store's source is the sample corpus. The year's lock
    keeps a concurrent run of the same year from sharing the `.part` files (or extracting half-written parts)."""
    year = int(context.partition_key)
    dest = store.layout.raw_dir(year)
    if store.source not in ("sample", "deeppatent2"):
        raise dg.Failure(f"unknown source {store.source!r}: use 'sample' or 'deeppatent2'")
    with archives.year_lock(dest):
        if store.source == "sample":
            spec = store.sample_spec()
            if year not in spec.years:
                raise dg.Failure(f"the sample corpus covers the years {list(spec.years)}, not {year}; "
                                 "set HMPCL_SOURCE=deeppatent2 for real data")
            from hmpcl_lib.sample import write_sample_year

            parts = write_sample_year(spec, year, dest)
        else:
            parts = dataverse.download_year(year, dest, base_url=store.dataverse_url, doi=store.doi)
        archive_format = archives.detect_format(parts)  # of the parts joined: read from the first and last part
    sizes = {p.name: p.stat().st_size for p in parts}
    if archive_format not in archives.ARCHIVE_FORMATS:
        context.log.warning(f"{year}: the joined parts are not a zip or tar archive: {archive_format}")
    return dg.MaterializeResult(metadata={
        "source": store.source,
        "parts": dg.MetadataValue.json(sizes),
        "total_bytes": sum(sizes.values()),
        "archive_format": archive_format,
        "path": dg.MetadataValue.path(str(dest)),
    })


@dg.asset(group_name="data", kinds={"parquet"})
def lic_codes(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """Locarno codes per design patent, streamed from USPTO weekly grant files (`ipgYYMMDD.xml`, or the `.zip`
    USPTO ships, read without unpacking). Non-grant documents (`<sequence-cwu>` ...) are counted, not quarantined."""
    xml_dir = store.uspto_dir()
    if store.source == "sample":
        from hmpcl_lib.sample import write_sample_uspto

        write_sample_uspto(store.sample_spec(), xml_dir)
    files = sorted([*xml_dir.glob("*.xml"), *xml_dir.glob("*.zip")])
    if not files:
        raise dg.Failure(f"no USPTO grant files (*.xml, *.zip) in {xml_dir}; set HMPCL_USPTO_XML_DIR")
    counts: list[uspto.GrantFileCounts] = []
    codes, quarantine = uspto.read_lic_codes(files, counts=counts)
    write_parquet_atomic(codes, store.layout.lic_codes_path)
    write_parquet_atomic(quarantine, store.layout.lic_quarantine_path)
    df, bad = pl.from_arrow(codes), pl.from_arrow(quarantine)
    read = uspto.summarise_grant_counts(counts)
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.layout.lic_codes_path),
        "xml_files": len(files),
        "grants_read": read["grants"],
        "design_grants": read["design_grants"],
        "non_grant_documents_skipped": dg.MetadataValue.json(read["skipped"]),
        "per_file": dg.MetadataValue.json(read["per_file"]),
        "quarantined": bad.height,
        "quarantine_by_reason": dg.MetadataValue.md(counts_markdown(bad, "reason")),
        "class_only_codes": int(df["subclass_code"].null_count()),
    })


@dg.asset(partitions_def=year_partitions, deps=[raw_archives], group_name="data", kinds={"parquet"})
def drawings(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """One row per DeepPatent2 drawing of the year (SPEC fields + image path) from every records file of the year
    (`design*.json`, `segmentation_*.json`); exact duplicates across files are dropped, bad records go to
    quarantine. Runs under the year's lock, so two runs of one year take turns."""
    year = int(context.partition_key)
    extracted, parsed = deeppatent2.build_year(
        year, store.layout.raw_dir(year), store.layout.extracted_dir(year), store.layout.drawings_path(year), store.layout.quarantine_path(year),
        max_bad_fraction=store.max_bad_fraction)
    df, bad = pl.from_arrow(parsed.drawings), pl.from_arrow(parsed.quarantine)
    files = {Path(f).relative_to(extracted.root).as_posix(): counts for f, counts in parsed.files.items()}
    content, version = content_metadata(store.layout.drawings_path(year))  # what new_drawings_sensor compares
    return dg.MaterializeResult(data_version=version, metadata={
        **table_metadata(df, store.layout.drawings_path(year)),
        **content,
        "patents": df["patent_id"].n_unique(),
        "archive_format": extracted.archive_format,
        "inner_archives": dg.MetadataValue.json(extracted.inner),
        "records_files": dg.MetadataValue.json(files),
        "exact_duplicates_dropped": parsed.exact_duplicates,
        "quarantined": bad.height,
        "quarantine_by_reason": dg.MetadataValue.md(counts_markdown(bad, "reason")),
    })


@dg.asset(deps=[drawings, lic_codes], group_name="data", kinds={"parquet"})
def lic_hierarchy(context: dg.AssetExecutionContext, store: DataStore) -> dg.MaterializeResult:
    """drawing → patent → Locarno subclass → main class (with titles and integer labels), over every parsed year.
    The code comes from the drawing's DeepPatent2 record when it carries one, else from the USPTO grant XML; both
    counts and any disagreement between them are in the metadata. Titles come from the grant's own edition."""
    files = store.layout.drawings_paths()
    if not files:
        raise dg.Failure("no parsed drawings yet: materialize `drawings` for at least one year first")
    # only the columns the join needs: the captions and boxes of millions of records never enter memory
    all_drawings = pl.read_parquet(files, columns=list(hierarchy.DRAWING_COLUMNS))
    codes = pl.read_parquet(store.layout.lic_codes_path)
    table, quarantine = hierarchy.build_lic_hierarchy(all_drawings, codes)
    write_parquet_atomic(table, store.layout.hierarchy_path)
    write_parquet_atomic(quarantine, store.layout.hierarchy_quarantine_path)
    df = pl.from_arrow(table)
    coverage = hierarchy.lic_coverage(all_drawings, df)
    sources = hierarchy.lic_source_report(df)
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.layout.hierarchy_path),
        "lic_sources": dg.MetadataValue.json(sources),
        "from_record": sources["from_record"],
        "from_uspto_xml": sources["from_uspto_xml"],
        "record_xml_disagree": sources["disagree"],
        "unknown_subclass_for_edition": sources["unknown_subclass_for_edition"],
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
    hier = pl.read_parquet(store.layout.hierarchy_path, columns=["drawing_id", "patent_id", "class_code"])
    table = hierarchy.build_splits(hier, seed=config.seed,
                                   fractions=(config.train_fraction, config.val_fraction, config.test_fraction))
    write_parquet_atomic(table, store.layout.splits_path)
    df = pl.from_arrow(table)
    by = df.group_by("split", "role").agg(pl.len().alias("drawings"), pl.col("patent_id").n_unique().alias("patents"))
    return dg.MaterializeResult(metadata={
        **table_metadata(df, store.layout.splits_path),
        "by_split": dg.MetadataValue.md(counts_markdown(df, "role")),
        "patents_by_split": dg.MetadataValue.json({r["split"]: r["patents"] for r in by.filter(
            pl.col("role") != "gallery").iter_rows(named=True)}),
    })


class PixelConfig(dg.Config):
    image_size: int = TrainConfig.image_size  # the training default; other sizes are decoded when a run asks for them


@dg.asset(partitions_def=year_partitions, deps=[drawings], group_name="data", kinds={"numpy"})
def decoded_drawings(context: dg.AssetExecutionContext, config: PixelConfig, store: DataStore) -> dg.MaterializeResult:
    """The year's drawings decoded once, letterboxed to the image size (eval pixels) and with a crop margin (train
    pixels), as memory-mapped uint8 arrays (hmpcl_lib.modeling.pixels) under `pixels/year=<year>/`. Keyed by the
    year's own files (drawing ids, paths, sizes, mtimes): built when the year lands or its files change, and reused
    whatever the labels, the splits, the model or the other years do. Training, embedding and the benchmarks read
    these stores instead of decoding drawings again. The data version is the key, so an unchanged year reads as
    unchanged downstream."""
    from hmpcl_lib.modeling.pixels import prune_pixel_stores

    year = context.partition_key
    started = time.perf_counter()
    pixels = store.year_pixels(year, config.image_size)
    seconds = time.perf_counter() - started
    group = store.layout.year_group(year)
    # a rebuilt store replaces the year's older ones of the same size (older files); other sizes and builds in
    # progress (temp folders) are left alone
    others = [p for p in pixels.path.parent.iterdir() if not p.name.startswith(f"{pixels.image_size}-")]
    pruned = prune_pixel_stores(store.layout.root, keep=[pixels.path, *others], group=group) if pixels.built else []
    return dg.MaterializeResult(data_version=dg.DataVersion(pixels.fingerprint), metadata={
        "path": dg.MetadataValue.path(str(pixels.path)),
        "dagster/row_count": len(pixels),
        "image_size": pixels.image_size,
        "train_side": pixels.train_side,
        "fingerprint": pixels.fingerprint,
        "built": pixels.built,
        "drawings_decoded": len(pixels) if pixels.built else 0,
        "seconds": dg.MetadataValue.float(round(seconds, 2)),
        **({"drawings_per_s": dg.MetadataValue.float(round(len(pixels) / seconds, 1))} if pixels.built else {}),
        "megabytes": dg.MetadataValue.float(round(pixels.verify()["bytes"] / 2**20, 1)),
        "pruned_old_stores": len(pruned),
    })
