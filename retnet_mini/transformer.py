"""A GPT-style Transformer with a KV cache: the baseline RetNet is compared against.

Pre-norm blocks ``X' = X + Attn(LN(X))``, ``X'' = X' + FFN(LN(X'))`` with causal softmax attention
(``torch.nn.functional.scaled_dot_product_attention``), RoPE (the same rotation as retention's theta,
:func:`retnet_mini.rotation.rotate`) or learned positions, a gelu FFN, a final norm and an output projection.

The call is the same as :class:`~retnet_mini.model.RetNetLM`'s, without ``mode``:
``model(tokens (B, T), state=None) -> (logits (B, T, V), state)``, where the state is a :class:`KVCache`:
every key and value seen so far. Unlike RetNet's state it grows with the context: that is the cost RetNet
removes. ``TransformerLM.matching(retnet_config)`` builds one with the RetNet's parameter count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import embed_tokens, make_norm, projection_dtype
from ._checks import check_bool, check_int, check_real
from .model import check_last_tokens, last_tokens_for
from .rotation import check_position, rope_theta, rotate
from .sampling import check_generate_args, decode_loop

__all__ = ["TransformerConfig", "KVCache", "TransformerLM", "matching_config"]

_MIN_CAPACITY = 16   # smallest buffer a growing cache allocates


@dataclass(frozen=True)
class TransformerConfig:
    """Shape and design choices of a :class:`TransformerLM`.

    ``d_model`` is split into ``n_heads`` heads; ``ffn_dim`` is the gelu FFN's inner width (None: ``4 *
    d_model``, GPT's); ``positions`` is ``"rope"`` (rotary, base ``rope_base``, no length limit) or
    ``"learned"`` (an embedding table of ``max_len`` rows). ``max_len``, when set, is the longest sequence the
    model accepts (required with learned positions). ``norm``, ``bias`` and ``norm_eps`` mean what they
    mean in :class:`~retnet_mini.model.RetNetConfig`. Frozen, as that one is (``dataclasses.replace``
    makes a changed copy).
    """

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    ffn_dim: int | None = None        # None -> 4 * d_model
    norm: str = "layernorm"              # "layernorm" | "rmsnorm"
    bias: bool = True
    norm_eps: float = 1e-5
    positions: str = "rope"              # "rope" | "learned"
    max_len: int | None = None        # required for positions="learned"
    rope_base: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", 4 * self.d_model)
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positions not in ("rope", "learned"):
            raise ValueError(f"positions must be 'rope' or 'learned', got {self.positions!r}")
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"with positions='rope' the head size d_model / n_heads ({self.d_model // self.n_heads}) must be "
                f"even (the rotation works on pairs)"
            )
        for name in ("bias", "tie_embeddings"):
            check_bool(f"TransformerConfig.{name}", getattr(self, name))
        check_real("TransformerConfig.norm_eps", self.norm_eps, 0)
        if self.max_len is not None and (not isinstance(self.max_len, int) or isinstance(self.max_len, bool)
                                         or self.max_len < 1):
            raise ValueError(f"max_len must be a positive int or None, got {self.max_len!r}")
        if self.positions == "learned" and self.max_len is None:
            raise ValueError("positions='learned' needs max_len (the number of position embeddings)")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if (isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float))
                or not math.isfinite(self.rope_base) or not self.rope_base > 1):
            raise ValueError(f"rope_base must be a finite number > 1, got {self.rope_base!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass
class KVCache:
    """The keys and values of every position seen so far, per layer.

    ``k[i]``, ``v[i]``: ``(B, H, capacity, head_dim)`` buffers of layer ``i``; positions ``[0, offset)``
    are filled (keys already rotated), the rest is spare room. A decoding step writes its key and value
    in place at ``offset`` and attends over the filled prefix ``[:offset + 1]``; when the room runs out
    the model moves the prefix to buffers twice as large (amortized O(1) per token). Preallocate with
    :meth:`TransformerLM.init_cache` to never grow.

    Calls never change positions ``< offset`` of the cache they are given, so a cache can be continued
    more than once (branching); but continuing one cache twice writes the same spare slots, so the cache
    returned by the first continuation is then stale (``clone()`` it first to keep both).
    """

    k: list[Tensor]
    v: list[Tensor]
    offset: int
    last_tokens: Tensor | None = None    # (B, 1), kept only for a token-shift embedding (as RetNetState)

    def __post_init__(self) -> None:
        check_position("KVCache.offset", self.offset)

    @property
    def capacity(self) -> int:
        """Positions the buffers hold before they must grow."""
        return self.k[0].shape[2] if self.k else 0

    def nbytes(self) -> int:
        """Bytes of the filled part: ``2 * n_layers * B * H * offset * head_dim * element size``.

        This is the memory the context needs, comparable with ``RetNetState.nbytes()``; it grows linearly
        with ``offset``. :meth:`allocated_nbytes` counts the spare room too.
        """
        return sum(t[:, :, : self.offset].numel() * t.element_size() for t in (*self.k, *self.v))

    def allocated_nbytes(self) -> int:
        """Bytes of the buffers, spare room included."""
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def clone(self) -> "KVCache":
        """An independent copy of the filled prefix (capacity = offset)."""
        return KVCache([t[:, :, : self.offset].clone() for t in self.k],
                       [t[:, :, : self.offset].clone() for t in self.v], self.offset,
                       None if self.last_tokens is None else self.last_tokens.clone())


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE (optional) and a KV cache, computed by SDPA."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.head_dim = c.n_heads, c.head_dim
        self.qkv_proj = nn.Linear(c.d_model, 3 * c.d_model, bias=c.bias)   # q, k, v in one matmul
        self.out_proj = nn.Linear(c.d_model, c.d_model, bias=c.bias)

    def forward(
        self, x: Tensor, theta: Tensor | None, k_cache: Tensor | None, v_cache: Tensor | None, offset: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x: (B, T, d_model)`` at positions ``offset..offset+T-1`` -> output, this layer's k and v buffers.

        ``k_cache``/``v_cache``: ``(B, H, capacity, head_dim)`` with room for ``offset + T`` positions, or None
        when there is no history (``offset == 0``): then the new keys and values are returned as they are.
        """
        B, T, _ = x.shape
        H = self.n_heads
        qkv = self.qkv_proj(x).view(B, T, 3 * H, self.head_dim).transpose(1, 2)   # (B, 3H, T, dh)
        if theta is not None:
            qk = rotate(qkv[:, : 2 * H], theta, offset)     # q and k rotated in one call
            q, k = qk[:, :H], qk[:, H:]
        else:
            q, k = qkv[:, :H], qkv[:, H : 2 * H]
        v = qkv[:, 2 * H :]
        if k_cache is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            keys, values = k, v
        else:
            end = offset + T
            if k.requires_grad or k_cache.requires_grad:
                # Autograd: in-place writes would clobber tensors saved for backward; append out of place.
                keys = torch.cat([k_cache[:, :, :offset], k], dim=2)
                values = torch.cat([v_cache[:, :, :offset], v], dim=2)
            else:
                k_cache[:, :, offset:end] = k
                v_cache[:, :, offset:end] = v
                keys, values = k_cache, v_cache
            k_seen, v_seen = keys[:, :, :end], values[:, :, :end]
            if T == 1:        # one new query sees every key so far
                o = F.scaled_dot_product_attention(q, k_seen, v_seen)
            elif offset == 0:  # no history: the usual causal mask
                o = F.scaled_dot_product_attention(q, k_seen, v_seen, is_causal=True)
            else:              # a block after a history: query t sees keys 0 .. offset + t
                mask = torch.arange(end, device=x.device)[None, :] <= torch.arange(offset, end, device=x.device)[:, None]
                o = F.scaled_dot_product_attention(q, k_seen, v_seen, attn_mask=mask)
        return self.out_proj(o.transpose(1, 2).reshape(B, T, H * self.head_dim)), keys, values


