"""Unit tests of retnet_mini.widgets: frames, jslinks, ipywidgets 7 and 8, labels, errors, determinism.

The suite runs with ipywidgets 8; the ipywidgets 7 path (Colab's 7.7.1 has no Stack) is tested by removing
``ipywidgets.Stack``, and for real by `make colab` (scripts/colab_rehearsal.py), which runs the notebooks
under ipywidgets 7.7.1."""
import base64
import html
import json
import re

import matplotlib

matplotlib.use("Agg")  # headless; set here only, never for the notebooks' kernels

import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import traitlets  # noqa: E402

from ipywidgets.embed import dependency_state  # noqa: E402
from ipywidgets.widgets.widget_link import Link  # noqa: E402

from retnet_mini import widgets as rw  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The browser path (Stack + jslink) exists only in ipywidgets >= 8; with ipywidgets 7 these tests skip and
# the KernelSwitch tests below test what runs.
needs_stack = pytest.mark.skipif(not hasattr(ipywidgets, "Stack"), reason="ipywidgets 7 has no Stack")


def draw(chunk):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(range(chunk))
    ax.set_title(f"chunk size = {chunk}")
    return fig


def draw2(heads, schedule):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_title(f"{heads} heads, {schedule}")
    return fig, rw.table([[heads, schedule, 0.5]], ["heads", "schedule", "x"])


def linked(link):
    """The (widget, trait) pairs a jslink connects."""
    return link.source, link.target


def test_frames_one_per_value_and_small():
    e = rw.frame_explorer(draw, [4, 8, 16], name="chunk size")
    assert [f.values for f in e.frames] == [(4,), (8,), (16,)]
    assert all(f.png.startswith(PNG_MAGIC) and f.text == "" for f in e.frames)
    assert len({f.png for f in e.frames}) == 3  # three different pictures
    assert 0 < e.nbytes < 1_000_000
    assert plt.get_fignums() == []  # every figure closed: nothing leaks into the notebook
    stack = e.stacks[0][0]
    assert isinstance(stack, getattr(ipywidgets, "Stack", rw.KernelSwitch))  # KernelSwitch under ipywidgets 7
    assert [frame.children[0].value for frame in stack.children] == [f.png for f in e.frames]


def test_readout_shows_values_not_indices():
    e = rw.frame_explorer(draw, [4, 8, 16], name="chunk size", fmt=lambda c: f"{c} tokens")
    (slider,) = e.controls
    assert slider.description == "chunk size"
    assert [label for label, _ in slider.options] == ["4 tokens", "8 tokens", "16 tokens"]
    assert slider.index == 0


def test_sliders_for_numbers_buttons_for_names():
    e = rw.frame_explorer(draw2, {"heads": [2, 4, 8], "schedule": ["paper", "experiments"]})
    heads, schedule = e.controls
    assert isinstance(heads, ipywidgets.SelectionSlider)
    assert isinstance(schedule, ipywidgets.ToggleButtons)  # a slider's readout would clip "experiments"
    assert [label for label, _ in schedule.options] == ["paper", "experiments"]


@needs_stack
def test_links_wired_slider_stack_and_play():
    e = rw.frame_explorer(draw, [4, 8, 16], name="chunk size")
    (slider,), stack = e.controls, e.stacks[0][0]
    assert all(isinstance(link, Link) and link._model_name == "LinkModel" for link in e.links)
    pairs = [linked(link) for link in e.links]
    assert ((slider, "index"), (stack, "selected_index")) in pairs
    assert ((e.play, "value"), (slider, "index")) in pairs
    assert (e.play.min, e.play.max) == (0, 2)
    assert e.play in e.children[0].children  # the Play button sits next to its slider


def test_two_parameters_nested_stacks_each_linked():
    e = rw.frame_explorer(draw2, {"heads": [2, 4, 8], "schedule": ["paper", "experiments"]})
    heads, schedule = e.controls
    assert [len(level) for level in e.stacks] == [1, 3]
    outer = e.stacks[0][0]
    assert list(outer.children) == e.stacks[1]
    pairs = [linked(link) for link in e.links]
    assert ((heads, "index"), (outer, "selected_index")) in pairs
    for inner in e.stacks[1]:  # the second slider drives every inner stack
        assert ((schedule, "index"), (inner, "selected_index")) in pairs
    # frame (i, j) sits at outer.children[i].children[j], and carries its table under the image
    for i, h in enumerate([2, 4, 8]):
        for j, s in enumerate(["paper", "experiments"]):
            image, text, _label = outer.children[i].children[j].children
            frame = e.frames[2 * i + j]
            assert frame.values == (h, s) and image.value == frame.png
            assert f"{h}  " in text.value and s in text.value and "0.5000" in text.value


def frame_label(frame_box):
    """(data-values, text) of the hidden label a frame's box ends with."""
    label = frame_box.children[-1]
    assert isinstance(label, ipywidgets.HTML) and label.layout.display == "none"
    m = re.fullmatch(r'<span class="retnet-frame-label" data-values="([^"]*)">([^<]*)</span>', label.value)
    assert m, label.value
    return json.loads(html.unescape(m[1])), html.unescape(m[2])


