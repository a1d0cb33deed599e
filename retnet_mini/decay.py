"""Decay, in one place: every rule about gamma the book and the package use.

- **Schedules** (one fixed ``ln(gamma)`` per head, the same in every layer): the paper's eq. 8
  (:func:`paper_log_decay`), its language-model runs' schedule (:func:`experiment_log_decay`) and the
  others a config can name, in one registry, :data:`SCHEDULES`, read by :func:`decay_schedule`;
  ``RetNetConfig.decay`` is one of :data:`DECAYS` (the schedules, or ``"gated"``).
- **Gated decay** (computed from the input, gated linear attention's simple gating):
  :func:`gated_log_decay`, its inverse :func:`gate_logit_for`, :data:`GATE_TEMPERATURE`.
- **The decay matrix** ``D`` of eq. 5 (:func:`decay_matrix`), the paper's second rescaling as
  per-position factors (:func:`rescale_factors`) and the rescaled ``D~`` (:func:`normalized_decay_matrix`);
  the decay factors of a block of positions that the chunkwise form uses (``_decay_factors``: ``D``,
  ``xi``, ``zeta``, ``gamma^L``).
- **What a gamma means**: :func:`half_life`, :func:`effective_span`.

All decays are handled as ``ln(gamma) <= 0`` and every factor is formed as ``exp`` of a sum of them with
exponent ``<= 0`` (``gamma^(n-m)``, never ``gamma^n * gamma^-m``, which overflows). Display labels for
the explorers live in :mod:`retnet_mini.viz`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import ArgumentTypeError, check_int, check_real, describe_tensor

__all__ = [
    "paper_log_decay", "experiment_log_decay", "SCHEDULES", "DECAYS", "decay_schedule", "check_decay_choice",
    "GATE_TEMPERATURE", "gated_log_decay", "gate_logit_for", "decay_matrix", "rescale_factors",
    "normalized_decay_matrix", "SPAN_TOL", "half_life", "effective_span",
]


# ---------------------------------------------------------------------------------------------
# Schedules: one gamma per head, the same in every layer.
# ---------------------------------------------------------------------------------------------
def paper_log_decay(n_heads: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``ln(gamma_h)`` with ``gamma_h = 1 - 2^(-5-h)``, ``h = 0..n_heads-1`` (the paper's eq. 8).

    Computed in float64 (gamma is within 2^-20 of 1 for 16 heads) and then cast to ``dtype``.
    Returns a tensor of shape ``(n_heads,)``.
    """
    _check_n_heads(n_heads)
    h = torch.arange(n_heads, dtype=torch.float64)
    return torch.log1p(-torch.exp2(-5.0 - h)).to(dtype)


def experiment_log_decay(n_heads: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``ln(gamma_h)`` with ``gamma = 1 - exp(linspace(ln 1/32, ln 1/512, n_heads))``.

    The schedule the paper's language-modeling experiments used "instead of the default" eq. 8: the
    slowest head has gamma = 1 - 1/512, whatever the number of heads. Shape ``(n_heads,)``.
    """
    _check_n_heads(n_heads)
    one_minus_gamma = torch.exp(
        torch.linspace(math.log(1 / 32), math.log(1 / 512), n_heads, dtype=torch.float64)
    )
    return torch.log1p(-one_minus_gamma).to(dtype)


def torchscale_log_decay(n_heads: int) -> Tensor:
    """Eq. 8 computed in float32 like the official code (torchscale 0.3.0), returned as float64 ``(n_heads,)``."""
    return paper_log_decay(n_heads, dtype=torch.float32).double()


def no_decay(n_heads: int) -> Tensor:
    """``gamma = 1`` in every head (linear attention), ``(n_heads,)`` zeros."""
    _check_n_heads(n_heads)
    return torch.zeros(n_heads, dtype=torch.float64)


def single_log_decay(n_heads: int) -> Tensor:
    """``gamma = 127/128`` in every head: the paper's one-decay ablation."""
    _check_n_heads(n_heads)
    return torch.full((n_heads,), math.log(127 / 128), dtype=torch.float64)


#: The fixed schedules, by the name ``RetNetConfig.decay`` uses: ``n_heads -> ln(gamma)`` float64 ``(H,)``.
SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "paper": paper_log_decay, "experiment": experiment_log_decay, "torchscale": torchscale_log_decay,
    "none": no_decay, "single": single_log_decay,
}
#: What ``RetNetConfig.decay`` may be: a fixed schedule, or ``"gated"`` (computed from the input).
DECAYS = (*SCHEDULES, "gated")


