"""Layers: gated multi-scale retention, the feed-forward network, the RetNet block.

Everything here calls the pure functions of ``retention.py`` and ``rotation.py``; the equations live
there. Shapes: ``x`` is ``(B, T, d_model)``; heads are ``(B, H, T, head_dim)``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import (
    retention as _kernels,  # the unchecked forms: the layer checks what it passes once
)
from .costs import default_chunk_size
from .decay import (
    _check_log_decay,
    decay_schedule,
    gate_logit_for,
    gated_log_decay,
    paper_log_decay,
    rescale_factors,
)
from .retention import state_dtype
from .rotation import apply_rotation, rope_theta, rotation_tables, torchscale_theta

MODES = ("parallel", "recurrent", "chunkwise")
NORMS = ("layernorm", "rmsnorm")
HEAD_NORMS = ("groupnorm", "rmsnorm", "none")
FFNS = ("gelu", "glu")
THETAS = ("rope", "torchscale")


def embed_tokens(embedding: nn.Module, tokens: Tensor, previous_tokens: Tensor | None) -> Tensor:
    """``embedding(tokens)``, or for an embedding that also reads the token before each position (one
    with ``reads_previous_token = True``, e.g. :class:`TokenShiftEmbedding`)
    ``embedding(tokens, previous_tokens)``, where ``previous_tokens: (B, 1)`` is the token before
    ``tokens[:, 0]`` (None at the start of a sequence). Shared by both language models."""
    if getattr(embedding, "reads_previous_token", False):
        return embedding(tokens, previous_tokens)
    return embedding(tokens)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps)`` over the last dim, times a learned weight if ``affine``.

    Computed in the input's dtype (float64 stays float64); half precision is computed in float32.
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = F.rms_norm(y, y.shape[-1:], eps=self.eps).to(x.dtype)     # one fused kernel
        return y * self.weight if self.weight is not None else y


def make_norm(kind: str, dim: int, eps: float, affine: bool = True) -> nn.Module:
    """``"layernorm"`` or ``"rmsnorm"`` over the last ``dim`` features."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, affine=affine)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class HeadNorm(nn.Module):
    """Normalize each head separately (the paper's GroupNorm with one group per head).

    ``kind``: ``"groupnorm"`` (per-head mean and variance, affine over all channels, as
    ``nn.GroupNorm(H, H * d_v)``), ``"rmsnorm"`` (per-head RMS, no weight: the official code), or
    ``"none"`` (ablation). Input and output ``(..., H, d_v)``, e.g. ``(B, T, H, d_v)``: each head's ``d_v``
    values are one group, so this is a layer norm over the last dim with an affine per head.
    """

    def __init__(self, kind: str, n_heads: int, head_dim: int, eps: float):
        super().__init__()
        if kind not in ("groupnorm", "rmsnorm", "none"):
            raise ValueError(f"head_norm must be 'groupnorm', 'rmsnorm' or 'none', got {kind!r}")
        self.kind, self.eps = kind, eps
        if kind == "groupnorm":
            self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
            self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))

    def forward(self, y: Tensor) -> Tensor:
        if self.kind == "none":
            return y
        if self.kind == "rmsnorm":      # y / sqrt(mean(y^2) + eps) per head
            return F.rms_norm(y, y.shape[-1:], eps=self.eps)
        # (y - mean) / sqrt(var + eps) per head (biased variance, as GroupNorm), then weight and bias
        return torch.addcmul(self.bias, F.layer_norm(y, y.shape[-1:], eps=self.eps), self.weight)


