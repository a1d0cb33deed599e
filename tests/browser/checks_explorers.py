"""The no-kernel explorers (retnet_mini.widgets.frame_explorer) on the built site: the frame shown follows the
controls, and Play advances.

Each frame carries its label in the page, hidden: the explorer's box has the class `retnet-explorer`, each
frame's box `retnet-frame`, and a frame ends with `<span class="retnet-frame-label" data-values='[...]'>`,
the values each control displays for that frame, in the controls' order (see retnet_mini/widgets.py). So the
checks below can compare, after every move, what the controls say with what the visible frame was drawn for.

For each explorer of a page (the expected ones are listed in EXPLORERS):
- its controls are the expected ones (descriptions, slider or buttons) and a Play button is there or not;
- every combination of values is reached with the controls themselves: a slider is moved with the
  keyboard (Home, then ArrowRight one value at a time, as far as it goes), buttons are clicked; after each
  move the control displays the new value (slider readout, active button) and exactly one frame is
  visible, whose label equals what the controls display;
- each combination shows its own image (no two frames show the same picture);
- a slider dragged with the mouse to its right end and back to its left end shows its last and its first
  value, with the matching frame;
- Play (where there is one), pressed with the slider at its first value, advances the slider's readout at
  least two values in about 2.4 s, one value at a time, and the visible frame follows (every readout seen
  is seen with the frame of the controls' values); pressed again (or at the slider's end), it stops;
- the screenshot shows a frame that matches the controls.
A screenshot of each explorer, as the checks leave it, is saved (ctx.screenshot_path:
_screenshots/<page>-explorer<i>.png).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from site_checks import PageContext, _wait_for_widgets, page_check


@dataclass(frozen=True)
class Explorer:
    """What an explorer on a page should have: its controls (description, "slider" or "buttons"), in order,
    and whether a Play button drives the first slider."""

    controls: Tuple[Tuple[str, str], ...]
    play: bool


EXPLORERS: Dict[str, List[Explorer]] = {
    "book/intro": [Explorer((("model", "buttons"), ("sequences", "slider")), play=False)],
    "book/three_forms": [Explorer((("chunk size", "slider"),), play=True)],
    "book/decay": [Explorer((("heads", "slider"), ("schedule", "buttons")), play=True)],
}

CONTROL = ".widget-slider, .widget-hslider, .widget-toggle-buttons"
SETTLE_MS = 3_000  # how long a move may take to show its frame (jslinks run in the page: a few ms)

# The state of explorer number `i` on the page, as the reader sees it. Its controls are the first n in it,
# n = the number of values in a frame's label (a live view, if any, comes after the frames).
_STATE = """([i, sel]) => {
    const ex = document.querySelectorAll('.retnet-explorer')[i];
    const frames = [...ex.querySelectorAll('.retnet-frame')];
    const visible = frames.filter((f) => f.offsetParent !== null && f.getBoundingClientRect().height > 0);
    const labels = frames.map((f) => f.querySelector('.retnet-frame-label')).filter((l) => l);
    const n = labels.length ? JSON.parse(labels[0].dataset.values).length : 0;  // rendered: the shown one
    const controls = [...ex.querySelectorAll(sel)].slice(0, n).map((c) => {
        const slider = c.matches('.widget-toggle-buttons') ? null : c;
        const handle = slider && slider.querySelector('.noUi-handle');
        const active = c.querySelector('button.mod-active');
        return {
            description: (c.querySelector('.widget-label') || {}).textContent || '',
            kind: slider ? 'slider' : 'buttons',
            shown: slider ? (c.querySelector('.widget-readout') || {}).textContent || ''
                          : (active ? active.textContent.trim() : null),
            index: handle ? Math.round(parseFloat(handle.getAttribute('aria-valuenow')))
                          : [...c.querySelectorAll('button')].indexOf(active),
            count: handle ? Math.round(parseFloat(handle.getAttribute('aria-valuemax'))) + 1
                          : c.querySelectorAll('button').length,
        };
    });
    const frame = visible.length === 1 ? visible[0] : null;
    const label = frame && frame.querySelector('.retnet-frame-label');
    const img = frame && frame.querySelector('img');
    return {
        controls,
        n_visible: visible.length,
        frame_values: label ? JSON.parse(label.dataset.values) : null,
        frame_label: label ? label.textContent : null,
        image: img ? (img.currentSrc || img.src) : null,
        play: !!ex.querySelector('.widget-play'),
    };
}"""


def _state(page, i: int) -> dict:
    state = page.evaluate(_STATE, [i, CONTROL])
    if state["image"]:
        state["image"] = hashlib.sha1(state["image"].encode()).hexdigest()[:12]
    return state


def _shown(state: dict) -> List[Optional[str]]:
    return [c["shown"] for c in state["controls"]]


def _settled(page, i: int) -> dict:
    """Wait until one frame is visible and its label equals what the controls display; return the state
    (which the caller checks: a timeout is not an error here, the mismatch is reported by the caller)."""
    try:
        page.wait_for_function(
            f"(args) => {{ const s = ({_STATE})(args); return s.n_visible === 1 && "
            "JSON.stringify(s.frame_values) === JSON.stringify(s.controls.map((c) => c.shown)); }",
            arg=[i, CONTROL], timeout=SETTLE_MS)
    except Exception:  # playwright TimeoutError: reported by the caller from the state
        pass
    return _state(page, i)


def _frame_matches(state: dict, ctx: PageContext, where: str) -> bool:
    if state["n_visible"] != 1:
        ctx.problems.append(f"{where}: {state['n_visible']} frames visible, expected exactly 1")
        return False
    if state["frame_values"] != _shown(state):
        ctx.problems.append(f"{where}: the controls show {_shown(state)} but the visible frame is "
                            f"{state['frame_label']!r} (values {state['frame_values']})")
        return False
    return True


class _Walker:
    """Moves the controls of explorer `i` with the mouse and keyboard, checking each step."""

    def __init__(self, page, ctx: PageContext, i: int):
        self.page, self.ctx, self.i = page, ctx, i
        self.where = f"{ctx.docname} explorer {i}"
        self.controls = page.locator(".retnet-explorer").nth(i).locator(CONTROL)

    def state(self) -> dict:
        return _state(self.page, self.i)

    def to_first(self, k: int) -> None:
        """Put control k on its first value: Home on a slider, a click on the first button."""
        control = self.controls.nth(k)
        if self.state()["controls"][k]["kind"] == "slider":
            handle = control.locator(".noUi-handle").first
            handle.focus()
            handle.press("Home")
        else:
            control.locator("button").first.click()

    def step(self, k: int) -> bool:
        """Move control k one value on (ArrowRight on a slider, a click on the next button); False at the end."""
        before = self.state()["controls"][k]
        if before["index"] + 1 >= before["count"]:
            return False
        control = self.controls.nth(k)
        if before["kind"] == "slider":
            handle = control.locator(".noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
        else:
            control.locator("button").nth(before["index"] + 1).click()
        return True

    def check_move(self, k: int, expected_index: int, seen: Dict[Tuple, str]) -> None:
        state = _settled(self.page, self.i)
        c = state["controls"][k]
        if c["index"] != expected_index:
            self.ctx.problems.append(f"{self.where}: {c['description']} is at position {c['index']} after "
                                     f"the move, expected {expected_index}")
        if _frame_matches(state, self.ctx, f"{self.where}, {c['description']} moved to {c['shown']!r}"):
            seen.setdefault(tuple(state["frame_values"]), state["image"])

    def walk(self, k: int, seen: Dict[Tuple, str]) -> None:
        """Every combination of the values of controls k, k+1, ... (the ones before k stay where they are)."""
        self.to_first(k)
        index = 0
        self.check_move(k, index, seen)
        while True:
            if k + 1 < len(self.state()["controls"]):
                self.walk(k + 1, seen)
            if not self.step(k):
                break
            index += 1
            self.check_move(k, index, seen)


def _drag(page, slider, fraction: float) -> None:
    handle = slider.locator(".noUi-handle").first
    track = slider.locator(".noUi-target").first
    handle.scroll_into_view_if_needed()
    hb, tb = handle.bounding_box(), track.bounding_box()
    y = hb["y"] + hb["height"] / 2
    page.mouse.move(hb["x"] + hb["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(tb["x"] + fraction * tb["width"], y, steps=8)
    page.mouse.up()


def _check_drag(page, ctx: PageContext, i: int, walker: _Walker) -> None:
    """Each slider dragged to its right end, then its left end: last value, then first, with their frames."""
    for k, c in enumerate(walker.state()["controls"]):
        if c["kind"] != "slider":
            continue
        slider = walker.controls.nth(k)
        for fraction, expected in ((1.0, c["count"] - 1), (0.0, 0)):
            _drag(page, slider, fraction)
            state = _settled(page, i)
            got = state["controls"][k]
            where = f"{walker.where}, {c['description']} dragged to {'right' if fraction else 'left'} end"
            if got["index"] != expected:
                ctx.problems.append(f"{where}: at position {got['index']}, expected {expected}")
            _frame_matches(state, ctx, where)


def _playing(button) -> bool:
    return button.evaluate(
        "(b) => /pause/.test((b.querySelector('[data-icon]') || {}).dataset?.icon || '') || "
        "!!b.querySelector('i.fa-pause')")


def _check_play(page, ctx: PageContext, i: int, walker: _Walker, order: List[str]) -> None:
    """Play from the first value advances the first control, in order, with its frame; a second press pauses."""
    walker.to_first(0)
    _settled(page, i)
    button = page.locator(".retnet-explorer").nth(i).locator(".widget-play button").first
    button.click()
    samples = []
    for _ in range(16):  # ~2.4 s: the explorers' interval is 800 ms
        page.wait_for_timeout(150)
        s = walker.state()
        samples.append((s["controls"][0]["shown"], s["frame_values"] == _shown(s) and s["n_visible"] == 1))
    # A second press pauses; but a Play that reached the slider's end has stopped by itself, and a press
    # would start it again. The button shows a pause icon while it plays.
    if _playing(button):
        button.click()
    readouts = list(dict.fromkeys(shown for shown, _ in samples))
    with_frame = {shown for shown, matches in samples if matches}
    # Play steps at once when pressed, then every interval: the readouts must be consecutive values of the
    # slider, from its first or second, at least three of them (two steps or more after the first sample).
    positions = [order.index(v) if v in order else -1 for v in readouts]
    if len(readouts) < 3:
        ctx.problems.append(f"{walker.where}: Play did not advance: readouts over 2.4 s {readouts}")
    if not positions or positions[0] not in (0, 1) or positions != list(range(positions[0],
                                                                             positions[0] + len(positions))):
        ctx.problems.append(f"{walker.where}: Play went {readouts}, not one value at a time from the start "
                            f"of {order}")
    if set(readouts) - with_frame:
        ctx.problems.append(f"{walker.where}: while playing, the frame shown never matched the controls "
                            f"for {sorted(set(readouts) - with_frame)} (samples {samples})")
    page.wait_for_timeout(1_000)
    paused = walker.state()["controls"][0]["shown"]
    page.wait_for_timeout(1_000)
    if walker.state()["controls"][0]["shown"] != paused or _playing(button):
        ctx.problems.append(f"{walker.where}: Play did not stop (a second press should pause it)")
    _frame_matches(_settled(page, i), ctx, f"{walker.where}, after Play")
    ctx.notes.append(f"explorer {i}: Play went {readouts}")


def check_explorers(page, ctx: PageContext) -> None:
    expected = EXPLORERS[ctx.docname]
    _wait_for_widgets(page, ctx)
    try:  # every explorer rendered, with its frame
        page.wait_for_function(
            "(n) => [...document.querySelectorAll('.retnet-explorer')].filter("
            "(ex) => ex.querySelector('.retnet-frame .retnet-frame-label')).length >= n",
            arg=len(expected), timeout=30_000)
    except Exception:  # playwright TimeoutError: the count below says what is missing
        pass
    n = page.locator(".retnet-explorer").count()
    if n != len(expected):
        ctx.problems.append(f"{n} explorer(s) (.retnet-explorer) on the page, expected {len(expected)}")
        return
    for i, spec in enumerate(expected):
        walker = _Walker(page, ctx, i)
        page.locator(".retnet-explorer").nth(i).scroll_into_view_if_needed()
        state = walker.state()
        got = tuple((c["description"], c["kind"]) for c in state["controls"])
        if got != spec.controls or state["play"] != spec.play:
            ctx.problems.append(f"{walker.where}: controls {got}, Play {state['play']}; expected "
                                f"{spec.controls}, Play {spec.play}")
            continue
        n_combos = 1
        for c in state["controls"]:
            n_combos *= c["count"]

        seen: Dict[Tuple, str] = {}
        walker.walk(0, seen)
        if len(seen) != n_combos:
            ctx.problems.append(f"{walker.where}: reached {len(seen)} of {n_combos} combinations: "
                                f"{sorted(seen)}")
        by_image: Dict[str, List[Tuple]] = {}
        for values, image in seen.items():
            by_image.setdefault(image, []).append(values)
        for values in by_image.values():
            if len(values) > 1:
                ctx.problems.append(f"{walker.where}: frames {values} show the same image")

        _check_drag(page, ctx, i, walker)
        if spec.play:
            first = state["controls"][0]
            order = list(dict.fromkeys(v[0] for v in seen))  # the first control's values, in walk order
            if first["kind"] == "slider" and len(order) == first["count"]:
                _check_play(page, ctx, i, walker, order)
            else:
                ctx.problems.append(f"{walker.where}: Play not checked: the walk did not reach every value "
                                    f"of {first['description']} ({order})")
        page.locator(".retnet-explorer").nth(i).screenshot(path=str(ctx.screenshot_path(f"explorer{i}")))
        _frame_matches(walker.state(), ctx, f"{walker.where}, in the screenshot")
        ctx.notes.append(f"explorer {i}: {len(seen)} frames checked ({', '.join(d for d, _ in spec.controls)})")


for _docname in EXPLORERS:
    page_check(_docname)(check_explorers)
