"""Checkers for the exercises of "Decay: many scales of memory" (book/decay.ipynb).

- :func:`check_memory`: a head's half-life and effective span from its ``ln(gamma)``.
- :func:`check_half_life_schedule`: the ``ln(gamma)`` per head that gives half-lives spaced geometrically
  between two lengths.
- :func:`check_normalized_decay`: the normalized decay matrix ``D~ = D / sqrt(rowsum D)``, also for
  long sequences (no overflow).

Each checker runs the reader's function on random cases and compares it with :mod:`retnet_mini.viz`; on a
mismatch it raises :class:`ExerciseError` saying what is wrong, with a hint when the answer matches a
known mistake.
"""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor

from ..decay import decay_matrix, effective_span, half_life, normalized_decay_matrix
from . import ExerciseError, compare_with_hints, copy_case, randint, random_cases, uniform

__all__ = ["check_memory", "check_half_life_schedule", "check_normalized_decay", "half_life_schedule_reference"]


def _log_decay(g: torch.Generator, n_heads: int) -> Tensor:
    """ln(gamma) per head, 1 - gamma between 10^-6 and 0.5 (log-uniform): fast and very slow heads."""
    return torch.log1p(-(10 ** uniform(g, -6.0, math.log10(0.5), n_heads)))


# ---------------------------------------------------------------------------------------------
# Exercise 1: half-life and effective span
# ---------------------------------------------------------------------------------------------
def _memory_case(g: torch.Generator) -> dict[str, Any]:
    return dict(log_decay=_log_decay(g, randint(g, 1, 8)), tol=float(10 ** uniform(g, -6.0, -0.5, 1)))


def _memory_reference(log_decay: Tensor, tol: float) -> tuple[Tensor, Tensor]:
    return half_life(log_decay), effective_span(log_decay, tol)


def check_memory(memory: Callable[..., tuple[Tensor, Tensor]], n_cases: int = 25) -> None:
    """Check ``memory(log_decay, tol) -> (half_life, span)``.

    ``log_decay: (H,)`` float64, ``ln(gamma)`` per head, all ``< 0``; ``tol`` in (0, 1). Returns two ``(H,)``
    tensors: the half-life ``h`` with ``gamma^h = 1/2`` (a real number of tokens), and the span, the
    smallest whole ``n`` with ``gamma^n < tol`` (int or float dtype).
    """
    def approximate(log_decay, tol):
        one_minus_gamma = -torch.expm1(log_decay)
        return math.log(2) / one_minus_gamma, effective_span(log_decay, tol)

    def last_above(log_decay, tol):
        return half_life(log_decay), torch.floor(math.log(tol) / log_decay)

    def rounded(log_decay, tol):
        return half_life(log_decay), torch.round(math.log(tol) / log_decay)

    hints = [
        (approximate, "ln(gamma) ~ -(1 - gamma) holds only for gamma close to 1: use ln(gamma) itself "
                      "(h = ln(1/2) / ln(gamma))."),
        (last_above, "floor(ln(tol) / ln(gamma)) is the LAST n with gamma^n >= tol; the span is the first n "
                     "below tol, one more."),
        (rounded, "round to the first whole n with gamma^n < tol (floor(...) + 1), not to the nearest."),
    ]
    outputs = (("half_life", 1e-7, 1e-9), ("span", 0.0, 0.0))    # the span is a whole number: exact
    # elementwise, here and below: per-head quantities and decay matrices, computed entry by entry, so each
    # entry is held to its own size, from 1 down to the tiny weights of distant positions
    compare_with_hints(memory, _memory_reference, random_cases(_memory_case, n_cases, seed=51), "check_memory",
                       hints, elementwise=True, outputs=outputs)


# ---------------------------------------------------------------------------------------------
# Exercise 2: a schedule from half-lives
# ---------------------------------------------------------------------------------------------
def half_life_schedule_reference(n_heads: int, shortest: float, longest: float) -> Tensor:
    """``ln(gamma)`` per head whose half-lives go from ``shortest`` to ``longest`` tokens in equal ratios
    (one head: ``shortest``). Float64 ``(n_heads,)``."""
    lives = torch.exp(torch.linspace(math.log(shortest), math.log(longest), n_heads, dtype=torch.float64))
    return math.log(0.5) / lives


def _schedule_case(g: torch.Generator) -> dict[str, Any]:
    shortest = float(10 ** uniform(g, 0.0, 2.0, 1))                 # 1 to 100 tokens
    return dict(n_heads=randint(g, 1, 16), shortest=shortest,
                longest=shortest * float(10 ** uniform(g, 0.3, 5.0, 1)))


