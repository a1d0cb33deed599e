"""Interactive explorers that keep working on the static website, where no kernel runs.

A plain ``interact`` slider moves on the website but its plot never changes: the plot is computed by a
kernel that is not there. So :func:`frame_explorer` draws every view *ahead of time*: it calls
``draw(value)`` once per value, renders each figure to a small PNG, stacks the PNGs in one
``ipywidgets.Stack`` and drives which one is visible with a slider through ``ipywidgets.jslink``. The
images and the links are saved in the notebook's widget state and the links run in the browser's JavaScript,
so the control works in JupyterLab and in the built book alike, with or without a kernel.

On ipywidgets 7 (Colab's ipywidgets has long been 7.7.1), which has no ``Stack``, each stack is a plain
``Box`` whose children the *kernel* shows and hides (:class:`KernelSwitch`), driven through
``ipywidgets.link`` (kernel-side) instead of ``jslink``. Colab always has a live kernel, and this path avoids
the two things Colab's ipywidgets-7 front end has been known to get wrong: ``Tab`` rendering (all children
in the first tab, googlecolab/colabtools#1446; tabs not shown in Chrome, #3105, open) and ``jslink``
(#1612, whose workaround is ``link``). A notebook that was *executed* under ipywidgets 7 therefore needs a
kernel to switch frames; the website is built with ipywidgets 8 and keeps the kernel-free path.

Several parameters (say heads x schedule) use nested stacks, because ``jslink`` can only copy one integer
to another: the outer stack holds one inner stack per value of the first parameter; the first slider is
linked to the outer stack, the second slider to *every* inner stack (one link each). Moving either slider
then shows frame ``(i, j)`` with no arithmetic in the browser.

nbval cannot compare images or widget views, so a notebook should also *print* the numbers behind a view;
:func:`table` formats them as a plain-text table, and a frame can carry the same text to show under its
figure.

Each frame also carries its label in the page, hidden, so that a test can tell which frame is on screen:
the explorer's box has the CSS class ``retnet-explorer``, each frame's box the class ``retnet-frame``, and
a frame ends with a hidden ``<span class="retnet-frame-label">`` whose text is the label (``heads=8,
schedule='paper (eq. 8)'``) and whose ``data-values`` attribute is a JSON list of what each control
displays for that frame (``["8", "paper (eq. 8)"]``: ``fmt(value)``, in the controls' order).
"""
from __future__ import annotations

import base64
import html
import inspect
import io
import itertools
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import ipywidgets as widgets
import matplotlib.pyplot as plt
import traitlets
from IPython.display import Image, display
from ipywidgets.embed import dependency_state
from ipywidgets.widgets.widget_link import (
    Link,  # the class jslink returns (ipywidgets 7 and 8)
)
from matplotlib.figure import Figure

from ._checks import (
    ArgumentTypeError,
    check_callable,
    check_int,
    check_sequence,
    check_str,
)

Values = Union[Sequence[Any], Mapping[str, Sequence[Any]]]
Control = Union[widgets.SelectionSlider, widgets.ToggleButtons]  # both sync the chosen position as `index`

#: Most frames one explorer may precompute (``max_frames``'s default). The book's largest has 12 (the
#: intro's memory calculator, 3 models x 4 batch sizes); a frame takes ~0.3 s to draw here and ~40 KB of
#: the page, so 100 frames is already half a minute of drawing and a few MB per page.
MAX_FRAMES = 100
#: The least widget state one frame adds besides its PNG (its Image, HTML and VBox models; ~2.2 KB
#: measured): an explorer of more than ``max_bytes // MIN_FRAME_BYTES`` frames cannot fit, whatever it draws.
MIN_FRAME_BYTES = 2_000
#: Most positions on one live slider (the book's decay chapter uses 32): every option's label is sent to
#: the browser, and a slider has fewer pixels than that.
MAX_LIVE_VALUES = 1_000
#: Resolution range for a frame's PNG: below 10 dpi a figure is a few pixels; at 300 one frame of the book's
#: 10 x 3.6 inch figures is 3000 x 1080 pixels and ~200 KB, a fifth of an explorer's default byte budget.
MIN_DPI, MAX_DPI = 10, 300



