"""Unit tests of retnet_mini.viz: the numbers behind the decay and chunk-size views (the chunk-size costs are
retnet_mini.costs's, tested in test_costs.py), and the explorers."""
import math

import matplotlib

matplotlib.use("Agg")  # headless; set here only, never for the notebooks' kernels

import ipywidgets  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from retnet_mini import costs, decay, viz  # noqa: E402
from retnet_mini.viz import INNER, STATE, ZERO  # noqa: E402

PAPER, EXPERIMENTS = "paper (eq. 8)", "experiments"


def ln(x):
    return torch.tensor([math.log(x)], dtype=torch.float64)


# ------------------------------------------------------------------------------------------ decay numbers
def test_schedules_by_hand():
    gammas = torch.exp(viz.schedule_log_decay(4, PAPER))
    assert torch.allclose(gammas, torch.tensor([1 - 1 / 32, 1 - 1 / 64, 1 - 1 / 128, 1 - 1 / 256], dtype=torch.float64),
                          rtol=0, atol=1e-15)
    # experiments: 1 - gamma geometric from 1/32 to 1/512; with 3 heads the middle one is 1/128
    gammas = torch.exp(viz.schedule_log_decay(3, EXPERIMENTS))
    assert torch.allclose(1 - gammas, torch.tensor([1 / 32, 1 / 128, 1 / 512], dtype=torch.float64), rtol=1e-12)
    with pytest.raises(ValueError, match="schedule must be one of"):
        viz.schedule_log_decay(4, "paper")


def test_half_life_by_hand():
    # gamma = 1/2: one token halves the weight; gamma = 2^(-1/10): ten tokens
    assert decay.half_life(ln(0.5)).item() == pytest.approx(1.0, rel=1e-14)
    assert decay.half_life(ln(2 ** -0.1)).item() == pytest.approx(10.0, rel=1e-12)
    # gamma = 31/32: ln 2 / -ln(31/32) = 0.693147... / 0.0317487... = 21.8323
    assert decay.half_life(ln(31 / 32)).item() == pytest.approx(21.8323, abs=1e-4)
    # gamma = 127/128 (the paper's single-gamma ablation): 88.3758 tokens
    assert decay.half_life(ln(127 / 128)).item() == pytest.approx(88.3758, abs=1e-4)
    assert decay.half_life(torch.zeros(1, dtype=torch.float64)).item() == math.inf  # no decay


def test_effective_span_by_hand():
    # 0.5^9 = 1.95e-3 >= 1e-3, 0.5^10 = 9.77e-4 < 1e-3
    assert decay.effective_span(ln(0.5)).item() == 10
    # 0.9^65 = 1.04e-3, 0.9^66 = 9.55e-4
    assert 0.9 ** 65 >= 1e-3 > 0.9 ** 66
    assert decay.effective_span(ln(0.9)).item() == 66
    # 31/32: ln(1e-3) / ln(31/32) = 217.6 -> 218; the last slow head of eq. 8 with 16 heads: 7,243,303
    assert decay.effective_span(ln(31 / 32)).item() == 218
    assert decay.effective_span(torch.log1p(torch.tensor([-2.0 ** -20], dtype=torch.float64))).item() == 7_243_303
    # another tolerance: 0.5^2 = 0.25 < 0.3
    assert decay.effective_span(ln(0.5), tol=0.3).item() == 2
    assert decay.effective_span(torch.zeros(1, dtype=torch.float64)).item() == math.inf
    with pytest.raises(ValueError):
        decay.effective_span(ln(0.5), tol=1.5)


def test_span_is_the_first_position_below_the_tolerance():
    ld = viz.schedule_log_decay(8, EXPERIMENTS)
    for h, n in enumerate(decay.effective_span(ld).long().tolist()):
        assert math.exp(n * ld[h].item()) < 1e-3 <= math.exp((n - 1) * ld[h].item())


def test_normalized_decay_matrix_by_hand():
    ld = torch.tensor([math.log(0.5), 0.0], dtype=torch.float64)
    Dn = decay.normalized_decay_matrix(ld, 3)
    # gamma = 1/2, row 2: D = [1/4, 1/2, 1], row sum 7/4
    assert torch.allclose(Dn[0, 2], torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64) / math.sqrt(1.75))
    # gamma = 1, row n holds n + 1 ones: each divided by sqrt(n + 1)
    assert torch.allclose(Dn[1, 1], torch.tensor([1, 1, 0], dtype=torch.float64) / math.sqrt(2))
    assert Dn[0, 0, 1] == 0 and Dn[0, 1, 2] == 0


def test_decay_rows_and_table():
    rows = viz.decay_rows(16, PAPER)
    head, gamma, time_constant, life, span, weight = rows[-1]
    assert head == 15 and time_constant == pytest.approx(2 ** 20) and span == 7_243_303
    assert life == pytest.approx(math.log(2) * 2 ** 20, rel=1e-6)        # ~ ln 2 / (1 - gamma)
    assert weight == pytest.approx(math.exp(2048 * math.log1p(-2 ** -20)))
    # the experiments' schedule caps the time constant at 512, whatever the number of heads
    assert viz.decay_rows(16, EXPERIMENTS)[-1][2] == pytest.approx(512)
    text = viz.decay_table(4, EXPERIMENTS)
    lines = text.splitlines()
    assert lines[0] == "4 heads, schedule: experiments"
    assert lines[1].split() == ["head", "gamma", "1/(1-gamma)", "half-life", "span", "(1e-3)", "gamma^2048"]
    assert lines[3].split() == ["0", "0.9688", "32.0", "21.8", "218", "0.0000"]
    assert lines[-1].split() == ["3", "0.9980", "512.0", "354.5", "3,534", "0.0182"]
    assert viz.decay_table(1, PAPER).splitlines()[0] == "1 head, schedule: paper (eq. 8)"


