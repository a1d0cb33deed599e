"""Retention, the math: decay schedules, the decay matrix and the three forms.

Pure functions on tensors (no ``nn.Module``). Each form is the plain equation of the paper, with no
scaling, rotation or normalization inside; callers scale ``q`` or ``k`` by ``d_k ** -0.5`` and rotate
first (see ``retnet_mini.layers``).

Shapes used throughout (0-based positions ``n``, ``m``):

- ``q, k``: ``(B, H, T, d_k)``; ``v``: ``(B, H, T, d_v)``
- ``log_decay``: ``(H,)`` holding ``ln(gamma)`` per head, ``<= 0`` (``gamma = 1`` means no decay); or
  ``(B, H, T)``, one decay per position (data-dependent decay, as in gated linear attention / Mamba-2)
- ``state``: ``(B, H, d_k, d_v)``, ``S = sum_m gamma^(T-1-m) k_m^T v_m`` (the paper's layout)

Precision: float16 and bfloat16 inputs are computed in float32 and the output comes back in the input's
dtype, but the state stays float32 (:func:`state_dtype`): a state rounded to 8 bits of mantissa at every
step drifts far more than its outputs do. Autocast (``torch.autocast``) is switched off inside these
functions, so it cannot quietly lower their float32 products back to half precision.

The three forms compute the same thing:

- parallel  (eq. 5): ``o = (q k^T * D) v`` with ``D[n, m] = gamma^(n-m)`` for ``n >= m``, else 0
- recurrent (eq. 6): ``S_n = gamma S_{n-1} + k_n^T v_n``, ``o_n = q_n S_n``
- chunkwise (eq. 7): inside a chunk the parallel form, across chunks the recurrent one

Numerical rule kept everywhere: decay is always formed as ``gamma^(n-m)`` with ``n >= m`` (an exponent
<= 0), never as ``gamma^n * gamma^(-m)``, which overflows (in float32, ``gamma^(-m)`` is inf from
m = 2795 for gamma = 0.96875).
The masked upper triangle gets exponent ``-inf`` *before* ``exp``, so no ``inf * 0`` can appear.
"""
from __future__ import annotations

import functools
import itertools

import torch
from torch import Tensor

__all__ = [
    "parallel_retention",
    "recurrent_retention",
    "chunkwise_retention",
    "read_state",
    "update_state",
    "state_dtype",
]

from ._checks import describe_tensor
from .decay import _check_log_decay, _decay_factors, _positionwise

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the retention state is kept in for inputs of ``dtype``: float32 for float16 and bfloat16
    (the state is a long sum of decayed terms), the input's own dtype otherwise (float64 stays float64)."""
    return torch.float32 if dtype in _HALF_DTYPES else dtype


def _outside_autocast(fn):
    """Run ``fn`` with autocast off on the device of its first tensor argument. Under autocast every matrix product would be
    cast to half precision, whatever dtype this module chose to compute in (see ``_to_compute_dtype``)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = next((a for a in args if isinstance(a, Tensor)), None)     # q (k for update_state)
        if first is not None and torch.is_autocast_enabled(first.device.type):
            with torch.autocast(first.device.type, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)
    return wrapper


# ---------------------------------------------------------------------------------------------
# The three forms.
# ---------------------------------------------------------------------------------------------
@_outside_autocast
def parallel_retention(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """Parallel form (eq. 5): ``o = (q k^T * D) v``.

    Args:
        q, k: ``(B, H, T, d_k)``; v: ``(B, H, T, d_v)``;
        log_decay: ``(H,)`` (RetNet) or ``(B, H, T)`` (a decay per position).
    Returns:
        o: ``(B, H, T, d_v)``, same dtype and device as ``q``.
    Cost: O(T^2 (d_k + d_v)) time and an O(T^2) score matrix per head.
    """
    _check_inputs(q, k, v, log_decay, state=None)
    q, k, v, log_decay, out_dtype = _to_compute_dtype(q, k, v, log_decay)
    return _from_compute_dtype(_parallel(q, k, v, log_decay), out_dtype, "parallel_retention")


def _parallel(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """:func:`parallel_retention` without checks, in the inputs' (compute) dtype."""
    D = _decay_factors(_positionwise(log_decay, q.shape[2]), fixed=log_decay.ndim == 1)[0]
    o = ((q @ k.transpose(-1, -2)) * D) @ v             # a fixed D broadcasts over the batch
    if not _all_finite(o):    # a NaN or inf somewhere: keep it out of earlier positions (see _mask_future)
        o = _mask_future(q, k, v, lambda v_: (_mask_future_scores((q @ k.transpose(-1, -2)) * D) @ v_, None))[0]
    return o


