"""The Locarno classification: editions and titles (tables/), the per-drawing hierarchy and splits, data checks."""
