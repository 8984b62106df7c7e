"""What one request and a whole query server may take: `Limits`, the one set of serving defaults. `hmpcl serve` makes
flags of them; the MLflow pyfunc (`tracking.pyfunc`) serves with the same budget, queue, batch and streams. No imports,
so `hmpcl --help` stays instant and every layer above retrieval can read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    default_k: int = 12
    filter_factor: int = 10  # candidates searched per wanted result when a class filter is set
    max_candidates: int = 10_000
    # decode budget over all requests, in pixels (at most ≈ 4 bytes each while decoding, `pixels.decode_grey`: 1-2
    # for grey, bilevel and palette images, 4 for RGB and alpha images, which Pillow holds in 32 bits);
    # the default holds two images at the pixel limit, and any number of small ones beside them
    max_inflight_pixels: int = 100_000_000
    max_queue: int = 64  # requests waiting for decode room; more are answered 503 with Retry-After
    batch_size: int = 32  # queries embedded in one forward pass at most (dynamic batching)
    batch_window_ms: float = 5.0  # how long the first query of a batch waits for others
    # forward passes run at once on a CPU, each on its share of the cores (one batch gathers while another runs;
    # two 1-thread streams beat one 2-thread stream by ≈ 1.5x on 2 cores: benchmarks/search_load.py)
    encoder_streams: int = 2
    retry_after_s: int = 1
    # uploads above this many pixels decode on `large_decode_threads` threads of lower OS priority (Linux: nice
    # +10): a 49 MP PNG takes seconds of CPU, a query drawing milliseconds, and the small queries' decodes and
    # forward passes then go first instead of sharing the cores with every large decode (0: one lane for all)
    large_upload_pixels: int = 4_000_000
    large_decode_threads: int = 8
