"""The RetNet language model: config with two presets, the model, generation, weight conversion."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .decay import check_decay_choice
from .layers import (
    FFNS,
    HEAD_NORMS,
    MODES,
    NORMS,
    THETAS,
    RetNetBlock,
    embed_tokens,
    make_norm,
    projection_dtype,
)
from .retention import state_dtype
from .rotation import check_position, rotation_tables
from ._checks import check_bool, check_choice, check_real
from .sampling import check_generate_args, decode_loop


@dataclass(frozen=True)
class RetNetConfig:
    """Shape and design choices of a :class:`RetNetLM`.

    ``d_model`` is split into ``n_heads`` key heads (key head dim ``d_model / n_heads``); ``value_dim`` is
    the total value width (the paper: ``2 * d_model``); ``ffn_dim`` the FFN's inner width (the paper:
    ``2 * d_model``). Use the presets :meth:`paper` and :meth:`torchscale` rather than this directly.

    Frozen: a model keeps its config, and a field changed afterwards would make the two disagree (or the
    config invalid); ``dataclasses.replace(config, ...)`` makes a changed copy, validated again.
    """

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    value_dim: int | None = None      # None -> 2 * d_model
    ffn_dim: int | None = None        # None -> 2 * d_model
    norm: str = "layernorm"              # block norms: "layernorm" | "rmsnorm"
    head_norm: str = "groupnorm"         # "groupnorm" | "rmsnorm" (no weight) | "none"
    ffn: str = "gelu"                    # "gelu" | "glu"
    bias: bool = True
    theta: str = "rope"                  # "rope" | "torchscale"
    decay: str = "paper"                 # see layers.decay_schedule; "gated": computed from the input
    gate: bool = True                    # the swish gate
    rescale: bool = False                # the paper's rescalings 2 and 3 (1, k * d_k^-1/2, is always on)
    norm_eps: float = 1e-5
    chunk_size: int | None = None        # chunk length of mode="chunkwise"; None: costs.default_chunk_size
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.value_dim is None:
            object.__setattr__(self, "value_dim", 2 * self.d_model)
        if self.ffn_dim is None:
            object.__setattr__(self, "ffn_dim", 2 * self.d_model)
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "value_dim", "ffn_dim", "chunk_size"):
            value = getattr(self, name)
            if name == "chunk_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RetNetConfig.{name} must be a positive int{' or None' * (name == 'chunk_size')}, "
                                 f"got {value!r}")
        for name in ("bias", "gate", "rescale", "tie_embeddings"):
            check_bool(f"RetNetConfig.{name}", getattr(self, name))
        for name, allowed in (("norm", NORMS), ("head_norm", HEAD_NORMS), ("ffn", FFNS), ("theta", THETAS)):
            check_choice(f"RetNetConfig.{name}", getattr(self, name), allowed)
        check_real("RetNetConfig.norm_eps", self.norm_eps, 0)  # a NaN would pass `< 0`
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size "
                f"(the rotation works on pairs)"
            )
        if self.value_dim % self.n_heads:
            raise ValueError(f"value_dim ({self.value_dim}) must be divisible by n_heads ({self.n_heads})")
        check_decay_choice(self.decay, self.rescale)

    @classmethod
    def paper(cls, vocab_size: int, d_model: int = 256, n_heads: int = 4, n_layers: int = 4, **overrides):
        """The paper's design: LayerNorm, GroupNorm per head, value dim 2d, gelu FFN of width 2d, biases."""
        return cls(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers, **overrides)

    @classmethod
    def torchscale(
        cls, vocab_size: int, d_model: int = 512, n_heads: int = 2, n_layers: int = 6,
        value_dim: int = 864, ffn_dim: int = 864, **overrides,
    ):
        """The official code's design (torchscale 0.3.0): RMSNorm, weightless RMSNorm per head, GLU FFN,
        no biases, its theta and float32 decay, eps 1e-6.

        Default sizes are its ``retnet_base`` recipe (key head dim 256). Its ``RetNetConfig`` class
        defaults (d 768, value 1280, 3 heads) do not run: 1280 values do not split into 3 heads.
        """
        settings = dict(norm="rmsnorm", head_norm="rmsnorm", ffn="glu", bias=False, theta="torchscale",
                        decay="torchscale", norm_eps=1e-6)
        settings.update(overrides)
        return cls(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                   value_dim=value_dim, ffn_dim=ffn_dim, **settings)