@_outside_autocast
def recurrent_retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None = None, *,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Recurrent form (eq. 6): ``S_n = gamma S_{n-1} + k_n^T v_n``, ``o_n = q_n S_n``.

    One step per position; O(d_k d_v) memory per head whatever the length. This is the decoding form.

    Args:
        q, k: ``(B, H, T, d_k)``; v: ``(B, H, T, d_v)``; log_decay: ``(H,)`` or ``(B, H, T)``;
        state: ``(B, H, d_k, d_v)`` carried from earlier positions, or None for an empty history.
        inplace: update ``state`` in place and return it (a decoding loop that owns its state saves
            allocating a new one per token; no autograd). It needs a contiguous state of dtype
            ``state_dtype(q.dtype)``. The default leaves ``state`` untouched, so one state can be
            continued in several ways.
    Returns:
        o: ``(B, H, T, d_v)`` in q's dtype; state: ``(B, H, d_k, d_v)`` after the last position, in
        ``state_dtype(q.dtype)`` (float32 for half-precision inputs).
    """
    _check_inputs(q, k, v, log_decay, state)
    if inplace and (state is None or not state.is_contiguous() or state.dtype != state_dtype(q.dtype)
                    or torch.is_grad_enabled()):
        raise ValueError(
            f"inplace=True needs a contiguous state of dtype {state_dtype(q.dtype)} (state_dtype(q.dtype)) "
            f"and torch.no_grad(); got "
            + ("state=None" if state is None else f"{describe_tensor(state)}, contiguous={state.is_contiguous()}")
            + f", grad enabled={torch.is_grad_enabled()}"
        )
    q, k, v, log_decay, out_dtype = _to_compute_dtype(q, k, v, log_decay)
    o, S = _recurrent(q, k, v, log_decay, state, inplace=inplace)
    return _from_compute_dtype(o, out_dtype, "recurrent_retention"), S


def _recurrent(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None,
               inplace: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`recurrent_retention` without checks, in the inputs' (compute) dtype."""
    B, H, T, d_k = q.shape
    d_v = v.shape[-1]
    # Batch and heads are folded into one dim so each step is two small 3-D batched products (4-D
    # broadcasting matmuls are much slower for one query row on CPU).
    # reshape: an expanded (stride-0) state is copied here, never written through (inplace needs contiguous)
    S = _initial_state(state, B, H, d_k, d_v, q).reshape(B * H, d_k, d_v)
    # Per position: gamma (B*H, 1, 1), the key as a column (B*H, d_k, 1), value and query as rows (B*H, 1, d)
    if log_decay.ndim == 1:   # one gamma per head, the same at every position
        gammas = itertools.repeat(torch.exp(log_decay).expand(B, H).reshape(B * H, 1, 1), T)
    else:
        gammas = torch.exp(log_decay).reshape(B * H, T, 1, 1).unbind(1)
    keys, values = k.reshape(B * H, T, d_k, 1).unbind(1), v.reshape(B * H, T, 1, d_v).unbind(1)
    queries = q.reshape(B * H, T, 1, d_k).unbind(1)
    # Without autograd the state is updated in place: the caller's with inplace=True, else a buffer of our
    # own, made at the first position (one new state per call, not two per position: on a CPU every fresh
    # buffer of a large state costs page faults). With autograd every position keeps its own tensor.
    recording = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, log_decay, state))
    own = inplace or state is None or S.data_ptr() != state.data_ptr()      # may S be written?
    outputs = []
    for gamma, k_n, v_n, q_n in zip(gammas, keys, values, queries):
        # S_n = gamma S_{n-1} + k_n^T v_n, the outer product as a broadcast (column times row: one pass
        # over S, faster than a batched product with an inner dimension of 1), then o_n = q_n S_n.
        if own and not recording:
            S.mul_(gamma).addcmul_(k_n, v_n)
        else:   # a new tensor (autograd: mul keeps its inputs, not its output, so the sum can go into it)
            S, own = torch.mul(S, gamma).addcmul_(k_n, v_n), True
        outputs.append(torch.bmm(q_n, S))                              # (B*H, 1, d_v)
    o = outputs[0] if T == 1 else torch.cat(outputs, dim=1) if outputs else v.new_zeros(B * H, 0, d_v)
    return o.view(B, H, T, d_v), S.view(B, H, d_k, d_v)


