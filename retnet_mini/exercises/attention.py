"""Checkers for the exercises of the chapter "From attention to linear attention to a recurrence"
(``book/attention_to_recurrence.ipynb``).

Each ``check_*`` calls the reader's function on random cases (shapes, lengths and values drawn with a
fixed seed, float64) and compares it with a reference; it raises :class:`ExerciseError` saying what is
wrong (type, dtype, shape, or the first wrong value with its case and position) or prints
``"<name>: correct on all N random cases."``.

Conventions (as in the chapter): tensors are ``(B, H, T, d)`` (batch, heads, positions, features),
a query at position ``n`` sees keys ``m <= n``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..retention import parallel_retention, recurrent_retention
from . import ExerciseError, compare_with_hints, randint, randn, random_cases, require_function, to_tensor

__all__ = [
    "check_causal_mask",
    "check_kv_decode_step",
    "check_linear_attention_step",
    "check_linear_attention_cumsum",
]

DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------
# 1. The causal mask, by broadcasting.
# ---------------------------------------------------------------------------------------------
def reference_causal_mask(length: int) -> Tensor:
    """``mask[n, m] = (m <= n)``: query ``n`` may look at key ``m``. Shape ``(length, length)``, bool."""
    return torch.ones(length, length, dtype=torch.bool).tril()


def check_causal_mask(my_causal_mask: Callable[[int], Tensor], n_cases: int = 25) -> None:
    """``my_causal_mask(length) -> (length, length)`` bool tensor, True where key ``m <= n`` (query ``n``)."""
    name = "check_causal_mask"
    require_function(my_causal_mask, name)

    def as_float(length):
        # the dtype first (a float mask of the right values is still the wrong kind of mask), then the
        # values as float64, for compare and its hints; a non-tensor is left for compare to report
        out = my_causal_mask(length=length)
        mask = to_tensor(out)
        if mask is None:
            return out
        if mask.dtype != torch.bool:
            raise ExerciseError(
                f"{name}: the mask should have dtype torch.bool (True = may attend), got {mask.dtype} "
                f"(for length={length}); a comparison such as `a >= b` gives a bool tensor"
            )
        return mask.to(DTYPE)

    def positions(length):
        pos = torch.arange(length)
        return pos[:, None], pos[None, :]                 # query n (column vector), key m (row vector)

    def diagonal_left_out(length):
        n, m = positions(length)
        return (m < n).to(DTYPE)

    def transposed(length):
        n, m = positions(length)
        return (m >= n).to(DTYPE)

    hints = [
        (diagonal_left_out, "a position may attend to itself: True where m <= n, the diagonal included."),
        (transposed, "rows are queries n and columns are keys m: True where m <= n, the lower triangle."),
    ]
    cases = random_cases(lambda g: {"length": randint(g, 1, 40)}, n_cases=n_cases, seed=1)
    compare_with_hints(as_float, lambda length: reference_causal_mask(length).to(DTYPE), cases, name, hints)


# ---------------------------------------------------------------------------------------------
# 2. One decoding step of softmax attention with a KV cache.
# ---------------------------------------------------------------------------------------------
def reference_kv_decode_step(q: Tensor, k: Tensor, v: Tensor, cache_k: Tensor, cache_v: Tensor):
    """Append ``k, v`` to the cache, then attend with ``q`` over every cached position (new one included).

    q, k: ``(B, H, 1, d_k)``; v: ``(B, H, 1, d_v)``; cache_k: ``(B, H, t, d_k)``; cache_v: ``(B, H, t, d_v)``
    (``t >= 0``). Returns ``(o, cache_k, cache_v)``: o ``(B, H, 1, d_v)``, the caches with ``t + 1`` positions.
    """
    cache_k = torch.cat([cache_k, k], dim=2)
    cache_v = torch.cat([cache_v, v], dim=2)
    weights = torch.softmax(q @ cache_k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ cache_v, cache_k, cache_v


def _kv_case(g: torch.Generator):
    B, H, t, d_k, d_v = randint(g, 1, 2), randint(g, 1, 3), randint(g, 0, 12), randint(g, 1, 8), randint(g, 1, 8)
    return {
        "q": randn(g, B, H, 1, d_k), "k": randn(g, B, H, 1, d_k), "v": randn(g, B, H, 1, d_v),
        "cache_k": randn(g, B, H, t, d_k), "cache_v": randn(g, B, H, t, d_v),
    }


def check_kv_decode_step(my_kv_decode_step: Callable, n_cases: int = 25) -> None:
    """``my_kv_decode_step(q, k, v, cache_k, cache_v) -> (o, cache_k, cache_v)``; scores scaled by ``d_k^-1/2``."""
    def attend_before_append(q, k, v, cache_k, cache_v):
        weights = torch.softmax(q @ cache_k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return (weights @ cache_v,) + reference_kv_decode_step(q, k, v, cache_k, cache_v)[1:]

    def unscaled(q, k, v, cache_k, cache_v):
        return reference_kv_decode_step(q * math.sqrt(q.shape[-1]), k, v, cache_k, cache_v)

    hints = [
        (attend_before_append, "append k and v to the caches first: the new position attends to itself too."),
        (unscaled, "scale the scores q K^T by 1 / sqrt(d_k) before the softmax."),
    ]
    cases = random_cases(_kv_case, n_cases=n_cases, seed=2)
    compare_with_hints(my_kv_decode_step, reference_kv_decode_step, cases, "check_kv_decode_step", hints)


# ---------------------------------------------------------------------------------------------
# 3. One step of causal linear attention: the running state.
# ---------------------------------------------------------------------------------------------
def reference_linear_attention_step(q: Tensor, k: Tensor, v: Tensor, state: Tensor):
    """``S <- S + k^T v``, then ``o = q S``. q, k: ``(B, H, d_k)``; v: ``(B, H, d_v)``; state ``(B, H, d_k, d_v)``.

    Returns ``(o, state)`` with o ``(B, H, d_v)``. (Retention with gamma = 1, one position.)
    """
    H = q.shape[1]
    o, state = recurrent_retention(q[:, :, None], k[:, :, None], v[:, :, None], q.new_zeros(H), state)
    return o[:, :, 0], state


def _step_case(g: torch.Generator):
    B, H, d_k, d_v = randint(g, 1, 2), randint(g, 1, 3), randint(g, 1, 8), randint(g, 1, 8)
    return {"q": randn(g, B, H, d_k), "k": randn(g, B, H, d_k), "v": randn(g, B, H, d_v),
            "state": randn(g, B, H, d_k, d_v)}


def check_linear_attention_step(my_linear_attention_step: Callable, n_cases: int = 25) -> None:
    """``my_linear_attention_step(q, k, v, state) -> (o, state)``: add ``k^T v`` to the state, then read it with q."""
    def read_before_update(q, k, v, state):
        o = (q[..., None, :] @ state)[..., 0, :]
        return o, reference_linear_attention_step(q, k, v, state)[1]

    hints = [(read_before_update, "update the state first, then read it: o_n = q_n S_n includes position n.")]
    cases = random_cases(_step_case, n_cases=n_cases, seed=3)
    compare_with_hints(my_linear_attention_step, reference_linear_attention_step, cases,
                        "check_linear_attention_step", hints)


# ---------------------------------------------------------------------------------------------
# 4. Causal linear attention for a whole sequence with a prefix sum (no T x T matrix).
# ---------------------------------------------------------------------------------------------
def reference_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``o_n = sum_{m <= n} (q_n . k_m) v_m`` for every n: ``(B, H, T, d_k), (B, H, T, d_v) -> (B, H, T, d_v)``."""
    return parallel_retention(q, k, v, q.new_zeros(q.shape[1]))


