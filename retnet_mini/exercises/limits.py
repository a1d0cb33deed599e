"""Checkers for the exercises of "Limits and successors" (book/limits.ipynb).

- :func:`check_mqar_example`: lay out one multi-query associative recall sequence from its parts.
- :func:`check_state_numbers`: how many numbers a RetNet's state and a Transformer's KV cache hold.
- :func:`check_gate_log_decay`: gated linear attention's simple gate, turned into a per-position log-decay.
- :func:`check_masked_accuracy`: accuracy counted on the answer positions only.

Each checker runs the reader's function on random cases and compares it with the package; on a mismatch
it raises :class:`ExerciseError` saying what is wrong, with a hint when the answer matches a known mistake.
"""
from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..costs import kv_cache_numbers, retnet_state_numbers
from ..decay import gated_log_decay
from ..tasks import masked_accuracy, mqar_layout
from . import (ExerciseError, _describe_case, _kind, _precision_note, as_number, call_answer, compare_with_hints,
               pick, randint, randn, random_cases, require_function, success, to_tensor, wrong_type)

__all__ = ["check_mqar_example", "check_state_numbers", "check_gate_log_decay", "check_masked_accuracy",
           "state_numbers_reference"]


def _subset(g: torch.Generator, population: int, size: int) -> Tensor:
    return torch.randperm(population, generator=g)[:size]


# ---------------------------------------------------------------------------------------------
# Exercise 1: one MQAR sequence
# ---------------------------------------------------------------------------------------------
def _mqar_case(g: torch.Generator) -> dict[str, Any]:
    N = randint(g, 1, 6)
    Q = randint(g, 1, N)
    T = 2 * N + 2 * Q - 1 + randint(g, 0, 8)
    n_slots = (T + 1 - 2 * N) // 2
    keys = _subset(g, 10, N) + 1                    # ids 1..10
    values = _subset(g, 10, N) + 11                 # ids 11..20
    return dict(keys=keys, values=values, queried=_subset(g, N, Q), slots=_subset(g, n_slots, Q), seq_len=T)


def _mqar_reference(keys, values, queried, slots, seq_len):
    x, y, mask = mqar_layout(keys[None], values[None], queried[None], slots[None], seq_len)
    return x[0], y[0], mask[0].long()


def _mqar_mask_on_answers(keys, values, queried, slots, seq_len):
    x, y, mask = _mqar_reference(keys, values, queried, slots, seq_len)
    return x, y, torch.roll(mask, 1)


def _mqar_targets_are_inputs(keys, values, queried, slots, seq_len):
    x, y, mask = _mqar_reference(keys, values, queried, slots, seq_len)
    return x, x.clone(), mask


def check_mqar_example(mqar_example: Callable[..., tuple[Tensor, Tensor, Tensor]], n_cases: int = 25) -> None:
    """Check ``mqar_example(keys, values, queried, slots, seq_len) -> (inputs, targets, loss_mask)``.

    ``keys, values``: ``(N,)`` int64; ``queried``: ``(Q,)`` pair indices in the order asked; ``slots``:
    ``(Q,)`` distinct slot numbers; ``seq_len``: ``T``. The full sequence has ``T + 1`` tokens: the pairs
    ``k_1 v_1 ... k_N v_N``, then filler ``0`` except query ``j``: ``keys[queried[j]]`` at position
    ``2N + 2 slots[j]`` and its value right after. ``inputs`` = the first ``T`` tokens, ``targets`` = the last
    ``T``, ``loss_mask`` (bool) True where the input is a query. See :func:`retnet_mini.tasks.mqar_layout`.
    """
    name = "check_mqar_example"
    require_function(mqar_example, name)

    def checked(keys, values, queried, slots, seq_len):
        # the types first (ids are int64, the mask is bool), with messages of their own; then the values
        out = mqar_example(keys=keys, values=values, queried=queried, slots=slots, seq_len=seq_len)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ExerciseError(f"{name}: {wrong_type(out, 'a tuple (inputs, targets, loss_mask)')}")
        tensors = []
        for label, t, dtype in zip(("inputs", "targets", "loss_mask"), out, (torch.int64, torch.int64, torch.bool)):
            tensor = to_tensor(t)
            if tensor is None or tensor.dtype != dtype:
                got = tensor.dtype if tensor is not None else _kind(t)
                raise ExerciseError(f"{name}: {label} should be a {dtype} tensor, got {got}")
            tensors.append(tensor)
        x, y, mask = tensors
        return x, y, mask.long()

    hints = [
        (_mqar_mask_on_answers, "the mask marks the query positions (where the key is the input and the value "
                                "is the target), not the positions where the value is the input."),
        (_mqar_targets_are_inputs, "targets are the NEXT tokens: the sequence has T + 1 tokens, inputs are "
                                   "seq[:-1] and targets seq[1:]."),
    ]
    compare_with_hints(checked, _mqar_reference, random_cases(_mqar_case, n_cases, seed=41), name, hints)


