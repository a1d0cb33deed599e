"""Sampling the next token and the decoding loop, shared by both language models.

:meth:`RetNetLM.generate <retnet_mini.model.RetNetLM.generate>` and :meth:`TransformerLM.generate
<retnet_mini.transformer.TransformerLM.generate>` prefill the prompt, then call :func:`decode_loop` with
their public decoding step (``model.step(tokens, state) -> logits``, which moves the state on in place).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_generate_args", "sample_next", "decode_loop"]


def check_generate_args(prompt_tokens, max_new_tokens, temperature, top_k, vocab_size) -> None:
    """Shared by RetNetLM and TransformerLM: clear errors for bad generation arguments."""
    if not isinstance(prompt_tokens, Tensor) or prompt_tokens.ndim != 2 or prompt_tokens.shape[1] < 1:
        raise ValueError("prompt_tokens must be an int64 tensor of shape (B, T) with T >= 1")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature < 0):
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 for greedy decoding, 1 to sample from the model's "
            f"distribution), got {temperature!r}"
        )
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= vocab_size):
        raise ValueError(f"top_k must be None or an int in [1, {vocab_size}] (vocab_size), got {top_k!r}")


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator) -> Tensor:
    """``logits: (B, V)`` -> ``(B,)`` next ids: greedy at temperature 0, else top-k sampling.

    The logits are shifted so that each row's largest is 0 before dividing by the temperature: a tiny temperature then sends the others to ``-inf`` (sampling becomes greedy, ties drawn at
    random) instead of overflowing to ``inf`` and a NaN distribution.
    """
    if temperature == 0:
        return logits.argmax(-1)
    raw = logits
    # divided in float64 (a temperature of 1e-300 is not 0 there), sampled in float32 as before
    logits = logits.double()
    logits = ((logits - logits.amax(-1, keepdim=True)) / float(temperature)).float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, int(top_k), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    try:
        return torch.multinomial(F.softmax(logits, -1), 1, generator=generator).squeeze(-1)
    except RuntimeError:   # a NaN or +inf logit (a diverged model) reaches the sampler
        if not (raw.isnan() | raw.isposinf()).any():
            raise
        raise FloatingPointError(
            "the model's logits contain NaN or +inf, so no token can be sampled; check the model's weights "
            "and inputs"
        ) from None


def decode_loop(
    step: Callable[[Tensor, object], Tensor], prompt_tokens: Tensor, last_logits: Tensor, state: object,
    max_new_tokens: int, temperature: float, top_k: int | None, generator: torch.Generator | None,
) -> Tensor:
    """Append ``max_new_tokens`` tokens to ``prompt_tokens (B, T)``, starting from the prompt's
    ``last_logits (B, V)``; ``step(tokens (B, 1), state) -> logits (B, V)`` moves ``state`` on in place.

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
            if i + 1 < max_new_tokens:      # the last token is sampled, never fed back
                last_logits = step(next_tokens, state)
        tokens = torch.cat(out, dim=1)
    return tokens.clone()
