"""Checks the browser test runs on each page of the built site, and the registry for page-specific ones.

Generic checks (every page in _toc.yml): it loads; no unexpected console or page errors; no request left
the machine except CDN files answered from the local npm cache; no broken image; math typeset by MathJax
where the page has math; the repository and issues buttons, and Colab and Binder launch links on
notebook pages, lead to the repository and ref of _config.yml; and for every ipywidgets slider
on the page, moving it changes the image shown in its output.

To add checks for one page, create `tests/browser/checks_<topic>.py` (it is imported automatically):

    from site_checks import page_check

    @page_check("book/decay")
    def decay_explorer_moves(page, ctx):
        '''ctx.screenshot(name) saves _screenshots/<page>-<name>.png; ctx.problems.append(msg) fails.'''
        slider = page.locator(".widget-slider").first
        ...
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

from project_scripts import load_script  # tests/ is on sys.path (pytest puts tests/conftest.py's folder there)

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "_screenshots"

# Console and page errors seen on every jupyter-book 1 page and known harmless.
ALLOWED_ERRORS = [
    re.compile(r"Got invalid theme mode"),
    re.compile(r"THEBE_JS_URL.*already been declared"),
    # html-manager asks for FontAwesome font files it does not ship; the 404 we answer is logged.
    re.compile(r"Failed to load resource: the server responded with a status of 404"),
]
# Files under a cached CDN package that may be missing (answered 404 without failing the test).
ALLOWED_MISSING_CDN = re.compile(r"\.(woff2?|ttf|eot|otf|svg)(\?.*)?$")


@dataclass
class PageContext:
    """What a check gets besides the Playwright page."""

    docname: str                       # e.g. "book/intro"
    source_suffix: str                 # ".ipynb" or ".md"
    problems: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)     # printed in the test's report

    def screenshot_path(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        return SCREENSHOTS / f"{self.docname.replace('/', '__')}-{name}.png"


PageCheck = Callable[["object", PageContext], None]
EXTRA_CHECKS: Dict[str, List[PageCheck]] = {}


def page_check(docname: str) -> Callable[[PageCheck], PageCheck]:
    """Register a check that runs on one page (by its _toc.yml name, e.g. "book/decay") after the generic ones."""

    def register(fn: PageCheck) -> PageCheck:
        EXTRA_CHECKS.setdefault(docname, []).append(fn)
        return fn

    return register


# ---------------------------------------------------------------------------------------------- generic

def check_images(page, ctx: PageContext) -> None:
    """Every <img> loaded (lazy ones forced to load first)."""
    page.evaluate("document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("[...document.images].every(i => i.complete)", timeout=15_000)
    broken = page.evaluate(
        "[...document.images].filter(i => !(i.naturalWidth > 0)).map(i => (i.currentSrc || i.src).slice(0, 120))")
    for src in broken:
        ctx.problems.append(f"broken image: {src}")


def check_math(page, ctx: PageContext) -> None:
    """Where the page has math, MathJax typeset every piece of it, without errors."""
    n_math = page.evaluate("document.querySelectorAll('.math').length")
    if not n_math:
        return
    try:
        page.wait_for_function(
            "document.querySelectorAll('.math').length === document.querySelectorAll('.math mjx-container').length",
            timeout=20_000)
    except Exception:  # playwright TimeoutError
        done = page.evaluate("document.querySelectorAll('.math mjx-container').length")
        ctx.problems.append(f"math not rendered: {done} of {n_math} .math elements typeset by MathJax")
        return
    n_errors = page.evaluate("document.querySelectorAll('mjx-merror, .math merror').length")
    if n_errors:
        ctx.problems.append(f"{n_errors} MathJax error(s) on the page")


def check_launch_links(page, ctx: PageContext) -> None:
    """The repository and issues buttons lead to the repository of _config.yml; notebook pages have a Colab
    and a Binder launch link to this very notebook at the ref of _config.yml: the links the install cells
    and the README name too (scripts/regen_notebooks.py; tests/test_publishing.py checks those)."""
    repo = load_script("regen_notebooks").repository()

    def hrefs(selector: str) -> List[str]:
        return page.eval_on_selector_all(selector, "els => els.map(e => e.href)")

    if hrefs("a.btn-source-repository-button") != [repo.url]:
        ctx.problems.append(f"the repository button does not lead to {repo.url}: "
                            f"{hrefs('a.btn-source-repository-button')}")
    issues = hrefs("a.btn-source-issues-button")
    if len(issues) != 1 or not issues[0].startswith(f"{repo.url}/issues/new?"):
        ctx.problems.append(f"the issues button does not open an issue on {repo.url}: {issues}")
    if ctx.source_suffix != ".ipynb":
        return
    notebook = f"{ctx.docname}.ipynb"
    colab = hrefs("a[href^='https://colab.research.google.com/github/']")
    binder = hrefs("a[href*='/v2/gh/']")
    if colab != [repo.colab_link(notebook)]:
        ctx.problems.append(f"the Colab launch link is not {repo.colab_link(notebook)} (found {colab})")
    if not any(h.endswith(f"/v2/gh/{repo.owner}/{repo.name}/{repo.ref}?urlpath=tree/{notebook}") for h in binder):
        ctx.problems.append(f"no Binder launch link to {notebook} at {repo.ref} (found {binder})")
    if not page.locator(".dropdown-launch-buttons").first.is_visible():
        ctx.problems.append("the launch button is not visible")


def _wait_for_widgets(page, ctx: PageContext) -> int:
    """Wait until every stored widget view is rendered; return how many views the page has."""
    n_views = page.evaluate(
        "document.querySelectorAll('script[type=\"application/vnd.jupyter.widget-view+json\"]').length")
    if not n_views:
        return 0
    try:
        page.wait_for_function(
            "document.querySelectorAll('.jupyter-widgets, .widget-area .lm-Widget').length > 0", timeout=30_000)
    except Exception:
        ctx.problems.append(f"{n_views} widget view(s) stored but no widget rendered (is the widget JS loading?)")
        return n_views
    page.wait_for_timeout(500)
    return n_views


_VISIBLE_IMAGES = """(root) => [...root.querySelectorAll('img')]
    .filter(i => i.offsetParent !== null && i.getBoundingClientRect().width > 0)
    .map(i => i.currentSrc || i.src)"""


def _shown(control) -> str:
    """A digest of the images visible in the output that holds the control."""
    srcs = control.evaluate(f"(el) => ({_VISIBLE_IMAGES})(el.closest('.cell_output, .output, .cell') || document.body)")
    return hashlib.sha1("\n".join(srcs).encode()).hexdigest()[:12] + f" ({len(srcs)} images)"


# A control that only works with a live kernel (e.g. retnet_mini.widgets.live_view, or ipywidgets.interact)
# is exempt from "moving it changes the image": mark its box with the class `needs-kernel`, or say
# "needs a live kernel" in a label (HTML, Label) that sits directly in the same box.
_NEEDS_KERNEL = """(el) => {
    if (el.closest('.needs-kernel')) return true;
    const box = el.parentElement && el.parentElement.closest('.widget-box');
    return !!box && [...box.children].some(
        (c) => !c.classList.contains('widget-box') && /needs a live kernel/i.test(c.textContent || ''));
}"""


def _drag(page, slider, to_fraction: float) -> None:
    handle = slider.locator(".noUi-handle, .ui-slider-handle").first
    track = slider.locator(".noUi-target, .slider, .ui-slider").first
    handle.scroll_into_view_if_needed()
    hb, tb = handle.bounding_box(), track.bounding_box()
    page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
    page.mouse.down()
    page.mouse.move(tb["x"] + to_fraction * tb["width"], hb["y"] + hb["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_timeout(400)


def check_sliders(page, ctx: PageContext) -> None:
    """Each ipywidgets slider, dragged to one end and then the other, changes the image its output shows;
    so does clicking the buttons of each ToggleButtons."""
    if not _wait_for_widgets(page, ctx):
        return
    sliders = page.locator(".widget-slider, .widget-hslider")
    n_checked = 0
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        if not slider.is_visible() or slider.evaluate(_NEEDS_KERNEL):
            continue
        n_checked += 1
        before = _shown(slider)
        _drag(page, slider, 1.0)
        after_right = _shown(slider)
        _drag(page, slider, 0.0)
        after_left = _shown(slider)
        if len({before, after_right, after_left}) < 2:
            ctx.problems.append(f"slider {i}: moving it did not change the image shown ({before})")
        slider.evaluate("(el) => (el.closest('.cell_output, .output, .cell') || el).scrollIntoView()")
        page.screenshot(path=str(ctx.screenshot_path(f"slider{i}")))
    groups = page.locator(".widget-toggle-buttons")
    for i in range(groups.count()):
        group = groups.nth(i)
        if not group.is_visible() or group.evaluate(_NEEDS_KERNEL):
            continue
        n_checked += 1
        buttons = group.locator("button")
        seen = {_shown(group)}
        for j in range(buttons.count()):
            buttons.nth(j).click()
            page.wait_for_timeout(300)
            seen.add(_shown(group))
        if buttons.count() > 1 and len(seen) < 2:
            ctx.problems.append(f"toggle buttons {i}: clicking them did not change the image shown")
    ctx.notes.append(f"{n_checked} interactive control(s) checked")


GENERIC_CHECKS: List[PageCheck] = [check_images, check_math, check_launch_links, check_sliders]
