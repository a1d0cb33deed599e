"""Checkers for the exercises of "Why RetNet?" (book/intro.ipynb): decoding-memory arithmetic.

- :func:`check_kv_cache_bytes`: bytes of one sequence's KV cache.
- :func:`check_state_bytes`: bytes of one sequence's RetNet state.
- :func:`check_max_batch`: how many sequences fit in a GPU's memory next to the weights.

Each checker calls the reader's function on random model shapes and compares it with
:mod:`retnet_mini.costs`; on a mismatch it raises :class:`ExerciseError` with the case, the answer, the
expected value and, when the answer matches a known mistake, a hint.
"""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable

import torch

from ..costs import kv_cache_numbers, max_batch_size, retnet_state_numbers
from . import compare_numbers, describe_numbers, pick, randint, random_cases

__all__ = ["check_kv_cache_bytes", "check_state_bytes", "check_max_batch"]


# ---------------------------------------------------------------------------------------------
# Exercise 1: the KV cache of one sequence
# ---------------------------------------------------------------------------------------------
def _cache_case(g: torch.Generator) -> dict[str, Any]:
    return dict(n_layers=randint(g, 1, 48), d_model=64 * randint(g, 1, 128),
                context_len=randint(g, 1, 40_000), bytes_per_number=pick(g, [1, 2, 4]))


def _cache_reference(n_layers, d_model, context_len, bytes_per_number):
    return kv_cache_numbers(n_layers, d_model, context_len) * bytes_per_number


def check_kv_cache_bytes(kv_cache_bytes: Callable[..., Any], n_cases: int = 25) -> str:
    """Check ``kv_cache_bytes(n_layers, d_model, context_len, bytes_per_number) -> bytes``."""
    hints = [
        (lambda **c: _cache_reference(**c) // 2, "each layer caches a key AND a value for every token."),
        (lambda **c: kv_cache_numbers(c["n_layers"], c["d_model"], c["context_len"]),
         "that is the number of numbers: multiply by bytes_per_number."),
        (lambda **c: 2 * c["d_model"] * c["context_len"] * c["bytes_per_number"],
         "every layer keeps its own cache: multiply by n_layers."),
    ]
    cases = random_cases(_cache_case, n_cases, seed=11)
    return compare_numbers(kv_cache_bytes, _cache_reference, cases, "check_kv_cache_bytes", hints, integer=True,
                           describe=describe_numbers)


# ---------------------------------------------------------------------------------------------
# Exercise 2: the RetNet state of one sequence
# ---------------------------------------------------------------------------------------------
def _state_case(g: torch.Generator) -> dict[str, Any]:
    key_head_dim = pick(g, [32, 64, 128, 256])
    return dict(n_layers=randint(g, 1, 48), n_heads=randint(g, 1, 32), key_head_dim=key_head_dim,
                value_head_dim=key_head_dim * pick(g, [1, 2, 2, 2]) + pick(g, [0, 0, 16]),
                bytes_per_number=pick(g, [1, 2, 4]))


def _state_reference(n_layers, n_heads, key_head_dim, value_head_dim, bytes_per_number):
    return retnet_state_numbers(n_layers, n_heads, key_head_dim, value_head_dim) * bytes_per_number


def check_state_bytes(state_bytes: Callable[..., Any], n_cases: int = 25) -> str:
    """Check ``state_bytes(n_layers, n_heads, key_head_dim, value_head_dim, bytes_per_number) -> bytes``."""
    hints = [
        (lambda **c: c["n_layers"] * c["n_heads"] * c["key_head_dim"] ** 2 * c["bytes_per_number"],
         "the state of a head is key_head_dim x value_head_dim (values may be wider than keys)."),
        (lambda **c: retnet_state_numbers(c["n_layers"], c["n_heads"], c["key_head_dim"], c["value_head_dim"]),
         "that is the number of numbers: multiply by bytes_per_number."),
        (lambda **c: c["n_heads"] * c["key_head_dim"] * c["value_head_dim"] * c["bytes_per_number"],
         "every layer keeps its own state: multiply by n_layers."),
        (lambda **c: c["n_layers"] * c["key_head_dim"] * c["value_head_dim"] * c["bytes_per_number"],
         "every head keeps its own state: multiply by n_heads."),
    ]
    cases = random_cases(_state_case, n_cases, seed=12)
    return compare_numbers(state_bytes, _state_reference, cases, "check_state_bytes", hints, integer=True,
                           describe=describe_numbers)


# ---------------------------------------------------------------------------------------------
# Exercise 3: how many sequences fit
# ---------------------------------------------------------------------------------------------
def _batch_case(g: torch.Generator) -> dict[str, Any]:
    gib = 2**30
    memory = pick(g, [16, 24, 40, 48, 80, 141]) * gib
    kind = randint(g, 0, 4)
    if kind == 0:                                    # the weights alone do not fit
        weights = memory + randint(g, 0, 8) * gib
    else:
        weights = randint(g, 1, 90) * memory // 100
    per_sequence = randint(g, 1, 64) * 2**24          # 16 MiB ... 1 GiB
    if kind == 1:                                    # an exact fit: W + b * P == M
        per_sequence = max(1, (memory - weights) // randint(g, 1, 9))
        weights = memory - per_sequence * ((memory - weights) // per_sequence)
    return dict(memory_bytes=memory, weight_bytes=weights, per_sequence_bytes=per_sequence)


def check_max_batch(max_batch: Callable[..., Any], n_cases: int = 25) -> str:
    """Check ``max_batch(memory_bytes, weight_bytes, per_sequence_bytes) -> int`` (0 when nothing fits)."""
    hints = [
        (lambda **c: math.ceil((c["memory_bytes"] - c["weight_bytes"]) / c["per_sequence_bytes"])
         if c["weight_bytes"] < c["memory_bytes"] else 0,
         "round down: only whole sequences fit (math.floor, or //)."),
        (lambda **c: c["memory_bytes"] // c["per_sequence_bytes"], "the weights take their share of the memory first."),
        (lambda **c: (c["memory_bytes"] - c["weight_bytes"]) // c["per_sequence_bytes"],
         "when the weights alone do not fit, no sequence fits: return 0, not a negative number."),
    ]
    cases = random_cases(_batch_case, n_cases, seed=13)
    return compare_numbers(max_batch, max_batch_size, cases, "check_max_batch", hints, integer=True,
                           describe=describe_numbers)
