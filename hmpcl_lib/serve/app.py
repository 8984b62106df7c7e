"""The search page and its JSON API over a `Searcher` (FastAPI + Jinja2; `hmpcl serve` runs it under uvicorn).

Routes (one code path, `SearchService.run`, behind the page and the API):

    GET  /                                   the page: upload form, class filter, example drawings to pick
    GET  /search?drawing_id=ID&k=10&class=06 results page for a corpus drawing (found by id, never by path)
    POST /search?k=10&class=06               body: the raw image bytes; answers the results as an HTML fragment
                                             (the page's script posts the chosen file with fetch())
    GET  /api/search?drawing_id=ID&k=&class= JSON results
    POST /api/search?k=&class=               JSON results for an uploaded image (raw body)
    GET  /thumb/{drawing_id}                 small PNG of a corpus drawing (looked up by id in the hierarchy table)
    GET  /healthz                            {"status": "ok", "drawings": N, "index": N}

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

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from hmpcl_lib.errors import InputError
from hmpcl_lib.layout import DataLayout
from hmpcl_lib.retrieval.batching import DynamicBatcher, Overloaded, WorkLimit
from hmpcl_lib.retrieval.search import UPLOAD_FORMATS, ImageTooLarge, Searcher, UnsupportedImage
from hmpcl_lib.serve.catalog import Catalog
from hmpcl_lib.serve.limits import Limits

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


def _json_row(row: dict[str, Any]) -> dict[str, Any]:
    date = row.get("grant_date")
    return {"rank": row["rank"], "drawing_id": row["drawing_id"], "patent_id": row["patent_id"],
            "grant_date": date.isoformat() if date is not None else None,
            "class_code": row["class_code"], "class_title": row["class_title"],
            "subclass_code": row["subclass_code"], "subclass_title": row["subclass_title"],
            "score": round(float(row["score"]), 6), "thumbnail": f"/thumb/{row['drawing_id']}"}


class SearchService:
    """Parameter checks, the (class-filtered) search and the result rows, shared by the page and the API."""

    def __init__(self, searcher: Searcher, catalog: Catalog, limits: Limits):
        self.searcher, self.catalog, self.limits = searcher, catalog, limits
        self.details = catalog.table.select("drawing_id", "grant_date", "class_title", "subclass_title")
        self.limit = WorkLimit(max(limits.max_inflight_pixels, searcher.max_pixels), limits.max_queue)
        self.batcher = DynamicBatcher(lambda pixels: list(searcher.embed_pixels(np.stack(pixels))),
                                      max_batch=limits.batch_size, window_s=limits.batch_window_ms / 1000)

    def embed_file(self, path) -> np.ndarray:
        return self.batcher(self.searcher.pixels_of_file(path, self.limit))[None]

    def embed_upload(self, data: bytes) -> np.ndarray:
        return self.batcher(self.searcher.pixels_of_bytes(data, limit=self.limit))[None]

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
        return query, lambda: self.embed_file(path)

    def run(self, query: dict, embed, k: int, class_code: str | None) -> Outcome:
        started = time.perf_counter()
        try:
            vector = embed()
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
        hits, candidates, note = self._search(vector, k, class_code)
        rows = (hits.join(self.details, on="drawing_id", how="left", maintain_order="left")
                .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias("rank")))
        results = [_json_row(r) for r in rows.iter_rows(named=True)]
        done = time.perf_counter()
        return Outcome(query, k, class_code, results, candidates, note,
                       (embedded - started) * 1000, (done - embedded) * 1000)

    def _search(self, vector: np.ndarray, k: int, class_code: str | None) -> tuple[pl.DataFrame, int, str | None]:
        total = len(self.searcher.index)
        if class_code is None:
            hits = self.searcher.search_vector(vector, k)
            note = f"the index holds only {total} drawings" if hits.height < k else None
            return hits, min(k, total), note
        ceiling = min(total, self.limits.max_candidates)
        wanted = min(ceiling, max(k * self.limits.filter_factor, k))
        while True:
            hits = self.searcher.search_vector(vector, max(wanted, 1))
            matched = hits.filter(pl.col("class_code") == class_code)
            if matched.height >= k or wanted >= ceiling:
                break
            wanted = min(ceiling, wanted * 4)
        note = None
        if matched.height < k:
            where = "in the whole index" if wanted >= total else f"among the {wanted} nearest drawings"
            note = f"only {matched.height} of the requested {k} drawings are in class {class_code} {where}"
        return matched.head(k), wanted, note


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
               limits: Limits | None = None, title: str = "hmpcl drawing search") -> FastAPI:
    """The web app over `searcher`; `catalog` (default: from `searcher.hierarchy` and the layout) names and shows
    the drawings."""
    limits = limits or Limits()
    if catalog is None:
        hierarchy = (pl.read_parquet(layout.hierarchy_path) if layout.hierarchy_path.is_file()
                     else searcher.hierarchy)
        catalog = Catalog(hierarchy, layout, max_pixels=searcher.max_pixels)
    service = SearchService(searcher, catalog, limits)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy",
                                    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                    "base-uri 'none'; frame-ancestors 'none'")
        return response

    def retry_after(err: SearchError) -> dict[str, str] | None:
        return {"Retry-After": str(limits.retry_after_s)} if err.status == 503 else None

    def page_context(request: Request, **extra) -> dict[str, Any]:
        params = request.query_params
        return {"title": title, "classes": catalog.classes(), "examples": catalog.examples(),
                "limits": limits, "drawings": len(catalog), "k_value": params.get("k") or limits.default_k,
                "class_value": params.get("class") or "", "drawing_value": params.get("drawing_id") or "",
                "formats": UPLOAD_FORMATS, "outcome": None, "error": None, **extra}

    @app.get("/", response_class=HTMLResponse)
    def home(request: Request):
        return templates.TemplateResponse(request, "index.html", page_context(request))

    @app.get("/search", response_class=HTMLResponse)
    async def search_page(request: Request):
        params = request.query_params
        try:
            k, class_code = service.parse_k(params.get("k")), service.parse_class(params.get("class"))
            drawing_id = params.get("drawing_id") or ""
            if not drawing_id:
                raise SearchError(400, "choose an image to upload or a corpus drawing id")
            query, embed = service.corpus_query(drawing_id)
            outcome = await run_in_threadpool(service.run, query, embed, k, class_code)
        except SearchError as err:
            return templates.TemplateResponse(request, "index.html", page_context(request, error=err.message),
                                              status_code=err.status, headers=retry_after(err))
        return templates.TemplateResponse(request, "index.html", page_context(request, outcome=outcome))

    @app.post("/search", response_class=HTMLResponse)
    async def search_upload_fragment(request: Request):
        try:
            outcome = await _upload(request)
        except SearchError as err:
            return templates.TemplateResponse(request, "_results.html", {"outcome": None, "error": err.message},
                                              status_code=err.status, headers=retry_after(err))
        return templates.TemplateResponse(request, "_results.html", {"outcome": outcome, "error": None})

    @app.get("/api/search")
    async def api_search_drawing(request: Request):
        params = request.query_params
        try:
            k, class_code = service.parse_k(params.get("k")), service.parse_class(params.get("class"))
            drawing_id = params.get("drawing_id")
            if not drawing_id:
                raise SearchError(400, "pass drawing_id=..., or POST the image bytes to /api/search")
            query, embed = service.corpus_query(drawing_id)
            outcome = await run_in_threadpool(service.run, query, embed, k, class_code)
        except SearchError as err:
            return JSONResponse({"error": err.message}, status_code=err.status, headers=retry_after(err))
        return outcome.as_json()

    @app.post("/api/search")
    async def api_search_upload(request: Request):
        try:
            outcome = await _upload(request)
        except SearchError as err:
            return JSONResponse({"error": err.message}, status_code=err.status, headers=retry_after(err))
        return outcome.as_json()

    async def _upload(request: Request) -> Outcome:
        params = request.query_params
        k, class_code = service.parse_k(params.get("k")), service.parse_class(params.get("class"))
        data = await read_upload(request, limits.max_upload_bytes)
        query = {"kind": "upload", "bytes": len(data)}
        return await run_in_threadpool(service.run, query, lambda: service.embed_upload(data), k, class_code)

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
        return {"status": "ok", "drawings": len(catalog), "index": len(searcher.index)}

    return app