def check_half_life_schedule(schedule: Callable[..., Tensor], n_cases: int = 25) -> None:
    """Check ``schedule(n_heads, shortest, longest) -> log_decay``: ``(n_heads,)`` float64 ``ln(gamma)``,
    head 0 with half-life ``shortest``, the last head ``longest``, half-lives in a geometric progression."""
    def linear(n_heads, shortest, longest):
        return math.log(0.5) / torch.linspace(shortest, longest, n_heads, dtype=torch.float64)

    def gammas(n_heads, shortest, longest):
        return half_life_schedule_reference(n_heads, shortest, longest).exp()

    def time_constants(n_heads, shortest, longest):
        lives = torch.exp(torch.linspace(math.log(shortest), math.log(longest), n_heads, dtype=torch.float64))
        return torch.log1p(-1 / lives)

    def reversed_heads(n_heads, shortest, longest):
        return half_life_schedule_reference(n_heads, shortest, longest).flip(0)

    hints = [
        (linear, "space the half-lives geometrically (equal ratios, like eq. 8 and the experiments' "
                 "schedule), not linearly: linspace over their logarithms."),
        (gammas, "return ln(gamma), not gamma: the package's functions take log_decay."),
        (time_constants, "gamma = 1 - 1/h gives 1/(1-gamma) = h, the time constant, not the half-life: "
                         "solve gamma^h = 1/2."),
        (reversed_heads, "head 0 is the fastest (shortest half-life), the last head the slowest."),
    ]
    compare_with_hints(schedule, half_life_schedule_reference, random_cases(_schedule_case, n_cases, seed=52),
                       "check_half_life_schedule", hints, elementwise=True)


# ---------------------------------------------------------------------------------------------
# Exercise 3: the normalized decay matrix
# ---------------------------------------------------------------------------------------------
def _normalized_case(g: torch.Generator) -> dict[str, Any]:
    H = randint(g, 1, 4)
    log_decay = _log_decay(g, H)
    if H > 1 and randint(g, 0, 3) == 0:
        log_decay[randint(g, 0, H - 1)] = 0.0                        # gamma = 1: no decay
    return dict(log_decay=log_decay, length=randint(g, 1, 40))


def _normalized_cases(n_cases: int) -> list[dict[str, Any]]:
    cases = list(random_cases(_normalized_case, n_cases - 1, seed=53))
    # a long sequence with a fast head: gamma^(-m) overflows float64 near m = 1100 for gamma = 1/2
    cases.append(dict(log_decay=torch.tensor([math.log(0.5), math.log1p(-2.0 ** -20)], dtype=torch.float64),
                      length=1100))
    return cases


def check_normalized_decay(normalized_decay: Callable[..., Tensor], n_cases: int = 25) -> None:
    """Check ``normalized_decay(log_decay, length) -> D~``: ``(H, T, T)`` with
    ``D~[h, n, m] = D[h, n, m] / sqrt(sum_{i <= n} D[h, n, i])`` and ``D[h, n, m] = gamma_h^(n-m)`` for
    ``m <= n``, 0 above the diagonal. ``log_decay`` may hold 0 (gamma = 1); ``length`` reaches 1100."""
    def row_sum(log_decay, length):
        D = decay_matrix(log_decay, length)
        return D / D.sum(-1, keepdim=True)

    def column_sum(log_decay, length):
        D = decay_matrix(log_decay, length)
        return D / D.sum(-2, keepdim=True).sqrt()

    def unmasked(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        D = torch.exp((n[:, None] - n[None, :]).abs() * log_decay[:, None, None])
        return D / decay_matrix(log_decay, length).sum(-1, keepdim=True).sqrt()

    hints = [
        (decay_matrix, "that is D itself: divide each row by the square root of its sum."),
        (row_sum, "divide by the SQUARE ROOT of the row sum (the paper's D~ = D / sqrt(sum_i D_ni))."),
        (column_sum, "sum along the row n (over the keys i <= n), not down a column."),
        (unmasked, "D is 0 above the diagonal (m > n): causality."),
    ]
    cases = _normalized_cases(n_cases)
    try:
        compare_with_hints(normalized_decay, normalized_decay_matrix, cases, "check_normalized_decay", hints,
                           elementwise=True)
    except ExerciseError as error:
        try:
            long = cases[-1]
            finite = bool(torch.isfinite(torch.as_tensor(normalized_decay(**copy_case(long)))).all())
        except Exception:
            finite = True  # crashed: the message above already says so
        if not finite:
            raise ExerciseError(f"{error}\n  hint: a nan or inf means something overflowed (for length "
                                f"{long['length']}): form gamma^(n-m) with n - m >= 0 only, never "
                                "gamma^n * gamma^(-m).") from None
        raise