# ------------------------------------------------------------------------------------------ chunk regions
@pytest.mark.parametrize("T, C", [(10, 4), (7, 3), (13, 5), (5, 8), (6, 1), (12, 12)])
def test_chunk_regions_against_a_loop(T, C):
    regions = viz.chunk_regions(T, C)
    assert regions.shape == (T, T)
    for n in range(T):
        for m in range(T):
            want = ZERO if m > n else INNER if n // C == m // C else STATE
            assert regions[n, m] == want, (n, m)


def test_chunk_regions_non_divisor_by_hand():
    # T = 7, C = 3: chunks [0 1 2] [3 4 5] [6]; the short last chunk has one inner entry, (6, 6)
    Z, I, S = ZERO, INNER, STATE
    want = np.array([
        [I, Z, Z, Z, Z, Z, Z],
        [I, I, Z, Z, Z, Z, Z],
        [I, I, I, Z, Z, Z, Z],
        [S, S, S, I, Z, Z, Z],
        [S, S, S, I, I, Z, Z],
        [S, S, S, I, I, I, Z],
        [S, S, S, S, S, S, I],
    ])
    np.testing.assert_array_equal(viz.chunk_regions(7, 3), want)
    # counts: inner = sum of L(L+1)/2 over the chunks, state = the rest of the lower triangle
    T, C = 50, 7
    regions = viz.chunk_regions(T, C)
    inner = sum(L * (L + 1) // 2 for L in costs.chunk_lengths(T, C))
    assert (regions == INNER).sum() == inner
    assert (regions == STATE).sum() == T * (T + 1) // 2 - inner
    assert (regions == ZERO).sum() == T * (T - 1) // 2
    with pytest.raises(ValueError):
        viz.chunk_regions(4, 0)


# ------------------------------------------------------------------------------------------ cost table
def test_chunk_table_prints_the_cost_model():
    text = viz.chunk_table(1024, [96, 1024])
    lines = text.splitlines()
    assert lines[0] == "one head: T = 1024, d_k = 256, d_v = 512"
    assert lines[1].split() == ["form", "FLOPs", "memory", "batched", "memory", "steps"]
    c96, ref = costs.form_costs(1024, 96, 256, 512), costs.form_costs(1024, 1, 256, 512)
    assert lines[3].split() == ["chunkwise", "C=96", f"{c96['chunkwise']['flops']:.3e}",
                                f"{c96['chunkwise']['memory']:.3e}", f"{c96['chunkwise, batched']['memory']:.3e}", "11"]
    assert lines[3].split()[2:] == ["6.868e+08", "1.495e+05", "2.854e+06", "11"]
    assert lines[-2].split() == ["parallel", f"{ref['parallel']['flops']:.3e}", "2.097e+06", "1"]
    assert lines[-1].split() == ["recurrent", f"{ref['recurrent']['flops']:.3e}", "1.311e+05", "1,024"]
    assert lines[-1].split()[1] == f"{5 * 1024 * 256 * 512:.3e}"


# ------------------------------------------------------------------------------------------ drawings
def test_draws_return_figure_and_text_and_close_nothing_themselves():
    fig, text = viz.draw_decay(4, PAPER)
    assert len(fig.axes) == 5 and text == viz.decay_table(4, PAPER)
    plt.close(fig)
    fig, text = viz.draw_chunks(64, 12, 8, 16)
    assert len(fig.axes) == 3 and "chunkwise C=12" in text
    # the matrix shown is chunk_regions
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), viz.chunk_regions(64, 12))
    plt.close(fig)


def test_decay_explorer_frames_and_controls():
    e = viz.decay_explorer(heads=[2, 16])
    assert [f.values for f in e.frames] == [(2, PAPER), (2, EXPERIMENTS), (16, PAPER), (16, EXPERIMENTS)]
    heads, schedule = e.controls
    assert isinstance(heads, ipywidgets.SelectionSlider) and heads.description == "heads"
    assert [label for label, _ in heads.options] == ["2", "16"]
    assert isinstance(schedule, ipywidgets.ToggleButtons)
    assert [label for label, _ in schedule.options] == [PAPER, EXPERIMENTS]
    assert e.play is not None and e.play.max == 1
    assert [f.text for f in e.frames] == [viz.decay_table(h, s) for h, s in [f.values for f in e.frames]]
    assert len({f.png for f in e.frames}) == 4
    assert e.nbytes < 250_000
    assert plt.get_fignums() == []


def test_default_explorers_are_small():
    e = viz.decay_explorer()
    assert len(e.frames) == 10 and e.nbytes < 600_000
    c = viz.chunk_size_explorer()
    assert [f.values[0] for f in c.frames] == [16, 32, 64, 96, 128, 256, 512, 1024]
    (slider,) = c.controls
    assert slider.description == "chunk size" and c.play is not None and c.play.max == 7
    assert c.frames[3].text == viz.chunk_table(1024, [96])
    assert c.nbytes < 500_000
    assert plt.get_fignums() == []
