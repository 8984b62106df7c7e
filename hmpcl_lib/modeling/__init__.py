"""The torch core: encoder models, losses, batch samplers, the drawings Dataset, the pixel store (decode once) and
the collective helpers.

No dagster, mlflow or faiss import here (an import-linter contract in pyproject.toml checks it).
"""