def projection_dtype(x: Tensor) -> torch.dtype:
    """The dtype an ``nn.Linear`` gives for input ``x``: the autocast dtype when autocast is on for ``x``'s
    device (``torch.autocast(..., dtype=torch.bfloat16)`` makes products bfloat16 from float32 inputs),
    else ``x``'s own (autocast leaves float64 alone). Tables that multiply projections (the rotation) are
    made in this dtype."""
    if x.is_floating_point() and x.dtype != torch.float64 and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class MultiScaleRetention(nn.Module):
    """Gated multi-scale retention: ``MSR(X) = (swish(X W_G) * HeadNorm(Retention(X))) W_O``.

    One gamma per head (fixed, not learned), or with ``decay="gated"`` one per head and position computed
    from the input by ``decay_proj`` (:func:`gated_log_decay`). ``q`` and ``k`` are rotated by theta;
    ``k`` is scaled by ``d_k^-1/2`` (rescaling 1). With ``rescale=True`` the paper's rescalings 2 and 3
    are applied too, as per-position factors computed identically in every mode, so the three modes stay
    equal whatever the norm's eps. The retention state carries one extra value column (the sum of decayed
    keys) for rescaling 3's row sums.
    """

    def __init__(self, config) -> None:
        super().__init__()
        c = config
        self.n_heads, self.rescale, self.use_gate = c.n_heads, c.rescale, c.gate
        self.key_dim, self.value_dim = c.d_model // c.n_heads, c.value_dim // c.n_heads
        self.q_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.k_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)
        self.v_proj = nn.Linear(c.d_model, c.value_dim, bias=c.bias)
        self.g_proj = nn.Linear(c.d_model, c.value_dim, bias=c.bias) if c.gate else None
        self.out_proj = nn.Linear(c.value_dim, c.d_model, bias=c.bias)
        self.head_norm = HeadNorm(c.head_norm, c.n_heads, self.value_dim, c.norm_eps)
        gated = c.decay == "gated"      # ln(gamma) from the input (decay_proj), else a fixed buffer per head
        self.decay_proj = nn.Linear(c.d_model, c.n_heads) if gated else None
        fixed_decay = None if gated else decay_schedule(c.decay, c.n_heads)          # (H,) ln(gamma)
        self.register_buffer("log_decay", fixed_decay, persistent=False)
        self._converted_decay = None      # see fixed_log_decay
        theta = torchscale_theta(self.key_dim) if c.theta == "torchscale" else rope_theta(self.key_dim)
        self.register_buffer("theta", theta, persistent=False)
        self._fused_weights = None        # see projections
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The official code's init: small xavier for q, k, v, g (gain 2^-2.5) keeps early outputs tame.
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj):
            if proj is not None:
                nn.init.xavier_uniform_(proj.weight, gain=2 ** -2.5)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.out_proj):
            if proj is not None and proj.bias is not None:
                nn.init.zeros_(proj.bias)
        if self.decay_proj is not None:  # small weights; the bias starts every head at the paper's gamma
            nn.init.xavier_uniform_(self.decay_proj.weight, gain=2 ** -2.5)
            with torch.no_grad():
                self.decay_proj.bias.copy_(gate_logit_for(paper_log_decay(self.n_heads)))

    def fixed_log_decay(self, dtype: torch.dtype) -> Tensor:
        """The fixed ``ln(gamma)`` buffer ``(H,)`` in ``dtype``, its values checked (finite, ``<= 0``).

        The layer calls the retention kernels without their per-call checks, so it checks its own decay:
        once, and again whenever the buffer is replaced or modified in place (its version changes). The
        buffer keeps the schedule's float64 values until the model itself is converted; a conversion is
        made once and reused while the buffer is unchanged (a decoding step would otherwise convert at
        every layer and token)."""
        buffer = self.log_decay
        if buffer.is_inference():         # made under torch.inference_mode(): no version to watch
            _check_log_decay(buffer, self.n_heads)
            return buffer.to(dtype)
        cached = self._converted_decay    # (the buffer, its version, the conversion)
        if cached is None or cached[0] is not buffer or cached[1] != buffer._version or cached[2].dtype != dtype:
            _check_log_decay(buffer, self.n_heads)
            with torch.inference_mode(False):     # an ordinary tensor, usable later with autograd too
                converted = buffer if buffer.dtype == dtype else buffer.to(dtype)
                cached = self._converted_decay = (buffer, buffer._version, converted)
        return cached[2]

    def projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``x W_Q``, ``x W_K``, ``x W_V`` and the gate's ``x W_G`` (None without the gate), each ``(B, T, .)``.

        With autograd on, these are the four ``nn.Linear`` layers, as the paper writes them. With it off
        (``torch.no_grad()``, ``torch.inference_mode()``: evaluation, :meth:`RetNetLM.step`,
        ``generate``), one product with the four weights concatenated: the same numbers from one kernel
        instead of four, which at batch 1 is a good part of what a decoding step spends besides reading
        the weights. The concatenation is made once and kept; it is made again when a weight changes:
        another tensor, dtype or device (``model.to``), or an in-place update that PyTorch counts
        (optimizer steps, ``load_state_dict``, ``weight.copy_``). Writes through ``weight.data`` are not
        counted: call :meth:`drop_fused_weights` after them. The copy costs the memory of the four
        weights (:meth:`drop_fused_weights` frees it). Weights made under ``torch.inference_mode()`` have
        no version counter: such a layer uses the four products."""
        projs = [p for p in (self.q_proj, self.k_proj, self.v_proj, self.g_proj) if p is not None]
        if torch.is_grad_enabled() or projs[0].weight.is_inference():   # (inference tensors count no versions)
            q, k, v, *g = (proj(x) for proj in projs)
            return q, k, v, (g[0] if g else None)
        tensors = [t for proj in projs for t in (proj.weight, proj.bias) if t is not None]
        key = [(t, t._version, t.data_ptr()) for t in tensors]
        cached = self._fused_weights
        if cached is None or len(cached[0]) != len(key) or any(
                a[0] is not b[0] or a[1:] != b[1:] for a, b in zip(cached[0], key)):
            with torch.inference_mode(False):    # ordinary tensors: usable outside inference mode too
                weight = torch.cat([proj.weight.detach() for proj in projs])
                bias = torch.cat([proj.bias.detach() for proj in projs]) if projs[0].bias is not None else None
            cached = self._fused_weights = (key, weight, bias, [proj.out_features for proj in projs])
        q, k, v, *g = F.linear(x, cached[1], cached[2]).split(cached[3], dim=-1)
        return q, k, v, (g[0] if g else None)

    def drop_fused_weights(self) -> None:
        """Forget the concatenated projection weights of :meth:`projections` (made again when needed)."""
        self._fused_weights = None

    def chunk_size_for(self, length: int) -> int:
        """The chunk length of the chunkwise form for ``length`` tokens when none is given: the cost
        model's rule for this layer's heads (:func:`retnet_mini.costs.default_chunk_size`)."""
        return default_chunk_size(length, self.key_dim, self.value_dim + int(self.rescale))

    def state_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of this layer's state: ``(B, H, d_k, d_v [+1 with rescaling])``."""
        return (batch, self.n_heads, self.key_dim, self.value_dim + int(self.rescale))

    def forward(
        self, x: Tensor, *, mode: str = "parallel", state: Tensor | None = None, offset: int = 0,
        chunk_size: int | None = None, inplace: bool = False, rotation: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``x: (B, T, d_model)`` at absolute positions ``offset..offset+T-1`` -> ``(B, T, d_model)``, state.

        ``chunk_size`` (chunkwise mode): None picks :func:`retnet_mini.costs.default_chunk_size`.
        ``inplace`` (recurrent mode only): update ``state`` in place, for decoding loops that own it.
        ``rotation``: the ``(cos, sin)`` tables of these positions, if the caller already has them."""
        B, T, _ = x.shape
        if chunk_size is None:
            chunk_size = self.chunk_size_for(T)
        heads = lambda t, d: t.view(B, T, self.n_heads, d).transpose(1, 2)   # (B, H, T, d)
        q, k, v, g = self.projections(x)          # under autocast: its dtype, e.g. bf16
        # Half-precision activations: rotation, retention and the head norm run in float32 (retention
        # would compute in float32 anyway; this way its output reaches the norm without a round trip
        # through 8 or 11 bits of mantissa, and float16 cannot overflow in between). Else: their dtype.
        activations, compute = v.dtype, state_dtype(v.dtype)
        cos, sin = rotation or rotation_tables(self.theta, offset, T, compute, x.device)
        if cos.dtype != compute:          # tables made for another dtype
            cos, sin = cos.to(compute), sin.to(compute)
        q = apply_rotation(heads(q.to(compute), self.key_dim), cos, sin)
        k = apply_rotation(heads(k.to(compute), self.key_dim), cos, sin) * self.key_dim ** -0.5
        v = heads(v.to(compute), self.value_dim)
        # ln(gamma) too: it is multiplied by distances of thousands of positions, where bfloat16's 8-bit
        # mantissa would shift every time constant. The gate's small projection runs outside autocast.
        if self.decay_proj is not None:   # gated: (B, H, T), from these tokens only, so states continue
            with torch.autocast(x.device.type, enabled=False):
                gate_logits = self.decay_proj(x.to(self.decay_proj.weight.dtype))
            log_decay = gated_log_decay(gate_logits).transpose(1, 2).to(compute)
        else:
            log_decay = self.fixed_log_decay(compute)
        if self.rescale:  # a column of ones makes retention also return rescaling 3's row sums
            v = torch.cat([v, v.new_ones(B, self.n_heads, T, 1)], dim=-1)
        o, state = retention(q, k, v, log_decay, mode=mode, state=state, chunk_size=chunk_size, inplace=inplace)
        if self.rescale:
            o, row_sum = o[..., :-1], o[..., -1:]
            factor = rescale_factors(log_decay, offset, T)                       # (H, T, 1)
            o = o * factor / (row_sum * factor).abs().clamp(min=1.0)
        y = self.head_norm(o.transpose(1, 2))                                   # (B, T, H, d_v)
        if self.use_gate:   # the product comes out in the gate's (B, T, H * d_v) layout: no extra copy
            y = F.silu(g).view_as(y) * y
        return self.out_proj(y.reshape(B, T, -1).to(activations)), state


@_kernels._outside_autocast
def retention(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, *, mode: str, state: Tensor | None = None,
    chunk_size: int = 64, inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Dispatch to one of the three forms; every mode returns ``(o, state)`` and continues ``state``.

    For the layer, which has checked what it passes (shapes from its own projections, a decay from
    :meth:`MultiScaleRetention.fixed_log_decay` or :func:`gated_log_decay`), in one dtype (the compute
    dtype): the unchecked kernels of ``retention.py``, with autocast off (under autocast their matrix
    products would be cast back to half precision). ``inplace`` (recurrent, no autograd): update ``state``.
    """
    if mode == "recurrent":
        return _kernels._recurrent(q, k, v, log_decay, state, inplace=inplace and state is not None)
    if mode == "chunkwise":
        return _kernels._chunkwise(q, k, v, log_decay, chunk_size, state)
    if mode == "parallel":
        o = _kernels._parallel(q, k, v, log_decay)
        if state is not None:
            o = o + _kernels._read_state(q, state, log_decay)
        return o, _kernels._update_state(state, k, v, log_decay)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


class FeedForward(nn.Module):
    """``"gelu"``: ``gelu(x W1 + b1) W2 + b2`` (the paper); ``"glu"``: ``fc2(gelu(fc1 x) * gate x)`` (official)."""

    def __init__(self, config) -> None:
        super().__init__()
        c = config
        if c.ffn not in ("gelu", "glu"):
            raise ValueError(f"ffn must be 'gelu' or 'glu', got {c.ffn!r}")
        self.fc1 = nn.Linear(c.d_model, c.ffn_dim, bias=c.bias)
        self.gate = nn.Linear(c.d_model, c.ffn_dim, bias=c.bias) if c.ffn == "glu" else None
        self.fc2 = nn.Linear(c.ffn_dim, c.d_model, bias=c.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.fc1(x))
        if self.gate is not None:
            h = h * self.gate(x)
        return self.fc2(h)


class RetNetBlock(nn.Module):
    """Pre-norm block: ``Y = MSR(LN(X)) + X``; ``X' = FFN(LN(Y)) + Y``."""

    def __init__(self, config) -> None:
        super().__init__()
        self.retention_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.retention = MultiScaleRetention(config)
        self.ffn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: Tensor, *, mode: str = "parallel", state: Tensor | None = None, offset: int = 0,
                chunk_size: int | None = None, inplace: bool = False, rotation: tuple[Tensor, Tensor] | None = None):
        h, state = self.retention(self.retention_norm(x), mode=mode, state=state, offset=offset,
                                  chunk_size=chunk_size, inplace=inplace, rotation=rotation)
        x = x + h
        return x + self.ffn(self.ffn_norm(x)), state


