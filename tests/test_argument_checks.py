"""Hard edges of the book's helpers (viz, widgets, costs, claims, bench): a bad argument is refused at once,
with a ValueError or TypeError whose message names the argument, before any figure is drawn, frame rendered,
model built or benchmark run.

Drawing is switched off for the whole module (``render`` and ``plt.figure`` raise :class:`Drew`): a case
that slipped past the checks would fail with ``Drew`` rather than pass slowly. So nothing here draws, and
the module runs in about a second.
"""
import math
import re
from unittest import mock

import matplotlib

matplotlib.use("Agg")  # headless; set here only, never for the notebooks' kernels

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from retnet_mini import bench, claims, costs, decay, viz  # noqa: E402
from retnet_mini import widgets as rw  # noqa: E402
from retnet_mini._checks import (  # noqa: E402
    ArgumentTypeError, check_bool, check_choice, check_int, check_real, check_sequence,
)
from retnet_mini.model import RetNetConfig, RetNetLM  # noqa: E402
from retnet_mini.transformer import TransformerConfig, TransformerLM  # noqa: E402


class Drew(Exception):
    """Raised by the patched drawing functions: the call got past its argument checks."""


@pytest.fixture(scope="module", autouse=True)
def no_drawing():
    # Module scope (not monkeypatch): hypothesis refuses function-scoped fixtures around @given tests.
    with mock.patch.object(rw, "render", side_effect=Drew("render was called")), \
            mock.patch.object(plt, "figure", side_effect=Drew("plt.figure was called")):
        yield


def names(message: str, arg: str) -> bool:
    """Whether ``message`` names the argument ``arg`` as a word (``heads[0]`` names ``heads``)."""
    return re.search(rf"(?<![\w-]){re.escape(arg)}(?!\w)", message) is not None


def refused(fn, kwargs, arg, error):
    """Call ``fn(**kwargs)``, expecting ``error`` with a message that names ``arg``."""
    with pytest.raises(error) as info:
        fn(**kwargs)
    assert names(str(info.value), arg), f"the message does not name {arg!r}: {info.value}"
    return info.value


def draw1(value):
    return plt.figure()      # never runs: plt.figure is patched, and render before it


def draw2(heads, schedule):
    return plt.figure()


# Bad values of each kind. TypeError: the wrong type (ArgumentTypeError, also a ValueError). ValueError: the
# right type, out of range.
NOT_INT = [1.5, 2.0, "4", None, True, torch.tensor(3), [4]]
NOT_REAL = ["1", None, True, torch.tensor(1.0), [1.0]]
NON_FINITE = [math.nan, math.inf, -math.inf]
NOT_LIST = ["16", 16, None, {16: 1}, {16}]


def cases(fn, good, arg, type_bad=(), value_bad=()):
    """One pytest param per bad value of ``arg``, the other arguments as in ``good`` (a valid call)."""
    out = []
    for error, bads in ((TypeError, type_bad), (ValueError, value_bad)):
        for i, bad in enumerate(bads):
            out.append(pytest.param(fn, good, arg, bad, error,
                                    id=f"{fn.__name__}-{arg}-{error.__name__}-{i}"))
    return out


# ---------------------------------------------------------------------------------------------
# The shared checks
# ---------------------------------------------------------------------------------------------
def test_argument_type_error_is_both_kinds():
    """Old callers caught ValueError for every bad argument; a wrong type is now also a TypeError."""
    with pytest.raises(TypeError):
        check_int("n", "4")
    with pytest.raises(ValueError):
        check_int("n", "4")
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)


def test_checks_accept_what_they_should():
    import numpy as np

    assert check_int("n", np.int64(3), 1) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_real("x", np.float32(0.5), 0, 1) == 0.5 and check_real("x", 1, 0, 1) == 1.0
    assert check_bool("b", False) is False
    assert check_choice("c", "a", ("a", "b")) == "a"
    assert check_sequence("s", (x for x in (1, 2))) == [1, 2]


