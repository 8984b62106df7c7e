"""From a trained encoder to answers: embeddings, the FAISS index, metrics, benchmark evaluation, search, plots."""
