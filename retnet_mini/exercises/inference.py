"""Checkers for the exercises of "Inference: O(1) decoding, measured" (book/inference.ipynb).

- :func:`check_flop_crossover`: the shortest context at which one decoding step of attention costs more
  FLOPs than one step of retention (reading and updating the state).
- :func:`check_greedy_decode`: a greedy decoding loop that prefills the prompt once and then feeds each new
  token once, continuing the model's recurrent state.
- :func:`check_decode_throughput`: tokens per second of a decoding phase whose step time grows with the
  context, for a batch of sequences.

Each checker calls the reader's function on random cases and compares it with a reference; on a mismatch
it raises :class:`ExerciseError` with the case, the answer, the expected value and, when the answer
matches a known mistake, a hint; otherwise it prints one success line.
"""
from __future__ import annotations

import copy
import math
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor

from ..model import RetNetConfig, RetNetLM
from . import (ExerciseError, _same, compare_numbers, describe_numbers, mutation_note, pick, randint, random_cases,
               require_function, success, to_tensor, uniform, wrong_type)

__all__ = ["check_flop_crossover", "check_greedy_decode", "check_decode_throughput"]


# ---------------------------------------------------------------------------------------------
# Exercise 1: where attention's step costs more FLOPs than retention's
# ---------------------------------------------------------------------------------------------
def _flop_case(g: torch.Generator) -> dict[str, Any]:
    kind = randint(g, 0, 2)
    if kind == 0:                      # the paper's shapes: h d_k = d, d_v = 2 d_k (an exact tie at n = 2 d_k)
        key_head_dim = pick(g, [32, 64, 128, 256])
        n_heads = randint(g, 1, 16)
        return dict(d_model=n_heads * key_head_dim, n_heads=n_heads, key_head_dim=key_head_dim,
                    value_head_dim=2 * key_head_dim)
    return dict(d_model=randint(g, 16, 4096), n_heads=randint(g, 1, 32), key_head_dim=randint(g, 8, 512),
                value_head_dim=randint(g, 8, 1024))


def _flop_reference(d_model, n_heads, key_head_dim, value_head_dim):
    # attention at n keys: 4 n d; retention: 4 h d_k d_v (per layer, per sequence); the first n with 4nd > 4 h d_k d_v
    return n_heads * key_head_dim * value_head_dim // d_model + 1


def check_flop_crossover(flop_crossover: Callable[..., Any], n_cases: int = 25) -> None:
    """Check ``flop_crossover(d_model, n_heads, key_head_dim, value_head_dim) -> int``: the smallest context
    ``n`` (keys attended to) at which attention's ``4 n d_model`` FLOPs per layer exceed retention's
    ``4 n_heads key_head_dim value_head_dim``."""
    state = lambda c: c["n_heads"] * c["key_head_dim"] * c["value_head_dim"]
    hints = [
        (lambda **c: state(c) // (2 * c["d_model"]) + 1,
         "that is where the cache's NUMBERS pass the state's (2 d per token against h d_k d_v); "
         "compare FLOPs: 4 n d against 4 h d_k d_v."),
        (lambda **c: math.ceil(state(c) / (2 * c["d_model"])),
         "that is where the cache's NUMBERS reach the state's; compare FLOPs: 4 n d against 4 h d_k d_v."),
        (lambda **c: math.ceil(state(c) / c["d_model"]),
         "where h d_k d_v / d is a whole number the two counts are EQUAL there: the answer is the first context "
         "at which attention costs strictly more."),
        (lambda **c: state(c) // c["d_model"],
         "at n = h d_k d_v / d the two counts are at most equal: the answer is the first context at which "
         "attention costs strictly more (one more token)."),
        (lambda **c: c["key_head_dim"] * c["value_head_dim"] // c["d_model"] + 1,
         "every head keeps its own d_k x d_v state: multiply by n_heads."),
    ]
    compare_numbers(flop_crossover, _flop_reference, random_cases(_flop_case, n_cases, seed=81),
                    "check_flop_crossover", hints, integer=True, describe=describe_numbers)