@pytest.mark.parametrize("check, args, message", [
    (check_int, ("size", 0, 1), r"size must be an int >= 1, got 0"),
    (check_int, ("size", 9, 1, 8), r"size must be an int from 1 to 8, got 9"),
    (check_real, ("tol", 2.0, 0, 1), r"tol must be a finite number from 0 to 1, got 2.0"),
    (check_real, ("x", math.nan, 0), r"x must be a finite number >= 0, got nan"),
    (check_choice, ("form", ["a"], ("a", "b")), r"form must be one of \['a', 'b'\], got \['a'\]"),
    (check_sequence, ("sizes", "16"), r"sizes must be a list or tuple, got '16' \(str\)"),
    (check_sequence, ("sizes", []), r"sizes needs at least 1 item"),
])
def test_check_messages_say_what_was_expected(check, args, message):
    with pytest.raises((TypeError, ValueError), match=message):
        check(*args)


def test_real_range_can_be_open():
    assert check_real("tol", 0.5, 0, 1, low_open=True, high_open=True) == 0.5
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"tol must be a finite number in \(0, 1\)"):
            check_real("tol", bad, 0, 1, low_open=True, high_open=True)


# ---------------------------------------------------------------------------------------------
# viz
# ---------------------------------------------------------------------------------------------
LD = torch.log(torch.tensor([0.5, 0.9], dtype=torch.float64))
PAPER = "paper (eq. 8)"
BAD_LOG_DECAY_TYPE = [[-0.1], 0.5, None, torch.tensor([1j]), torch.tensor([True])]
BAD_LOG_DECAY_VALUE = [torch.tensor([0.1]), torch.tensor([math.nan]), torch.tensor([-math.inf])]
VIZ_CASES = [
    *cases(viz.schedule_log_decay, dict(n_heads=4, schedule=PAPER), "n_heads", NOT_INT, [0, -3]),
    *cases(viz.schedule_log_decay, dict(n_heads=4, schedule=PAPER), "schedule", [None, ["paper"], 8],
           ["paper", "", "PAPER (EQ. 8)"]),
    *cases(decay.half_life, dict(log_decay=LD), "log_decay", BAD_LOG_DECAY_TYPE, BAD_LOG_DECAY_VALUE),
    *cases(decay.effective_span, dict(log_decay=LD), "log_decay", BAD_LOG_DECAY_TYPE, BAD_LOG_DECAY_VALUE),
    *cases(decay.effective_span, dict(log_decay=LD, tol=1e-3), "tol", NOT_REAL, [0, 1, -0.5, 2, *NON_FINITE]),
    *cases(decay.normalized_decay_matrix, dict(log_decay=LD, length=4), "log_decay", BAD_LOG_DECAY_TYPE,
           [*BAD_LOG_DECAY_VALUE, torch.zeros(2, 3), torch.zeros(0), torch.tensor(-0.1)]),
    *cases(decay.normalized_decay_matrix, dict(log_decay=LD, length=4), "length", NOT_INT, [-1]),
    *cases(viz.decay_rows, dict(n_heads=2, schedule=PAPER), "context", NOT_INT, [-1]),
    *cases(viz.decay_table, dict(n_heads=2, schedule=PAPER), "n_heads", NOT_INT, [0]),
    *cases(viz.decay_table, dict(n_heads=2, schedule=PAPER), "schedule", [None], ["eq. 8"]),
    *cases(viz.decay_table, dict(n_heads=2, schedule=PAPER), "context", NOT_INT, [-5]),
    *cases(viz.draw_decay, dict(n_heads=2, schedule=PAPER), "n_heads", NOT_INT, [0, viz.MAX_DRAW_HEADS + 1]),
    *cases(viz.draw_decay, dict(n_heads=2, schedule=PAPER), "schedule", [3], ["fast"]),
    *cases(viz.draw_decay, dict(n_heads=2, schedule=PAPER), "length", NOT_INT, [0, viz.MAX_DRAW_LENGTH + 1]),
    *cases(viz.decay_explorer, dict(), "heads", NOT_LIST, [[], [0], [1, 2, viz.MAX_DRAW_HEADS + 1]]),
    *cases(viz.decay_explorer, dict(), "heads", [[1, 2.0], [True]]),
    *cases(viz.decay_explorer, dict(), "schedules", [PAPER, None, [None]], [[], ["paper"]]),
    *cases(viz.decay_explorer, dict(), "dpi", NOT_INT, [0, 1000]),
    *cases(viz.chunk_regions, dict(length=8, chunk_size=4), "length", NOT_INT, [-1]),
    *cases(viz.chunk_regions, dict(length=8, chunk_size=4), "chunk_size", NOT_INT, [0, -4]),
    *cases(viz.chunk_table, dict(length=8, chunk_sizes=[4]), "chunk_sizes", NOT_LIST + [[4, "8"], [4, 2.0]],
           [[], [4, 0]]),
    *cases(viz.chunk_table, dict(length=8, chunk_sizes=[4]), "length", NOT_INT, [-1]),
    *cases(viz.chunk_table, dict(length=8, chunk_sizes=[4]), "d_k", NOT_INT, [0]),
    *cases(viz.draw_chunks, dict(length=64, chunk_size=8), "length", NOT_INT, [0, viz.MAX_DRAW_LENGTH + 1]),
    *cases(viz.draw_chunks, dict(length=64, chunk_size=8), "chunk_size", NOT_INT, [0]),
    *cases(viz.draw_chunks, dict(length=64, chunk_size=8), "d_v", NOT_INT, [0]),
    *cases(viz.chunk_size_explorer, dict(), "length", NOT_INT, [0, 65536]),
    *cases(viz.chunk_size_explorer, dict(), "chunk_sizes", NOT_LIST + [[16, 32.0]], [[], [16, 0], [16, 16]]),
    *cases(viz.chunk_size_explorer, dict(), "d_k", NOT_INT, [0]),
    *cases(viz.chunk_size_explorer, dict(), "dpi", NOT_INT, [5, 301]),
]