@_outside_autocast
def chunkwise_retention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    chunk_size: int,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunkwise form (eq. 7): the parallel form inside each chunk, the recurrence across chunks.

    For chunk ``i`` of length ``L`` (position ``j = 0..L-1`` inside it) and the state ``R`` it inherits:

    - inner: ``(q_[i] k_[i]^T * D) v_[i]``
    - cross: ``(q_[i] * xi) R``, ``xi_j = gamma^(j+1)`` (row ``j`` of ``q_[i] R`` scaled by ``xi_j``)
    - state: ``R <- gamma^L R + (k_[i] * zeta)^T v_[i]``, ``zeta_j = gamma^(L-1-j)``

    A short last chunk (``L < chunk_size``) uses its own ``L``; ``chunk_size > T`` gives one chunk, which
    is the parallel form plus the incoming state. Cost: O(T C (d_k + d_v) + T d_k d_v), linear in T.

    Args:
        q, k: ``(B, H, T, d_k)``; v: ``(B, H, T, d_v)``; log_decay: ``(H,)`` or ``(B, H, T)``;
        chunk_size: ``C >= 1``; state: ``(B, H, d_k, d_v)`` or None.
    Returns:
        o: ``(B, H, T, d_v)`` in q's dtype; state: ``(B, H, d_k, d_v)`` after the last position, in
        ``state_dtype(q.dtype)``.
    """
    _check_inputs(q, k, v, log_decay, state)
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    q, k, v, log_decay, out_dtype = _to_compute_dtype(q, k, v, log_decay)
    o, R = _chunkwise(q, k, v, log_decay, chunk_size, state)
    return _from_compute_dtype(o, out_dtype, "chunkwise_retention"), R


def _chunkwise(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int,
               state: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`chunkwise_retention` without checks, in the inputs' (compute) dtype."""
    B, H, T, d_k = q.shape
    R = _initial_state(state, B, H, d_k, v.shape[-1], q)
    o, R_out = _chunks(q, k, v, log_decay, chunk_size, R, careful=False)
    if not _all_finite(o):    # a NaN or inf somewhere: keep it out of earlier positions (see _mask_future)
        o, R_out = _mask_future(q, k, v, lambda v_: _chunks(q, k, v_, log_decay, chunk_size, R, careful=True))
    return o, R_out


def _chunks(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, chunk_size: int, R: Tensor,
            careful: bool) -> tuple[Tensor, Tensor]:
    """Eq. 7 over the whole sequence: whole chunks batched, then a short last chunk. ``careful``: zero the
    future scores after the product (:func:`_mask_future_scores`), for inputs with a NaN or inf."""
    B, H, T, d_k = q.shape
    d_v = v.shape[-1]
    fixed = log_decay.ndim == 1
    a = _positionwise(log_decay, T)
    C = max(1, min(chunk_size, T))
    n_full = T // C
    outputs = []
    if n_full:
        full = slice(0, n_full * C)
        o_full, R = _full_chunks(q[:, :, full], k[:, :, full], v[:, :, full], a[:, :, full], C, R, fixed, careful)
        outputs.append(o_full)
    if T % C:  # a short last chunk of length L = T mod C: the same three terms with its own L
        tail = slice(n_full * C, T)
        qt, kt, vt = q[:, :, tail], k[:, :, tail], v[:, :, tail]
        D, xi, zeta, total = _decay_factors(a[:, :, tail], fixed)
        scores = (qt @ kt.transpose(-1, -2)) * D
        outputs.append((_mask_future_scores(scores) if careful else scores) @ vt + (qt * xi) @ R)
        R = total * R + (kt * zeta).transpose(-1, -2) @ vt
    o = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2) if outputs else v.new_zeros(B, H, 0, d_v)
    return o, R


