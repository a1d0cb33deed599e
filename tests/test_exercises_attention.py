"""The checkers of book/attention_to_recurrence.ipynb refuse wrong answers with a message that says what is
wrong (the notebook's own solutions pass them: tests/test_exercises_notebooks.py)."""

import math

import pytest
import torch

from retnet_mini.exercises.attention import (
    check_causal_mask,
    check_kv_decode_step,
    check_linear_attention_cumsum,
    check_linear_attention_step,
)

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


# -- exercise 1: the causal mask ------------------------------------------------------------------
def test_causal_mask_wrong_answers():
    def strict(length):
        pos = torch.arange(length)
        return pos[:, None] > pos[None, :]

    msg = rejected(check_causal_mask, strict)
    assert "wrong value" in msg and "length=" in msg and "the diagonal included" in msg

    def upper(length):
        pos = torch.arange(length)
        return pos[:, None] <= pos[None, :]

    assert "lower triangle" in rejected(check_causal_mask, upper)

    def float_mask(length):
        return torch.ones(length, length).tril()

    assert "torch.bool" in rejected(check_causal_mask, float_mask)
    assert "returned None" in rejected(check_causal_mask, lambda length: None)

    def wrong_shape(length):
        return torch.ones(length, length + 1, dtype=torch.bool).tril()

    assert "has shape" in rejected(check_causal_mask, wrong_shape)


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

    msg = rejected(check_kv_decode_step, attend_first)
    assert "append k and v to the caches first" in msg

    def unscaled(q, k, v, cache_k, cache_v):
        cache_k, cache_v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        return _attend(q, cache_k, cache_v, scale=False), cache_k, cache_v

    assert "1 / sqrt(d_k)" in rejected(check_kv_decode_step, unscaled)

    def forgets_to_return_the_cache(q, k, v, cache_k, cache_v):
        cache_k, cache_v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        return _attend(q, cache_k, cache_v)

    assert "expected a tuple of 3 tensors" in rejected(check_kv_decode_step, forgets_to_return_the_cache)

    def old_cache_returned(q, k, v, cache_k, cache_v):
        new_k, new_v = torch.cat([cache_k, k], dim=2), torch.cat([cache_v, v], dim=2)
        return _attend(q, new_k, new_v), cache_k, cache_v

    msg = rejected(check_kv_decode_step, old_cache_returned)
    assert "output[1] has shape" in msg and "cache_k: shape" in msg


# -- exercise 3: one step of the running state ----------------------------------------------------
def test_linear_attention_step_wrong_answers():
    def read_first(q, k, v, state):
        o = (q[..., None, :] @ state)[..., 0, :]
        return o, state + k[..., :, None] * v[..., None, :]

    msg = rejected(check_linear_attention_step, read_first)
    assert "wrong value in output[0]" in msg and "update the state first" in msg

    def transposed_state(q, k, v, state):
        state = state + v[..., :, None] * k[..., None, :]
        return (q[..., None, :] @ state)[..., 0, :], state

    msg = rejected(check_linear_attention_step, transposed_state)
    assert "raised RuntimeError" in msg or "has shape" in msg

    def state_not_returned(q, k, v, state):
        new = state + k[..., :, None] * v[..., None, :]
        return (q[..., None, :] @ new)[..., 0, :], state

    assert "wrong value in output[1]" in rejected(check_linear_attention_step, state_not_returned)


# -- exercise 4: linear attention with a prefix sum -----------------------------------------------
def test_linear_attention_cumsum_wrong_answers():
    def exclusive(q, k, v):
        outer = k[..., :, None] * v[..., None, :]
        return torch.einsum("bhnk,bhnkv->bhnv", q, torch.cumsum(outer, dim=2) - outer)

    assert "inclusive cumulative sum" in rejected(check_linear_attention_cumsum, exclusive)

    def not_causal(q, k, v):
        return q @ (k.transpose(-1, -2) @ v)

    assert "m <= n only" in rejected(check_linear_attention_cumsum, not_causal)

    def softmax_attention(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    msg = rejected(check_linear_attention_cumsum, softmax_attention)
    assert "wrong value" in msg and "at index" in msg
