"""The search page and its JSON API over a `Searcher` (FastAPI + Jinja2; `hmpcl serve` runs it under uvicorn).

Routes (one code path, `SearchService.run`, behind the page and the API):

    GET  /                                   the page: upload form, class filter, example drawings to pick
    GET  /search?drawing_id=ID&k=10&class=06 results page for a corpus drawing (found by id, never by path)
    POST /search?k=10&class=06               body: the raw image bytes; answers the results as an HTML fragment
                                             (the page's script posts the chosen file with fetch())
    GET  /api/search?drawing_id=ID&k=&class= JSON results
    POST /api/search?k=&class=               JSON results for an uploaded image (raw body)
    GET  /thumb/{drawing_id}                 small PNG of a corpus drawing (looked up by id in the hierarchy table)
    GET  /healthz                            {"status": "ok", "drawings": N, "index": N, "batches": forward
                                             passes so far, "batched_queries": queries they embedded, "model": what
                                             the model was trained on (its card; the page's footer says the same)}

Uploads are read in memory up to `Limits.max_upload_bytes` (413 beyond, from Content-Length or while reading),
decoded only when their header is one of `UPLOAD_FORMATS` (415 otherwise) and at most `max_pixels` (413); nothing
is written to disk. Under load: decodes share a budget of `Limits.max_inflight_pixels` (a request holds its image's
pixel count while it decodes; `Limits.max_queue` may wait, more are answered 503 with Retry-After), and decoded
queries are embedded together by a dynamic batcher (`retrieval.batching`: up to `batch_size` per forward pass).
k is bounded to 1..`Limits.max_k`; a class filter searches `Limits.filter_factor` x k candidates, widening up to
`Limits.max_candidates`, and says when fewer than k drawings of that class turned up.
Errors are JSON `{"error": message}` on /api, and the page shows the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hmpcl_lib.errors import InputError
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.batching import Overloaded, WorkLimit, low_priority_executor
from hmpcl_lib.retrieval.query_image import UPLOAD_FORMATS, ImageTooLarge, UnsupportedImage, header_pixels
from hmpcl_lib.retrieval.search import Searcher, encoder_batcher
from hmpcl_lib.serve.catalog import CATALOG_COLUMNS, Catalog
from hmpcl_lib.tracking.model_source import ModelCard
from hmpcl_lib.retrieval.limits import Limits

HERE = Path(__file__).parent
CLASS_CODE = re.compile(r"^\d{1,2}$", re.ASCII)


class SearchError(Exception):
    """A request the service refuses: HTTP status + a message meant for the user."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Outcome:
    query: dict[str, Any]
    k: int
    class_code: str | None
    results: list[dict[str, Any]]
    candidates: int
    note: str | None
    embed_ms: float
    search_ms: float

    def as_json(self) -> dict[str, Any]:
        return {"query": self.query, "k": self.k, "class": self.class_code, "count": len(self.results),
                "candidates_searched": self.candidates, "note": self.note, "results": self.results,
                "timing_ms": {"embed": round(self.embed_ms, 2), "search": round(self.search_ms, 2)}}


def _json_row(rank: int, score: float, row: dict[str, Any]) -> dict[str, Any]:
    date = row.get("grant_date")
    return {"rank": rank, "drawing_id": row["drawing_id"], "patent_id": row["patent_id"],
            "grant_date": date.isoformat() if date is not None else None,
            "class_code": row["class_code"], "class_title": row["class_title"],
            "subclass_code": row["subclass_code"], "subclass_title": row["subclass_title"],
            "score": round(float(score), 6), "thumbnail": f"/thumb/{row['drawing_id']}"}