def _full_chunks(q: Tensor, k: Tensor, v: Tensor, a: Tensor, C: int, R: Tensor, fixed: bool,
                 careful: bool = False) -> tuple[Tensor, Tensor]:
    """Eq. 7 for ``N = T / C`` whole chunks at once: the inner parts, each chunk's contribution to the state
    and the cross parts are batched matrix products over all chunks; only the cheap state recurrence
    ``R_i = gamma^C R_{i-1} + U_{i-1}`` (elementwise, ``N`` steps) runs as a loop.
    Shapes: q, k ``(B, H, N*C, d_k)``, v ``(B, H, N*C, d_v)``, a ``(1 or B, H, N*C)``, R ``(B, H, d_k, d_v)``.
    """
    N, d_k, d_v = q.shape[2] // C, q.shape[-1], v.shape[-1]
    qc, kc, vc = (x.unflatten(2, (N, C)).contiguous() for x in (q, k, v))   # (B, H, N, C, d)
    a = a.unflatten(2, (N, C))
    D, xi, zeta, total = _decay_factors(a[:, :, :1] if fixed else a, fixed)   # fixed: one chunk's worth
    # Without autograd, temporaries are updated in place or reused: on a CPU every fresh buffer of this
    # size costs page faults, a large share of the time. With autograd each step keeps its own tensors.
    recording = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, a, R))
    # zeta and xi scale rows (positions), so they go on the narrower k and q rather than on v and the output
    scaled_keys = kc * zeta
    contributions = scaled_keys.transpose(-1, -2) @ vc                        # U_i: (B, H, N, d_k, d_v)
    incoming, R = _incoming_states(contributions, total.expand(*total.shape[:2], N, 1, 1), R, recording)
    scores = qc @ kc.transpose(-1, -2)                                        # (B, H, N, C, C)
    scores = scores * D if recording else scores.mul_(D)
    out = (_mask_future_scores(scores) if careful else scores) @ vc           # inner: (B, H, N, C, d_v)
    scaled_queries = qc * xi if recording else torch.mul(qc, xi, out=scaled_keys)
    # cross: out += (q * xi) @ incoming, added inside the matrix product (no separate pass over out)
    out.view(-1, C, d_v).baddbmm_(scaled_queries.view(-1, C, d_k), incoming.view(-1, d_k, d_v))
    return out.flatten(2, 3), R


def _incoming_states(U: Tensor, decay: Tensor, R: Tensor, recording: bool) -> tuple[Tensor, Tensor]:
    """The state each chunk starts from, ``R_0 = R`` and ``R_i = decay_{i-1} R_{i-1} + U_{i-1}``, and the
    state after the last chunk. ``U: (B, H, N, d_k, d_v)``, ``decay: (1 or B, H, N, 1, 1)``.

    Without autograd the states are written straight into one preallocated tensor; with it
    (``recording``) they are stacked: autograd cannot record writes into a buffer that later steps read.
    """
    N = U.shape[2]
    if recording:
        states = [R]
        for i in range(N - 1):
            states.append(torch.addcmul(U[:, :, i], decay[:, :, i], states[-1]))
        incoming = torch.stack(states, dim=2)
    else:
        incoming = torch.empty_like(U)
        incoming[:, :, 0] = R
        for i in range(1, N):
            torch.addcmul(U[:, :, i - 1], decay[:, :, i - 1], incoming[:, :, i - 1], out=incoming[:, :, i])
    return incoming, torch.addcmul(U[:, :, -1], decay[:, :, -1], incoming[:, :, -1])