def decay_schedule(kind: str, n_heads: int) -> Tensor:
    """``ln(gamma)`` per head, float64 ``(n_heads,)``, for a schedule named in :data:`SCHEDULES`.

    ``"paper"`` (eq. 8), ``"experiment"`` (the LM runs' schedule), ``"torchscale"`` (eq. 8 computed in
    float32 like the official code), ``"none"`` (gamma = 1: linear attention), ``"single"`` (gamma =
    127/128 in every head, the paper's ablation). ``"gated"`` has no fixed schedule: each layer computes
    ``ln(gamma)`` per head and position from its input (:func:`gated_log_decay`).
    """
    if kind == "gated":
        raise ValueError("decay 'gated' has no fixed schedule: each layer computes it from its input")
    if not isinstance(kind, str) or kind not in SCHEDULES:
        raise ValueError(f"decay must be one of {DECAYS}, got {kind!r}")
    return SCHEDULES[kind](n_heads)


def check_decay_choice(decay: str, rescale: bool) -> None:
    """The config's rule: ``decay`` is one of :data:`DECAYS`, and the rescalings need a fixed decay."""
    if not isinstance(decay, str) or decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if decay == "gated" and rescale:
        raise ValueError(
            "rescale=True needs a fixed decay (its factors are row sums of a fixed gamma's decay matrix); "
            "use rescale=False with decay='gated'"
        )


def _check_n_heads(n_heads: int) -> None:
    if not isinstance(n_heads, int) or isinstance(n_heads, bool) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")


# ---------------------------------------------------------------------------------------------
# Gated decay: ln(gamma) per head and position, from the input
# ---------------------------------------------------------------------------------------------
GATE_TEMPERATURE = 16.0   # gated linear attention's normalizer tau: gamma = sigmoid(z)^(1/16) stays near 1


def gated_log_decay(gate_logits: Tensor, temperature: float = GATE_TEMPERATURE) -> Tensor:
    """Data-dependent decay, gated linear attention's simple gating: ``ln(gamma_t) = logsigmoid(z_t) / tau``.

    ``gamma_t = sigmoid(z_t)^(1/tau)`` with ``z_t = x_t w_h + b_h`` per head: always in (0, 1), and with
    ``tau = 16`` near 1 unless ``z_t`` is very negative (``gamma = 1/2`` needs ``z = -11.1``). Elementwise:
    ``(B, T, H)`` logits -> ``(B, T, H)`` log decays (``<= 0``, computed without overflow).
    """
    return F.logsigmoid(gate_logits) / temperature


def gate_logit_for(log_decay: Tensor, temperature: float = GATE_TEMPERATURE) -> Tensor:
    """The inverse of :func:`gated_log_decay`: the logit ``z`` with ``logsigmoid(z) / tau = ln(gamma)``.

    ``z = logit(gamma^tau) = tau ln(gamma) - ln(1 - gamma^tau)``; needs ``ln(gamma) < 0``. A gate whose
    weights are zero and whose bias is this gives RetNet's fixed decay exactly.
    """
    a = temperature * log_decay
    return a - torch.log(-torch.expm1(a))


# ---------------------------------------------------------------------------------------------
# The decay matrix, its rescaling, and the factors of a block of positions
# ---------------------------------------------------------------------------------------------
def decay_matrix(log_decay: Tensor, length: int) -> Tensor:
    """The causal decay matrix ``D[h, n, m] = gamma_h^(n-m)`` for ``n >= m``, else 0.

    Args:
        log_decay: ``(H,)`` ``ln(gamma)`` per head, each ``<= 0``; or ``(B, H, length)`` per position
            (then ``D[b, h, n, m] = gamma_{m+1} ... gamma_n``).
        length: ``T``, the number of positions.
    Returns:
        ``(H, T, T)`` (or ``(B, H, T, T)``) in ``log_decay``'s dtype and device.
    """
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative int, got {length!r}")
    per_position = isinstance(log_decay, Tensor) and log_decay.ndim == 3
    _check_log_decay(log_decay, n_heads=None, batch_and_length=(log_decay.shape[0], length) if per_position else None)
    D = _decay_factors(_positionwise(log_decay, length), fixed=not per_position)[0]
    return D if per_position else D[0]