class KernelSwitch(widgets.Box):
    """The ipywidgets 7 stand-in for ``Stack``: a Box that shows only ``children[selected_index]``.

    ``selected_index`` is a kernel-side trait (not synced): changing it, e.g. through ``ipywidgets.link``
    from a slider's ``index``, sets ``layout.display`` of every child, which the front end renders. So each
    child needs a Layout of its own. Plain Box and Layout models are all the front end needs.
    """
    selected_index = traitlets.Int(0)

    def __init__(self, children: Sequence[widgets.Widget] = (), selected_index: int = 0, **kwargs: Any):
        super().__init__(children, **kwargs)
        self.selected_index = selected_index
        self._show()

    @traitlets.observe("selected_index", "children")
    def _on_selected(self, change: Any) -> None:
        self._show()

    def _show(self) -> None:
        for i, child in enumerate(self.children):
            display_value = None if i == self.selected_index else "none"
            if child.layout.display != display_value:
                child.layout.display = display_value

    @property
    def shown(self) -> widgets.Widget | None:
        """The child on screen (None if ``selected_index`` is out of range)."""
        visible = [c for c in self.children if c.layout.display != "none"]
        return visible[0] if len(visible) == 1 else None


class Frame(NamedTuple):
    """One precomputed view: the parameter values that drew it, its PNG, its text (may be empty) and its
    label (``"heads=8, schedule='paper (eq. 8)'"``)."""
    values: tuple[Any, ...]
    png: bytes
    text: str
    label: str


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None,
          floatfmt: str = ".4f") -> str:
    """A plain-text table with right-aligned columns, for ``print`` (nbval compares printed text).

    Floats use ``floatfmt`` (4 decimals by default: the last bits of a float differ between CPUs);
    0-d tensors and numpy scalars are unwrapped with ``.item()``. Every row has as many cells as there are
    headers (when given); without headers, rows may differ in length.
    """
    rows = [check_sequence(f"rows[{i}]", row, min_len=0)
            for i, row in enumerate(check_sequence("rows", rows, min_len=0))]
    if headers is not None:
        headers = check_sequence("headers", headers)
        for i, row in enumerate(rows):
            if len(row) != len(headers):
                raise ValueError(f"rows[{i}] has {len(row)} cells but there are {len(headers)} headers")
    check_str("floatfmt", floatfmt)
    try:
        format(1.0, floatfmt)
    except ValueError:
        raise ValueError(f"floatfmt must be a format spec for floats such as '.4f' or '.3e', "
                         f"got {floatfmt!r}") from None

    def cell(x: Any) -> str:
        x = x.item() if hasattr(x, "item") else x
        return format(x, floatfmt) if isinstance(x, float) else str(x)

    lines = [[str(h) for h in headers]] if headers is not None else []
    lines += [[cell(x) for x in row] for row in rows]
    if not any(lines):
        return ""
    widths = [max(len(line[c]) for line in lines if c < len(line)) for c in range(max(map(len, lines)))]
    out = ["  ".join(s.rjust(w) for s, w in zip(line, widths)) for line in lines]
    if headers is not None:
        out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _params(values: Values, name: str, argument: str = "values",
            fmt: Callable[[Any], str] = str) -> list[tuple[str, list[Any]]]:
    """Normalize ``values`` to ``[(name, [v, ...]), ...]``, one entry per parameter, checking it on the way:
    parameter names are non-empty strings, each parameter has at least one value and no two of its values
    display alike (``fmt``): a control could not tell them apart."""
    check_str("name", name)
    if isinstance(values, Mapping):
        if not values:
            raise ValueError(f"frame_explorer needs at least one value per parameter, got {argument}={values!r}")
        params = list(values.items())
    else:
        params = [(name, values)]
    checked = []
    for n, vs in params:
        check_str(f"the parameter name {n!r} in {argument}", n)
        where = f"{argument}[{n!r}]" if isinstance(values, Mapping) else argument
        vs = check_sequence(where, vs, min_len=0)
        if not vs:
            raise ValueError(f"frame_explorer needs at least one value per parameter, got {where}=[]")
        shown = [fmt(v) for v in vs]
        for label in shown:
            if not isinstance(label, str):
                raise ArgumentTypeError(f"fmt must return a string, got {label!r} ({type(label).__name__})")
        twice = sorted(label for label, count in Counter(shown).items() if count > 1)
        if twice:
            raise ValueError(f"{where} holds values that display alike ({', '.join(map(repr, twice))}): "
                             f"give each value once")
        checked.append((n, vs))
    return checked


def _check_dpi(dpi: Any) -> int:
    return check_int("dpi", dpi, MIN_DPI, MAX_DPI)


