"""`hmpcl serve`: the search page over the champion's index on 127.0.0.1 (`make search`).

    hmpcl serve [--port 8000] [--host 127.0.0.1 [--allow-remote]] [--data-root DIR]
                [--model-uri models:/hmpcl-encoder@champion | --model-checkpoint encoder.pt] [--index DIR]

By default the model is the registry's champion (tracking URI from --tracking-uri / $MLFLOW_TRACKING_URI) and the
index is the one the `gallery_index` asset wrote for the champion's run (`<data root>/index/<run id>`). The start-up
log and the page's footer say what the model was trained on (its card: loss, drawings, data source, MLflow run); a
model trained on the generated sample says it is a demonstration, not a model for real drawings. Without
a champion, an index or the hierarchy table it stops with a message saying to run `make run` first. A host other
than a loopback address is refused unless --allow-remote is given: the page has no authentication.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from hmpcl_lib.errors import HmpclError, InputError
from hmpcl_lib.layout import DataLayout, default_data_root
from hmpcl_lib.retrieval.query_image import DEFAULT_MAX_PIXELS
from hmpcl_lib.retrieval.limits import Limits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
RUN_FIRST = "run `make run` first (or pass --model-checkpoint and --index)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The serve options (the caller adds --tracking-uri and --registered-model)."""
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --host (the page has no authentication)")
    p.add_argument("--data-root", default=default_data_root(), help="data root (default: $HMPCL_DATA_ROOT or ./data)")
    p.add_argument("--model-uri", default=None,
                   help="MLflow model URI (default: models:/<registered model>@champion)")
    p.add_argument("--model-checkpoint", default=None, help="encoder file instead of MLflow")
    p.add_argument("--index", default=None, help="index directory (default: the index of the model's MLflow run)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted (default 10 MB)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image accepted (pixels)")
    p.add_argument("--max-inflight-mp", type=float, default=Limits.max_inflight_pixels / 1e6,
                   help="megapixels of queries decoded at once, over all requests (default %(default)g: two images at "
                        "the pixel limit; memory ≤ 4 bytes per pixel)")
    p.add_argument("--max-queue", type=int, default=Limits.max_queue,
                   help="requests waiting for decode room before new ones get 503 + Retry-After (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=Limits.batch_size,
                   help="queries embedded together at most (dynamic batching; default %(default)s)")
    p.add_argument("--batch-window-ms", type=float, default=Limits.batch_window_ms,
                   help="how long a query waits for others to share its forward pass (default %(default)g ms)")
    p.add_argument("--encoder-streams", type=int, default=Limits.encoder_streams,
                   help="forward passes at once on a CPU, each on its share of the cores (default %(default)s)")
    p.add_argument("--large-upload-mp", type=float, default=Limits.large_upload_pixels / 1e6,
                   help="uploads above this many megapixels decode in a lane of lower OS priority, so small queries "
                        "go first (default %(default)g; 0: one lane for all)")


def check_host(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback listen address unless explicitly allowed."""
    if allow_remote:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise HmpclError(f"refusing to listen on {host!r}: the search page has no authentication; "
                         "use a loopback address (127.0.0.1) or pass --allow-remote explicitly")


def load_app(args: argparse.Namespace, tracking_uri: str, registered_model: str):
    """The app over the configured model and index; HmpclError with what to do when something is missing."""
    import polars as pl

    from hmpcl_lib.retrieval.index import VectorIndex
    from hmpcl_lib.retrieval.search import Searcher
    from hmpcl_lib.tracking.model_source import ModelCard, champion_uri, index_dir_of, load_query_model, model_card
    from hmpcl_lib.serve.app import create_app

    layout = DataLayout(Path(args.data_root))
    if not layout.hierarchy_path.is_file():
        raise HmpclError(f"no hierarchy table at {layout.hierarchy_path}: {RUN_FIRST}, or pass --data-root")
    model_uri = args.model_uri or champion_uri(registered_model)
    if not args.model_checkpoint and tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        if not store.is_file():
            raise HmpclError(f"no MLflow store at {store.resolve()} (tracking URI {tracking_uri}): {RUN_FIRST}")
    try:
        index_dir = Path(args.index or index_dir_of(model_uri, args.model_checkpoint, tracking_uri, layout))
    except InputError as exc:
        raise HmpclError(f"no champion model to serve ({exc}): {RUN_FIRST}") from exc
    if not (index_dir / "index.faiss").is_file():
        raise HmpclError(f"no gallery index at {index_dir}: {RUN_FIRST}, or pass --index DIR")
    try:
        model = load_query_model(model_uri, args.model_checkpoint, tracking_uri)
    except InputError as exc:
        raise HmpclError(f"cannot load the model ({exc}): {RUN_FIRST}") from exc
    try:
        card = model_card(model_uri, args.model_checkpoint, tracking_uri)
    except InputError:  # the model loaded, so its URI resolved; a registry that moved meanwhile only loses the card
        card = ModelCard(source=args.model_checkpoint or model_uri)
    searcher = Searcher(model, VectorIndex.load(index_dir, use_gpu=False), pl.read_parquet(layout.hierarchy_path),
                        data_root=layout.root, max_pixels=args.max_pixels)
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
                    max_inflight_pixels=int(args.max_inflight_mp * 1e6), max_queue=args.max_queue,
                    batch_size=args.batch_size, batch_window_ms=args.batch_window_ms,
                    encoder_streams=args.encoder_streams, large_upload_pixels=int(args.large_upload_mp * 1e6))
    return create_app(searcher, layout, limits=limits, model_card=card), card, index_dir


def serve(args: argparse.Namespace, tracking_uri: str, registered_model: str) -> str:
    """Check the host, load everything, then run uvicorn until interrupted."""
    check_host(args.host, args.allow_remote)
    if not 0 < args.port < 65536:
        raise HmpclError(f"--port must be 1..65535, got {args.port}")
    app, card, index_dir = load_app(args, tracking_uri, registered_model)
    import uvicorn

    print(f"hmpcl serve: model {card.summary()}\nhmpcl serve: index {index_dir}\n"
          f"hmpcl serve: open http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="info", server_header=False)
    return "hmpcl serve: stopped"