@pytest.mark.parametrize("fn, good, arg, bad, error", VIZ_CASES)
def test_viz_refuses_a_bad_argument_by_name(fn, good, arg, bad, error):
    refused(fn, {**good, arg: bad}, arg, error)


def test_viz_schedule_message_lists_the_schedules():
    with pytest.raises(ValueError, match=r"schedule must be one of \['paper \(eq\. 8\)', 'experiments'\]"):
        viz.draw_decay(4, "paper")
    with pytest.raises(ValueError, match=r"form must be one of \['parallel', 'recurrent', 'chunkwise', "
                                         r"'chunkwise, batched'\]"):
        costs.memory_numbers("attention", 8, 2, 3)


@settings(max_examples=30, deadline=None)
@given(gamma=st.one_of(st.floats(min_value=1.0, exclude_min=True, max_value=1e300), st.just(0.0),
                       st.floats(max_value=0.0, exclude_max=True, allow_infinity=True), st.just(math.nan)))
def test_gamma_outside_0_1_is_refused(gamma):
    """ln(gamma) for gamma outside (0, 1]: > 0, -inf (gamma = 0) or NaN (gamma < 0) in one of the heads."""
    log_decay = torch.log(torch.tensor([0.5, gamma], dtype=torch.float64))
    for fn in (decay.half_life, decay.effective_span, lambda ld: decay.normalized_decay_matrix(ld, 3)):
        with pytest.raises(ValueError, match=r"log_decay must be finite and <= 0: ln\(gamma\) with 0 < gamma <= 1"):
            fn(log_decay)


def bad_ints(low, high=None):
    """Anything that is not an int in [low, high]."""
    out = [st.integers(max_value=low - 1), st.floats(allow_nan=True), st.booleans(), st.none(),
           st.text(max_size=3)]
    if high is not None:
        out.append(st.integers(min_value=high + 1))
    return st.one_of(*out)


@settings(max_examples=40, deadline=None)
@given(arg=st.sampled_from(["n_heads", "length"]), data=st.data())
def test_draw_decay_refuses_any_bad_size_before_drawing(arg, data):
    high = viz.MAX_DRAW_HEADS if arg == "n_heads" else viz.MAX_DRAW_LENGTH
    bad = data.draw(bad_ints(1, high))
    refused(viz.draw_decay, {"n_heads": 4, "schedule": PAPER, "length": 8, arg: bad}, arg, (TypeError, ValueError))


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 64), max_size=3), bad=bad_ints(1), where=st.integers(0, 3))
def test_chunk_table_refuses_any_bad_chunk_size(sizes, bad, where):
    sizes.insert(min(where, len(sizes)), bad)
    refused(viz.chunk_table, dict(length=64, chunk_sizes=sizes), "chunk_sizes", (TypeError, ValueError))


def test_memory_numbers_of_an_empty_sequence():
    """Length 0 used to divide by zero in the batched chunkwise count; no chunk holds nothing but the state."""
    assert costs.memory_numbers("chunkwise, batched", 0, 2, 3, 4) == 6
    assert costs.form_costs(0, 4, 2, 3)["chunkwise"] == {"flops": 0, "steps": 0, "memory": 6}