class SearchService:
    """Parameter checks, the (class-filtered) search and the result rows, shared by the page and the API."""

    def __init__(self, searcher: Searcher, catalog: Catalog, limits: Limits):
        self.searcher, self.catalog, self.limits = searcher, catalog, limits
        # index position -> catalog row and class code, computed once: a query then costs numpy indexing and one
        # Arrow take, no dataframe join (a join per query cost as much CPU as a third of the encoder under load)
        ids = searcher.index.ids
        self._row_at = catalog.row_numbers(ids)
        classes = np.array([""] + catalog.table["class_code"].fill_null("").to_list(), dtype=object)
        self._class_at = classes[self._row_at + 1]
        self.limit = WorkLimit(max(limits.max_inflight_pixels, searcher.max_pixels), limits.max_queue)
        self.batcher = encoder_batcher(lambda pixels: list(searcher.embed_pixels(np.stack(pixels))), searcher.device,
                                       limits.batch_size, limits.batch_window_ms, limits.encoder_streams)
        self.large_lane = (low_priority_executor(limits.large_decode_threads, name="large-decode")
                           if limits.large_upload_pixels > 0 else None)

    def upload_pixels(self, data: bytes) -> Callable[[], np.ndarray]:
        """The decode of an upload, to run in a worker thread (it holds its pixels of the decode budget); marked
        `large` when its header says it is above `Limits.large_upload_pixels` (it then decodes in the low-priority
        lane)."""
        def decode() -> np.ndarray:
            return self.searcher.pixels_of_bytes(data, limit=self.limit)

        size = header_pixels(data) if self.large_lane is not None else None
        decode.large = size is not None and size > self.limits.large_upload_pixels  # type: ignore[attr-defined]
        return decode

    async def embed(self, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """[1, D]: `decode` in a worker thread (a large upload's in the low-priority lane), then the batched forward
        pass awaited without holding a thread (a thread per waiting query cost a context switch each way and CPU the
        encoder needs on a small machine)."""
        if getattr(decode, "large", False):
            pixels = await asyncio.get_running_loop().run_in_executor(self.large_lane, decode)
        else:
            pixels = await run_in_threadpool(decode)
        return (await asyncio.wrap_future(self.batcher.submit(pixels)))[None]

    async def warm_up(self) -> None:
        """One search through the whole path before the first request (the app's startup, before uvicorn reports
        ready): the decoder's plugins load, the encoder streams start and run once, the index and the catalog are
        touched. Without it, the first requests of a fresh server paid for the imports and the first forward pass,
        which is the slow tail under a burst of load (benchmarks/search_load.py's first phase)."""
        import io

        from PIL import Image

        side = max(1, min(64, int(self.searcher.max_pixels ** 0.5)))  # within any pixel limit
        buf = io.BytesIO()
        Image.new("L", (side, side), 255).save(buf, format="PNG")
        if len(self.searcher.index):
            await self.run({"kind": "warm-up"}, self.upload_pixels(buf.getvalue()), 1, None)

    def close(self) -> None:
        """Stop the encoder streams and the large-decode lane (the app's shutdown)."""
        self.batcher.close()
        if self.large_lane is not None:
            self.large_lane.shutdown(wait=False, cancel_futures=True)

    def parse_k(self, raw: str | None) -> int:
        if raw in (None, ""):
            return self.limits.default_k
        try:
            k = int(raw)
        except ValueError:
            raise SearchError(400, f"k must be a whole number from 1 to {self.limits.max_k}, got {raw[:20]!r}") from None
        if not 1 <= k <= self.limits.max_k:
            raise SearchError(400, f"k must be from 1 to {self.limits.max_k}, got {k}")
        return k

    @staticmethod
    def parse_class(raw: str | None) -> str | None:
        if raw in (None, ""):
            return None
        if not CLASS_CODE.match(raw.strip()):
            raise SearchError(400, f"class must be a Locarno class number such as 06, got {raw[:20]!r}")
        return f"{int(raw):02d}"

    def corpus_query(self, drawing_id: str) -> tuple[dict, Any]:
        row = self.catalog.get(drawing_id)
        if row is None:
            raise SearchError(404, f"no drawing {drawing_id[:80]!r} in the corpus")
        try:
            path = self.catalog.image_of(drawing_id)
        except InputError as exc:
            raise SearchError(404, f"the image of drawing {drawing_id!r} is not available ({exc.reason})") from exc
        query = {"kind": "drawing", "drawing_id": drawing_id, "patent_id": row["patent_id"],
                 "class_code": row["class_code"], "thumbnail": f"/thumb/{drawing_id}"}
        return query, lambda: self.searcher.pixels_of_file(path, self.limit)

    async def run(self, query: dict, decode: Callable[[], np.ndarray], k: int, class_code: str | None) -> Outcome:
        """The search behind every route: decode, embed (batched), look up; SearchError with the HTTP status."""
        started = time.perf_counter()
        try:
            vector = await self.embed(decode)
        except ImageTooLarge as exc:
            raise SearchError(413, f"image too large: {exc.reason}") from exc
        except UnsupportedImage as exc:
            raise SearchError(415, f"not an image we can read: upload a {'/'.join(UPLOAD_FORMATS)} file "
                                   f"({exc.reason})") from exc
        except InputError as exc:
            raise SearchError(400, f"the image cannot be read: {exc.reason}") from exc
        except Overloaded as exc:
            raise SearchError(503, f"the server is busy, retry in a moment ({exc})") from exc
        embedded = time.perf_counter()
        positions, scores, candidates, note = self._search(vector, k, class_code)
        results = self._results(positions, scores)
        done = time.perf_counter()
        return Outcome(query, k, class_code, results, candidates, note,
                       (embedded - started) * 1000, (done - embedded) * 1000)

    def _results(self, positions: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
        """The JSON rows of the hits, best first: one Arrow take over the catalog; a drawing indexed but missing from
        the catalog is answered by its id alone."""
        rows = self._row_at[positions]
        known = iter(self.catalog.rows(rows[rows >= 0]))
        return [_json_row(rank, score, next(known) if row >= 0
                          else dict.fromkeys(CATALOG_COLUMNS) | {"drawing_id": str(self.searcher.index.ids[position])})
                for rank, (row, position, score) in enumerate(zip(rows.tolist(), positions.tolist(), scores.tolist()),
                                                              start=1)]

    def _search(self, vector: np.ndarray, k: int, class_code: str | None
                ) -> tuple[np.ndarray, np.ndarray, int, str | None]:
        """Index positions and scores of the top k (of `class_code` when set), the candidates searched, a note."""
        total = len(self.searcher.index)
        if class_code is None:
            positions, scores = self.searcher.index.search_positions(vector, k)
            found = positions[0] >= 0
            note = f"the index holds only {total} drawings" if found.sum() < k else None
            return positions[0][found], scores[0][found], min(k, total), note
        ceiling = min(total, self.limits.max_candidates)
        wanted = min(ceiling, max(k * self.limits.filter_factor, k))
        while True:
            positions, scores = self.searcher.index.search_positions(vector, max(wanted, 1))
            positions, scores = positions[0], scores[0]
            keep = (positions >= 0) & (self._class_at[np.maximum(positions, 0)] == class_code)
            if keep.sum() >= k or wanted >= ceiling:
                break
            wanted = min(ceiling, wanted * 4)
        positions, scores = positions[keep][:k], scores[keep][:k]
        note = None
        if len(positions) < k:
            where = "in the whole index" if wanted >= total else f"among the {wanted} nearest drawings"
            note = f"only {len(positions)} of the requested {k} drawings are in class {class_code} {where}"
        return positions, scores, wanted, note


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response a route did not set them on (a plain ASGI middleware: Starlette's
    `BaseHTTPMiddleware` costs a task and a stream per request)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def read_upload(request: Request, max_bytes: int) -> bytes:
    """The raw request body, refused (413) as soon as it is known to exceed `max_bytes`."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise SearchError(415, "send the image file itself as the request body (e.g. Content-Type: image/png), "
                               "not a multipart form")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise SearchError(413, f"upload is {int(declared)} bytes, above the limit of {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise SearchError(413, f"upload is above the limit of {max_bytes} bytes")
    if not body:
        raise SearchError(400, "empty upload: choose an image file")
    return bytes(body)


def create_app(searcher: Searcher, layout: DataLayout, catalog: Catalog | None = None,
               limits: Limits | None = None, title: str = "hmpcl drawing search",
               model_card: ModelCard | None = None) -> FastAPI:
    """The web app over `searcher`; `catalog` (default: from `searcher.hierarchy` and the layout) names and shows
    the drawings; `model_card` (what the model was trained on) is the page's footer and part of /healthz."""
    limits = limits or Limits()
    if catalog is None:
        hierarchy = (pl.read_parquet(layout.hierarchy_path) if layout.hierarchy_path.is_file()
                     else searcher.hierarchy)
        catalog = Catalog(hierarchy, layout, max_pixels=searcher.max_pixels)
    service = SearchService(searcher, catalog, limits)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        await service.warm_up()
        yield
        service.close()  # the app's shutdown: the encoder streams and the large-decode lane stop with it

    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(SecurityHeaders)
    model_summary = model_card.summary() if model_card else None  # the card does not change while the app runs
    _add_page_routes(app, service, title, model_summary, bool(model_card and model_card.demo))
    _add_api_routes(app, service)
    _add_corpus_routes(app, service, model_summary)
    return app


def _retry_after(service: SearchService, err: SearchError) -> dict[str, str] | None:
    return {"Retry-After": str(service.limits.retry_after_s)} if err.status == 503 else None


async def _upload(service: SearchService, request: Request) -> Outcome:
    """The search for an uploaded image (the raw request body), shared by the page and the API."""
    params = request.query_params
    k, class_code = service.parse_k(params.get("k")), service.parse_class(params.get("class"))
    data = await read_upload(request, service.limits.max_upload_bytes)
    query = {"kind": "upload", "bytes": len(data)}
    return await service.run(query, service.upload_pixels(data), k, class_code)


async def _drawing(service: SearchService, request: Request, missing: str) -> Outcome:
    """The search for a corpus drawing given by `?drawing_id=` (SearchError 400 with `missing` when absent)."""
    params = request.query_params
    k, class_code = service.parse_k(params.get("k")), service.parse_class(params.get("class"))
    drawing_id = params.get("drawing_id") or ""
    if not drawing_id:
        raise SearchError(400, missing)
    query, decode = service.corpus_query(drawing_id)
    return await service.run(query, decode, k, class_code)


def _add_page_routes(app: FastAPI, service: SearchService, title: str, model_summary: str | None,
                     model_demo: bool) -> None:
    """GET / (the page), GET /search (results page for a corpus drawing), POST /search (results fragment)."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    catalog, limits = service.catalog, service.limits

    def page_context(request: Request, **extra) -> dict[str, Any]:
        params = request.query_params
        return {"title": title, "classes": catalog.classes(), "examples": catalog.examples(),
                "limits": limits, "drawings": len(catalog), "k_value": params.get("k") or limits.default_k,
                "class_value": params.get("class") or "", "drawing_value": params.get("drawing_id") or "",
                "formats": UPLOAD_FORMATS, "outcome": None, "error": None,
                "model_summary": model_summary, "model_demo": model_demo, **extra}

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        return templates.TemplateResponse(request, "index.html", page_context(request))

    @app.get("/search", response_class=HTMLResponse)
    async def search_page(request: Request):
        try:
            outcome = await _drawing(service, request, "choose an image to upload or a corpus drawing id")
        except SearchError as err:
            return templates.TemplateResponse(request, "index.html", page_context(request, error=err.message),
                                              status_code=err.status, headers=_retry_after(service, err))
        return templates.TemplateResponse(request, "index.html", page_context(request, outcome=outcome))

    @app.post("/search", response_class=HTMLResponse)
    async def search_upload_fragment(request: Request):
        try:
            outcome = await _upload(service, request)
        except SearchError as err:
            return templates.TemplateResponse(request, "_results.html", {"outcome": None, "error": err.message},
                                              status_code=err.status, headers=_retry_after(service, err))
        return templates.TemplateResponse(request, "_results.html", {"outcome": outcome, "error": None})


def _add_api_routes(app: FastAPI, service: SearchService) -> None:
    """GET /api/search?drawing_id= and POST /api/search (image bytes): JSON results, JSON errors."""

    async def answer(search) -> JSONResponse:
        try:
            outcome = await search
        except SearchError as err:
            return JSONResponse({"error": err.message}, status_code=err.status, headers=_retry_after(service, err))
        return JSONResponse(outcome.as_json())  # already JSON types: no jsonable_encoder pass

    @app.get("/api/search")
    async def api_search_drawing(request: Request):
        return await answer(_drawing(service, request, "pass drawing_id=..., or POST the image bytes to /api/search"))

    @app.post("/api/search")
    async def api_search_upload(request: Request):
        return await answer(_upload(service, request))


def _add_corpus_routes(app: FastAPI, service: SearchService, model_summary: str | None) -> None:
    """GET /thumb/{drawing_id} (a small PNG, by id only) and GET /healthz."""
    catalog = service.catalog

    @app.get("/thumb/{drawing_id}")
    async def thumbnail(drawing_id: str):
        if drawing_id not in catalog:
            return JSONResponse({"error": f"no drawing {drawing_id[:80]!r} in the corpus"}, status_code=404)
        try:
            png = await run_in_threadpool(catalog.thumbnail, drawing_id)
        except (KeyError, InputError):
            return JSONResponse({"error": f"the image of drawing {drawing_id[:80]!r} is not available"},
                                status_code=404)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "drawings": len(catalog), "index": len(service.searcher.index),
                "batches": service.batcher.batches, "batched_queries": service.batcher.items,
                "model": model_summary}
