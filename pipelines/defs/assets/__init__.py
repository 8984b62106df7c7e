"""The assets: data (ingest, Locarno codes, hierarchy, splits), training, retrieval (embeddings, index, benchmark, registry)."""