# ---------------------------------------------------------------------------------------------
# widgets
# ---------------------------------------------------------------------------------------------
WIDGET_CASES = [
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "draw", [None, "draw", 3]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "values", NOT_LIST[:3] + [{1, 2}],
           [[], [1, 1], ["a", "a"]]),
    *cases(rw.frame_explorer, dict(draw=draw2, values={"heads": [1], "schedule": ["a"]}), "values",
           [{"heads": "12", "schedule": ["a"]}], [{}, {"heads": [1], "schedule": []}]),
    *cases(rw.frame_explorer, dict(draw=draw1, values={3: [1, 2]}), "values", [{3: [1, 2]}]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "name", [None, 3], [""]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "fmt", [None, "{:.2f}"]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "play", [None, 1, ["value"]], ["heads"]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "interval", NOT_INT, [0, -800]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "dpi", NOT_INT, [0, 9, 301, 10_000]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "max_bytes", NOT_INT, [0, -1]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "max_frames", NOT_INT, [0, 1]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "live", ["12", 5], [[], [3, 3]]),
    *cases(rw.frame_explorer, dict(draw=draw2, values={"heads": [1], "schedule": ["a"]}), "live", (),
           [{"heads": [1, 2]}, {"schedule": ["a"], "heads": [1]}]),
    *cases(rw.frame_explorer, dict(draw=draw1, values=[1, 2]), "live", (), [list(range(rw.MAX_LIVE_VALUES + 1))]),
    *cases(rw.frame_explorer, dict(draw=draw1, values={"a": [1], "b": [2]}), "draw", (), [draw1]),
    *cases(rw.frame_explorer, dict(draw=draw2, values=[1, 2]), "draw", (), [draw2]),
    *cases(rw.live_view, dict(draw=draw1, values=[1, 2]), "draw", [None]),
    *cases(rw.live_view, dict(draw=draw1, values=[1, 2]), "values", ["12"], [[], [1, 1],
                                                                              list(range(rw.MAX_LIVE_VALUES + 1))]),
    *cases(rw.live_view, dict(draw=draw1, values=[1, 2]), "name", [None], [""]),
    *cases(rw.live_view, dict(draw=draw1, values=[1, 2]), "fmt", [None]),
    *cases(rw.render, dict(draw=draw1, args=[1]), "draw", [None]),
    *cases(rw.render, dict(draw=draw1, args=[1]), "args", [1, "1", None]),
    *cases(rw.render, dict(draw=draw1, args=[1]), "dpi", NOT_INT, [0, 301]),
    *cases(rw.render, dict(draw=draw1, args=[1]), "label", [3]),
    *cases(rw.table, dict(rows=[[1, 2]]), "rows", [None, "ab", 3, ["ab"], [3]]),
    *cases(rw.table, dict(rows=[[1, 2]], headers=["a", "b"]), "headers", ["ab", 3], [[]]),
    *cases(rw.table, dict(rows=[[1, 2]]), "floatfmt", [None, 4], ["", "4q", "d"]),
]


@pytest.mark.parametrize("fn, good, arg, bad, error", WIDGET_CASES)
def test_widgets_refuse_a_bad_argument_by_name(fn, good, arg, bad, error):
    refused(fn, {**good, arg: bad}, arg, error)


def test_table_rows_must_match_the_headers():
    with pytest.raises(ValueError, match=r"rows\[1\] has 3 cells but there are 2 headers"):
        rw.table([[1, 2], [1, 2, 3]], ["a", "b"])
    assert rw.table([[1], [1, 2]]) == "1\n1  2"          # without headers, ragged rows stay allowed


def test_a_too_big_explorer_is_refused_before_any_frame_is_drawn():
    """The issue's example: 3000 frames used to draw for a while before failing on the byte budget."""
    with pytest.raises(ValueError, match=r"an explorer of 3000 frames \(3000 values\) is refused before drawing: "
                                         r"at most max_frames=100"):
        rw.frame_explorer(draw1, list(range(3000)))
    with pytest.raises(ValueError, match=r"120 frames \(10 x 12 values\)"):
        rw.frame_explorer(draw2, {"heads": list(range(10)), "schedule": [str(i) for i in range(12)]})
    # under max_frames, but more than can ever fit in the byte budget
    with pytest.raises(ValueError, match=r"50 frames \(50 values\) cannot fit in max_bytes=10000"):
        rw.frame_explorer(draw1, list(range(50)), max_bytes=10_000)
    # the book's explorers, made too big (render raises Drew if reached: it is not)
    with pytest.raises(ValueError, match="128 frames"):
        viz.decay_explorer(heads=range(1, viz.MAX_DRAW_HEADS + 1))
    with pytest.raises(ValueError, match="101 frames"):
        viz.chunk_size_explorer(length=1024, chunk_sizes=range(1, 102))