# ---------------------------------------------------------------------------------------------
# A NaN or inf at one position. The recurrent form never lets it reach earlier outputs; in the parallel
# and chunkwise forms it would, through products with the zeros of D (0 * NaN = NaN): a NaN key fills
# its whole column of scores, a NaN value enters every row of (scores @ v). Attention masks its scores
# after the product for the same reason. Doing so costs a pass over the scores, so the forms first
# compute as usual and redo the computation this way only when the result is not finite.
# ---------------------------------------------------------------------------------------------
def _all_finite(o: Tensor) -> bool:
    """Whether ``o`` has no NaN or inf (one reduction; a sum that overflows only sends a finite result
    down the careful path, which gives the same values). Not checked while torch.compile traces."""
    if torch.compiler.is_compiling():
        return True
    return bool(torch.isfinite(o.detach().sum()))


def _mask_future_scores(scores: Tensor) -> Tensor:
    """``scores (..., L, L)`` with the entries above the diagonal set to 0 *after* the product with D,
    so that a non-finite key cannot reach the queries before it."""
    L = scores.shape[-1]
    future = torch.ones(L, L, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, 0.0)


def _mask_future(q: Tensor, k: Tensor, v: Tensor, form) -> tuple[Tensor, Tensor | None]:
    """Run ``form(values) -> (o, state)`` (with future scores masked) so that non-finite inputs reach only
    the outputs the recurrent form lets them reach.

    A non-finite value ``v[m, d]`` makes column ``d`` of the recurrent state non-finite from position ``m``
    on: so ``form`` is run with those values set to 0, and column ``d`` of ``o`` from ``m`` on (and of the
    returned state) is set to NaN afterwards. Non-finite ``q`` and ``k`` need only the masked scores.
    """
    bad = ~torch.isfinite(v)
    if not bad.any():
        return form(v)
    o, state = form(v.masked_fill(bad, 0.0))
    reached = bad.cumsum(dim=2) > 0                                   # (B, H, T, d_v): from m on
    o = o.masked_fill(reached, float("nan"))
    if state is not None:
        state = state.masked_fill(bad.any(dim=2)[:, :, None, :], float("nan"))
    return o, state


# ---------------------------------------------------------------------------------------------
# The state seen from outside a block of positions: how a block reads it and how it moves it on.
# ---------------------------------------------------------------------------------------------
@_outside_autocast
def read_state(q: Tensor, state: Tensor, log_decay: Tensor) -> Tensor:
    """What a block of ``L`` positions receives from the state before it: ``(q_j S) * gamma^(j+1)``.

    This is the chunkwise form's cross term (``xi_j = gamma^(j+1)``); added to the parallel form of the
    block it continues a sequence exactly. Shapes: q ``(B, H, L, d_k)``, state ``(B, H, d_k, d_v)``,
    log_decay ``(H,)`` or ``(B, H, L)`` -> ``(B, H, L, d_v)``.
    """
    if not isinstance(state, Tensor) or state.ndim != 4:
        raise ValueError("state must be a tensor of shape (B, H, d_k, d_v)")
    values_like = q.new_empty(q.shape[:3] + (state.shape[-1],))   # only its shape is checked
    _check_inputs(q, q, values_like, log_decay, state)
    q, _, _, log_decay, out_dtype = _to_compute_dtype(q, q, q, log_decay)
    return _from_compute_dtype(_read_state(q, state, log_decay), out_dtype, "read_state")


def _read_state(q: Tensor, state: Tensor, log_decay: Tensor) -> Tensor:
    """:func:`read_state` without checks, in q's (compute) dtype."""
    xi = _decay_factors(_positionwise(log_decay, q.shape[2]), log_decay.ndim == 1)[1]
    return (q @ state.to(q.dtype)) * xi