# ---------------------------------------------------------------------------------------------
# Exercise 2: a greedy decoding loop with the recurrent state
# ---------------------------------------------------------------------------------------------
def _decode_case(g: torch.Generator, index: int) -> dict[str, Any]:
    d_model = pick(g, [8, 16, 24, 32])
    n_heads = pick(g, [h for h in (1, 2, 4) if d_model % h == 0 and (d_model // h) % 2 == 0])
    vocab = randint(g, 5, 40)
    config = RetNetConfig.paper(vocab_size=vocab, d_model=d_model, n_heads=n_heads, n_layers=randint(g, 1, 2),
                                chunk_size=randint(g, 2, 8), rescale=bool(randint(g, 0, 1)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + index)
        model = RetNetLM(config).double().eval()
    B, T = randint(g, 1, 3), randint(g, 1, 12)
    prompt = torch.randint(0, vocab, (B, T), generator=g)
    return dict(model=model, prompt=prompt, max_new_tokens=randint(g, 1, 6))


def _describe_decode(case: dict[str, Any]) -> str:
    c = case["model"].config
    return (f"a RetNetLM (vocab_size {c.vocab_size}, d_model {c.d_model}, n_heads {c.n_heads}, n_layers {c.n_layers}, "
            f"chunk_size {c.chunk_size}), prompt of shape {tuple(case['prompt'].shape)}, "
            f"max_new_tokens={case['max_new_tokens']}")


class _CountTokens:
    """Counts the calls of a model and the token positions they feed it (a forward pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls, self.tokens = 0, 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        tokens = args[0] if args else kwargs.get("tokens")
        self.calls += 1
        if isinstance(tokens, Tensor) and tokens.ndim == 2:
            self.tokens += tokens.shape[1]


def check_greedy_decode(greedy_decode: Callable[..., Any], n_cases: int = 25) -> None:
    """Check ``greedy_decode(model, prompt, max_new_tokens) -> (B, T + max_new_tokens)`` token ids.

    The answer must equal ``model.generate(prompt, max_new_tokens, temperature=0)`` (greedy: each new token
    is the argmax of the logits at the previous position), call the model itself (``model(tokens, mode=...,
    state=...)``), and feed it at most ``T + max_new_tokens`` token positions in all: the prompt once, then
    each new token once, continuing the state.
    """
    name = "check_greedy_decode"
    require_function(greedy_decode, name)
    g = torch.Generator().manual_seed(82)
    for index in range(n_cases):
        case = _decode_case(g, index)
        model, prompt, n_new = case["model"], case["prompt"], case["max_new_tokens"]
        B, T = prompt.shape
        want = model.generate(prompt, n_new, temperature=0)     # first: the answer cannot change the model it used
        # the answer gets copies of its own: changing the weights or the prompt in place reaches nothing else
        answer_model, answer_prompt = copy.deepcopy(model), prompt.clone()
        counter = _CountTokens(answer_model)
        try:
            got = greedy_decode(answer_model, answer_prompt, n_new)
        except ExerciseError:
            raise
        except Exception as e:
            raise ExerciseError(f"{name}: your function raised {type(e).__name__}: {e}\n"
                                f"  on {_describe_decode(case)}") from e
        finally:
            counter.handle.remove()
        changed = [k for k, mine, theirs in (("model", model, answer_model), ("prompt", prompt, answer_prompt))
                   if not _same(mine, theirs)]
        where = f"\n  on {_describe_decode(case)}"
        tokens = to_tensor(got)
        if tokens is None:
            raise ExerciseError(f"{name}: {wrong_type(got, 'a tensor of token ids')}{where}")
        got = tokens
        where += mutation_note(changed)
        if got.dtype.is_floating_point or got.dtype.is_complex or got.dtype == torch.bool:
            raise ExerciseError(f"{name}: expected integer token ids, got dtype {got.dtype}{where}")
        if tuple(got.shape) != tuple(want.shape):
            raise ExerciseError(f"{name}: your output has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                                f"(the prompt followed by the new tokens){where}")
        if not torch.equal(got[:, :T].long(), prompt):
            raise ExerciseError(f"{name}: the first {T} columns must be the prompt itself{where}")
        wrong = (got.long() != want).nonzero()
        if len(wrong):
            b, pos = (int(i) for i in wrong[0])
            i = pos - T
            message = (f"{name}: new token {i} of sequence {b} (position {pos}) is {int(got[b, pos])}, expected "
                       f"{int(want[b, pos])}{where}")
            if i == 0:
                message += ("\n  hint: the first new token is the argmax of the prompt's logits at its LAST position "
                            "(logits[:, -1]).")
            else:
                message += ("\n  hint: each step feeds the token just chosen, shape (B, 1), with the state returned by "
                            "the previous call (state=state), and picks the argmax of that step's logits.")
            raise ExerciseError(message)
        if counter.calls == 0:
            raise ExerciseError(f"{name}: your function never called the model: write the loop with "
                                f"model(tokens, mode=..., state=...) rather than calling model.generate{where}")
        if counter.tokens > T + n_new:
            raise ExerciseError(
                f"{name}: the tokens are right, but your function fed the model {counter.tokens} token positions for a "
                f"prompt of {T} and {n_new} new tokens; with the state, the prompt is fed once and each new token "
                f"once ({T + n_new - 1} positions are enough): pass each call's state to the next instead of "
                f"re-reading the sequence{where}")
    success(name, n_cases)


# ---------------------------------------------------------------------------------------------
# Exercise 3: tokens per second of a decoding phase
# ---------------------------------------------------------------------------------------------
def _throughput_case(g: torch.Generator) -> dict[str, Any]:
    per_token = 0.0 if randint(g, 0, 4) == 0 else 10 ** float(uniform(g, -9, -5))   # 0: RetNet's flat step
    return dict(batch=pick(g, [1, 1, 2, 4, 8, 16, 64]), prompt_len=randint(g, 1, 20_000),
                new_tokens=randint(g, 1, 2_000), fixed_s=10 ** float(uniform(g, -4, -1)), per_token_s=per_token)


def _step_total(prompt_len, new_tokens, fixed_s, per_token_s, shift=0):
    """Seconds of ``new_tokens`` steps at contexts ``prompt_len + shift + i``, i = 0 .. new_tokens - 1."""
    start = prompt_len + shift
    return new_tokens * fixed_s + per_token_s * (new_tokens * start + new_tokens * (new_tokens - 1) / 2)


def _throughput_reference(batch, prompt_len, new_tokens, fixed_s, per_token_s):
    return batch * new_tokens / _step_total(prompt_len, new_tokens, fixed_s, per_token_s)


def check_decode_throughput(decode_throughput: Callable[..., Any], n_cases: int = 25) -> None:
    """Check ``decode_throughput(batch, prompt_len, new_tokens, fixed_s, per_token_s) -> tokens/s``.

    ``new_tokens`` steps; step ``i`` (from 0) runs at context ``prompt_len + i``, takes
    ``fixed_s + per_token_s * context`` seconds and produces one token for each of the ``batch`` sequences.
    """
    hints = [
        (lambda **c: c["new_tokens"] / _step_total(c["prompt_len"], c["new_tokens"], c["fixed_s"], c["per_token_s"]),
         "a step produces one token for EACH of the batch's sequences: multiply by batch."),
        (lambda **c: 1 / _throughput_reference(**c), "that is seconds per token; tokens per second is its inverse."),
        (lambda **c: c["batch"] / (c["fixed_s"] + c["per_token_s"] * c["prompt_len"]),
         "the context grows by one token at every step: step i runs at context prompt_len + i."),
        (lambda **c: c["batch"] / (c["fixed_s"] + c["per_token_s"] * (c["prompt_len"] + c["new_tokens"])),
         "the context grows during decoding: step i runs at context prompt_len + i, not at the final length."),
        (lambda **c: c["batch"] * c["new_tokens"]
         / _step_total(c["prompt_len"], c["new_tokens"], c["fixed_s"], c["per_token_s"], shift=1),
         "step i runs at context prompt_len + i: the first step sees the prompt only."),
    ]
    compare_numbers(decode_throughput, _throughput_reference, random_cases(_throughput_case, n_cases, seed=83),
                    "check_decode_throughput", hints, rel_tol=1e-9, describe=describe_numbers)
