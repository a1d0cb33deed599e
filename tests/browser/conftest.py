"""Fixtures of the real-browser test: the built site on 127.0.0.1, and headless Debian Chromium, offline."""

from __future__ import annotations

import importlib
import mimetypes
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fetch_assets  # noqa: E402
import site_checks  # noqa: E402

ROOT = HERE.parents[1]
SITE = ROOT / "_build" / "html"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Page-specific checks: every tests/browser/checks_*.py registers its own with @site_checks.page_check.
for _module in sorted(HERE.glob("checks_*.py")):
    importlib.import_module(_module.stem)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output readable
        pass


@pytest.fixture(scope="session")
def site_url():
    """Serve _build/html on 127.0.0.1 (a free port) for the whole session."""
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE} has no built site: run `make site` first")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(SITE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} missing: run tests/browser/setup.sh (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class OfflineRouter:
    """Answers CDN URLs from the local npm cache, lets 127.0.0.1 through, aborts everything else."""

    def __init__(self):
        self.refused: list[str] = []
        self.missing: list[str] = []

    def __call__(self, route):
        url = route.request.url
        host = urlsplit(url).hostname or ""
        if host == "127.0.0.1" or url.startswith(("data:", "blob:")):
            route.continue_()
            return
        match = fetch_assets.JSDELIVR_NPM.match(url.split("?")[0].split("#")[0])
        if match:
            name, version, path = match.groups()
            file = fetch_assets.package_dir(name, version) / path
            if file.is_file():
                ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                route.fulfill(status=200, path=str(file), content_type=ctype,
                              headers={"Access-Control-Allow-Origin": "*"})
                return
            if (name, version) in [(n, v) for n, v in _cached_packages()]:
                if not site_checks.ALLOWED_MISSING_CDN.search(path):
                    self.missing.append(url)
                route.fulfill(status=404, body="not in the local npm cache",
                              headers={"Access-Control-Allow-Origin": "*"})
                return
        self.refused.append(url)
        route.abort()


def _cached_packages():
    return fetch_assets.packages(fetch_assets.cdn_urls())


@pytest.fixture
def page(browser):
    """A fresh page, offline but for the local server and the cached CDN packages; records what goes wrong."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    router = OfflineRouter()
    context.route("**/*", router)
    page = context.new_page()
    page.router = router
    page.console_errors = []
    page.page_errors = []
    page.on("console", lambda m: page.console_errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.page_errors.append(str(e)))
    yield page
    context.close()