def _check_arity(draw: Callable[..., Any], params: list[tuple[str, list[Any]]]) -> None:
    """Refuse a ``draw`` that cannot take one argument per parameter, before any frame is drawn."""
    try:
        signature = inspect.signature(draw)
    except (TypeError, ValueError):   # some builtins have no signature: let the first call tell
        return
    try:
        signature.bind(*(vs[0] for _, vs in params))
    except TypeError:
        names = [n for n, _ in params]
        raise ValueError(f"draw{signature} cannot be called with one argument per parameter "
                         f"{names} (in that order)") from None


def render(draw: Callable[..., Any], args: Sequence[Any], dpi: int = 80,
           label: str | None = None) -> tuple[bytes, str]:
    """Call ``draw(*args)`` and return ``(png_bytes, text)``; every figure it opened is closed.

    ``draw`` returns a matplotlib ``Figure`` or ``(Figure, text)``. Closing matters: in a notebook, open
    pyplot figures are shown at the end of the cell, so a leak would print every frame below the explorer.
    ``dpi`` is an int from 10 to 300; ``label`` (a string) names the call in the error ``draw`` may raise.
    """
    check_callable("draw", draw)
    args = check_sequence("args", args, min_len=0)
    _check_dpi(dpi)
    if label is not None:
        check_str("label", label, empty=True)
    before = set(plt.get_fignums())
    try:
        with plt.rc_context():  # a draw function that changes rcParams must not change later figures
            result = draw(*args)
        fig, text = result if isinstance(result, tuple) else (result, "")
        if not isinstance(fig, Figure) or not isinstance(text, str):
            raise TypeError(f"draw must return a Figure or (Figure, str), got {type(result).__name__}")
        buf = io.BytesIO()
        # No "Software" tag: the same inputs give the same bytes whatever the matplotlib version.
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        return buf.getvalue(), text
    except Exception as err:
        raise ValueError(f"draw failed for {label or repr(tuple(args))}: "
                         f"{type(err).__name__}: {err}") from err
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)


def _control(name: str, options: list[tuple[str, Any]], values: list[Any]) -> Control:
    """A slider for numbers, buttons for names: a slider's readout clips labels longer than ~8 characters.

    Both keep the value's label on screen and expose the chosen position as the synced ``index``.
    """
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    style = {"description_width": "initial"}
    if numeric:
        return widgets.SelectionSlider(options=options, value=options[0][1], description=name, style=style)
    # display flex: put the buttons beside their description (ipywidgets 8 puts them on the next line)
    return widgets.ToggleButtons(options=options, value=options[0][1], description=name, style=style,
                                 layout=widgets.Layout(display="flex", align_items="center"))


class FrameExplorer(widgets.VBox):
    """A VBox of sliders (and a Play button) over precomputed frames; see :func:`frame_explorer`.

    Attributes (for tests and notebooks): ``controls`` (per parameter, a SelectionSlider, or
    ToggleButtons for non-numeric values, whose ``index`` is the position of the value shown),
    ``play`` (a Play widget or None), ``stacks`` (per parameter, the Stack widgets its control
    switches; :class:`KernelSwitch` boxes on ipywidgets 7), ``links`` (the jslink objects; kernel-side
    ``link`` objects on ipywidgets 7), ``in_browser`` (True when the links run in the browser, i.e. the
    explorer works with no kernel), ``frames`` (all frames, in ``itertools.product`` order), ``nbytes``
    (bytes its widget state adds to the notebook).
    """
    controls: list[Control]
    play: widgets.Play | None
    stacks: list[list[widgets.Widget]]
    links: list[Link | traitlets.link]
    in_browser: bool
    frames: list[Frame]
    nbytes: int


