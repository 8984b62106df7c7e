"""Jobs: per-year ingest and per-variant comparison (partitioned), the full pipeline, retrain (data → model → index →
benchmark → registry), and the comparison report."""


import dagster as dg

from pipelines.defs.assets.data import (decoded_drawings, drawings, lic_codes, lic_hierarchy, raw_archives, splits,
                                        year_partitions)
from pipelines.defs.assets.comparison import model_comparison, variant_benchmark, variant_encoder, variant_partitions
from pipelines.defs.assets.results import results_db
from pipelines.defs.assets.retrieval import champion_model, corpus_embeddings, gallery_index, retrieval_benchmark
from pipelines.defs.assets.training import trained_encoder

# Dagster runs one partitions definition per run: the year-partitioned ingest and the variant-partitioned comparison
# are jobs of their own, and the full pipeline is everything unpartitioned after the ingest.
ingest_year = dg.define_asset_job(
    "ingest_year", selection=[raw_archives, drawings], partitions_def=year_partitions,
    description="Download (or generate) and parse one year of DeepPatent2.",
)

retrain = dg.define_asset_job(
    "retrain",
    selection=[lic_hierarchy, splits, decoded_drawings, trained_encoder, corpus_embeddings, gallery_index, retrieval_benchmark,
               champion_model],
    description="Rebuild hierarchy and splits from the parsed years, train, embed, index, benchmark, and move the "
                "champion alias if the new model wins. Same data and config reuse the finished MLflow run.",
)

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=[lic_codes, lic_hierarchy, splits, decoded_drawings, trained_encoder, corpus_embeddings, gallery_index,
               retrieval_benchmark, champion_model],
    description="Everything unpartitioned after the per-year ingest: Locarno codes, hierarchy, splits, training, "
                "embeddings, index, benchmark and registry. The comparison runs as compare_variants + compare_models.",
)

compare_variants = dg.define_asset_job(
    "compare_variants", selection=[variant_encoder, variant_benchmark], partitions_def=variant_partitions,
    description="Train (or reuse) and benchmark one variant of the model comparison: pretrained, baseline, "
                "hierarchical. Backfill all three partitions, then compare_models.",
)

compare_models = dg.define_asset_job(
    "compare_models", selection=[model_comparison, results_db],
    description="The pretrained / baseline / hierarchical table with paired intervals, from the saved variants, then "
                "the results database (`hmpcl sql`) over every benchmark, variant, sweep and MLflow run.",
)

ALL_JOBS = [ingest_year, retrain, full_pipeline, compare_variants, compare_models]