class FeedForward(nn.Module):
    """``gelu(x W1 + b1) W2 + b2``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.d_model, config.ffn_dim, bias=config.bias)
        self.fc2 = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``Y = Attn(LN(X)) + X``; ``X' = FFN(LN(Y)) + Y``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ffn_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: Tensor, theta, k_cache, v_cache, offset: int):
        h, k, v = self.attn(self.attn_norm(x), theta, k_cache, v_cache, offset)
        x = x + h
        return x + self.ffn(self.ffn_norm(x)), k, v


def gpt2_init_(model: nn.Module, n_layers: int) -> nn.Module:
    """GPT-2's initialization of a model's projections, in place; returns ``model``.

    Every weight whose name ends in ``proj.weight``, ``fc1.weight`` or ``fc2.weight`` is drawn from
    ``N(0, 0.02^2)``, the residual outputs (``out_proj``, ``fc2``) with the standard deviation scaled by
    ``(2 n_layers)^-1/2``; every bias except the norms' is set to 0. Norms, embeddings and the output
    projection are left as they are, and so is a gated decay's ``decay_proj`` (its bias sets the initial
    decays). :class:`TransformerLM` is initialized this way; applied to a :class:`~retnet_mini.RetNetLM`
    it gives the two models the same initialization family (the training chapter's ablation)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_int("n_layers", n_layers, 1)
    for name, p in model.named_parameters():      # (nn.init works without autograd by itself)
        if "decay_proj" in name:
            continue
        if name.endswith("bias") and "norm" not in name:
            nn.init.zeros_(p)
        elif name.endswith(("proj.weight", "fc1.weight", "fc2.weight")):
            residual = name.endswith(("out_proj.weight", "fc2.weight"))
            nn.init.normal_(p, std=0.02 * ((2 * n_layers) ** -0.5 if residual else 1.0))
    return model


class TransformerLM(nn.Module):
    """Embedding (+ learned positions), ``n_layers`` pre-norm attention blocks, final norm, output projection.

    ``model(tokens, state=None)`` returns ``(logits, state)`` with ``state`` a :class:`KVCache`; passing it
    back continues the sequence (prefill in any number of pieces, then decode one token at a time).
    There is no ``mode``: the Transformer has one form. Decode without autograd (``generate`` uses
    ``torch.inference_mode()``): with autograd on, cached calls append out of place (correct gradients, O(T) copies per call).
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_embed = nn.Embedding(c.max_len, c.d_model) if c.positions == "learned" else None
        self.blocks = nn.ModuleList(TransformerBlock(c) for _ in range(c.n_layers))
        self.final_norm = make_norm(c.norm, c.d_model, c.norm_eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        # RoPE frequencies, kept in float64 whatever the model's dtype (see _apply); not in the state dict.
        self.register_buffer("theta", rope_theta(c.head_dim, c.rope_base) if c.positions == "rope" else None,
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2's init of the projections (:func:`gpt2_init_`); embedding and output projection as in
        RetNetLM (normal ``d_model^-1/2``)."""
        c = self.config
        gpt2_init_(self, c.n_layers)
        nn.init.normal_(self.embed.weight, std=c.d_model ** -0.5)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=0.02)
        if c.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=c.d_model ** -0.5)

    def _apply(self, fn, *args, **kwargs):
        # .float()/.half()/.to(dtype) would round theta; positions up to 1e5 need it exact: recompute.
        super()._apply(fn, *args, **kwargs)
        if self.theta is not None:
            self.theta = rope_theta(self.config.head_dim, self.config.rope_base).to(self.theta.device)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, state: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """``tokens: (B, T)`` int64 ids -> ``logits: (B, T, vocab_size)``, the cache after them."""
        self._check_forward_args(tokens, state)
        return self._forward(tokens, state)

    def _forward(self, tokens: Tensor, state: KVCache | None) -> tuple[Tensor, KVCache]:
        B, T = tokens.shape
        offset = 0 if state is None else state.offset
        x = embed_tokens(self.embed, tokens, None if state is None else state.last_tokens)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(offset, offset + T, device=tokens.device))
        if state is not None:
            state = self._reserve(state, offset + T)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            kc, vc = (None, None) if state is None else (state.k[i], state.v[i])
            x, k, v = block(x, self.theta, kc, vc, offset)
            ks.append(k)
            vs.append(v)
        logits = self.lm_head(self.final_norm(x))
        return logits, KVCache(ks, vs, offset + T, last_tokens_for(self.embed, tokens))

    @staticmethod
    def _reserve(cache: KVCache, needed: int) -> KVCache:
        """``cache`` if it has room for ``needed`` positions, else a copy of its prefix in buffers of
        ``max(needed, 2 * capacity, 16)`` positions (geometric growth: amortized O(1) copying per token)."""
        if needed <= cache.capacity:
            return cache
        capacity = max(needed, 2 * cache.capacity, _MIN_CAPACITY)

        def grow(t: Tensor) -> Tensor:
            B, H, _, dh = t.shape
            new = t.new_empty(B, H, capacity, dh)
            new[:, :, : cache.offset] = t[:, :, : cache.offset]
            return new

        return KVCache([grow(t) for t in cache.k], [grow(t) for t in cache.v], cache.offset, cache.last_tokens)

    def init_cache(self, batch_size: int, capacity: int = 0) -> KVCache:
        """An empty cache (same as ``state=None``) with room for ``capacity`` positions before it grows.

        Preallocating the whole length (prompt + new tokens) makes every step write in place.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        p = self.embed.weight
        c = self.config
        shape = (batch_size, c.n_heads, capacity, c.head_dim)
        return KVCache([p.new_empty(shape) for _ in self.blocks], [p.new_empty(shape) for _ in self.blocks], 0)

    def _check_forward_args(self, tokens, state) -> None:
        c = self.config
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an int64 tensor of shape (B, T), got {got}")
        B, T = tokens.shape
        if B < 1 or T < 1:
            raise ValueError(f"tokens must have B >= 1 and T >= 1, got shape {tuple(tokens.shape)}")
        device = self.embed.weight.device
        if tokens.device != device:
            raise ValueError(f"tokens are on {tokens.device} but the model is on {device}")
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise ValueError(
                f"tokens must be ids in [0, {c.vocab_size}) (vocab_size), got values in "
                f"[{tokens.min().item()}, {tokens.max().item()}]"
            )
        offset = 0
        if state is not None:
            if not isinstance(state, KVCache):
                raise ValueError(f"state must be a KVCache (or None), got {type(state).__name__}")
            if len(state.k) != c.n_layers or len(state.v) != c.n_layers:
                raise ValueError(f"state must hold {c.n_layers} layers of k and v, got {len(state.k)} and {len(state.v)}")
            offset = check_position("state.offset", state.offset)
            check_last_tokens(self.embed, state, tokens)
            # The model's dtype, or under autocast the dtype its projections produce (the cache it returned)
            dtypes = {self.embed.weight.dtype, projection_dtype(self.embed.weight)}
            for name, tensors in (("k", state.k), ("v", state.v)):
                for i, t in enumerate(tensors):
                    where = f"state.{name}[{i}]"
                    if not isinstance(t, Tensor) or t.ndim != 4:
                        raise ValueError(f"{where} must be a (B, H, capacity, head_dim) tensor")
                    if t.shape[0] != B:
                        raise ValueError(f"{where} has batch size {t.shape[0]} but tokens have batch size {B}")
                    if (t.shape[1], t.shape[3]) != (c.n_heads, c.head_dim) or t.shape[2] < offset:
                        raise ValueError(
                            f"{where} must have shape ({B}, {c.n_heads}, capacity >= offset = {offset}, "
                            f"{c.head_dim}), got {tuple(t.shape)}"
                        )
                    if t.device != device:
                        raise ValueError(f"{where} is on {t.device} but the model is on {device}")
                    if t.dtype not in dtypes:
                        raise ValueError(
                            f"{where} has dtype {t.dtype} but the model computes in "
                            f"{' or '.join(sorted(str(d) for d in dtypes))}"
                        )
        if c.max_len is not None and offset + T > c.max_len:
            raise ValueError(
                f"tokens reach position {offset + T} (state.offset {offset} + T {T}) but max_len is {c.max_len}"
            )

    # ------------------------------------------------------------------------------------------
    def generate(
        self, prompt_tokens: Tensor, max_new_tokens: int, temperature: float = 1.0,
        top_k: int | None = None, generator: torch.Generator | None = None,
    ) -> Tensor:
        """Prefill the prompt in one pass, then decode one token at a time with the KV cache (preallocated
        for the whole length, so no step copies the cache).

        Args and return value as :meth:`RetNetLM.generate <retnet_mini.model.RetNetLM.generate>` (without
        ``prefill``): ``(B, T)`` prompt -> ``(B, T + max_new_tokens)``; temperature 0 is greedy.
        """
        check_generate_args(prompt_tokens, max_new_tokens, temperature, top_k, self.config.vocab_size)
        self._check_forward_args(prompt_tokens, None)
        B, T = prompt_tokens.shape
        length = T + max(max_new_tokens - 1, 0)   # the last new token is sampled, never fed back
        if self.config.max_len is not None and length > self.config.max_len:
            raise ValueError(
                f"prompt length {T} + max_new_tokens {max_new_tokens} - 1 exceeds max_len {self.config.max_len}"
            )
        with torch.inference_mode():
            logits, cache = self._forward(prompt_tokens, self.init_cache(B, length))
        step = lambda tok, c: self.step(tok, c, check=False)      # sampled ids and our own cache
        return decode_loop(step, prompt_tokens, logits[:, -1], cache, max_new_tokens, temperature, top_k, generator)

    def step(self, tokens: Tensor, cache: KVCache, *, check: bool = True) -> Tensor:
        """One decoding step: the next token of each sequence in, its logits out, and ``cache`` moved on
        **in place** (its key and value written at ``cache.offset``; buffers grown if full; ``offset`` + 1).

        The same contract as :meth:`RetNetLM.step <retnet_mini.model.RetNetLM.step>`: ``tokens`` ``(B, 1)``
        or ``(B,)``; ``check=False`` skips the argument checks; runs under ``torch.inference_mode()``.
        Returns ``(B, vocab_size)`` logits.
        """
        if tokens.ndim == 1:
            tokens = tokens[:, None]
        if check:
            self._check_forward_args(tokens, cache)
            if tokens.shape[1] != 1:
                raise ValueError(f"step takes one token per sequence, (B, 1) or (B,); got shape {tuple(tokens.shape)}")
        with torch.inference_mode():
            logits, moved = self._forward(tokens, cache)
        cache.k[:], cache.v[:] = moved.k, moved.v        # the same buffers unless they had to grow
        cache.offset, cache.last_tokens = moved.offset, moved.last_tokens
        return logits[:, -1]

    @classmethod
    def matching(cls, retnet_config, **overrides) -> "TransformerLM":
        """A TransformerLM with the same parameter count as ``RetNetLM(retnet_config)``; see :func:`matching_config`."""
        return cls(matching_config(retnet_config, **overrides))


# ---------------------------------------------------------------------------------------------
# Parameter matching.
# ---------------------------------------------------------------------------------------------
def _count_on_meta(build) -> int:
    """Parameters of ``build()`` constructed on the meta device: no memory, no init cost."""
    with torch.device("meta"):
        return build().num_parameters()


def matching_config(retnet_config, **overrides) -> TransformerConfig:
    """A :class:`TransformerConfig` whose model has ``RetNetLM(retnet_config).num_parameters()`` parameters
    as nearly as an integer FFN width allows (and within 5%, or ValueError).

    Copied from the RetNet config: ``vocab_size, d_model, n_heads, n_layers, norm, bias, norm_eps,
    tie_embeddings``. ``overrides`` set any other TransformerConfig field (``n_heads``, ``positions``,
    ``max_len``, ...) except ``ffn_dim``, which is what gets chosen: the parameter count is linear in it.
    """
    from .model import RetNetLM

    if "ffn_dim" in overrides:
        raise ValueError("matching chooses ffn_dim to match the parameter count; do not pass it")
    r = retnet_config
    fields = dict(vocab_size=r.vocab_size, d_model=r.d_model, n_heads=r.n_heads, n_layers=r.n_layers,
                  norm=r.norm, bias=r.bias, norm_eps=r.norm_eps, tie_embeddings=r.tie_embeddings)
    fields.update(overrides)
    target = _count_on_meta(lambda: RetNetLM(r))
    count = lambda f: _count_on_meta(lambda: TransformerLM(TransformerConfig(**fields, ffn_dim=f)))
    base, slope = count(1), count(2) - count(1)          # count(f) = base + slope * (f - 1)
    exact = 1 + (target - base) / slope
    best = min({max(1, int(exact)), max(1, int(exact) + 1)}, key=lambda f: (abs(base + slope * (f - 1) - target), f))
    got = base + slope * (best - 1)
    if abs(got - target) > 0.05 * target:
        raise ValueError(
            f"no FFN width gives a TransformerLM within 5% of the RetNet's {target} parameters "
            f"(closest: ffn_dim={best} with {got}); change d_model, n_layers or vocab_size"
        )
    return TransformerConfig(**fields, ffn_dim=best)
