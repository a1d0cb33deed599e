"""The drawings behind the book's two explorers, and the numbers behind them.

- **Decay** (book/decay.ipynb): for ``n_heads`` and a schedule (``"paper (eq. 8)"`` or
  ``"experiments"``), each head's gamma, half-life and effective span, the decay matrix ``D`` and the
  normalized ``D~ = D / sqrt(rowsum D)`` as heat maps, and the decay curves ``gamma^n``.
  :func:`draw_decay` returns ``(Figure, text)``; :func:`decay_table` is the text; :func:`decay_explorer`
  precomputes the views with :func:`retnet_mini.widgets.frame_explorer`.
- **Chunk size** (the three-forms chapter): which entries of the ``T x T`` causal matrix a chunk computes
  itself (:func:`chunk_regions`) and what parallel, recurrent and chunkwise retention cost, as
  :func:`retnet_mini.costs.form_costs` counts it. :func:`draw_chunks`, :func:`chunk_table`,
  :func:`chunk_size_explorer`.

Everything here is a pure function of its arguments (no randomness), so a view drawn twice is the same.
Every public function checks its arguments first (ints, ranges, schedule names, ``ln(gamma)``
tensors) and raises a ValueError or TypeError naming the argument; the drawing functions also refuse sizes
beyond :data:`MAX_DRAW_HEADS` and :data:`MAX_DRAW_LENGTH`, before they draw.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from ._checks import check_choice, check_int, check_sequence
from .costs import chunk_lengths, form_costs
from .decay import (
    SPAN_TOL,
    decay_matrix,
    decay_schedule,
    effective_span,
    half_life,
    normalized_decay_matrix,
)
from .widgets import FrameExplorer, frame_explorer, table

__all__ = [
    "SCHEDULES", "MAX_DRAW_HEADS", "MAX_DRAW_LENGTH", "schedule_log_decay",
    "decay_rows", "decay_table", "draw_decay", "decay_explorer",
    "ZERO", "INNER", "STATE", "chunk_regions", "chunk_table", "draw_chunks", "chunk_size_explorer",
]

# =============================================================================================
# Decay
# =============================================================================================
#: The schedules the decay explorer shows, by display label -> the name in retnet_mini.decay.SCHEDULES.
SCHEDULES = {"paper (eq. 8)": "paper", "experiments": "experiment"}
#: Most heads :func:`draw_decay` draws (the book goes up to 32): one curve each, and beyond that the curves
#: of neighbouring heads cannot be told apart.
MAX_DRAW_HEADS = 64
#: Most positions a drawn ``T x T`` matrix may have (:func:`draw_decay`, :func:`draw_chunks`; the book
#: draws 32 and 1024). A heat map in a frame is ~200 pixels wide, so 2048 positions are ~10 per pixel,
#: and drawing grows as T^2: ~2 s at 2048, 8 s at 4096 for the decay view (11 s at 8192 for the chunks).
MAX_DRAW_LENGTH = 2048


def _check_schedules(schedules: Sequence[str]) -> list[str]:
    names = check_sequence("schedules", schedules)
    for i, schedule in enumerate(names):
        check_choice(f"schedules[{i}]", schedule, SCHEDULES)
    return check_sequence("schedules", names, unique=True)


def schedule_log_decay(n_heads: int, schedule: str) -> Tensor:
    """``ln(gamma)`` per head, float64 ``(n_heads,)``, for a schedule named as in :data:`SCHEDULES`."""
    check_int("n_heads", n_heads, 1)
    check_choice("schedule", schedule, SCHEDULES)
    return decay_schedule(SCHEDULES[schedule], n_heads)


def decay_rows(n_heads: int, schedule: str, context: int = 2048) -> list[list]:
    """One row of numbers per head: ``[head, gamma, 1/(1-gamma), half-life, span, gamma^context]``.

    ``1/(1-gamma)`` is the head's time constant (``gamma^n ~ exp(-n (1-gamma))``); the span is an int
    (tokens until gamma^n < 1e-3); ``gamma^context`` is the weight left at distance ``context`` (an int >= 0).
    """
    check_int("context", context, 0)
    ld = schedule_log_decay(n_heads, schedule)
    time_constant = -1.0 / torch.expm1(ld)            # 1 / (1 - gamma), exact for gamma near 1
    lives, spans = half_life(ld), effective_span(ld)
    return [[h, math.exp(ld[h].item()), time_constant[h].item(), lives[h].item(), int(spans[h].item()),
             math.exp(context * ld[h].item())] for h in range(n_heads)]


def decay_table(n_heads: int, schedule: str, context: int = 2048) -> str:
    """:func:`decay_rows` as a printable table, under a line naming the view.

    gamma has 4 decimals, so 1 - 2^-20 prints as 1.0000: the time constant ``1/(1-gamma)`` tells the heads
    apart. Token counts get one decimal (half-life) or none (span).
    """
    check_int("n_heads", n_heads, 1)
    check_choice("schedule", schedule, SCHEDULES)
    check_int("context", context, 0)
    headers = ["head", "gamma", "1/(1-gamma)", "half-life", "span (1e-3)", f"gamma^{context}"]
    rows = [[h, f"{g:.4f}", f"{tc:,.1f}", f"{hl:,.1f}", f"{sp:,}", f"{w:.4f}"]
            for h, g, tc, hl, sp, w in decay_rows(n_heads, schedule, context)]
    return f"{n_heads} head{'s' * (n_heads > 1)}, schedule: {schedule}\n" + table(rows, headers)


def _head_colors(n_heads: int):
    return plt.cm.viridis(np.linspace(0.0, 0.9, n_heads))


def draw_decay(n_heads: int, schedule: str, length: int = 32) -> tuple[Figure, str]:
    """The decay view: the curves ``gamma_h^n`` (half-life where a curve crosses 1/2, span where it crosses
    1e-3), and ``D``, ``D~`` of the fastest and the slowest head for ``length`` positions.

    Returns ``(figure, decay_table(n_heads, schedule))``. Axes are fixed (not fitted to the data) so that
    views of different settings compare at a glance. ``n_heads`` is 1 to :data:`MAX_DRAW_HEADS`, ``length``
    1 to :data:`MAX_DRAW_LENGTH`.
    """
    check_int("n_heads", n_heads, 1, MAX_DRAW_HEADS)
    check_choice("schedule", schedule, SCHEDULES)
    check_int("length", length, 1, MAX_DRAW_LENGTH)
    ld = schedule_log_decay(n_heads, schedule)
    colors = _head_colors(n_heads)
    fig = plt.figure(figsize=(9, 4))
    fig.suptitle(f"{n_heads} head{'s' * (n_heads > 1)}, schedule: {schedule}", fontsize=12, y=0.98)
    left = fig.add_gridspec(1, 1, left=0.08, right=0.5, top=0.86, bottom=0.12)
    right = fig.add_gridspec(2, 2, left=0.56, right=0.99, top=0.88, bottom=0.08, wspace=0.1, hspace=0.45)

    curves = fig.add_subplot(left[0])
    n = np.logspace(0, 7, 120)
    for h in range(n_heads):
        # not antialiased: many smooth curves would triple the PNG's size (frames are stored in the page)
        curves.plot(n, np.exp(n * ld[h].item()), color=colors[h], lw=1.5, antialiased=False)
    curves.plot(half_life(ld).numpy(), np.full(n_heads, 0.5), "o", ms=3, color="black")
    curves.axhline(0.5, color="gray", ls=":", lw=1)
    curves.axhline(SPAN_TOL, color="gray", ls="--", lw=1)
    curves.text(1.3, 0.3, "half-life", fontsize=8, color="gray")
    curves.text(1.3, SPAN_TOL * 1.6, "span (1e-3)", fontsize=8, color="gray")
    curves.set(xscale="log", yscale="log", xlim=(1, 1e7), ylim=(1e-4, 1.5))
    curves.set_xlabel("distance n - m (tokens)", labelpad=1)
    curves.set_ylabel(r"weight $\gamma^{n-m}$", labelpad=1)
    curves.set_title("one decay curve per head (fast: dark, slow: light)", fontsize=10)

    drawn = ld[[0, n_heads - 1]]                          # only the fastest and the slowest are shown
    D, Dn = decay_matrix(drawn, length), normalized_decay_matrix(drawn, length)
    cmap = plt.cm.viridis.with_extremes(bad="white")      # the masked upper triangle shows white
    ticks = [0, length - 1]
    for i, (M, name) in enumerate([(D, "D"), (Dn, "D~")]):
        for j, (h, which) in enumerate([(0, "fastest"), (n_heads - 1, "slowest")]):
            ax = fig.add_subplot(right[i, j])
            values = M[j].numpy().copy()
            values[np.triu_indices(length, 1)] = np.nan
            ax.imshow(values, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"{name}, head {h} ({which})", fontsize=8, pad=2)
            ax.set_xlabel(f"1/(1-$\\gamma$) = {-1 / math.expm1(ld[h].item()):,.0f}", fontsize=8, labelpad=0)
            ax.set(xticks=ticks, yticks=ticks)
            ax.tick_params(labelsize=7, pad=1, length=2)
    return fig, decay_table(n_heads, schedule)


def decay_explorer(heads: Sequence[int] = (1, 2, 4, 8, 16),
                   schedules: Sequence[str] = tuple(SCHEDULES), dpi: int = 72, **kwargs) -> FrameExplorer:
    """A no-kernel explorer of :func:`draw_decay`: a slider (with Play) for the number of heads, buttons for
    the schedule. Extra keyword arguments go to :func:`retnet_mini.widgets.frame_explorer` (e.g. ``live``).

    ``heads`` and ``schedules`` are checked before any frame is drawn (as :func:`draw_decay` checks them);
    the explorer's size is checked by ``frame_explorer``.
    """
    heads = check_sequence("heads", heads)
    for i, h in enumerate(heads):
        check_int(f"heads[{i}]", h, 1, MAX_DRAW_HEADS)
    check_sequence("heads", heads, unique=True)          # after the ints: a list in it is unhashable
    schedules = _check_schedules(schedules)
    return frame_explorer(draw_decay, {"heads": list(heads), "schedule": list(schedules)},
                          play="heads", dpi=dpi, **kwargs)


# =============================================================================================
# Chunk size
# =============================================================================================
ZERO, INNER, STATE = 0, 1, 2


def chunk_regions(length: int, chunk_size: int) -> np.ndarray:
    """``(T, T)`` int array: how the chunkwise form obtains entry ``(n, m)`` of ``Q K^T * D``.

    ``INNER`` (1): ``m <= n`` in the same chunk, computed by the chunk's own parallel product;
    ``STATE`` (2): ``m`` in an earlier chunk, reaching ``n`` through the carried state;
    ``ZERO`` (0): ``m > n``, masked by causality. A short last chunk is a chunk like the others.
    ``length`` is an int >= 0, ``chunk_size`` an int >= 1.
    """
    check_int("length", length, 0)
    check_int("chunk_size", chunk_size, 1)
    pos = np.arange(length)
    n, m = pos[:, None], pos[None, :]
    same_chunk = (n // chunk_size) == (m // chunk_size)
    regions = np.full((length, length), ZERO, dtype=np.int8)
    regions[(m <= n) & same_chunk] = INNER
    regions[(m <= n) & ~same_chunk] = STATE
    return regions


def _check_sizes(length: int, d_k: int, d_v: int) -> None:
    check_int("length", length, 0)
    check_int("d_k", d_k, 1)
    check_int("d_v", d_v, 1)


def chunk_table(length: int, chunk_sizes: Sequence[int], d_k: int = 256, d_v: int = 512) -> str:
    """The cost model (:func:`retnet_mini.costs.form_costs`) for each chunk size at length ``T``, one head,
    with parallel and recurrent as reference rows: FLOPs, numbers held (``retnet_mini.costs.memory_numbers``:
    "memory" for a loop over chunks, "batched memory" for ``chunkwise_retention`` as written), sequential
    steps. ``chunk_sizes`` is a non-empty list of ints >= 1."""
    _check_sizes(length, d_k, d_v)
    chunk_sizes = _check_chunk_sizes(chunk_sizes)
    rows = []
    for C in chunk_sizes:
        c = form_costs(length, C, d_k, d_v)
        rows.append([f"chunkwise C={C}", f"{c['chunkwise']['flops']:.3e}", f"{c['chunkwise']['memory']:.3e}",
                     f"{c['chunkwise, batched']['memory']:.3e}", f"{c['chunkwise']['steps']:,}"])
    ref = form_costs(length, 1, d_k, d_v)
    for form in ("parallel", "recurrent"):
        rows.append([form, f"{ref[form]['flops']:.3e}", f"{ref[form]['memory']:.3e}", "",
                     f"{ref[form]['steps']:,}"])
    title = f"one head: T = {length}, d_k = {d_k}, d_v = {d_v}"
    return title + "\n" + table(rows, ["form", "FLOPs", "memory", "batched memory", "steps"])


def _layout(length: int, chunk_size: int) -> str:
    lengths = chunk_lengths(length, chunk_size)
    full = lengths.count(chunk_size) if chunk_size <= length else 0
    text = f"{full} x {chunk_size}" if full else ""
    if len(lengths) > full:
        text += (" + " if text else "1 x ") + f"{lengths[-1]}"
    return text


def _check_chunk_sizes(chunk_sizes: Sequence[int]) -> list[int]:
    chunk_sizes = check_sequence("chunk_sizes", chunk_sizes)
    for i, C in enumerate(chunk_sizes):
        check_int(f"chunk_sizes[{i}]", C, 1)
    return check_sequence("chunk_sizes", chunk_sizes, unique=True)


_REGION_CMAP = ListedColormap(["white", "tab:blue", "tab:orange"])


def draw_chunks(length: int, chunk_size: int, d_k: int = 256, d_v: int = 512) -> tuple[Figure, str]:
    """The chunk view: the ``T x T`` matrix colored by :func:`chunk_regions`, and the cost model over chunk
    sizes (powers of two up to ``T``, and the chosen one, circled). Returns ``(figure, chunk_table(...))``.
    ``length`` is 1 to :data:`MAX_DRAW_LENGTH`, ``chunk_size``, ``d_k``, ``d_v`` ints >= 1."""
    check_int("length", length, 1, MAX_DRAW_LENGTH)
    check_int("chunk_size", chunk_size, 1)
    _check_sizes(length, d_k, d_v)
    regions = chunk_regions(length, chunk_size)
    fig = plt.figure(figsize=(10, 3.6))
    fig.suptitle(f"T = {length}, chunk size C = {chunk_size}: chunks {_layout(length, chunk_size)}", y=0.98)
    grid = fig.add_gridspec(1, 3, left=0.06, right=0.99, top=0.84, bottom=0.14, wspace=0.28,
                            width_ratios=[1.0, 1.2, 1.2])
    ax = fig.add_subplot(grid[0])
    ax.imshow(regions, cmap=_REGION_CMAP, vmin=0, vmax=2, interpolation="nearest")
    if length // chunk_size <= 32:                           # chunk boundaries, while they stay readable
        for b in range(chunk_size, length, chunk_size):
            ax.axhline(b - 0.5, color="white", lw=0.6)
            ax.axvline(b - 0.5, color="white", lw=0.6)
    ax.set_xlabel("m (key position)", labelpad=1)
    ax.set_ylabel("n (query position)", labelpad=1)
    ax.set_title("blue: inside a chunk; orange: via the state", fontsize=9)
    ax.tick_params(labelsize=7)

    sizes = sorted({2 ** p for p in range(int(math.log2(length)) + 1)} | {min(chunk_size, length)})
    costs = {C: form_costs(length, C, d_k, d_v) for C in sizes}
    here, C_here = form_costs(length, chunk_size, d_k, d_v), min(chunk_size, length)
    panels = [("flops", "FLOPs", ["chunkwise"]),
              ("memory", "memory (numbers held)", ["chunkwise", "chunkwise, batched"])]
    for axis, (key, title, forms) in zip((fig.add_subplot(grid[1]), fig.add_subplot(grid[2])), panels):
        axis.axhline(here["parallel"][key], color="tab:green", ls="--", label="parallel")
        axis.axhline(here["recurrent"][key], color="tab:purple", ls=":", label="recurrent")
        for form, color, marker in zip(forms, ("tab:blue", "tab:orange"), "os"):
            axis.plot(sizes, [costs[C][form][key] for C in sizes], marker + "-", ms=3, color=color, label=form)
            axis.plot([C_here], [here[form][key]], "o", ms=10, mfc="none", color="black")
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("chunk size C", labelpad=1)
        axis.set_title(f"{title}, one head", fontsize=9)
        axis.tick_params(labelsize=7)
        axis.grid(True, which="major", alpha=0.3)
        axis.legend(fontsize=7)
    return fig, chunk_table(length, [chunk_size], d_k, d_v)


def chunk_size_explorer(length: int = 1024, chunk_sizes: Sequence[int] = (16, 32, 64, 96, 128, 256, 512, 1024),
                        d_k: int = 256, d_v: int = 512, dpi: int = 72, **kwargs) -> FrameExplorer:
    """A no-kernel explorer of :func:`draw_chunks` at length ``T``: a slider (with Play) for the chunk size.

    The arguments are checked (as :func:`draw_chunks` checks them) before any frame is drawn."""
    check_int("length", length, 1, MAX_DRAW_LENGTH)
    _check_sizes(length, d_k, d_v)
    chunk_sizes = _check_chunk_sizes(chunk_sizes)
    return frame_explorer(lambda C: draw_chunks(length, C, d_k, d_v), list(chunk_sizes), "chunk size",
                          dpi=dpi, **kwargs)
