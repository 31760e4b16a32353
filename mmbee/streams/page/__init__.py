"""The live page on the worker's web port (`/`): what the worker sees right now, for people.

Read in this order: `static/index.html` and `static/page.js` (the page: it polls
`/mmbee/page/` every few seconds and draws tables and plain SVG charts; no library, nothing
loaded from outside the worker), `history.py` (the ring buffers the existing timers feed, the
last dead letters), `top.py` (the top streams and their modality ablation), `browser.py`
(headless Chromium over the DevTools protocol: screenshots for `make demo`, the browser test).
The routes and the JSON are registered in `mmbee.streams.web`.

Example:
    >>> sorted(PAGE_ASSETS)
    ['index.html', 'page.css', 'page.js']
    >>> page_asset("index.html").startswith(b"<!doctype html>")
    True
"""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["PAGE_ASSETS", "page_asset"]

PAGE_ASSETS = {
    "index.html": "text/html",
    "page.js": "text/javascript",
    "page.css": "text/css",
}
"""The page's files (package data under `static/`) and their content types."""


@cache
def page_asset(name: str) -> bytes:
    """The bytes of one of the page's files (read from the package once)."""
    if name not in PAGE_ASSETS:
        raise KeyError(f"not a page asset: {name!r}")
    return (resources.files(__name__) / "static" / name).read_bytes()
