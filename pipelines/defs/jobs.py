"""Jobs: per-year ingest (partitioned), the full pipeline, and retrain (data → model → index → benchmark → registry)."""


import dagster as dg

from pipelines.defs.assets.data import drawings, lic_codes, lic_hierarchy, raw_archives, splits, year_partitions
from pipelines.defs.assets.retrieval import (champion_model, corpus_embeddings, gallery_index, model_comparison,
                                        retrieval_benchmark)
from pipelines.defs.assets.training import trained_encoder

# Dagster runs one partitions definition per run: the year-partitioned ingest is its own job, and the full
# pipeline is everything downstream of it (over all years ingested so far).
ingest_year = dg.define_asset_job(
    "ingest_year", selection=[raw_archives, drawings], partitions_def=year_partitions,
    description="Download (or generate) and parse one year of DeepPatent2.",
)

retrain = dg.define_asset_job(
    "retrain",
    selection=[lic_hierarchy, splits, trained_encoder, corpus_embeddings, gallery_index, retrieval_benchmark,
               champion_model],
    description="Rebuild hierarchy and splits from the parsed years, train, embed, index, benchmark, and move the "
                "champion alias if the new model wins. Same data and config reuse the finished MLflow run.",
)

full_pipeline = dg.define_asset_job(
    "full_pipeline",
    selection=[lic_codes, lic_hierarchy, splits, trained_encoder, corpus_embeddings, gallery_index,
               retrieval_benchmark, champion_model, model_comparison],
    description="Everything after the per-year ingest: Locarno codes, hierarchy, splits, training, embeddings, "
                "index, benchmark, registry, and the pretrained/baseline/hierarchical comparison.",
)

ALL_JOBS = [ingest_year, retrain, full_pipeline]
