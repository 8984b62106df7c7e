"""The search page: a small web app (FastAPI + Jinja2, run by uvicorn) over the champion's gallery index.

`app.create_app(searcher, layout)` builds it; `catalog.Catalog` looks drawings up by id (metadata, thumbnails);
`cli` is `hmpcl serve` (loading the champion, the host check); `demo` writes a small rendered corpus with its
index for tests and benchmarks. fastapi, uvicorn and jinja2 are imported in this package only.
"""
