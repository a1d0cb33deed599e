"""Checkers for the exercises of "The RetNet block" (book/block.ipynb).

- :func:`check_gated_output`: the gated output of multi-scale retention, ``(swish(X W_G) * Y) W_O``.
- :func:`check_head_rmsnorm`: the official code's head norm, an RMSNorm over each head separately.
- :func:`check_param_count`: the number of weights in one block's linear layers.

Each checker runs the reader's function on random cases and compares it with the package; on a mismatch
it raises :class:`ExerciseError` saying what is wrong, with a hint when the answer matches a known mistake.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import HeadNorm, RetNetBlock
from ..model import RetNetConfig
from . import (ExerciseError, _precision_note, as_number, call_answer, compare_with_hints, pick, randint, randn,
               random_cases, success)

__all__ = ["check_gated_output", "check_head_rmsnorm", "check_param_count", "block_linear_weights"]


# ---------------------------------------------------------------------------------------------
# Exercise 1: the gated output
# ---------------------------------------------------------------------------------------------
def _gate_case(g: torch.Generator) -> dict[str, Any]:
    B, T, d, V = randint(g, 1, 3), randint(g, 1, 6), randint(g, 1, 8), randint(g, 1, 12)
    return dict(x=randn(g, B, T, d), y=randn(g, B, T, V), w_g=randn(g, d, V), w_o=randn(g, V, d))


def _gate_reference(x, y, w_g, w_o):
    return (F.silu(x @ w_g) * y) @ w_o


def check_gated_output(gated_output: Callable[..., Tensor], n_cases: int = 25) -> None:
    """Check ``gated_output(x, y, w_g, w_o) -> (swish(x @ w_g) * y) @ w_o``.

    Shapes: ``x: (B, T, d)``, ``y: (B, T, V)`` (the head-normalized retention, heads concatenated),
    ``w_g: (d, V)``, ``w_o: (V, d)``; returns ``(B, T, d)``.
    """
    hints = [
        (lambda x, y, w_g, w_o: (torch.sigmoid(x @ w_g) * y) @ w_o,
         "swish(z) = z * sigmoid(z) (torch.nn.functional.silu), not sigmoid(z) alone."),
        (lambda x, y, w_g, w_o: (x @ w_g * y) @ w_o, "the gate goes through swish before it multiplies y."),
        (lambda x, y, w_g, w_o: (F.silu(y) * (x @ w_g)) @ w_o,
         "swish is applied to the gate x W_G, not to y."),
    ]
    compare_with_hints(gated_output, _gate_reference, random_cases(_gate_case, n_cases, seed=11),
                       "check_gated_output", hints)


# ---------------------------------------------------------------------------------------------
# Exercise 2: a per-head RMSNorm
# ---------------------------------------------------------------------------------------------
def _norm_case(g: torch.Generator) -> dict[str, Any]:
    B, T, H, d_v = randint(g, 1, 3), randint(g, 1, 5), randint(g, 1, 4), randint(g, 1, 8)
    scale = 10 ** (4 * torch.rand(H, generator=g, dtype=torch.float64) - 2)        # heads of very different sizes
    y = (randn(g, B, T, H, d_v) * scale[:, None]).reshape(B, T, H * d_v)
    eps = pick(g, [0.0, 1e-6, 1e-2, 1.0])
    return dict(y=y, n_heads=H, eps=eps)


def _norm_reference(y, n_heads, eps):
    B, T, width = y.shape
    per_head = y.view(B, T, n_heads, width // n_heads)
    return HeadNorm("rmsnorm", n_heads, width // n_heads, eps)(per_head).reshape(B, T, width)


def _norm_all_heads(y, n_heads, eps):
    return y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)


def _norm_eps_outside(y, n_heads, eps):
    B, T, width = y.shape
    h = y.view(B, T, n_heads, -1)
    return (h / (h.pow(2).mean(-1, keepdim=True).sqrt() + eps)).reshape(B, T, width)


def _norm_layernorm(y, n_heads, eps):
    B, T, width = y.shape
    h = y.view(B, T, n_heads, -1)
    h = h - h.mean(-1, keepdim=True)
    return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).reshape(B, T, width)


def check_head_rmsnorm(head_rmsnorm: Callable[..., Tensor], n_cases: int = 25) -> None:
    """Check ``head_rmsnorm(y, n_heads, eps)``: RMSNorm over each head's ``d_v`` features, no weight.

    ``y: (B, T, H * d_v)``, heads concatenated along the last dim; returns the same shape, each head's
    slice divided by ``sqrt(mean(slice^2) + eps)``.
    """
    hints = [
        (_norm_all_heads, "normalize each head's d_v features separately, not all H * d_v features at once."),
        (_norm_eps_outside, "eps goes inside the square root: y / sqrt(mean(y^2) + eps)."),
        (_norm_layernorm, "an RMSNorm does not subtract the mean (that is a LayerNorm / GroupNorm)."),
    ]
    # elementwise: each head's slice is normalized on its own (no sums that cancel), and heads of very
    # different sizes are each held to their own scale
    compare_with_hints(head_rmsnorm, _norm_reference, random_cases(_norm_case, n_cases, seed=12),
                       "check_head_rmsnorm", hints, elementwise=True)


# ---------------------------------------------------------------------------------------------
# Exercise 3: the parameter count
# ---------------------------------------------------------------------------------------------
def block_linear_weights(d_model: int, value_dim: int, ffn_dim: int, glu: bool) -> int:
    """Weights of every ``nn.Linear`` in one :class:`retnet_mini.layers.RetNetBlock` (biases and norms excluded)."""
    config = RetNetConfig(vocab_size=2, d_model=d_model, n_heads=1, n_layers=1, value_dim=value_dim,
                          ffn_dim=ffn_dim, ffn="glu" if glu else "gelu", bias=False)
    block = RetNetBlock(config)
    return sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))


def _count_case(g: torch.Generator) -> dict[str, Any]:
    if randint(g, 0, 3) == 0:             # the paper's shape: value_dim = ffn_dim = 2 d
        d = 2 * randint(g, 1, 96)
        return dict(d_model=d, value_dim=2 * d, ffn_dim=2 * d, glu=False)
    return dict(d_model=2 * randint(g, 1, 96), value_dim=randint(g, 1, 384), ffn_dim=randint(g, 1, 384),
                glu=bool(randint(g, 0, 1)))


def check_param_count(param_count: Callable[..., int], n_cases: int = 25) -> None:
    """Check ``param_count(d_model, value_dim, ffn_dim, glu) -> int``: the weights of one block's linear layers.

    The block: W_Q, W_K (d x d), W_V, W_G (d x value_dim), W_O (value_dim x d), and an FFN of inner width
    ``ffn_dim``: two matrices (``gelu(x W_1) W_2``), or three with ``glu=True`` (``fc2(gelu(fc1 x) * gate x)``).
    Biases and norm weights are not counted.
    """
    name = "check_param_count"
    n = 0
    for n, case in enumerate(random_cases(_count_case, n_cases, seed=13), start=1):
        want = block_linear_weights(**case)          # first: nothing the answer does can change it
        got, _ = call_answer(param_count, case, name, describe=str)   # ints: nothing to change in place
        if isinstance(got, Tensor) and got.numel() == 1:
            got = got.reshape(())
        got, dtype = as_number(got, name, f"\n  on {case}", expected="an int")
        if got != want:
            d = case["d_model"]
            shown = f"{got:,}" if float(got).is_integer() else repr(got)
            raise ExerciseError(
                f"{name}: got {shown} weights, expected {want:,} (off by {got - want:+,}, "
                f"{(got - want) / d ** 2:+.4g} d_model^2)\n  on {case}"
                + ("\n  hint: with glu=True the FFN has three d_model x ffn_dim matrices (fc1, gate, fc2)."
                   if case["glu"] and got - want == -d * case["ffn_dim"] else "")
                + _precision_note(float(got), float(want), dtype, "count")
            )
    success(name, n)
