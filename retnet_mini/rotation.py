"""The theta rotation: ``Q_n e^{i n theta}`` and ``K_m e^{i m theta}`` written with real numbers.

Retention multiplies query ``n`` by ``e^{i n theta}`` and key ``m`` by the conjugate of ``e^{i m theta}``,
so their product keeps only ``e^{i (n - m) theta}``: a relative position (theta does not cancel).
With pairs of real coordinates ``(x_{2i}, x_{2i+1})`` standing for one complex number, multiplying by
``e^{i phi}`` is a 2-D rotation by ``phi``: ``x * cos(phi) + rotate_every_two(x) * sin(phi)``, the
interleaved-pairs layout of the official code (RoPE with adjacent pairs).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_int

__all__ = ["rope_theta", "torchscale_theta", "rotate_every_two", "swap_pairs", "rotation_tables", "apply_rotation",
           "rotate", "rotate_complex"]


def rope_theta(head_dim: int, base: float = 10000.0) -> Tensor:
    """RoPE frequencies ``theta_i = base^(-2i / head_dim)``, ``i = 0..head_dim/2 - 1``; float64 ``(head_dim/2,)``."""
    _check_head_dim(head_dim)
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    return base ** (-2.0 * i / head_dim)


def torchscale_theta(head_dim: int) -> Tensor:
    """The official code's frequencies ``1 / 10000^linspace(0, 1, head_dim/2)``.

    Computed in float32 as torchscale does (so converted weights reproduce its outputs), returned as
    float64 ``(head_dim/2,)``. Note the spacing differs from RoPE: ``theta_i = 10000^(-i / (head_dim/2 - 1))``.
    """
    _check_head_dim(head_dim)
    return (1.0 / 10000 ** torch.linspace(0, 1, head_dim // 2, dtype=torch.float32)).double()


def _check_head_dim(head_dim: int) -> None:
    if not isinstance(head_dim, int) or head_dim < 2 or head_dim % 2:
        raise ValueError(f"head_dim must be an even int >= 2 (coordinates come in pairs), got {head_dim!r}")


def rotate_every_two(x: Tensor) -> Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``: multiplication by ``i`` on each pair."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def swap_pairs(x: Tensor) -> Tensor:
    """``(x0, x1, x2, x3, ...) -> (x1, x0, x3, x2, ...)``: :func:`rotate_every_two` without the signs."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def check_position(name: str, value: object) -> int:
    """``value`` if it is an int >= 0 (a position or a count of positions), else an error naming ``name``.
    Bools, floats and tensors are refused: ``torch.arange(1.5, ...)`` would quietly rotate by fractional
    positions."""
    return check_int(name, value, 0)


def rotation_tables(theta: Tensor, offset: int, length: int, dtype: torch.dtype,
                    device: torch.device) -> tuple[Tensor, Tensor]:
    """The tables :func:`apply_rotation` multiplies by, for positions ``n = offset .. offset + length - 1``.

    With phases ``t_i = n * theta_i``: ``cos = [cos t0, cos t0, cos t1, cos t1, ...]`` and the *signed* sine
    ``sin = [-sin t0, sin t0, -sin t1, sin t1, ...]``, each ``(length, d)`` in ``dtype``, so that
    ``rotate_every_two(x) * [sin t0, sin t0, ...] = swap_pairs(x) * sin``. The phase is formed in float64:
    in float32 the sine of a phase near 65535 is off by ~3e-3. A model computes the tables once per call
    and shares them between its layers (they all use the same theta).
    """
    check_position("offset", offset)
    check_position("length", length)
    positions = torch.arange(offset, offset + length, device=device, dtype=torch.float64)
    phase = positions[:, None] * theta.to(device=device, dtype=torch.float64)[None, :]   # (T, d/2)
    cos, sin = phase.cos(), phase.sin()
    return (torch.stack((cos, cos), dim=-1).flatten(-2).to(dtype),
            torch.stack((-sin, sin), dim=-1).flatten(-2).to(dtype))


def apply_rotation(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Each pair of ``x: (..., T, d)`` rotated by its phase: ``x * cos(t) + rotate_every_two(x) * sin(t)``.

    ``cos`` and ``sin`` are :func:`rotation_tables` (``sin`` signed), so this is ``x * cos + swap_pairs(x) *
    sin``: three kernels (the negations are in the table, computed once per model call, not per tensor).
    """
    return torch.addcmul(x * cos, swap_pairs(x), sin)


def rotate(x: Tensor, theta: Tensor, offset: int = 0) -> Tensor:
    """Rotate position ``n = offset + t`` of ``x`` by the angles ``n * theta``.

    Args:
        x: ``(..., T, d)`` with ``d = 2 * len(theta)``.
        theta: ``(d/2,)`` frequencies.
        offset: absolute position of ``x[..., 0, :]`` (a decoding step continues where the state ends).
    Returns:
        ``(..., T, d)`` in ``x``'s dtype (phases formed in float64, see :func:`rotation_tables`).
    """
    if x.shape[-1] != 2 * theta.shape[-1]:
        raise ValueError(f"x's last dim must be 2 * len(theta) = {2 * theta.shape[-1]}, got shape {tuple(x.shape)}")
    return apply_rotation(x, *rotation_tables(theta, offset, x.shape[-2], x.dtype, x.device))


def rotate_complex(x: Tensor, theta: Tensor, offset: int = 0) -> Tensor:
    """The same rotation done with complex numbers: a teaching check for :func:`rotate`.

    ``x: (..., T, d)`` real -> ``(..., T, d)`` real, equal to ``rotate(x, theta, offset)``.
    """
    check_position("offset", offset)
    z = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous())           # (..., T, d/2)
    positions = torch.arange(offset, offset + x.shape[-2], dtype=torch.float64, device=x.device)
    z = z * torch.exp(1j * positions[:, None] * theta.to(x.device, torch.float64)[None, :])
    return torch.view_as_real(z).flatten(-2).to(x.dtype)
