"""Checkers for the exercises of "Three forms, one function" (book/three_forms.ipynb).

- :func:`check_recurrent_step`: one step of the recurrent form, ``S_n = gamma S_{n-1} + k_n^T v_n``,
  ``o_n = q_n S_n``, for every head and sequence of a batch at once.
- :func:`check_chunkwise`: the chunkwise form with one loop over chunks, for any chunk size (also one
  that does not divide T, and one larger than T), returning the outputs and the final state.
- :func:`check_padded_decay`: the decay matrix of a left-padded batch, which starts at each sequence's
  first real token.

Each checker runs the reader's function on random cases (shapes, decays, seeds) and compares it with
the package's reference; on a mismatch it raises :class:`ExerciseError` saying what is wrong, with a
hint when the answer matches a known mistake.
"""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor

from ..retention import chunkwise_retention, recurrent_retention
from . import compare_with_hints, pick, randint, randn, random_cases

__all__ = ["check_recurrent_step", "check_chunkwise", "check_padded_decay", "padded_decay_reference"]


# ---------------------------------------------------------------------------------------------
# Random cases
# ---------------------------------------------------------------------------------------------
def _random_log_decay(g: torch.Generator, n_heads: int) -> Tensor:
    """ln(gamma) per head: distinct gammas between 0.5 and 1 - 1e-3, sometimes one head with gamma = 1."""
    one_minus_gamma = 10 ** (-3 + 2.7 * torch.rand(n_heads, generator=g, dtype=torch.float64))
    log_decay = torch.log1p(-one_minus_gamma)
    if n_heads > 1 and torch.rand(1, generator=g).item() < 0.2:
        log_decay[randint(g, 0, n_heads - 1)] = 0.0
    return log_decay


# ---------------------------------------------------------------------------------------------
# Exercise 1: one recurrent step
# ---------------------------------------------------------------------------------------------
def _step_case(g: torch.Generator) -> dict[str, Any]:
    B, H, d_k, d_v = randint(g, 1, 3), randint(g, 1, 4), randint(g, 1, 6), randint(g, 1, 6)
    return dict(
        q_n=randn(g, B, H, d_k), k_n=randn(g, B, H, d_k), v_n=randn(g, B, H, d_v),
        log_decay=_random_log_decay(g, H), state=randn(g, B, H, d_k, d_v),
    )


def _step_reference(q_n, k_n, v_n, log_decay, state):
    o, new_state = recurrent_retention(q_n[:, :, None], k_n[:, :, None], v_n[:, :, None], log_decay, state)
    return o[:, :, 0], new_state


def _step_read_before_write(q_n, k_n, v_n, log_decay, state):
    gamma = log_decay.exp()[:, None, None]
    return (q_n[..., None, :] @ state)[..., 0, :], gamma * state + k_n[..., :, None] * v_n[..., None, :]


def _step_no_decay(q_n, k_n, v_n, log_decay, state):
    new_state = state + k_n[..., :, None] * v_n[..., None, :]
    return (q_n[..., None, :] @ new_state)[..., 0, :], new_state


def check_recurrent_step(step: Callable[..., tuple[Tensor, Tensor]], n_cases: int = 25) -> None:
    """Check ``step(q_n, k_n, v_n, log_decay, state) -> (o_n, new_state)``.

    Shapes: ``q_n, k_n: (B, H, d_k)``, ``v_n: (B, H, d_v)``, ``log_decay: (H,)`` (ln gamma per head),
    ``state: (B, H, d_k, d_v)``; returns ``o_n: (B, H, d_v)`` and the new state ``(B, H, d_k, d_v)``.
    """
    hints = [
        (_step_read_before_write, "o_n reads the state *after* adding k_n^T v_n: o_n = q_n S_n, not q_n S_{n-1}."),
        (_step_no_decay, "the old state is multiplied by gamma = exp(log_decay), one gamma per head."),
    ]
    compare_with_hints(step, _step_reference, random_cases(_step_case, n_cases, seed=1),
                       "check_recurrent_step", hints)


# ---------------------------------------------------------------------------------------------
# Exercise 2: the chunkwise form with one loop over chunks
# ---------------------------------------------------------------------------------------------
def _chunk_case(g: torch.Generator) -> dict[str, Any]:
    B, H, d_k, d_v = randint(g, 1, 2), randint(g, 1, 3), randint(g, 1, 5), randint(g, 1, 5)
    T = randint(g, 1, 40)
    kind = randint(g, 0, 3)
    if kind == 0:                          # a chunk size that divides T
        divisors = [c for c in range(1, T + 1) if T % c == 0]
        chunk_size = pick(g, divisors)
    elif kind == 3:                        # larger than T: a single chunk
        chunk_size = T + randint(g, 1, 5)
    else:                                  # anything, usually with a short last chunk
        chunk_size = randint(g, 1, T)
    return dict(
        q=randn(g, B, H, T, d_k), k=randn(g, B, H, T, d_k) / math.sqrt(d_k), v=randn(g, B, H, T, d_v),
        log_decay=_random_log_decay(g, H), chunk_size=chunk_size,
    )


def _chunk_reference(q, k, v, log_decay, chunk_size):
    return chunkwise_retention(q, k, v, log_decay, chunk_size)