@_outside_autocast
def update_state(state: Tensor | None, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """The state after a block of ``L`` positions: ``gamma^L S + k^T (v * zeta)``, ``zeta_j = gamma^(L-1-j)``.

    Shapes: k ``(B, H, L, d_k)``, v ``(B, H, L, d_v)``, log_decay ``(H,)`` or ``(B, H, L)``, state
    ``(B, H, d_k, d_v)`` or None -> ``(B, H, d_k, d_v)`` in ``state_dtype(k.dtype)``.
    """
    _check_inputs(k, k, v, log_decay, state)
    k, _, v, log_decay, _ = _to_compute_dtype(k, k, v, log_decay)
    return _update_state(state, k, v, log_decay)


def _update_state(state: Tensor | None, k: Tensor, v: Tensor, log_decay: Tensor) -> Tensor:
    """:func:`update_state` without checks, in k's (compute) dtype."""
    B, H, L, d_k = k.shape
    if L == 0:                    # no positions: gamma^0 S = S
        return _initial_state(state, B, H, d_k, v.shape[-1], k).clone()
    _, _, zeta, total = _decay_factors(_positionwise(log_decay, L), log_decay.ndim == 1)
    return total * _initial_state(state, B, H, d_k, v.shape[-1], k) + k.transpose(-1, -2) @ (v * zeta)


# ---------------------------------------------------------------------------------------------
# Input checks and dtype handling (kept out of the equations above).
# ---------------------------------------------------------------------------------------------
def _initial_state(state: Tensor | None, B: int, H: int, d_k: int, d_v: int, like: Tensor) -> Tensor:
    if state is None:
        return like.new_zeros(B, H, d_k, d_v)
    return state.to(like.dtype)


def _to_compute_dtype(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor):
    """Half-precision inputs are computed in float32 (sums of many decayed terms lose all precision
    and can overflow float16); everything else stays in its own dtype (float64 included)."""
    out_dtype = q.dtype
    compute = state_dtype(out_dtype)
    if compute == out_dtype and log_decay.dtype == compute:    # the usual case: nothing to convert
        return q, k, v, log_decay, out_dtype
    return q.to(compute), k.to(compute), v.to(compute), log_decay.to(compute), out_dtype


def _from_compute_dtype(x: Tensor, out_dtype: torch.dtype, where: str) -> Tensor:
    if x.dtype == out_dtype:
        return x
    y = x.to(out_dtype)
    # float16 tops out at 65504: refuse to hand back an inf (or a later NaN) that float32 did not have.
    if out_dtype == torch.float16 and not torch.isfinite(y).all():
        raise OverflowError(
            f"{where}: the result exceeds the float16 range (max 65504); pass bfloat16 or float32 "
            f"inputs, or scale q/k down"
        )
    return y


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 dims (B, H, T, d), got {describe_tensor(x)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {describe_tensor(x)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, H, T, d_k); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(
            f"v must have shape (B, H, T, d_v) with B, H, T of q {tuple(q.shape[:3])}; got v {tuple(v.shape)}"
        )
    for name, x in (("k", k), ("v", v), ("log_decay", log_decay)):
        if isinstance(x, Tensor) and x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}: put all inputs on one device")
    for name, x in (("k", k), ("v", v)):
        if x.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {x.dtype} but q has {q.dtype}: use one dtype for q, k, v")
    _check_log_decay(log_decay, n_heads=q.shape[1], batch_and_length=(q.shape[0], q.shape[2]))
    if state is not None:
        B, H, _, d_k = q.shape
        want = (B, H, d_k, v.shape[-1])
        if not isinstance(state, Tensor):
            raise TypeError(f"state must be a torch.Tensor of shape {want} or None, got {type(state).__name__}")
        if tuple(state.shape) != want:
            raise ValueError(f"state must have shape (B, H, d_k, d_v) = {want}, got {describe_tensor(state)}")
        if state.device != q.device:
            raise ValueError(f"state is on {state.device} but q is on {q.device}")
        if state.dtype != q.dtype and not (q.dtype in _HALF_DTYPES and state.dtype == torch.float32):
            raise TypeError(f"state has dtype {state.dtype} but q has {q.dtype}")
