"""hmpcl: hierarchical multi-positive contrastive learning for patent image retrieval (library, no Dagster)."""

__version__ = "0.1.0"