def _chunk_variant(q, k, v, log_decay, chunk_size, zeta: bool = True, own_length: bool = True):
    """The chunkwise form with optional known mistakes (no zeta; gamma^C for a short last chunk)."""
    B, H, T, d_k = q.shape
    R = q.new_zeros(B, H, d_k, v.shape[-1])
    outputs = []
    for start in range(0, T, chunk_size):
        qc, kc, vc = q[:, :, start:start + chunk_size], k[:, :, start:start + chunk_size], v[:, :, start:start + chunk_size]
        L = qc.shape[2]
        steps = L if own_length else chunk_size
        j = torch.arange(L, dtype=q.dtype)
        D = torch.where(j[:, None] >= j[None, :], (j[:, None] - j[None, :]).clamp(min=0) * log_decay[:, None, None],
                        torch.tensor(float("-inf"), dtype=q.dtype)).exp()
        xi = torch.exp((j + 1)[None, :] * log_decay[:, None])[..., None]
        zeta_exp = (steps - 1 - j) if zeta else torch.zeros_like(j)
        zeta_w = torch.exp(zeta_exp[None, :] * log_decay[:, None])[..., None]
        outputs.append(((qc @ kc.transpose(-1, -2)) * D) @ vc + (qc @ R) * xi)
        R = torch.exp(steps * log_decay)[:, None, None] * R + kc.transpose(-1, -2) @ (vc * zeta_w)
    return torch.cat(outputs, dim=2), R


def check_chunkwise(chunkwise: Callable[..., tuple[Tensor, Tensor]], n_cases: int = 25) -> None:
    """Check ``chunkwise(q, k, v, log_decay, chunk_size) -> (o, state)``.

    Shapes: ``q, k: (B, H, T, d_k)``, ``v: (B, H, T, d_v)``, ``log_decay: (H,)``; ``chunk_size >= 1``
    need not divide T and may exceed it. Returns ``o: (B, H, T, d_v)`` and the state after the last
    position, ``(B, H, d_k, d_v)`` (as :func:`retnet_mini.chunkwise_retention`, starting from zero).
    """
    hints = [
        (lambda **c: _chunk_variant(**c, zeta=False),
         "the state update needs zeta_j = gamma^(L-1-j) on the chunk's values (the paper's pseudocode figure omits it)."),
        (lambda **c: _chunk_variant(**c, own_length=False),
         "a short last chunk of length L < chunk_size moves the state on by gamma^L (and zeta_j = "
         "gamma^(L-1-j)), not by gamma^chunk_size."),
    ]
    compare_with_hints(chunkwise, _chunk_reference, random_cases(_chunk_case, n_cases, seed=2),
                       "check_chunkwise", hints)


# ---------------------------------------------------------------------------------------------
# Exercise 3: the decay matrix of a left-padded batch
# ---------------------------------------------------------------------------------------------
def padded_decay_reference(log_decay: Tensor, pad: Tensor, length: int) -> Tensor:
    """``D[b, h, n, m] = gamma_h^(n-m)`` if ``pad[b] <= m <= n``, else 0: shape ``(B, H, T, T)``."""
    n = torch.arange(length)
    distance = (n[:, None] - n[None, :]).to(log_decay.dtype)                          # (T, T)
    allowed = (distance >= 0)[None] & (n[None, None, :] >= pad[:, None, None])          # (B, T, T)
    exponent = distance[None, None] * log_decay[None, :, None, None]                    # (1, H, T, T)
    return torch.where(allowed[:, None], exponent, float("-inf")).exp()


def _pad_case(g: torch.Generator) -> dict[str, Any]:
    B, H, T = randint(g, 1, 4), randint(g, 1, 3), randint(g, 1, 24)
    pad = torch.randint(0, T, (B,), generator=g)
    if B > 1:
        pad[0] = 0                         # one sequence without padding
    return dict(log_decay=_random_log_decay(g, H), pad=pad, length=T)


def _pad_ignored(log_decay, pad, length):
    return padded_decay_reference(log_decay, torch.zeros_like(pad), length)


def _pad_columns_only_rows(log_decay, pad, length):
    """Masks the padded rows but not the padded columns."""
    D = padded_decay_reference(log_decay, torch.zeros_like(pad), length)
    rows = torch.arange(length)[None, :] >= pad[:, None]                                # (B, T)
    return D * rows[:, None, :, None]


def check_padded_decay(padded_decay: Callable[..., Tensor], n_cases: int = 25) -> None:
    """Check ``padded_decay(log_decay, pad, length) -> D`` for a left-padded batch.

    ``log_decay: (H,)``; ``pad: (B,)`` int64, the number of padding positions at the start of each
    sequence (``0 <= pad[b] < length``). Returns ``D: (B, H, T, T)`` with ``D[b, h, n, m] = gamma_h^(n-m)``
    when ``pad[b] <= m <= n`` and 0 otherwise: no position attends to (or decays from) a padding position.
    """
    hints = [
        (_pad_ignored, "the columns m < pad[b] (keys at padding positions) must be 0 in sequence b."),
        (_pad_columns_only_rows, "zeroing the padded rows is not enough: mask the padded columns (keys m < pad[b])."),
    ]
    # elementwise: a decay matrix, entries from 1 down to the weights of distant keys
    compare_with_hints(padded_decay, padded_decay_reference, random_cases(_pad_case, n_cases, seed=3),
                       "check_padded_decay", hints, elementwise=True)
