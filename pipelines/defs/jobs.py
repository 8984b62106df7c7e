"""Jobs: per-year ingest and embedding (partitioned), the model (retrain, full_pipeline), its index, benchmark and champion
(publish, refresh_index), and the per-variant comparison and its report."""


import dagster as dg

from pipelines.defs.assets.data import (decoded_drawings, drawings, lic_codes, lic_hierarchy, raw_archives, splits,
                                        year_partitions)
from pipelines.defs.assets.comparison import model_comparison, variant_benchmark, variant_encoder, variant_partitions
from pipelines.defs.assets.results import results_db
from pipelines.defs.assets.retrieval import champion_model, corpus_embeddings, gallery_index, retrieval_benchmark
from pipelines.defs.assets.training import trained_encoder

# Dagster runs one partitions definition per run: the year-partitioned ingest and embedding, and the variant-partitioned
# comparison, are jobs of their own; the model and its index are unpartitioned. The chain from one to the next is
# `pipelines.defs.sensors` (or `make run`, which runs them in order).
ingest_year = dg.define_asset_job(
    "ingest_year", selection=[raw_archives, drawings, decoded_drawings], partitions_def=year_partitions,
    description="Download (or generate), parse and decode one year of DeepPatent2 (the decode is reused while the "
                "year's files are unchanged). Backfill several years: the run queue runs two side by side.",
)

embed_year = dg.define_asset_job(
    "embed_year", selection=[corpus_embeddings], partitions_def=year_partitions,
    description="Embed one year's drawings with the current model (reused while the model and the year's pixels are "
                "unchanged). A new model: every year, as a backfill (one at a time in the `gpu` pool).",
)

retrain = dg.define_asset_job(
    "retrain", selection=[lic_hierarchy, splits, trained_encoder],
    description="Rebuild hierarchy and splits from the parsed years and train (the years' pixel stores). Same data and "
                "config reuse the finished MLflow run. Then embed_year for every year and publish (corpus_follow_up).",
)

full_pipeline = dg.define_asset_job(
    "full_pipeline", selection=[lic_codes, lic_hierarchy, splits, trained_encoder],
    description="Everything unpartitioned before the embeddings: Locarno codes, hierarchy, splits, training. Then "
                "embed_year for every year and publish; the comparison runs as compare_variants + compare_models.",
)

publish = dg.define_asset_job(
    "publish", selection=[gallery_index, retrieval_benchmark, champion_model],
    description="Once every year is embedded by the current model: the index (built year by year), the benchmark, "
                "and the champion alias if the new model wins.",
)

refresh_index = dg.define_asset_job(
    "refresh_index", selection=[gallery_index],
    description="Rebuild the index after a year was added or changed, for a model already benchmarked: nothing else "
                "recomputes.",
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

ALL_JOBS = [ingest_year, embed_year, retrain, full_pipeline, publish, refresh_index, compare_variants, compare_models]
