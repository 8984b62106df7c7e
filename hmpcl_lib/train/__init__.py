"""Training: the config, the loop, checkpoints and the `hmpcl-train` CLI (torch core: no dagster/mlflow/faiss)."""