@settings(max_examples=30, deadline=None)
@given(a=st.integers(1, 400), b=st.integers(1, 400))
def test_any_explorer_over_max_frames_is_refused_before_drawing(a, b):
    values = {"x": list(range(a)), "y": list(range(b))}
    if a * b <= rw.MAX_FRAMES:
        return
    with pytest.raises(ValueError, match=rf"an explorer of {a * b} frames \({a} x {b} values\) is refused"):
        rw.frame_explorer(lambda x, y: None, values, max_bytes=10**9)


def test_a_too_big_live_view_is_refused_before_drawing():
    with pytest.raises(ValueError, match=r"values would give the live slider 'heads' 1001 positions: at most 1000"):
        rw.live_view(draw2, {"heads": list(range(1001)), "schedule": ["a"]})


def test_explorer_checks_pass_through_to_drawing():
    """A valid call gets past every check and reaches render (which, patched, raises Drew)."""
    with pytest.raises(Drew):
        rw.frame_explorer(draw2, {"heads": [1, 2], "schedule": ["a"]}, play="schedule", live={"heads": [1],
                                                                                             "schedule": ["a"]})
    with pytest.raises(Drew):
        viz.decay_explorer(heads=[1, 2, 4, 8, 16])
    with pytest.raises(Drew):
        viz.chunk_size_explorer(length=1024, chunk_sizes=[16, 32, 64, 96, 128, 256, 512, 1024], d_k=256, d_v=512)


