"""The exercises of book/attention_to_recurrence.ipynb: the notebook's solutions pass their checkers,
and wrong answers are rejected with a message that says what is wrong."""

import math
from pathlib import Path

import pytest
import torch

from retnet_mini.exercises.attention import (
    check_causal_mask,
    check_kv_decode_step,
    check_linear_attention_cumsum,
    check_linear_attention_step,
)

from exercise_notebooks import (notebook_solution_cells, rejected as _rejected, run_solution, solution_name,
                                stub_functions)

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "attention_to_recurrence.ipynb"
EXERCISES = ["my_causal_mask", "my_kv_decode_step", "my_linear_attention_step", "my_linear_attention_cumsum"]


def solution_cells():
    return notebook_solution_cells(NOTEBOOK)


def test_notebook_has_a_solution_per_exercise():
    cells = solution_cells()
    assert len(cells) == len(EXERCISES) >= 3
    assert stub_functions(NOTEBOOK) == EXERCISES
    for source, name in zip(cells, EXERCISES):
        # the solution's own name: running every cell keeps the learner's function
        assert f"def {solution_name(name)}(" in source and f"def {name}(" not in source


@pytest.mark.parametrize("index", range(len(EXERCISES)))
def test_notebook_solution_passes_its_checker(index):
    out, namespace = run_solution(NOTEBOOK, index)
    assert "correct on all 25 random cases" in out
    assert callable(namespace[solution_name(EXERCISES[index])])
    assert EXERCISES[index] not in namespace


# -- exercise 1: the causal mask ------------------------------------------------------------------
def test_causal_mask_wrong_answers():
    def strict(length):
        pos = torch.arange(length)
        return pos[:, None] > pos[None, :]

    msg = _rejected(check_causal_mask, strict)
    assert "wrong value" in msg and "length=" in msg and "the diagonal included" in msg

    def upper(length):
        pos = torch.arange(length)
        return pos[:, None] <= pos[None, :]

    assert "lower triangle" in _rejected(check_causal_mask, upper)

    def float_mask(length):
        return torch.ones(length, length).tril()

    assert "torch.bool" in _rejected(check_causal_mask, float_mask)
    assert "returned None" in _rejected(check_causal_mask, lambda length: None)

    def wrong_shape(length):
        return torch.ones(length, length + 1, dtype=torch.bool).tril()

    assert "has shape" in _rejected(check_causal_mask, wrong_shape)


# -- exercise 2: one KV-cache decoding step -------------------------------------------------------
def _attend(q, cache_k, cache_v, scale=True):
    scores = q @ cache_k.transpose(-1, -2)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ cache_v


def test_kv_decode_step_wrong_answers():
    def attend_first(q, k, v, cache_k, cache_v):
        o = _attend(q, cache_k, cache_v)
        return o, torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)

    msg = _rejected(check_kv_decode_step, attend_first)
    assert "append k and v to the caches first" in msg

    def unscaled(q, k, v, cache_k, cache_v):
        cache_k, cache_v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        return _attend(q, cache_k, cache_v, scale=False), cache_k, cache_v

    assert "1 / sqrt(d_k)" in _rejected(check_kv_decode_step, unscaled)

    def forgets_to_return_the_cache(q, k, v, cache_k, cache_v):
        cache_k, cache_v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        return _attend(q, cache_k, cache_v)

    assert "expected a tuple of 3 tensors" in _rejected(check_kv_decode_step, forgets_to_return_the_cache)

    def old_cache_returned(q, k, v, cache_k, cache_v):
        new_k, new_v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        return _attend(q, new_k, new_v), cache_k, cache_v

    msg = _rejected(check_kv_decode_step, old_cache_returned)
    assert "output[1] has shape" in msg and "cache_k: shape" in msg


# -- exercise 3: one step of the running state ----------------------------------------------------
def test_linear_attention_step_wrong_answers():
    def read_first(q, k, v, state):
        o = (q[..., None, :] @ state)[..., 0, :]
        return o, state + k[..., :, None] * v[..., None, :]

    msg = _rejected(check_linear_attention_step, read_first)
    assert "wrong value in output[0]" in msg and "update the state first" in msg

    def transposed_state(q, k, v, state):
        state = state + v[..., :, None] * k[..., None, :]
        return (q[..., None, :] @ state)[..., 0, :], state

    msg = _rejected(check_linear_attention_step, transposed_state)
    assert "raised RuntimeError" in msg or "has shape" in msg

    def state_not_returned(q, k, v, state):
        new = state + k[..., :, None] * v[..., None, :]
        return (q[..., None, :] @ new)[..., 0, :], state

    assert "wrong value in output[1]" in _rejected(check_linear_attention_step, state_not_returned)


# -- exercise 4: linear attention with a prefix sum -----------------------------------------------
def test_linear_attention_cumsum_wrong_answers():
    def exclusive(q, k, v):
        outer = k[..., :, None] * v[..., None, :]
        return torch.einsum("bhnk,bhnkv->bhnv", q, torch.cumsum(outer, dim=2) - outer)

    assert "inclusive cumulative sum" in _rejected(check_linear_attention_cumsum, exclusive)

    def not_causal(q, k, v):
        return q @ (k.transpose(-1, -2) @ v)

    assert "m <= n only" in _rejected(check_linear_attention_cumsum, not_causal)

    def softmax_attention(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    msg = _rejected(check_linear_attention_cumsum, softmax_attention)
    assert "wrong value" in msg and "at index" in msg