def frame_explorer(draw: Callable[..., Any], values: Values, name: str = "value", *,
                   fmt: Callable[[Any], str] = str, play: bool | str = True, interval: int = 800,
                   dpi: int = 80, max_bytes: int = 1_000_000, max_frames: int = MAX_FRAMES,
                   live: Values | None = None) -> FrameExplorer:
    """Precompute ``draw`` for every value and return a control that switches frames with no kernel.

    ``values`` is a list (one parameter called ``name``; ``draw(v)``) or a mapping ``{name: [values]}``
    (several parameters; ``draw(v1, v2, ...)`` in the mapping's order, one frame per combination).
    ``draw`` returns a Figure, or ``(Figure, text)`` where the text (e.g. from :func:`table`) is shown
    under the figure. Controls show ``fmt(value)``, never the index: a slider for numbers, buttons for
    other values. ``play`` adds a Play button on the first parameter (or on the one named). ``live``
    (values like ``values``, usually finer) appends :func:`live_view`, which needs a running kernel.

    Every argument is checked before the first frame is drawn: a ValueError (or TypeError) names the argument
    if a parameter has no values or two values that display alike, if ``draw`` cannot take one argument per
    parameter, if there would be more than ``max_frames`` frames (default :data:`MAX_FRAMES`) or more than
    can fit in ``max_bytes`` (at least :data:`MIN_FRAME_BYTES` each), if ``dpi`` is outside 10..300, or
    if ``play`` or ``live`` do not match the parameters. While drawing, a ValueError says if ``draw`` fails
    (naming the values) or the widget state (PNGs in base64 plus each widget's JSON) exceeds ``max_bytes``.
    """
    check_callable("draw", draw)
    check_callable("fmt", fmt)
    params = _params(values, name, "values", fmt)
    names = [n for n, _ in params]
    if not isinstance(play, (bool, str)):
        raise ArgumentTypeError(f"play must be True, False or a parameter's name, got {play!r} "
                                f"({type(play).__name__})")
    if isinstance(play, str) and play not in names:
        raise ValueError(f"play={play!r} is not one of the parameters {names}")
    check_int("interval", interval, 1)
    _check_dpi(dpi)
    check_int("max_bytes", max_bytes, 1)
    check_int("max_frames", max_frames, 1)
    if live is not None:
        live_params = _params(live, name, "live", fmt)
        if [n for n, _ in live_params] != names:
            raise ValueError(f"live must name the same parameters as values, in the same order: "
                             f"{names}, got {[n for n, _ in live_params]}")
        _check_live_sizes(live_params, "live")
    _check_arity(draw, params)
    n_frames = math.prod(len(vs) for _, vs in params)
    sizes = " x ".join(str(len(vs)) for _, vs in params)
    if n_frames > max_frames:
        raise ValueError(f"an explorer of {n_frames} frames ({sizes} values) is refused before drawing: "
                         f"at most max_frames={max_frames}; use fewer values, or a live view for fine steps")
    if n_frames * MIN_FRAME_BYTES > max_bytes:
        raise ValueError(f"{n_frames} frames ({sizes} values) cannot fit in max_bytes={max_bytes}: each frame "
                         f"takes at least {MIN_FRAME_BYTES} bytes of widget state; use fewer values")
    frames, nbytes = [], 0
    for args in itertools.product(*(vs for _, vs in params)):
        label = ", ".join(f"{n}={v!r}" for (n, _), v in zip(params, args))
        png, text = render(draw, args, dpi, label)
        frames.append(Frame(args, png, text, label))
        nbytes += len(base64.b64encode(png)) + len(text.encode())  # widget state stores PNGs as base64
        if nbytes > max_bytes:  # stop early, before drawing frames that cannot fit
            raise ValueError(f"explorer exceeds {max_bytes} bytes after {len(frames)} frames "
                             f"({nbytes} bytes); use fewer values, a smaller figure or a lower dpi")

    has_stack = hasattr(widgets, "Stack")  # ipywidgets >= 8; Colab has shipped 7
    stacks: list[list[widgets.Widget]] = [[] for _ in params]
    frame_iter = iter(frames)  # product order = depth-first order of the nesting below
    # Every widget saves its own Layout (~1 KB of JSON) unless given one: under a Stack frames share theirs.
    # flex-start keeps each PNG at its own size. A KernelSwitch hides a child through the child's own
    # Layout, so there each child gets one.
    plain, shared_frame_layout = widgets.Layout(), widgets.Layout(align_items="flex-start")

    def frame_layout() -> widgets.Layout:
        return shared_frame_layout if has_stack else widgets.Layout(align_items="flex-start")

    hidden = widgets.Layout(display="none")
    text_style = widgets.HTML.style.klass()  # the style class HTML uses (it differs in ipywidgets 7 and 8)

    def build(level: int) -> widgets.Widget:
        if level == len(params):
            frame = next(frame_iter)
            parts = [widgets.Image(value=frame.png, format="png", layout=plain)]
            if frame.text:
                parts.append(widgets.HTML(f"<pre>{html.escape(frame.text)}</pre>", layout=plain,
                                          style=text_style))
            parts.append(widgets.HTML(_label_html(frame, fmt), layout=hidden, style=text_style))
            box = widgets.VBox(parts, layout=frame_layout())
            box.add_class("retnet-frame")
            return box
        children = [build(level + 1) for _ in params[level][1]]
        if has_stack:
            box = widgets.Stack(children, selected_index=0)
        else:
            box = KernelSwitch(children, selected_index=0, layout=widgets.Layout())
        stacks[level].append(box)
        return box

    root = build(0)
    controls = [_control(n, [(fmt(v), i) for i, v in enumerate(vs)], vs) for n, vs in params]
    # One link per (slider, stack): bidirectional, so the slider also follows a stack changed from Python.
    # In the browser (jslink, saved in the widget state) where there is a Stack; in the kernel otherwise.
    link = widgets.jslink if has_stack else widgets.link
    links = [link((c, "index"), (s, "selected_index")) for c, level in zip(controls, stacks) for s in level]
    player, which = None, None
    if play is not False:
        which = controls[0 if play is True else names.index(play)]
    if which is not None and len(which.options) > 1:  # nothing to play over a single value
        player = widgets.Play(min=0, max=len(which.options) - 1, value=0, interval=interval)
        links.append(link((player, "value"), (which, "index")))

    # The played slider sits next to its Play button; the other sliders each get a row.
    rows = [widgets.HBox([player, c]) if player is not None and c is which else c for c in controls]
    children: list[widgets.Widget] = [*rows, root]
    if live is not None:
        children.append(_live_view(draw, live_params, fmt))

    box = FrameExplorer(children)
    box.add_class("retnet-explorer")
    box.controls, box.play, box.stacks, box.links, box.frames = controls, player, stacks, links, frames
    box.in_browser = has_stack
    # What the notebook (and the web page) really stores: every model's JSON, defaults included as
    # nbclient saves them, PNGs in base64: ~3 KB per frame over the PNGs, plus ~10 KB. (Not counted:
    # the figure a live view's Output holds, which only the frontend knows.)
    box.nbytes = len(json.dumps(dependency_state(box, drop_defaults=False)))
    if box.nbytes > max_bytes:
        raise ValueError(f"explorer exceeds {max_bytes} bytes ({box.nbytes} bytes of widget state "
                         f"for {len(frames)} frames); use fewer values, a smaller figure or a lower dpi")
    return box