# ---------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------
COSTS_INT_ARGS = [
    (costs.retnet_state_numbers, dict(n_layers=2, n_heads=2, key_head_dim=4, value_head_dim=8)),
    (costs.kv_cache_numbers, dict(n_layers=2, d_model=8, context_len=16)),
    (costs.crossover_context_len, dict(n_layers=2, d_model=8, n_heads=2, key_head_dim=4, value_head_dim=8)),
]
COSTS_NUMBER_ARGS = [
    (costs.decoding_memory_bytes, dict(n_params=10, cache_bytes_per_sequence=100, batch_size=2),
     ["n_params", "cache_bytes_per_sequence"]),
    (costs.memory_ratio, dict(weight_bytes=10, cache_bytes=8, state_bytes=1, batch_size=2),
     ["weight_bytes", "cache_bytes", "state_bytes"]),
    (costs.batch_for_memory_ratio, dict(ratio=2, weight_bytes=10, cache_bytes=8, state_bytes=1),
     ["ratio", "weight_bytes", "cache_bytes", "state_bytes"]),
    (costs.max_batch_size, dict(memory_bytes=100, weight_bytes=10, per_sequence_bytes=5),
     ["memory_bytes", "weight_bytes", "per_sequence_bytes"]),
]
COSTS_CASES = [
    *[c for fn, good in COSTS_INT_ARGS for arg in good for c in cases(fn, good, arg, NOT_INT, [0, -1])],
    *[c for fn, good, args in COSTS_NUMBER_ARGS for arg in args
      for c in cases(fn, good, arg, NOT_REAL, [-1, -0.5, *NON_FINITE])],
    *cases(costs.decoding_memory_bytes, dict(n_params=10, cache_bytes_per_sequence=1, batch_size=2), "batch_size",
           NOT_INT, [0]),
    *cases(costs.memory_ratio, dict(weight_bytes=10, cache_bytes=8, state_bytes=1, batch_size=2), "batch_size",
           NOT_INT, [0]),
    *cases(costs.numbers_to_bytes, dict(n_numbers=4), "n_numbers", NOT_INT, [-1]),
    *cases(costs.numbers_to_bytes, dict(n_numbers=4), "dtype", (), ["float12", "", 2, None, True]),
    *cases(costs.bytes_per_number, dict(), "dtype", (), ["fp12", torch.int32, 4]),
    *cases(costs.format_bytes, dict(n_bytes=1024), "n_bytes", NOT_REAL, [-1, *NON_FINITE]),
    *cases(costs.format_bytes, dict(n_bytes=1024), "digits", NOT_INT, [-1, 5]),
    *[c for arg in ("n_layers", "d_model", "n_heads", "value_factor")
      for c in cases(costs.ModelShape, dict(name="x", n_params=1e6, n_layers=2, d_model=64, n_heads=2), arg,
                     NOT_INT, [0, -2])],
    *cases(costs.ModelShape, dict(name="x", n_params=1e6, n_layers=2, d_model=64, n_heads=2), "n_params",
           NOT_REAL, [-1.0, *NON_FINITE]),
    *cases(costs.ModelShape, dict(name="x", n_params=1e6, n_layers=2, d_model=64, n_heads=2), "name",
           [None, 6.7], [""]),
    *cases(costs.PAPER_SHAPES["1.3B"].kv_cache_numbers, dict(context_len=8), "context_len", NOT_INT, [0]),
    *cases(costs.chunk_lengths, dict(length=8, chunk_size=4), "length", NOT_INT, [-1]),
    *cases(costs.chunk_lengths, dict(length=8, chunk_size=4), "chunk_size", NOT_INT, [0]),
    *[c for fn in (costs.parallel_flops, costs.recurrent_flops)
      for arg, low in (("length", -1), ("d_k", 0), ("d_v", 0))
      for c in cases(fn, dict(length=8, d_k=2, d_v=3), arg, NOT_INT, [low])],
    *[c for arg, low in (("length", -1), ("d_k", 0), ("d_v", 0), ("chunk_size", 0))
      for c in cases(costs.chunkwise_flops, dict(length=8, d_k=2, d_v=3, chunk_size=4), arg, NOT_INT, [low])],
    *cases(costs.memory_numbers, dict(form="parallel", length=8, d_k=2, d_v=3), "form", [None, ["parallel"]],
           ["attention", "Parallel", ""]),
    *cases(costs.memory_numbers, dict(form="parallel", length=8, d_k=2, d_v=3), "length", NOT_INT, [-1]),
    *cases(costs.memory_numbers, dict(form="chunkwise", length=8, d_k=2, d_v=3, chunk_size=4), "chunk_size",
           NOT_INT, [0, -1]),
    *cases(costs.memory_numbers, dict(form="chunkwise, batched", length=8, d_k=2, d_v=3), "chunk_size", (), [0]),
    *cases(costs.memory_numbers, dict(form="recurrent", length=8, d_k=2, d_v=3), "chunk_size", (), [-1]),
    *[c for arg, low in (("length", -1), ("chunk_size", 0), ("d_k", 0), ("d_v", 0))
      for c in cases(costs.form_costs, dict(length=8, chunk_size=4, d_k=2, d_v=3), arg, NOT_INT, [low])],
    *[c for arg, low in (("context_len", 0), ("d_model", 0), ("n_heads", 0))
      for c in cases(costs.attention_step_flops, dict(context_len=8, d_model=4, n_heads=2), arg, NOT_INT, [low])],
    *[c for arg, low in (("length", -1), ("d_model", 0), ("n_heads", 0))
      for c in cases(costs.attention_flops, dict(length=8, d_model=4, n_heads=2), arg, NOT_INT, [low])],
    *[c for arg in ("weight_bytes", "read_per_sequence", "written_per_sequence")
      for c in cases(costs.decode_step_bytes, dict(weight_bytes=10, read_per_sequence=2, written_per_sequence=1,
                                                   batch_size=2), arg, NOT_REAL, [-1, *NON_FINITE])],
    *cases(costs.decode_step_bytes, dict(weight_bytes=10, read_per_sequence=2, written_per_sequence=1,
                                         batch_size=2), "batch_size", NOT_INT, [0]),
    *cases(costs.PAPER_SHAPES["1.3B"].transformer_step_flops, dict(context_len=8), "context_len", NOT_INT, [0]),
    *cases(costs.PAPER_SHAPES["1.3B"].transformer_step_bytes, dict(context_len=8), "context_len", NOT_INT, [0]),
    *cases(costs.PAPER_SHAPES["1.3B"].retnet_step_bytes, dict(), "batch_size", NOT_INT, [0]),
    *cases(costs.PAPER_SHAPES["1.3B"].retnet_step_bytes, dict(), "dtype", (), ["fp12"]),
]