def _sequence_case(g: torch.Generator):
    B, H, T, d_k, d_v = randint(g, 1, 2), randint(g, 1, 3), randint(g, 1, 20), randint(g, 1, 6), randint(g, 1, 6)
    return {"q": randn(g, B, H, T, d_k), "k": randn(g, B, H, T, d_k), "v": randn(g, B, H, T, d_v)}


def check_linear_attention_cumsum(my_linear_attention_cumsum: Callable, n_cases: int = 25) -> None:
    """``my_linear_attention_cumsum(q, k, v) -> o``: causal linear attention, ``(B, H, T, d_v)``."""
    def exclusive(q, k, v):
        outer = k[..., :, None] * v[..., None, :]
        return torch.einsum("bhnk,bhnkv->bhnv", q, torch.cumsum(outer, dim=2) - outer)

    def not_causal(q, k, v):
        return q @ (k.transpose(-1, -2) @ v)

    hints = [
        (exclusive, "S_n includes position n itself: an inclusive cumulative sum (torch.cumsum is inclusive)."),
        (not_causal, "this sums over every position; causal linear attention sums over m <= n only."),
    ]
    cases = random_cases(_sequence_case, n_cases=n_cases, seed=4)
    compare_with_hints(my_linear_attention_cumsum, reference_linear_attention, cases,
                        "check_linear_attention_cumsum", hints)