@dataclass
class RetNetState:
    """What the model carries between calls: one retention state per layer and the position reached.

    ``layers[i]``: ``(B, H, d_k, d_v)`` (``d_v + 1`` with rescaling); ``offset``: tokens seen so far, an int
    >= 0. ``last_tokens``: ``(B, 1)``, the last token seen, kept only for a model whose embedding reads
    the previous token (a token shift, :class:`retnet_mini.layers.TokenShiftEmbedding`); None otherwise.
    Its size does not depend on ``offset``: that is RetNet's O(1) inference memory.
    """

    layers: list[Tensor]
    offset: int
    last_tokens: Tensor | None = None

    def __post_init__(self) -> None:
        check_position("RetNetState.offset", self.offset)
        if not isinstance(self.layers, (list, tuple)):
            raise ValueError(f"RetNetState.layers must be a list of tensors, got {type(self.layers).__name__}")

    def nbytes(self) -> int:
        """Bytes of the layer states (plus ``last_tokens`` when kept)."""
        extra = 0 if self.last_tokens is None else self.last_tokens.numel() * self.last_tokens.element_size()
        return sum(s.numel() * s.element_size() for s in self.layers) + extra


class RetNetLM(nn.Module):
    """Embedding, ``n_layers`` RetNet blocks, final norm, output projection.

    ``model(tokens, mode, state)`` returns ``(logits, state)``; the three modes give the same logits and
    ``state`` continues a sequence in any mode (prefill with one, decode with another).
    """

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(RetNetBlock(config) for _ in range(config.n_layers))
        self.final_norm = make_norm(config.norm, config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=config.d_model ** -0.5)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=config.d_model ** -0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, tokens: Tensor, mode: str = "parallel", state: RetNetState | None = None,
        chunk_size: int | None = None,
    ) -> tuple[Tensor, RetNetState]:
        """``tokens: (B, T)`` int64 ids -> ``logits: (B, T, vocab_size)``, the state after them.

        To decode token by token, use :meth:`step`, or call this under ``torch.no_grad()``: with autograd
        on, each returned state keeps the graph of every earlier call, and with it every earlier layer
        state (a backward pass through the decoding needs them), so memory grows with each token."""
        self._check_forward_args(tokens, mode, state, chunk_size)
        return self._forward(tokens, mode, state, self.chunk_size_for(tokens.shape[1], chunk_size))

    def chunk_size_for(self, length: int, chunk_size: int | None = None) -> int:
        """The chunk length ``mode="chunkwise"`` uses for ``length`` tokens: ``chunk_size`` if given, else
        ``config.chunk_size``, else :func:`retnet_mini.costs.default_chunk_size` for this model's heads."""
        if chunk_size is not None:
            return chunk_size
        if self.config.chunk_size is not None:
            return self.config.chunk_size
        return self.blocks[0].retention.chunk_size_for(length)

    def _forward(self, tokens: Tensor, mode: str, state: RetNetState | None, chunk_size: int,
                 inplace: bool = False):
        """The forward pass without argument checks; ``inplace`` (recurrent mode, no autograd) updates the
        layer states of ``state`` in place (see :meth:`step`)."""
        offset = 0 if state is None else state.offset
        x = embed_tokens(self.embed, tokens, None if state is None else state.last_tokens)
        # every layer rotates by the same theta: compute the cos/sin tables once
        rotation = rotation_tables(self.blocks[0].retention.theta, offset, tokens.shape[1],
                                   state_dtype(projection_dtype(x)), x.device)   # see MultiScaleRetention
        new_states = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, mode=mode, state=None if state is None else state.layers[i], offset=offset,
                         chunk_size=chunk_size, inplace=inplace, rotation=rotation)
            new_states.append(s)
        logits = self.lm_head(self.final_norm(x))
        return logits, RetNetState(new_states, offset + tokens.shape[1], last_tokens_for(self.embed, tokens))

    def _check_forward_args(self, tokens, mode, state, chunk_size) -> None:
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an int64 tensor of shape (B, T), got {got}")
        if tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must have B >= 1 and T >= 1, got shape {tuple(tokens.shape)}")
        if (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(
                f"tokens must be ids in [0, {self.config.vocab_size}) (vocab_size), got values in "
                f"[{tokens.min().item()}, {tokens.max().item()}]"
            )
        if tokens.device != self.embed.weight.device:
            raise ValueError(f"tokens are on {tokens.device} but the model is on {self.embed.weight.device}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
        if state is not None:
            if not isinstance(state, RetNetState) or len(state.layers) != self.config.n_layers:
                raise ValueError(f"state must be a RetNetState with {self.config.n_layers} layer states (or None)")
            check_position("state.offset", state.offset)      # it may have been changed after it was made
            want = self.blocks[0].retention.state_shape(tokens.shape[0])
            for i, s in enumerate(state.layers):
                if not isinstance(s, Tensor) or tuple(s.shape) != want:
                    got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                    raise ValueError(f"state.layers[{i}] must have shape {want}, got {got}")
            check_last_tokens(self.embed, state, tokens)

    def init_state(self, batch_size: int) -> RetNetState:
        """An empty history (all-zero states), equivalent to ``state=None``; float32 for a half-precision
        model, like the states the forward pass returns (:func:`~retnet_mini.retention.state_dtype`)."""
        p = self.embed.weight
        shape = self.blocks[0].retention.state_shape(batch_size)
        return RetNetState([p.new_zeros(shape, dtype=state_dtype(p.dtype)) for _ in self.blocks], 0)

    def generate(
        self, prompt_tokens: Tensor, max_new_tokens: int, temperature: float = 1.0,
        top_k: int | None = None, generator: torch.Generator | None = None,
        prefill: str = "chunkwise",
    ) -> Tensor:
        """Prefill the prompt with the chunkwise (or parallel) form, then decode one token at a time with
        the recurrent form: O(1) time and memory per new token.

        Args:
            prompt_tokens: ``(B, T)`` ids, T >= 1 (batched prompts of equal length).
            max_new_tokens: how many tokens to add.
            temperature: 0 for greedy decoding; otherwise logits are divided by it before sampling.
            top_k: sample among the k most likely tokens only (None: all).
            generator: a ``torch.Generator`` for reproducible sampling.
            prefill: ``"chunkwise"`` or ``"parallel"``.
        Returns:
            ``(B, T + max_new_tokens)``: the prompt followed by the new tokens.
        """
        check_generate_args(prompt_tokens, max_new_tokens, temperature, top_k, self.config.vocab_size)
        if prefill not in ("chunkwise", "parallel"):
            raise ValueError(f"prefill must be 'chunkwise' or 'parallel', got {prefill!r}")
        self._check_forward_args(prompt_tokens, prefill, None, None)
        with torch.inference_mode():
            logits, state = self._forward(prompt_tokens, prefill, None, self.chunk_size_for(prompt_tokens.shape[1]))
        step = lambda tok, st: self.step(tok, st, check=False)      # sampled ids and our own state
        return decode_loop(step, prompt_tokens, logits[:, -1], state, max_new_tokens, temperature, top_k, generator)

    def step(self, tokens: Tensor, state: RetNetState, *, check: bool = True) -> Tensor:
        """One decoding step with the recurrent form (eq. 6): the next token of each sequence in, its
        logits out, and ``state`` moved on **in place** (its layer states, ``offset`` and ``last_tokens``).

        This is what :meth:`generate`, the benchmarks and the inference chapter decode with: no new state
        per token, no autograd (it runs under ``torch.inference_mode()``; the logits are inference tensors).

        Args:
            tokens: ``(B, 1)`` or ``(B,)`` int64 ids, at position ``state.offset``.
            state: a :class:`RetNetState` this model returned, or :meth:`init_state`; its layer states
                must be contiguous and of dtype ``state_dtype`` of the model's (which both are).
            check: check ``tokens`` and ``state`` first (shapes, ids in range: a read-back, so a stall on a
                GPU). ``generate`` passes ``check=False``: its tokens are sampled, its state its own.
        Returns:
            ``(B, vocab_size)`` logits for the token after ``tokens``.
        """
        if tokens.ndim == 1:
            tokens = tokens[:, None]
        if check:
            self._check_forward_args(tokens, "recurrent", state, None)
            if tokens.shape[1] != 1:
                raise ValueError(f"step takes one token per sequence, (B, 1) or (B,); got shape {tuple(tokens.shape)}")
            want = state_dtype(projection_dtype(self.embed.weight))
            for i, s in enumerate(state.layers):
                if not s.is_contiguous() or s.dtype != want:
                    raise ValueError(
                        f"state.layers[{i}] must be a contiguous {want} tensor to be updated in place, got "
                        f"dtype {s.dtype}, contiguous={s.is_contiguous()} (use the model's own states)"
                    )
        with torch.inference_mode():
            logits, moved = self._forward(tokens, "recurrent", state, 1, inplace=True)
        state.offset, state.last_tokens = moved.offset, moved.last_tokens
        return logits[:, -1]

    @classmethod
    def from_torchscale(cls, state_dict: dict, **official_config) -> "RetNetLM":
        """Build a model from an official torchscale ``RetNetDecoder`` state dict and its config.

        ``official_config`` uses the official names: ``vocab_size, decoder_embed_dim,
        decoder_value_embed_dim, decoder_retention_heads, decoder_ffn_embed_dim, decoder_layers,
        layernorm_eps, activation_fn, recurrent_chunk_size, no_output_layer,
        share_decoder_input_output_embed`` (the defaults are torchscale 0.3.0's). The model keeps the
        weights' precision (float64 stays float64) and applies the official parallel form's rescalings, so
        its logits, in each of our three modes, equal the official parallel form's for any
        ``layernorm_eps`` (float64: to round-off, once the official norms' float32 casts are removed). The
        official recurrent and chunkwise forms give the same logits with ``layernorm_eps=0``; with
        ``eps > 0`` they differ from its parallel form (tests/test_torchscale.py records by how much).
        """
        return _from_torchscale(cls, state_dict, official_config)


def last_tokens_for(embedding: nn.Module, tokens: Tensor) -> Tensor | None:
    """What a state keeps of ``tokens (B, T)`` for the embedding: the last token ``(B, 1)`` if the embedding
    reads the previous token (a token shift), else None."""
    return tokens[:, -1:].clone() if getattr(embedding, "reads_previous_token", False) else None


def check_last_tokens(embedding: nn.Module, state, tokens: Tensor) -> None:
    """A state continued by a token-shift model must carry its last token (see :class:`RetNetState`)."""
    if not getattr(embedding, "reads_previous_token", False) or state.offset == 0:
        return
    last = state.last_tokens
    if last is None:
        raise ValueError(
            f"this model's embedding reads the token before each position (a token shift), but the state "
            f"(offset {state.offset}) carries no last_tokens: continue only states this model returned"
        )
    if not isinstance(last, Tensor) or last.shape != (tokens.shape[0], 1) or last.dtype != tokens.dtype:
        got = f"shape {tuple(last.shape)}, dtype {last.dtype}" if isinstance(last, Tensor) else type(last).__name__
        raise ValueError(f"state.last_tokens must be a ({tokens.shape[0]}, 1) {tokens.dtype} tensor, got {got}")


# ---------------------------------------------------------------------------------------------
# Weights from the official implementation.
# ---------------------------------------------------------------------------------------------
_TORCHSCALE_DEFAULTS = dict(
    decoder_embed_dim=768, decoder_value_embed_dim=1280, decoder_retention_heads=3,
    decoder_ffn_embed_dim=1280, decoder_layers=12, layernorm_eps=1e-6, activation_fn="gelu",
    recurrent_chunk_size=512, no_output_layer=False, share_decoder_input_output_embed=False,
)


def _from_torchscale(cls, state_dict: dict, official_config: dict) -> RetNetLM:
    if "vocab_size" not in official_config:
        raise ValueError("from_torchscale needs vocab_size (the official config name) among its arguments")
    unknown = set(official_config) - set(_TORCHSCALE_DEFAULTS) - {"vocab_size"}
    if unknown:
        raise ValueError(f"unsupported official config names: {sorted(unknown)}")
    oc = {**_TORCHSCALE_DEFAULTS, **official_config}
    if oc["activation_fn"] != "gelu":
        raise ValueError(f"only activation_fn='gelu' is supported, got {oc['activation_fn']!r}")
    if oc["no_output_layer"]:
        raise ValueError("no_output_layer=True models have no logits to reproduce")
    config = RetNetConfig.torchscale(
        vocab_size=oc["vocab_size"], d_model=oc["decoder_embed_dim"], n_heads=oc["decoder_retention_heads"],
        n_layers=oc["decoder_layers"], value_dim=oc["decoder_value_embed_dim"],
        ffn_dim=oc["decoder_ffn_embed_dim"], norm_eps=oc["layernorm_eps"],
        chunk_size=oc["recurrent_chunk_size"], tie_embeddings=oc["share_decoder_input_output_embed"],
        # The official parallel form divides retention by sqrt of D's row sums and by max(1, |row sum|)
        # (rescalings 2 and 3). With layernorm_eps > 0 the head norm does not cancel them, so keep them.
        rescale=True,
    )
    model = cls(config)
    renamed = {"embed.weight": "embed_tokens.weight", "final_norm.weight": "layer_norm.weight",
               "lm_head.weight": "output_projection.weight"}
    for i in range(config.n_layers):
        for ours, theirs in (
            ("retention_norm.weight", "retention_layer_norm.weight"),
            ("ffn_norm.weight", "final_layer_norm.weight"),
            ("ffn.fc1.weight", "ffn.fc1.weight"), ("ffn.fc2.weight", "ffn.fc2.weight"),
            ("ffn.gate.weight", "ffn.gate.weight"),
            *((f"retention.{p}_proj.weight", f"retention.{p}_proj.weight") for p in "qkvg"),
            ("retention.out_proj.weight", "retention.out_proj.weight"),
        ):
            renamed[f"blocks.{i}.{ours}"] = f"layers.{i}.{theirs}"
    if config.tie_embeddings:
        renamed.pop("lm_head.weight")
    _check_torchscale_keys(state_dict, set(renamed.values()), config)
    # Never round the weights: a float64 state dict gives a float64 model (half precision is widened).
    model.to(torch.promote_types(state_dict["embed_tokens.weight"].dtype, model.embed.weight.dtype))
    ours_sd = model.state_dict()
    converted = {}
    for ours, theirs in renamed.items():
        if state_dict[theirs].shape != ours_sd[ours].shape:
            raise ValueError(
                f"{theirs} has shape {tuple(state_dict[theirs].shape)}, expected {tuple(ours_sd[ours].shape)} "
                f"from the config given"
            )
        converted[ours] = state_dict[theirs]
    model.load_state_dict(converted, strict=not config.tie_embeddings)
    _check_torchscale_buffers(state_dict, model)
    return model


# The official decoder's buffers: derived from the config, compared with ours rather than loaded.
_TORCHSCALE_BUFFERS = ("retnet_rel_pos.angle", "retnet_rel_pos.decay")


def _check_torchscale_keys(state_dict: dict, expected: set, config: RetNetConfig) -> None:
    """Refuse weights the conversion would silently drop or invent: every key must be converted (or be
    one of the official buffers, checked after loading), and every key the config needs must be there."""
    import re

    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"state_dict must map names to tensors; not so for {bad[:3]}")
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(r"layers\.(\d+)\.", k))}
    if layers and max(layers) + 1 > config.n_layers:
        raise ValueError(
            f"the weights have {max(layers) + 1} layers (layers.0 .. layers.{max(layers)}) but decoder_layers is "
            f"{config.n_layers}: pass decoder_layers={max(layers) + 1} (dropping layers changes every logit)"
        )
    missing = sorted(k for k in expected if k not in state_dict)
    if missing:
        raise ValueError(f"state_dict lacks {len(missing)} official keys, e.g. {missing[:3]}; is it a RetNetDecoder's?")
    tied = config.tie_embeddings
    unexpected = sorted(k for k in state_dict if k not in expected and k not in _TORCHSCALE_BUFFERS
                        and not (tied and k == "output_projection.weight"))
    if any(k.startswith("layernorm_embedding.") for k in unexpected):
        raise ValueError(
            "the weights have a layernorm_embedding (the official layernorm_embedding=True option: a norm "
            "right after the token embedding), which this model does not have; converting would drop it"
        )
    if unexpected:
        raise ValueError(
            f"state_dict has {len(unexpected)} keys this conversion does not use, e.g. {unexpected[:3]}: the "
            f"official model they come from has parts (or options) this model lacks, so its logits would differ"
        )
    if tied and "output_projection.weight" in state_dict:
        out, emb = state_dict["output_projection.weight"], state_dict["embed_tokens.weight"]
        if out.shape != emb.shape or not torch.equal(out, emb.to(out.dtype)):
            raise ValueError(
                "share_decoder_input_output_embed=True, but the state dict's output_projection.weight differs "
                "from embed_tokens.weight: these weights were trained untied; pass "
                "share_decoder_input_output_embed=False"
            )