def test_frames_carry_their_label_hidden():
    e = rw.frame_explorer(draw2, {"heads": [2, 8], "schedule": ["paper (eq. 8)", "experiments"]},
                          fmt=lambda v: f"{v} heads" if isinstance(v, int) else v)
    assert "retnet-explorer" in e._dom_classes
    outer = e.stacks[0][0]
    for i, h in enumerate([2, 8]):
        for j, s in enumerate(["paper (eq. 8)", "experiments"]):
            box, frame = outer.children[i].children[j], e.frames[2 * i + j]
            assert "retnet-frame" in box._dom_classes
            assert frame.label == f"heads={h}, schedule={s!r}"
            # data-values: what the controls display for this frame, in their order
            assert frame_label(box) == ([f"{h} heads", s], frame.label)
            shown = [c.options[k][0] for c, k in zip(e.controls, (i, j))]
            assert frame_label(box)[0] == shown
    # a frame with no text: image, then label
    one = rw.frame_explorer(draw, [4, 8], name="chunk size").stacks[0][0]
    assert [frame_label(box) for box in one.children] == [(["4"], "chunk size=4"), (["8"], "chunk size=8")]
    assert [len(box.children) for box in one.children] == [2, 2]


def test_label_is_escaped():
    e = rw.frame_explorer(draw2, {"heads": [1], "schedule": ['<b>"x" & y</b>']})
    assert frame_label(e.stacks[1][0].children[0]) == (["1", '<b>"x" & y</b>'],
                                                       "heads=1, schedule='<b>\"x\" & y</b>'")


def test_play_on_named_parameter_or_none():
    e = rw.frame_explorer(draw2, {"heads": [2, 4], "schedule": ["a", "b", "c"]}, play="schedule")
    assert ((e.play, "value"), (e.controls[1], "index")) in [linked(link) for link in e.links]
    assert e.play.max == 2
    assert rw.frame_explorer(draw, [4, 8], play=False).play is None
    assert rw.frame_explorer(draw, [4]).play is None  # nothing to play over one value
    with pytest.raises(ValueError, match="not one of the parameters"):
        rw.frame_explorer(draw2, {"heads": [2], "schedule": ["a"]}, play="layers")


def shown_frame(e):
    """The frame box on screen: follow each stack's selected child (Stack) or its shown one (KernelSwitch)."""
    node = e.stacks[0][0]
    while not ("retnet-frame" in node._dom_classes):
        if isinstance(node, rw.KernelSwitch):
            node = node.shown
            assert node is not None, "a KernelSwitch shows no child, or more than one"
        else:
            node = node.children[node.selected_index]
    return node


def emulate_jslinks(e):
    """Do in Python what the browser does with the explorer's jslinks (a two-way copy of one trait)."""
    assert e.in_browser and all(isinstance(link, Link) for link in e.links)
    return [traitlets.link(link.source, link.target) for link in e.links]


@needs_stack
def test_moving_controls_switches_frames_in_the_browser():
    e = rw.frame_explorer(draw2, {"heads": [2, 4, 8], "schedule": ["paper", "experiments"]})
    heads, schedule = e.controls
    emulate_jslinks(e)
    assert frame_label(shown_frame(e))[1] == "heads=2, schedule='paper'"
    heads.index = 2
    assert frame_label(shown_frame(e))[1] == "heads=8, schedule='paper'"
    schedule.index = 1
    assert frame_label(shown_frame(e))[1] == "heads=8, schedule='experiments'"
    e.play.value = 1  # Play drives the first slider
    assert heads.index == 1 and frame_label(shown_frame(e))[1] == "heads=4, schedule='experiments'"


def test_ipywidgets7_switches_frames_in_the_kernel(monkeypatch):
    monkeypatch.delattr(ipywidgets, "Stack", raising=False)  # ipywidgets 7 (Colab) has no Stack
    e = rw.frame_explorer(draw2, {"heads": [2, 4, 8], "schedule": ["paper", "experiments"]},
                          fmt=lambda v: f"{v} heads" if isinstance(v, int) else v)
    heads, schedule = e.controls
    assert not e.in_browser
    # Only models ipywidgets 7's front end has: Box, Layout, ... (no Stack, no Tab, no jslink)
    for level in e.stacks:
        for switch in level:
            assert type(switch) is rw.KernelSwitch and switch._model_name == "BoxModel"
            # each child is hidden through its own Layout
            assert len({id(child.layout) for child in switch.children}) == len(switch.children)
    models = {m["model_name"] for m in dependency_state(e).values()}
    assert not models & {"StackModel", "TabModel", "LinkModel", "DirectionalLinkModel"}, models
    assert all(isinstance(link, traitlets.link) for link in e.links)  # kernel-side links

    def on_screen():
        """Every frame with display != none along the nesting: exactly one, the one we expect."""
        shown = [(i, j) for i, inner in enumerate(e.stacks[0][0].children) if inner.layout.display != "none"
                 for j, frame in enumerate(inner.children) if frame.layout.display != "none"]
        assert len(shown) == 1, shown
        return frame_label(shown_frame(e))

    assert on_screen() == (["2 heads", "paper"], "heads=2, schedule='paper'")
    heads.index = 2  # what a reader's drag sends to the kernel
    assert on_screen() == (["8 heads", "paper"], "heads=8, schedule='paper'")
    schedule.index = 1
    assert on_screen() == (["8 heads", "experiments"], "heads=8, schedule='experiments'")
    assert all(inner.selected_index == 1 for inner in e.stacks[1])  # every inner switch follows
    heads.index = 0
    assert on_screen() == (["2 heads", "experiments"], "heads=2, schedule='experiments'")
    e.play.value = 1  # Play drives the first control, through the kernel too
    assert heads.index == 1 and on_screen()[1] == "heads=4, schedule='experiments'"
    e.stacks[0][0].selected_index = 2  # two-way: the control follows a switch set from Python
    assert heads.index == 2