def rescale_factors(log_decay: Tensor, offset: int, length: int) -> Tensor:
    """The paper's second rescaling as a per-position factor: ``1 / sqrt(sum_{i<=n} D_ni)``.

    Row ``n`` of ``D`` sums to ``sum_{j=0}^{n} gamma^j = (1 - gamma^(n+1)) / (1 - gamma)`` (``n + 1`` for
    gamma = 1), so dividing the whole row is the same as scaling the output at ``n``. Returns ``(H, T, 1)``
    for absolute positions ``offset .. offset + length - 1``.
    """
    check_int("offset", offset, 0)
    n_plus_1 = torch.arange(offset + 1, offset + length + 1, device=log_decay.device, dtype=log_decay.dtype)
    ld = log_decay[:, None]
    # -expm1(n ln g) / -expm1(ln g) is the geometric sum without cancellation when gamma is near 1.
    row_sum = torch.where(ld == 0, n_plus_1[None, :], torch.expm1(n_plus_1[None, :] * ld) / torch.expm1(ld))
    return torch.rsqrt(row_sum)[:, :, None]


# Everything below is written for a decay per position, a_t = ln(gamma_t) <= 0, applied as
# S_t = gamma_t S_{t-1} + k_t^T v_t; RetNet's fixed decay is the case a_t = ln(gamma) for every t (gated
# linear attention and Mamba-2 compute a_t from the input).
def _positionwise(log_decay: Tensor, T: int) -> Tensor:
    """``ln(gamma)`` of every position: ``(H,)`` -> a ``(1, H, T)`` view; ``(B, H, T)`` unchanged."""
    return log_decay[None, :, None].expand(1, -1, T) if log_decay.ndim == 1 else log_decay


def _segment_sums(a: Tensor) -> Tensor:
    """``(..., L) -> (..., L, L)``: entry ``[n, m]`` is ``a_{m+1} + ... + a_n`` for ``n >= m`` (0 on the
    diagonal) and ``-inf`` above it. Summed directly, not as a difference of prefix sums, which would
    cancel catastrophically far into a sequence."""
    L = a.shape[-1]
    idx = torch.arange(L, device=a.device)
    strictly_below = idx[:, None] > idx[None, :]
    terms = a[..., :, None].expand(*a.shape, L).masked_fill(~strictly_below, 0.0)   # [n, m] = a_n if n > m
    return terms.cumsum(-2).masked_fill(idx[:, None] < idx[None, :], float("-inf"))


