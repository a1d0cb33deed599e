"""Checkers for the exercises of the chapter "From recurrence to retention"
(``book/recurrence_to_retention.ipynb``).

Each ``check_*`` calls the reader's function on random cases (fixed seed, float64 unless said otherwise)
and compares it with a reference built from the package; it raises :class:`ExerciseError` saying what is
wrong (type, shape, or the first wrong value with its case and position) or prints
``"<name>: correct on all N random cases."``.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..decay import decay_matrix
from ..retention import parallel_retention
from ..rotation import rotate
from . import ExerciseError, compare, compare_with_hints, randint, randn, random_cases, success, uniform

__all__ = ["check_ssm_kernel", "check_rotate", "check_decay_matrix", "check_retention"]

DTYPE = torch.float64


# ---------------------------------------------------------------------------------------------
# 1. The convolution kernel of a content-unaware linear recurrence (S4-style).
# ---------------------------------------------------------------------------------------------
def reference_ssm_kernel(A: Tensor, q: Tensor, k: Tensor, length: int) -> Tensor:
    """``kernel[j] = q A^j k^T`` for ``j = 0 .. length-1``. A: ``(d, d)``; q, k: ``(d,)`` -> ``(length,)``."""
    out, power_k = [], k.clone()            # power_k = A^j k^T
    for _ in range(length):
        out.append(q @ power_k)
        power_k = A @ power_k
    return torch.stack(out)


def _ssm_case(g: torch.Generator):
    d = randint(g, 1, 6)
    A = randn(g, d, d)
    radius = torch.linalg.eigvals(A).abs().max()
    A = A / radius * float(uniform(g, 0.5, 0.98))       # spectral radius < 1: a stable recurrence
    return {"A": A, "q": randn(g, d), "k": randn(g, d), "length": randint(g, 1, 30)}


def check_ssm_kernel(my_ssm_kernel: Callable, n_cases: int = 25) -> None:
    """``my_ssm_kernel(A, q, k, length) -> (length,)`` tensor with ``kernel[j] = q A^j k^T``."""
    hints = [
        (lambda A, q, k, length: reference_ssm_kernel(A, q, A @ k, length),
         "the kernel starts at j = 0 with A^0 = I: kernel[0] = q k^T."),
        (lambda A, q, k, length: reference_ssm_kernel(A.T, q, k, length),
         "kernel[j] = q A^j k^T: multiply k by A (A @ column), not by its transpose."),
    ]
    cases = random_cases(_ssm_case, n_cases=n_cases, seed=11)
    compare_with_hints(my_ssm_kernel, reference_ssm_kernel, cases, "check_ssm_kernel", hints)


# ---------------------------------------------------------------------------------------------
# 2. The rotation with real "rotate pairs" arithmetic.
# ---------------------------------------------------------------------------------------------
def _rotate_case(g: torch.Generator):
    lead = tuple(randint(g, 1, 3) for _ in range(randint(g, 0, 2)))
    T, half = randint(g, 1, 10), randint(g, 1, 4)
    return {"x": randn(g, *lead, T, 2 * half), "theta": uniform(g, 0.001, 1.5, half), "offset": randint(g, 0, 500)}


def check_rotate(my_rotate: Callable, n_cases: int = 25) -> None:
    """``my_rotate(x, theta, offset) -> x`` rotated: pair ``i`` of position ``offset + t`` by ``(offset + t) theta_i``.

    x: ``(..., T, d)``; theta: ``(d/2,)``; pairs are adjacent coordinates ``(x_{2i}, x_{2i+1})``.
    Compared with :func:`retnet_mini.rotation.rotate`.
    """
    def halves(x, theta, offset):
        # the other common layout: pairs (x_i, x_{i + d/2}) instead of adjacent coordinates
        half = x.shape[-1] // 2
        interleaved = torch.stack((x[..., :half], x[..., half:]), dim=-1).flatten(-2)
        out = rotate(interleaved, theta, offset).unflatten(-1, (-1, 2))
        return torch.cat((out[..., 0], out[..., 1]), dim=-1)

    hints = [
        (lambda x, theta, offset: rotate(x, theta, 0),
         "row t of x is at position offset + t: add the offset to the positions."),
        (lambda x, theta, offset: rotate(x, -theta, offset),
         "rotate by +n theta: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos)."),
        (halves, "the pairs are adjacent coordinates (x_2i, x_2i+1), not (x_i, x_i+d/2)."),
    ]
    cases = random_cases(_rotate_case, n_cases=n_cases, seed=12)
    compare_with_hints(my_rotate, rotate, cases, "check_rotate", hints)


# ---------------------------------------------------------------------------------------------
# 3. The decay matrix by broadcasting, without overflow.
# ---------------------------------------------------------------------------------------------
_OVERFLOW_HINT = (
    "\n  hint: a nan or inf means something overflowed. gamma^n * gamma^(-m) reaches inf for large m "
    "(and inf * 0 = nan under a mask); form gamma^(n-m) with n - m >= 0 only, e.g. put -inf in the "
    "exponent above the diagonal before exp, or use torch.where."
)


def _decay_case(g: torch.Generator):
    H, T = randint(g, 1, 4), randint(g, 1, 40)
    gamma = 1 - torch.exp2(-uniform(g, 1.0, 10.0, H))
    if randint(g, 0, 3) == 0:
        gamma[0] = 1.0                                   # gamma = 1: no decay
    return {"log_decay": torch.log(gamma), "length": T}


def _overflow_cases():
    """Cases where gamma^(-m) overflows float64 (2^1024 = inf) inside the matrix."""
    yield {"log_decay": torch.tensor([math.log(0.5), math.log(0.96875)], dtype=DTYPE), "length": 1100}
    yield {"log_decay": torch.tensor([math.log(0.25)], dtype=DTYPE), "length": 600}


def check_decay_matrix(my_decay_matrix: Callable, n_cases: int = 25) -> None:
    """``my_decay_matrix(log_decay, length) -> D`` of shape ``(H, length, length)``,
    ``D[h, n, m] = gamma_h^(n-m)`` for ``n >= m`` and 0 above the diagonal (``log_decay[h] = ln gamma_h``).

    Random small cases, then two long ones with strong decay where ``gamma^(-m)`` overflows float64,
    then a float32 case (gamma = 0.96875, length 2900) where it overflows float32.
    """
    name = "check_decay_matrix"

    def no_mask(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        return torch.exp((n[:, None] - n[None, :]).abs() * log_decay[:, None, None])

    hints = [
        (no_mask, "D is 0 above the diagonal (n < m): a position never sees a later one."),
        (lambda log_decay, length: decay_matrix(log_decay, length).transpose(-1, -2),
         "D[h, n, m] has the query n as row and the key m as column: the lower triangle is filled."),
    ]
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # one success line at the end, not two
            # elementwise: entries go from 1 down to gamma^1100, each held to its own size
            compare_with_hints(my_decay_matrix, decay_matrix, random_cases(_decay_case, n_cases=n_cases, seed=13),
                               name, hints, elementwise=True)
            compare(my_decay_matrix, decay_matrix, _overflow_cases(), name, elementwise=True)
        # float32: compared with the float64 matrix, loosely (this case is about overflow, not rounding).
        log_decay32 = torch.tensor([math.log(0.96875)], dtype=torch.float32)
        with contextlib.redirect_stdout(io.StringIO()):
            compare(my_decay_matrix, lambda log_decay, length: decay_matrix(log_decay.double(), length),
                    [{"log_decay": log_decay32, "length": 2900}], name + " (float32)", rtol=1e-3, atol=1e-20,
                    elementwise=True)
    except ExerciseError as e:
        text = str(e)
        if "got nan" in text or "got inf" in text or "got -inf" in text:
            raise ExerciseError(text + _OVERFLOW_HINT) from None
        raise
    success(name, n_cases + 3, " (3 of them long enough to overflow gamma^-m)")


# ---------------------------------------------------------------------------------------------
# 4. Retention, parallel form (eq. 5), for one head, from the input x.
# ---------------------------------------------------------------------------------------------
def reference_retention(x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, theta: Tensor, log_decay: float) -> Tensor:
    """``(Q K^T * D) V`` with ``Q = rotate(x w_q)``, ``K = rotate(x w_k)``, ``V = x w_v``, ``D[n, m] = gamma^(n-m)``.

    x: ``(B, T, d_model)``; w_q, w_k: ``(d_model, d)``; w_v: ``(d_model, d_v)``; theta: ``(d/2,)``;
    log_decay: ``ln(gamma)``, a float. Returns ``(B, T, d_v)``. No scaling by ``d^-1/2``.
    """
    q = rotate(x @ w_q, theta)[:, None]
    k = rotate(x @ w_k, theta)[:, None]
    v = (x @ w_v)[:, None]
    return parallel_retention(q, k, v, torch.tensor([log_decay], dtype=x.dtype))[:, 0]


def _retention_case(g: torch.Generator):
    B, T, d_model, half, d_v = randint(g, 1, 2), randint(g, 1, 16), randint(g, 1, 6), randint(g, 1, 3), randint(g, 1, 4)
    scale = d_model ** -0.5
    return {
        "x": randn(g, B, T, d_model),
        "w_q": randn(g, d_model, 2 * half) * scale, "w_k": randn(g, d_model, 2 * half) * scale,
        "w_v": randn(g, d_model, d_v) * scale,
        "theta": uniform(g, 0.001, 1.5, half),
        "log_decay": math.log(1 - 2 ** -float(uniform(g, 1.0, 8.0))),
    }


def check_retention(my_retention: Callable, n_cases: int = 25) -> None:
    """``my_retention(x, w_q, w_k, w_v, theta, log_decay) -> (B, T, d_v)``: eq. 5 for one head."""
    hints = [
        (lambda x, w_q, w_k, w_v, theta, log_decay: reference_retention(x, w_q, w_k, w_v, 0 * theta, log_decay),
         "rotate q and k (pair i of position n by the angle n theta_i) before their product."),
        (lambda x, w_q, w_k, w_v, theta, log_decay:
         reference_retention(x, w_q, w_k, w_v, theta, log_decay) * w_q.shape[1] ** -0.5,
         "eq. 5 here has no scaling: do not divide by sqrt(d)."),
        (lambda x, w_q, w_k, w_v, theta, log_decay: reference_retention(x, w_q, w_k, w_v, theta, 0.0),
         "multiply the scores by the decay matrix D (gamma^(n-m) below the diagonal), not only by a causal mask."),
    ]
    cases = random_cases(_retention_case, n_cases=n_cases, seed=14)
    compare_with_hints(my_retention, reference_retention, cases, "check_retention", hints)