@pytest.mark.parametrize("fn, good, arg, bad, error", COSTS_CASES)
def test_costs_refuses_a_bad_argument_by_name(fn, good, arg, bad, error):
    error_seen = refused(fn, {**good, arg: bad}, arg, error)
    assert isinstance(error_seen, ValueError)      # as these functions always raised: old callers still catch it


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from([(fn, good, arg) for fn, good, args in COSTS_NUMBER_ARGS for arg in args]),
       bad=st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.just(math.inf), st.text(max_size=3),
                     st.booleans(), st.none()))
def test_memory_sizes_must_be_finite_and_not_negative(case, bad):
    fn, good, arg = case
    refused(fn, {**good, arg: bad}, arg, ValueError)


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from([(fn, good, arg) for fn, good in COSTS_INT_ARGS for arg in good]), bad=bad_ints(1))
def test_memory_counts_must_be_positive_ints(case, bad):
    fn, good, arg = case
    refused(fn, {**good, arg: bad}, arg, ValueError)


# ---------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------
CLAIM_GOOD = dict(statement="s", value=1.0, at_least=0.0, at_most=2.0, holds=True)
CLAIMS_CASES = [
    *cases(claims.format_value, dict(x=1.0), "x", NOT_REAL),
    *cases(claims.format_bound, dict(at_least=1.0, at_most=None), "at_least", ["1", True, torch.tensor(1.0)]),
    *cases(claims.format_bound, dict(at_least=None, at_most=1.0), "at_most", ["1", [1.0]]),
    *cases(claims.record_only, dict(), "enabled", ["no", 1, None]),
    *cases(claims.Claim, CLAIM_GOOD, "statement", (), [None, "", "  "]),
    *cases(claims.Claim, CLAIM_GOOD, "value", NOT_REAL),
    *cases(claims.Claim, CLAIM_GOOD, "at_most", NOT_REAL[:1]),
    *cases(claims.Claim, CLAIM_GOOD, "holds", ["yes", 1, None]),
    *cases(claims.claim, dict(statement="s", value=1.0, at_most=2.0), "value", NOT_REAL),
    *cases(claims.claim, dict(statement="s", value=1.0, at_most=2.0), "at_most", ["1", True], [math.inf]),
    *cases(claims.claim, dict(statement="s", value=1.0, at_most=2.0), "statement", (), [None, ""]),
    *cases(claims.claim_true, dict(statement="s", condition=True), "condition", [1, "yes", None]),
]


@pytest.mark.parametrize("fn, good, arg, bad, error", CLAIMS_CASES)
def test_claims_refuse_a_bad_argument_by_name(fn, good, arg, bad, error):
    try:
        refused(fn, {**good, arg: bad}, arg, error)
    finally:
        claims.reset()
    assert claims.recorded() == []


def test_format_bound_needs_a_bound():
    with pytest.raises(ValueError, match="format_bound needs at_least, at_most or both"):
        claims.format_bound(None, None)


# ---------------------------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    retnet = RetNetLM(RetNetConfig.paper(vocab_size=8, d_model=8, n_heads=1, n_layers=1))
    return retnet, TransformerLM(TransformerConfig(vocab_size=8, d_model=8, n_heads=1, n_layers=1))


