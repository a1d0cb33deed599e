"""The RetNet language model: config with two presets, the model, generation, weight conversion."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import DECAYS, MODES, RetNetBlock, make_norm, projection_dtype
from .retention import state_dtype
from .rotation import rotation_tables


@dataclass
class RetNetConfig:
    """Shape and design choices of a :class:`RetNetLM`.

    ``d_model`` is split into ``n_heads`` key heads (key head dim ``d_model / n_heads``); ``value_dim`` is
    the total value width (the paper: ``2 * d_model``); ``ffn_dim`` the FFN's inner width (the paper:
    ``2 * d_model``). Use the presets :meth:`paper` and :meth:`torchscale` rather than this directly.
    """

    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    value_dim: Optional[int] = None      # None -> 2 * d_model
    ffn_dim: Optional[int] = None        # None -> 2 * d_model
    norm: str = "layernorm"              # block norms: "layernorm" | "rmsnorm"
    head_norm: str = "groupnorm"         # "groupnorm" | "rmsnorm" (no weight) | "none"
    ffn: str = "gelu"                    # "gelu" | "glu"
    bias: bool = True
    theta: str = "rope"                  # "rope" | "torchscale"
    decay: str = "paper"                 # see layers.decay_schedule; "gated": computed from the input
    gate: bool = True                    # the swish gate
    rescale: bool = False                # the paper's rescalings 2 and 3 (1, k * d_k^-1/2, is always on)
    norm_eps: float = 1e-5
    chunk_size: int = 64                 # default chunk length of mode="chunkwise"
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.value_dim is None:
            self.value_dim = 2 * self.d_model
        if self.ffn_dim is None:
            self.ffn_dim = 2 * self.d_model
        for name in ("vocab_size", "d_model", "n_heads", "n_layers", "value_dim", "ffn_dim", "chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RetNetConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size "
                f"(the rotation works on pairs)"
            )
        if self.value_dim % self.n_heads:
            raise ValueError(f"value_dim ({self.value_dim}) must be divisible by n_heads ({self.n_heads})")
        if self.norm_eps < 0:
            raise ValueError(f"norm_eps must be >= 0, got {self.norm_eps}")
        if self.decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {self.decay!r}")
        if self.decay == "gated" and self.rescale:
            raise ValueError(
                "rescale=True needs a fixed decay (its factors are row sums of a fixed gamma's decay matrix); "
                "use rescale=False with decay='gated'"
            )

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

    ``layers[i]``: ``(B, H, d_k, d_v)`` (``d_v + 1`` with rescaling); ``offset``: tokens seen so far.
    Its size does not depend on ``offset``: that is RetNet's O(1) inference memory.
    """

    layers: List[Tensor]
    offset: int

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.layers)


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
        self, tokens: Tensor, mode: str = "parallel", state: Optional[RetNetState] = None,
        chunk_size: Optional[int] = None,
    ) -> Tuple[Tensor, RetNetState]:
        """``tokens: (B, T)`` int64 ids -> ``logits: (B, T, vocab_size)``, the state after them."""
        self._check_forward_args(tokens, mode, state, chunk_size)
        return self._forward(tokens, mode, state, chunk_size or self.config.chunk_size)

    def _forward(self, tokens: Tensor, mode: str, state: Optional[RetNetState], chunk_size: int,
                 inplace: bool = False):
        """The forward pass without argument checks; ``inplace`` (recurrent mode, no autograd) updates the
        layer states of ``state`` in place: for decoding loops that own their state."""
        offset = 0 if state is None else state.offset
        x = self.embed(tokens)
        # every layer rotates by the same theta: compute the cos/sin tables once
        rotation = rotation_tables(self.blocks[0].retention.theta, offset, tokens.shape[1],
                                   state_dtype(projection_dtype(x)), x.device)   # see MultiScaleRetention
        new_states = []
        for i, block in enumerate(self.blocks):
            x, s = block(x, mode, None if state is None else state.layers[i], offset, chunk_size, inplace, rotation)
            new_states.append(s)
        logits = self.lm_head(self.final_norm(x))
        return logits, RetNetState(new_states, offset + tokens.shape[1])

    def _check_forward_args(self, tokens, mode, state, chunk_size) -> None:
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an int64 tensor of shape (B, T), got {got}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(
                f"tokens must be ids in [0, {self.config.vocab_size}) (vocab_size), got values in "
                f"[{tokens.min().item()}, {tokens.max().item()}]"
            )
        if tokens.device != self.embed.weight.device:
            raise ValueError(f"tokens are on {tokens.device} but the model is on {self.embed.weight.device}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be an int >= 1 or None, got {chunk_size!r}")
        if state is not None:
            if not isinstance(state, RetNetState) or len(state.layers) != self.config.n_layers:
                raise ValueError(f"state must be a RetNetState with {self.config.n_layers} layer states (or None)")
            want = self.blocks[0].retention.state_shape(tokens.shape[0])
            for i, s in enumerate(state.layers):
                if tuple(s.shape) != want:
                    raise ValueError(f"state.layers[{i}] must have shape {want}, got {tuple(s.shape)}")

    def init_state(self, batch_size: int) -> RetNetState:
        """An empty history (all-zero states), equivalent to ``state=None``; float32 for a half-precision
        model, like the states the forward pass returns (:func:`~retnet_mini.retention.state_dtype`)."""
        p = self.embed.weight
        shape = self.blocks[0].retention.state_shape(batch_size)
        return RetNetState([p.new_zeros(shape, dtype=state_dtype(p.dtype)) for _ in self.blocks], 0)

    def generate(
        self, prompt_tokens: Tensor, max_new_tokens: int, temperature: float = 1.0,
        top_k: Optional[int] = None, generator: Optional[torch.Generator] = None,
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
            logits, state = self._forward(prompt_tokens, prefill, None, self.config.chunk_size)
        return decode_loop(
            lambda tok, st: self._forward(tok, "recurrent", st, 1, inplace=True), prompt_tokens, logits[:, -1], state,
            max_new_tokens, temperature, top_k, generator,
        )

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


def check_generate_args(prompt_tokens, max_new_tokens, temperature, top_k, vocab_size) -> None:
    """Shared by RetNetLM and TransformerLM: clear errors for bad generation arguments."""
    if not isinstance(prompt_tokens, Tensor) or prompt_tokens.ndim != 2 or prompt_tokens.shape[1] < 1:
        raise ValueError("prompt_tokens must be an int64 tensor of shape (B, T) with T >= 1")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, {vocab_size}], got {top_k!r}")


