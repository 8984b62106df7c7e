"""Screenshot of the search page for the docs: upload a query drawing to a running server and save the page.

    make run && make search            # in another terminal: the champion's page on http://127.0.0.1:8000
    .venv/bin/python scripts/screenshot_search.py --url http://127.0.0.1:8000 --image QUERY.png \
        [--k 12] [--class 06] [--out docs/img/search_page.png]

or, for a corpus drawing instead of an upload: `--drawing-id USD0836154-20190205-D00002`.
Chromium is Debian's /usr/bin/chromium (scripts/ensure_chromium.sh); Playwright only drives it.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running search page")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--image", help="query image file to upload")
    query.add_argument("--drawing-id", help="a corpus drawing id to query with instead")
    p.add_argument("--k", type=int, default=12)
    p.add_argument("--class", dest="class_code", default="", help="Locarno class filter, e.g. 06")
    p.add_argument("--out", default=str(REPO / "docs" / "img" / "search_page.png"))
    p.add_argument("--width", type=int, default=1400)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = args.url.rstrip("/")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": args.width, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        if args.drawing_id:
            params = {"drawing_id": args.drawing_id, "k": args.k, **({"class": args.class_code} if args.class_code else {})}
            page.goto(f"{base}/search?{urllib.parse.urlencode(params)}", wait_until="domcontentloaded")
        else:
            page.goto(base, wait_until="domcontentloaded")
            page.fill("#k", str(args.k))
            if args.class_code:
                page.select_option("#class-filter", args.class_code)
            page.set_input_files("#upload", args.image)
        error = page.locator("#error")
        expect(page.locator("#outcome").or_(error)).to_be_visible()
        if error.count():
            print(f"the page shows an error: {error.inner_text()}", file=sys.stderr)
            browser.close()
            return 1
        page.wait_for_function("() => [...document.querySelectorAll('#grid img, .query-thumb')]"
                               ".every(i => !i.getAttribute('src') || (i.complete && i.naturalWidth > 0))")
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