# ---------------------------------------------------------------------------------------------
# Exercise 2: state and cache sizes
# ---------------------------------------------------------------------------------------------
def state_numbers_reference(d_model: int, n_heads: int, value_dim: int, n_layers: int, context: int) -> tuple[int, int]:
    """``(RetNet state, Transformer KV cache)`` in numbers per sequence, all layers.

    RetNet: each layer holds one ``d_k x d_v`` matrix per head (``d_k = d_model / H``, ``d_v = value_dim /
    H``), what :meth:`RetNetLM.init_state` allocates, whatever the context. The KV cache holds a key and
    a value of ``d_model`` numbers per layer per position seen. Both counts are :mod:`retnet_mini.costs`'s.
    """
    return (retnet_state_numbers(n_layers, n_heads, d_model // n_heads, value_dim // n_heads),
            kv_cache_numbers(n_layers, d_model, context))


def _state_case(g: torch.Generator) -> dict[str, Any]:
    H = pick(g, [1, 2, 4, 8, 16])
    d = H * 2 * randint(g, 1, 64)
    value_dim = H * randint(g, 1, 128) if randint(g, 0, 1) else 2 * d
    return dict(d_model=d, n_heads=H, value_dim=value_dim, n_layers=randint(g, 1, 32), context=randint(g, 1, 8192))


def check_state_numbers(state_numbers: Callable[..., tuple[int, int]], n_cases: int = 25) -> None:
    """Check ``state_numbers(d_model, n_heads, value_dim, n_layers, context) -> (retnet, kv_cache)``: how many
    numbers a RetNet's recurrent state holds (whatever the context) and how many a Transformer's KV cache
    holds after ``context`` tokens, both per sequence, all layers."""
    name = "check_state_numbers"
    n = 0
    for n, case in enumerate(random_cases(_state_case, n_cases, seed=42), start=1):
        want = state_numbers_reference(**case)      # first: nothing the answer does can change it
        got, _ = call_answer(state_numbers, case, name, describe=str)   # ints: nothing to change in place
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise ExerciseError(f"{name}: {wrong_type(got, 'a tuple (retnet_state, kv_cache) of two ints')}"
                                f"\n  on {case}")
        for label, g_, w in zip(("RetNet state", "KV cache"), got, want):
            if isinstance(g_, Tensor) and g_.numel() == 1:
                g_ = g_.reshape(())
            g_, dtype = as_number(g_, name, f"\n  on {case}", expected="an int", what=f"the {label}")
            if g_ != w:
                note, hint = _precision_note(float(g_), float(w), dtype, label), ""
                d, H, V, L, T = (case[k] for k in ("d_model", "n_heads", "value_dim", "n_layers", "context"))
                if label == "RetNet state" and g_ == L * d * V:
                    hint = "\n  hint: each head holds a d_k x d_v matrix with d_k = d_model / H and d_v = value_dim / H."
                elif label == "RetNet state" and g_ == w // L:
                    hint = "\n  hint: every layer has its own state."
                elif label == "KV cache" and g_ == w // 2:
                    hint = "\n  hint: the cache holds a key AND a value per position and layer."
                shown = f"{g_:,}" if float(g_).is_integer() else repr(g_)
                raise ExerciseError(f"{name}: {label}: got {shown}, expected {w:,}\n  on {case}{note}{hint}")
    success(name, n)


# ---------------------------------------------------------------------------------------------
# Exercise 3: the gate, as a log-decay
# ---------------------------------------------------------------------------------------------
def _gate_case(g: torch.Generator) -> dict[str, Any]:
    B, T, d, H = randint(g, 1, 3), randint(g, 1, 9), randint(g, 1, 8), randint(g, 1, 4)
    x = randn(g, B, T, d)
    w = randn(g, d, H) * 10 ** (randint(g, 0, 4) - 1)   # some gates saturate
    b = randn(g, H) * 4
    tau = pick(g, [16.0, 16.0, 1.0, 4.0])
    return dict(x=x, w=w, b=b, tau=tau)


def _gate_reference(x, w, b, tau):
    return gated_log_decay(x @ w + b, tau).transpose(1, 2)


def check_gate_log_decay(gate_log_decay: Callable[..., Tensor], n_cases: int = 25) -> None:
    """Check ``gate_log_decay(x, w, b, tau) -> log_decay``: ``ln gamma = logsigmoid(x w + b) / tau``.

    ``x: (B, T, d)``, ``w: (d, H)``, ``b: (H,)``; returns ``(B, H, T)``, the layout the retention forms
    take. Some cases have gate logits near -1000, where ``log(sigmoid(z))`` is ``-inf`` in float64.
    """
    hints = [
        (lambda x, w, b, tau: (torch.log(torch.sigmoid(x @ w + b)) / tau).transpose(1, 2),
         "log(sigmoid(z)) underflows to -inf for very negative z: use torch.nn.functional.logsigmoid."),
        (lambda x, w, b, tau: F.logsigmoid(x @ w + b).transpose(1, 2),
         "divide by tau: gamma = sigmoid(z)^(1/tau)."),
        (lambda x, w, b, tau: (F.logsigmoid(x @ w + b) * tau).transpose(1, 2),
         "gamma = sigmoid(z)^(1/tau): the log is divided by tau, not multiplied."),
        (lambda x, w, b, tau: (torch.sigmoid(x @ w + b) ** (1 / tau)).transpose(1, 2),
         "return ln(gamma), not gamma."),
    ]
    compare_with_hints(gate_log_decay, _gate_reference, random_cases(_gate_case, n_cases, seed=43),
                       "check_gate_log_decay", hints)


# ---------------------------------------------------------------------------------------------
# Exercise 4: accuracy on the answers only
# ---------------------------------------------------------------------------------------------
def _accuracy_case(g: torch.Generator) -> dict[str, Any]:
    B, T, V = randint(g, 1, 4), randint(g, 2, 12), randint(g, 2, 9)
    targets = torch.randint(0, V, (B, T), generator=g)
    logits = randn(g, B, T, V)
    right = torch.rand(B, T, generator=g) < 0.5          # make about half the predictions right
    logits[right] = logits[right].scatter(-1, targets[right][:, None], 10.0)
    mask = torch.rand(B, T, generator=g) < 0.4
    mask[0, 0] = True
    return dict(logits=logits, targets=targets, loss_mask=mask)


def check_masked_accuracy(accuracy: Callable[..., float], n_cases: int = 25) -> None:
    """Check ``accuracy(logits, targets, loss_mask) -> float``: the fraction of masked positions whose argmax
    is the target (``logits (B, T, V)``, ``targets (B, T)``, ``loss_mask (B, T)`` bool)."""
    name = "check_masked_accuracy"
    require_function(accuracy, name)

    def as_tensor(fn):
        def wrapped(**case):
            out = fn(**case)
            if isinstance(out, Tensor) and out.numel() == 1:
                out = out.reshape(())                   # a one-element tensor will do
            value, dtype = as_number(out, name, f"\n  on {_describe_case(case)}", expected="a float")
            # a 0-dim tensor in the precision it was computed in, for compare's tolerance
            return torch.tensor(value, dtype=dtype if dtype.is_floating_point else torch.float64)
        return wrapped

    hints = [
        (as_tensor(lambda logits, targets, loss_mask: (logits.argmax(-1) == targets).double().mean().item()),
         "only the positions where loss_mask is True count; the others are context, not answers."),
        (as_tensor(lambda logits, targets, loss_mask:
                   ((logits.argmax(-1) == targets) & loss_mask).double().mean().item()),
         "divide by the number of masked positions, not by all B * T positions."),
    ]
    compare_with_hints(as_tensor(accuracy), as_tensor(masked_accuracy), random_cases(_accuracy_case, n_cases, seed=44),
                       name, hints)
