"""Real-browser test of the built site: every page in _toc.yml, in headless Debian Chromium, offline.

Run with `make browser` (after `make site`): serves _build/html on 127.0.0.1, answers the CDN scripts from
.ci-cache/npm (tests/browser/setup.sh fetches them), refuses every other request, and runs the checks of
site_checks.py (generic) and checks_*.py (page-specific) on each page. Screenshots: _screenshots/.
"""

from __future__ import annotations

import pytest
import yaml

import site_checks
from conftest import ROOT, SITE

pytestmark = pytest.mark.browser


def toc_pages() -> list[tuple[str, str]]:
    """(docname, source suffix) of every page in _toc.yml, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    names = [toc["root"]]

    def walk(node):
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                if "file" in child:
                    names.append(child["file"])
                walk(child)

    walk(toc)
    pages = []
    for name in names:
        stem = name.rsplit(".", 1)[0] if name.endswith((".ipynb", ".md")) else name
        suffix = ".ipynb" if (ROOT / f"{stem}.ipynb").is_file() else ".md"
        pages.append((stem, suffix))
    return pages


@pytest.mark.parametrize("docname, suffix", toc_pages(), ids=[d for d, _ in toc_pages()])
def test_page(page, site_url, docname, suffix):
    ctx = site_checks.PageContext(docname=docname, source_suffix=suffix)
    assert (SITE / f"{docname}.html").is_file(), f"{docname}.html was not built"
    response = page.goto(f"{site_url}/{docname}.html", wait_until="load")
    assert response is not None and response.status == 200, f"{docname}: HTTP {response and response.status}"
    page.wait_for_load_state("networkidle")
    title = page.title()
    if not title.strip():
        ctx.problems.append("empty <title>")

    for check in site_checks.GENERIC_CHECKS + site_checks.EXTRA_CHECKS.get(docname, []):
        check(page, ctx)

    first_figure = page.locator(".cell_output img").first
    if first_figure.count():
        first_figure.evaluate("(el) => el.scrollIntoView({block: 'center'})")
        page.screenshot(path=str(ctx.screenshot_path("figure")))
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ctx.screenshot_path("top")))
    page.screenshot(path=str(ctx.screenshot_path("full")), full_page=True)

    unexpected = [m for m in page.console_errors
                  if not any(p.search(m) for p in site_checks.ALLOWED_ERRORS)]
    ctx.problems += [f"console error: {m}" for m in unexpected]
    ctx.problems += [f"page error: {e}" for e in page.page_errors
                     if not any(p.search(e) for p in site_checks.ALLOWED_ERRORS)]
    ctx.problems += [f"request left the machine (refused): {u}" for u in page.router.refused]
    ctx.problems += [f"CDN file missing from the npm cache: {u}" for u in page.router.missing]
    for note in ctx.notes:
        print(f"{docname}: {note}")
    assert not ctx.problems, f"{docname}:\n  " + "\n  ".join(ctx.problems)