# ---------------------------------------------------------------------------------------------
# A token shift: each position also sees the token before it (the limits chapter)
# ---------------------------------------------------------------------------------------------
class TokenShiftEmbedding(nn.Embedding):
    """``x_t = E[token_t] + P[token_{t-1}]`` (``P[token_{-1}] = 0``): an embedding that adds the previous token's.

    Recall needs each value bound to the key just before it. Without help a model must first learn a
    "previous token" mechanism in one layer before a second layer can look keys up, and small models sit
    on a long plateau before they do. Successors of RetNet build the shift in: RWKV's token shift, H3's
    shift SSM, the short convolutions of Mamba, Based and Zoology's models. This is the simplest of them
    (a width-2 convolution over embeddings). ``weight`` is ``E`` (shared with a tied output layer),
    ``previous`` is ``P``.

    A call that continues a state needs the token before its first one: the models keep it in their
    state (``RetNetState.last_tokens``, ``KVCache.last_tokens``) because this embedding says
    ``reads_previous_token = True``, so prefill-then-continue and ``generate`` equal the full forward.
    """

    reads_previous_token = True     # the models look for this flag (retnet_mini.layers.embed_tokens)

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings, embedding_dim)
        self.previous = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        nn.init.normal_(self.previous, std=embedding_dim ** -0.5)

    def forward(self, tokens: Tensor, previous_tokens: Tensor | None = None) -> Tensor:
        """``tokens: (B, T)`` -> ``(B, T, d)``; ``previous_tokens: (B, 1)``, the token before ``tokens[:, 0]``
        (None: the sequence starts here, so position 0 has no predecessor)."""
        if previous_tokens is None:
            previous = F.pad(F.embedding(tokens[:, :-1], self.previous), (0, 0, 1, 0))
        else:
            if previous_tokens.shape != (tokens.shape[0], 1):
                raise ValueError(
                    f"previous_tokens must have shape ({tokens.shape[0]}, 1), got {tuple(previous_tokens.shape)}"
                )
            previous = F.embedding(torch.cat([previous_tokens, tokens[:, :-1]], dim=1), self.previous)
        return super().forward(tokens) + previous


def add_token_shift(model: nn.Module) -> nn.Module:
    """Replace ``model.embed`` (an ``nn.Embedding``) by a :class:`TokenShiftEmbedding` keeping its weights.

    Works for :class:`~retnet_mini.model.RetNetLM` and :class:`~retnet_mini.transformer.TransformerLM`;
    returns the model (changed in place). A tied output layer stays tied (the same ``weight``).
    """
    old = getattr(model, "embed", None)
    if not isinstance(old, nn.Embedding) or isinstance(old, TokenShiftEmbedding):
        raise ValueError("add_token_shift needs a model whose .embed is a plain nn.Embedding")
    new = TokenShiftEmbedding(old.num_embeddings, old.embedding_dim).to(old.weight.device, old.weight.dtype)
    new.weight = old.weight
    model.embed = new
    return model