def sample_next(logits: Tensor, temperature: float, top_k: Optional[int], generator) -> Tensor:
    """``logits: (B, V)`` -> ``(B,)`` next ids: greedy at temperature 0, else top-k sampling."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(-1)


def decode_loop(step, prompt_tokens, last_logits, state, max_new_tokens, temperature, top_k, generator) -> Tensor:
    """Append ``max_new_tokens`` tokens; ``step(tokens (B, 1), state) -> (logits, state)``.

    The loop never reads a value back to the host, so on a GPU the steps queue up without stalls. It runs
    under ``torch.inference_mode()``, which saves the autograd bookkeeping ``no_grad`` still does on every
    small operation of a step; the tokens come back as an ordinary tensor (one made in inference mode
    could not be edited in place afterwards).
    """
    with torch.inference_mode():
        out = [prompt_tokens]
        for i in range(max_new_tokens):
            next_tokens = sample_next(last_logits, temperature, top_k, generator)[:, None]
            out.append(next_tokens)
            if i + 1 < max_new_tokens:
                logits, state = step(next_tokens, state)
                last_logits = logits[:, -1]
        tokens = torch.cat(out, dim=1)
    return tokens.clone()


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
    missing = [theirs for theirs in renamed.values() if theirs not in state_dict]
    if missing:
        raise ValueError(f"state_dict lacks {len(missing)} official keys, e.g. {missing[:3]}; is it a RetNetDecoder's?")
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
    return model


def replace_config(config: RetNetConfig, **changes) -> RetNetConfig:
    """A copy of ``config`` with some fields changed (validated again)."""
    return dataclasses.replace(config, **changes)