def _decay_factors(a: Tensor, fixed: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decay factors of a block of ``L`` positions with per-position log decays ``a: (..., L)``.

    Returns, each broadcastable against the block's tensors:

    - ``D``  ``(..., L, L)``: ``D[n, m] = exp(a_{m+1} + ... + a_n)`` for ``n >= m``, else 0 (eq. 5's D);
    - ``xi`` ``(..., L, 1)``: ``exp(a_0 + ... + a_j)``, how much of the incoming state position ``j`` sees;
    - ``zeta`` ``(..., L, 1)``: ``exp(a_{j+1} + ... + a_{L-1})``, how much of position ``j`` is left at the end;
    - ``total`` ``(..., 1, 1)``: ``exp(a_0 + ... + a_{L-1})``, the decay of the state across the block.

    With a fixed decay these are ``gamma^(n-m)``, ``gamma^(j+1)``, ``gamma^(L-1-j)`` and ``gamma^L``;
    ``fixed=True`` then forms D from the integer distance ``n - m`` times ``ln(gamma)``, exactly.
    Every exponent is <= 0, and the masked entries are ``-inf`` before ``exp``: no overflow, no ``inf * 0``.
    """
    L = a.shape[-1]
    if fixed:
        idx = torch.arange(L, device=a.device)
        distance = (idx[:, None] - idx[None, :]).to(a.dtype)
        exponents = torch.where(distance >= 0, distance * a[..., :1, None], float("-inf"))
    else:
        exponents = _segment_sums(a)
    from_start = a.cumsum(-1)                           # a_0 + ... + a_j
    to_end = a.flip(-1).cumsum(-1).flip(-1)             # a_j + ... + a_{L-1}
    after = torch.cat([to_end[..., 1:], torch.zeros_like(to_end[..., :1])], dim=-1)   # a_{j+1} + ...
    return (torch.exp(exponents), torch.exp(from_start)[..., None], torch.exp(after)[..., None],
            torch.exp(to_end[..., :1, None]))


# ---------------------------------------------------------------------------------------------
# What a gamma means
# ---------------------------------------------------------------------------------------------
#: The weight below which a position counts as forgotten, for :func:`effective_span`.
SPAN_TOL = 1e-3


def check_log_decay_values(log_decay: Tensor, one_per_head: bool = False) -> Tensor:
    """``ln(gamma)`` values: a real tensor, finite and <= 0 (0 < gamma <= 1); ``(H,)`` if ``one_per_head``."""
    if not isinstance(log_decay, Tensor):
        raise ArgumentTypeError(f"log_decay must be a torch.Tensor of ln(gamma) values, "
                                f"got {type(log_decay).__name__}")
    if log_decay.is_complex() or log_decay.dtype == torch.bool:
        raise ArgumentTypeError(f"log_decay must hold real numbers, got dtype {log_decay.dtype}")
    if one_per_head and (log_decay.ndim != 1 or len(log_decay) == 0):
        raise ValueError(f"log_decay must have shape (H,) with H >= 1 (one ln(gamma) per head), "
                         f"got {tuple(log_decay.shape)}")
    if not torch.isfinite(log_decay).all() or (log_decay > 0).any():
        raise ValueError("log_decay must be finite and <= 0: ln(gamma) with 0 < gamma <= 1")
    return log_decay


def half_life(log_decay: Tensor) -> Tensor:
    """Tokens after which a head keeps half the weight: ``ln 0.5 / ln gamma`` (inf for gamma = 1).

    ``log_decay`` is a tensor of any shape of ``ln(gamma)`` values, finite and <= 0.
    """
    ld = check_log_decay_values(log_decay).double()
    return torch.where(ld < 0, math.log(0.5) / ld, math.inf)


def effective_span(log_decay: Tensor, tol: float = SPAN_TOL) -> Tensor:
    """The fewest tokens ``n`` with ``gamma^n < tol``: ``floor(ln tol / ln gamma) + 1`` (inf for gamma = 1).

    Float64 tensor of whole numbers (a float so that gamma = 1 can be inf). At an exact tie
    (``gamma^n == tol`` for a whole ``n``) the rounding of the logarithms decides.
    """
    tol = check_real("tol", tol, 0, 1, low_open=True, high_open=True)
    ld = check_log_decay_values(log_decay).double()
    return torch.where(ld < 0, torch.floor(math.log(tol) / ld) + 1, math.inf)


def normalized_decay_matrix(log_decay: Tensor, length: int) -> Tensor:
    """``D~[h, n, m] = D[h, n, m] / sqrt(sum_{i<=n} D[h, n, i])`` (the paper's second rescaling), ``(H, T, T)``.

    ``log_decay`` is ``(H,)``, finite and <= 0; ``length`` an int >= 0.
    """
    check_log_decay_values(log_decay, one_per_head=True)
    check_int("length", length, 0)
    return decay_matrix(log_decay, length) * rescale_factors(log_decay, 0, length)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------
def _check_log_decay(log_decay: Tensor, n_heads: int | None, batch_and_length=None) -> None:
    """``(H,)``, or ``(B, H, T)`` when ``batch_and_length = (B, T)`` is given; finite, ``<= 0``."""
    if not isinstance(log_decay, Tensor):
        raise TypeError(f"log_decay must be a torch.Tensor of shape (H,) or (B, H, T), got {type(log_decay).__name__}")
    H = "H" if n_heads is None else n_heads
    if batch_and_length is None:
        want, ok = f"({H},) (one ln(gamma) per head)", log_decay.ndim == 1
    else:
        B, T = batch_and_length
        want = f"({H},) (one ln(gamma) per head) or ({B}, {H}, {T}) (one per position)"
        ok = log_decay.ndim == 1 or (log_decay.ndim == 3 and log_decay.shape[0] == B and log_decay.shape[2] == T)
    if not ok or (n_heads is not None and log_decay.shape[-2 if log_decay.ndim == 3 else 0] != n_heads):
        raise ValueError(f"log_decay must have shape {want}, got {describe_tensor(log_decay)}")
    if not log_decay.is_floating_point():
        raise TypeError(f"log_decay must be a floating-point tensor, got {describe_tensor(log_decay)}")
    # Values are checked at every call of a public function (a read-back: a stall on a GPU). The model's
    # layers call the unchecked kernels (_parallel, _recurrent, ...) and check their fixed decay once.
    if not torch.isfinite(log_decay).all():
        raise ValueError("log_decay must be finite: ln(gamma) with 0 < gamma <= 1")
    if (log_decay > 0).any():
        raise ValueError(
            f"log_decay must be <= 0 (gamma <= 1; gamma = 1 is no decay), got max {log_decay.max().item():.6g}"
        )