CPU = torch.device("cpu")
BAD_DEVICE_TYPE = [None, 0, ["cpu"]]
BAD_DEVICE_VALUE = ["gpu", "", "cuda:x", "meta"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
BENCH_CASES = [
    *cases(bench.interleaved_medians, dict(fns={"a": lambda: None}, repeats=1, device=CPU), "fns",
           [None, [lambda: None], {"a": 3}], [{}]),
    *cases(bench.interleaved_medians, dict(fns={"a": lambda: None}, repeats=1, device=CPU), "repeats",
           NOT_INT, [0, -1]),
    *cases(bench.interleaved_medians, dict(fns={"a": lambda: None}, repeats=1, device=CPU), "warmup",
           NOT_INT, [-1]),
    *cases(bench.interleaved_medians, dict(fns={"a": lambda: None}, repeats=1, device=CPU), "device",
           BAD_DEVICE_TYPE, BAD_DEVICE_VALUE),
    *cases(bench.mixing_counts, dict(form="parallel", T=8), "form", [None, 3]),
    *cases(bench.mixing_counts, dict(form="parallel", T=8), "T", NOT_INT, [0]),
    *cases(bench.mixing_inputs, dict(T=8, device=CPU), "T", NOT_INT, [0, -8]),
    *cases(bench.mixing_inputs, dict(T=8, device=CPU), "device", BAD_DEVICE_TYPE, BAD_DEVICE_VALUE[:2]),
    *cases(bench.peak_call_bytes, dict(setup="pass", call="pass", device=CPU), "setup", [None, 3]),
    *cases(bench.peak_call_bytes, dict(setup="pass", call="pass", device=CPU), "call", [None], [""]),
    *cases(bench.peak_call_bytes, dict(setup="pass", call="pass", device=CPU), "device", (), ["gpu"]),
    *cases(bench.bench_models, dict(device=CPU), "dtype", [torch.int64, "float32", None]),
    *cases(bench.bench_models, dict(device=CPU), "device", (), ["gpu"]),
    *cases(bench.bench_layers, dict(device=CPU), "device", BAD_DEVICE_TYPE[:1], ["gpu"]),
    *[c for fn in bench.BENCHMARKS.values()
      for c in [*cases(fn, dict(device=CPU), "quick", ["yes", 1, None]),
                *cases(fn, dict(device=CPU), "device", BAD_DEVICE_TYPE[:1], BAD_DEVICE_VALUE[:2])]],
    *cases(bench.decode_floor, dict(model=torch.nn.Linear(2, 2), device=CPU), "model", [None, "retnet"]),
    *cases(bench.decode_floor, dict(model=torch.nn.Linear(2, 2), device=CPU), "device", (), ["gpu"]),
    *cases(bench.attn_theta, dict(attn=None, device=CPU), "attn", [None]),
]


@pytest.mark.parametrize("fn, good, arg, bad, error", BENCH_CASES)
def test_bench_refuses_a_bad_argument_by_name(fn, good, arg, bad, error):
    # No model may be built: that would mean the checks came after the work started.
    with mock.patch.object(bench, "bench_models", side_effect=Drew("bench_models was called")), \
            mock.patch.object(bench, "MultiScaleRetention", side_effect=Drew("a layer was built")):
        refused(fn, {**good, arg: bad}, arg, error)


@pytest.mark.parametrize("which, kwargs, arg", [
    ("retnet", dict(batch=0, context=4), "batch"),
    ("retnet", dict(batch=1, context=-1), "context"),
    ("retnet", dict(batch=1.0, context=4), "batch"),
    ("transformer", dict(batch=0, context=4, room=1), "batch"),
    ("transformer", dict(batch=1, context=-4, room=1), "context"),
    ("transformer", dict(batch=1, context=4, room=-1), "room"),
    ("transformer-as-retnet", dict(batch=1, context=4), "model"),
    ("retnet-as-transformer", dict(batch=1, context=4, room=1), "model"),
])
def test_state_and_cache_helpers_check_their_arguments(tiny_models, which, kwargs, arg):
    retnet, transformer = tiny_models
    fn = bench.retnet_state_at if which.endswith("retnet") else bench.kv_cache_at
    model = retnet if which.startswith("retnet") else transformer
    refused(fn, dict(model=model, **kwargs), arg, ValueError)


def test_check_device_accepts_names():
    assert bench.check_device("cpu") == CPU and bench.check_device(CPU) == CPU


@pytest.mark.parametrize("argv, message", [
    (["decode", "--device", "gpu"], r"--device 'gpu' is not a device"),
    (["decode", "--device", "meta"], r"--device must be a 'cpu' or 'cuda' device"),
    (["decode", "--json", "/no/such/folder/out.json"], r"--json '/no/such/folder/out.json': the folder"),
    (["decode", "--json", "."], r"--json '.' is a folder"),
    (["fast"], r"argument name: invalid choice: 'fast'"),
    *([] if torch.cuda.is_available() else [(["flops", "--device", "cuda"], r"CUDA is not available")]),
])
def test_cli_refuses_bad_values_before_running(argv, message, capsys):
    with mock.patch.dict(bench.BENCHMARKS, {name: mock.Mock(side_effect=Drew(name)) for name in bench.BENCHMARKS}):
        with pytest.raises(SystemExit) as info:
            bench.main(argv)
    assert info.value.code == 2                      # argparse's exit status for a usage error
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m retnet_mini.bench") and re.search(message, err), err