def _label_html(frame: Frame, fmt: Callable[[Any], str]) -> str:
    """The hidden label a frame carries in the page: its values as each control displays them (``data-values``,
    a JSON list) and as ``name=value`` text."""
    shown = html.escape(json.dumps([fmt(v) for v in frame.values]), quote=True)
    return f'<span class="retnet-frame-label" data-values="{shown}">{html.escape(frame.label)}</span>'


def live_view(draw: Callable[..., Any], values: Values, name: str = "value", *,
              fmt: Callable[[Any], str] = str) -> widgets.VBox:
    """Sliders that redraw ``draw`` on every move: finer than the frames, but only with a live kernel.

    On the website the slider still moves and the figure stays as it was drawn at build time, hence the
    label. Put it in its own cell (e.g. tagged ``remove-output``) if the website should not show it.
    Arguments are checked as :func:`frame_explorer` checks them; a slider has at most
    :data:`MAX_LIVE_VALUES` positions.
    """
    check_callable("draw", draw)
    check_callable("fmt", fmt)
    params = _params(values, name, "values", fmt)
    _check_live_sizes(params, "values")
    _check_arity(draw, params)
    return _live_view(draw, params, fmt)


def _check_live_sizes(params: list[tuple[str, list[Any]]], argument: str) -> None:
    for n, vs in params:
        if len(vs) > MAX_LIVE_VALUES:
            raise ValueError(f"{argument} would give the live slider {n!r} {len(vs)} positions: "
                             f"at most {MAX_LIVE_VALUES}")


def _live_view(draw: Callable[..., Any], params: list[tuple[str, list[Any]]],
               fmt: Callable[[Any], str]) -> widgets.VBox:
    """:func:`live_view` for checked parameters."""
    controls = {f"p{i}": _control(n, [(fmt(v), v) for v in vs], vs) for i, (n, vs) in enumerate(params)}

    def show(**kw: Any) -> None:
        png, text = render(draw, [kw[f"p{i}"] for i in range(len(params))])
        display(Image(png))  # the same PNG as a frame, so live and precomputed views look alike
        if text:
            print(text)

    out = widgets.interactive_output(show, controls)
    note = widgets.HTML("<b>Finer view &mdash; needs a live kernel</b> (on the website this slider "
                        "does not redraw; use the explorer above)")
    return widgets.VBox([note, *controls.values(), out])