def _check_torchscale_buffers(state_dict: dict, model: RetNetLM) -> None:
    """The official decoder stores its rotation angles and ``ln(gamma)`` per head: they must be the ones
    this model computes from the config (a head count that differs changes every decay, silently)."""
    retention = model.blocks[0].retention
    ours = {"retnet_rel_pos.decay": retention.log_decay.double(),
            "retnet_rel_pos.angle": retention.theta.double().repeat_interleave(2)}
    for key, want in ours.items():
        if key not in state_dict:
            continue
        stored = state_dict[key]
        got = stored.detach().cpu().double()
        if got.shape != want.shape:
            what = "one ln(gamma) per head" if key.endswith("decay") else "two angles per rotated pair"
            raise ValueError(
                f"{key} has shape {tuple(got.shape)}, but decoder_retention_heads={model.config.n_heads} with "
                f"decoder_embed_dim={model.config.d_model} gives {tuple(want.shape)} ({what}): is the head "
                f"count right?"
            )
        # a few units in the last place of the stored dtype (float16 weights round these buffers too)
        rtol = 4 * torch.finfo(stored.dtype).eps if stored.is_floating_point() else 0.0
        if not torch.allclose(got, want.cpu(), rtol=rtol, atol=1e-12):
            raise ValueError(
                f"{key} differs from the values torchscale 0.3.0 computes for this config (largest gap "
                f"{(got - want.cpu()).abs().max().item():.3g}): these weights come from another schedule or version"
            )