def test_ipywidgets7_single_parameter(monkeypatch):
    monkeypatch.delattr(ipywidgets, "Stack", raising=False)
    e = rw.frame_explorer(draw, [4, 8, 16], name="chunk size")
    (slider,), switch = e.controls, e.stacks[0][0]
    assert [c.layout.display for c in switch.children] == [None, "none", "none"]
    slider.index = 1
    assert [c.layout.display for c in switch.children] == ["none", None, "none"]
    assert switch.shown is switch.children[1] and frame_label(switch.shown)[1] == "chunk size=8"
    assert 0 < e.nbytes < 1_000_000 and len(e.frames) == 3


def test_deterministic_png_bytes():
    a = rw.frame_explorer(draw2, {"heads": [2, 4], "schedule": ["paper"]})
    b = rw.frame_explorer(draw2, {"heads": [2, 4], "schedule": ["paper"]})
    assert [f.png for f in a.frames] == [f.png for f in b.frames]
    assert a.nbytes == b.nbytes


def test_errors_are_clear():
    with pytest.raises(ValueError, match="at least one value"):
        rw.frame_explorer(draw, [])
    with pytest.raises(ValueError, match="at least one value"):
        rw.frame_explorer(draw2, {"heads": [2], "schedule": []})

    def broken(chunk):
        plt.figure()  # opened before failing: must still be closed
        raise RuntimeError("boom")

    with pytest.raises(ValueError, match=r"draw failed for chunk size=8: RuntimeError: boom"):
        rw.frame_explorer(broken, [8], name="chunk size")
    assert plt.get_fignums() == []
    with pytest.raises(ValueError, match="must return a Figure"):
        rw.frame_explorer(lambda c: "not a figure", [1])
    with pytest.raises(ValueError, match="exceeds 5000 bytes after 1 frames"):
        rw.frame_explorer(draw, [4, 8], max_bytes=5_000)  # stops at the first frame
    assert plt.get_fignums() == []


def test_size_counts_the_whole_widget_state():
    e = rw.frame_explorer(draw, [4, 8, 16], name="chunk size")
    pngs = sum(len(base64.b64encode(f.png)) for f in e.frames)
    assert pngs < e.nbytes < pngs + 12_000 + 3 * 4_000  # PNGs in base64, plus each widget's JSON
    with pytest.raises(ValueError, match="bytes of widget state for 3 frames"):
        rw.frame_explorer(draw, [4, 8, 16], max_bytes=(pngs + e.nbytes) // 2)


def test_pyplot_state_not_leaked():
    def restyling(chunk):
        plt.rcParams["lines.linewidth"] = 9.0
        return draw(chunk)

    before = plt.rcParams["lines.linewidth"]
    rw.frame_explorer(restyling, [4])
    assert plt.rcParams["lines.linewidth"] == before


def test_live_view_is_labelled_and_redraws():
    calls = []

    def counting(chunk):
        calls.append(chunk)
        return draw(chunk)

    e = rw.frame_explorer(counting, [4, 8], name="chunk size", live=[4, 5, 6, 7, 8])
    live = e.children[-1]
    assert "needs a live kernel" in live.children[0].value
    slider = live.children[1]
    assert [label for label, _ in slider.options] == ["4", "5", "6", "7", "8"]
    assert calls == [4, 8, 4]  # two frames, then the live view's first drawing
    slider.value = 6  # what a reader's move does in a live kernel
    assert calls[-1] == 6 and plt.get_fignums() == []


def test_table():
    text = rw.table([[1, 0.123456, "a"], [100, 2.0, "bcd"]], ["n", "value", "name"])
    assert text.splitlines() == [
        "  n   value  name",
        "---  ------  ----",
        "  1  0.1235     a",
        "100  2.0000   bcd",
    ]
    assert rw.table([[0.5]], floatfmt=".2f") == "0.50"
    assert rw.table([]) == ""
