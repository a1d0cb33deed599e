"""The checkers of book/inference.ipynb refuse wrong answers with a message that says what is wrong (the
notebook's own solutions pass them: tests/test_exercises_notebooks.py)."""

import contextlib
import io
import math

import pytest
import torch

from retnet_mini.exercises.inference import check_decode_throughput, check_flop_crossover, check_greedy_decode

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


# ---------------------------------------------------------------------------------------------
def test_flop_crossover_wrong_answers():
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim, value_head_dim:
                    n_heads * key_head_dim * value_head_dim // d_model)
    assert "got" in msg and "expected" in msg and "strictly more" in msg
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim, value_head_dim:
                    n_heads * key_head_dim * value_head_dim // (2 * d_model) + 1)
    assert "NUMBERS" in msg and "4 n d" in msg
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim, value_head_dim:
                    key_head_dim * value_head_dim // d_model + 1)
    assert "multiply by n_heads" in msg
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim, value_head_dim:
                    n_heads * key_head_dim * value_head_dim / d_model + 0.5)
    assert "whole number" in msg
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim, value_head_dim: None)
    assert "expected a number" in msg
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim: 0)
    assert "raised TypeError" in msg


def test_flop_crossover_ties_are_checked():
    """The paper's shapes tie exactly at n = 2 d_k: rounding up instead of adding one must fail there."""
    msg = rejected(check_flop_crossover, lambda d_model, n_heads, key_head_dim, value_head_dim:
                    math.ceil(n_heads * key_head_dim * value_head_dim / d_model))
    assert "EQUAL" in msg


# ---------------------------------------------------------------------------------------------
def _greedy(model, prompt, max_new_tokens, *, forget_state=False, first_position=False, feed_last=False):
    logits, state = model(prompt, mode="chunkwise")
    out = [prompt]
    for i in range(max_new_tokens):
        nxt = logits[:, 0 if first_position else -1].argmax(-1, keepdim=True)
        out.append(nxt)
        if i + 1 < max_new_tokens or feed_last:
            logits, new_state = model(nxt, mode="recurrent", state=state)
            state = state if forget_state else new_state
    return torch.cat(out, dim=1)


def test_greedy_decode_accepts_feeding_the_last_token_too():
    with contextlib.redirect_stdout(io.StringIO()):
        check_greedy_decode(lambda model, prompt, max_new_tokens: _greedy(model, prompt, max_new_tokens,
                                                                           feed_last=True))


def test_greedy_decode_wrong_answers():
    msg = rejected(check_greedy_decode, lambda model, prompt, max_new_tokens:
                    _greedy(model, prompt, max_new_tokens, forget_state=True))
    assert "new token" in msg and "expected" in msg and "state=state" in msg
    msg = rejected(check_greedy_decode, lambda model, prompt, max_new_tokens:
                    _greedy(model, prompt, max_new_tokens, first_position=True))
    assert "new token 0" in msg and "LAST position" in msg

    def rereads(model, prompt, max_new_tokens):              # right tokens, but O(T) work per token
        seq = prompt
        for _ in range(max_new_tokens):
            logits, _ = model(seq, mode="parallel")
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return seq
    msg = rejected(check_greedy_decode, rereads)
    assert "tokens are right" in msg and "token positions" in msg

    msg = rejected(check_greedy_decode, lambda model, prompt, max_new_tokens:
                    model.generate(prompt, max_new_tokens, temperature=0))
    assert "never called the model" in msg
    msg = rejected(check_greedy_decode, lambda model, prompt, max_new_tokens:
                    _greedy(model, prompt, max_new_tokens)[:, prompt.shape[1]:])
    assert "has shape" in msg
    msg = rejected(check_greedy_decode, lambda model, prompt, max_new_tokens:
                    _greedy(model, prompt, max_new_tokens).double())
    assert "integer token ids" in msg
    msg = rejected(check_greedy_decode, lambda model, prompt, max_new_tokens: "tokens")
    assert "expected a tensor" in msg
    msg = rejected(check_greedy_decode, lambda model, prompt: None)
    assert "raised TypeError" in msg


# ---------------------------------------------------------------------------------------------
def _loop_throughput(batch, prompt_len, new_tokens, fixed_s, per_token_s, shift=0):
    seconds = sum(fixed_s + per_token_s * (prompt_len + i + shift) for i in range(new_tokens))
    return batch * new_tokens / seconds


def test_decode_throughput_accepts_a_loop():
    with contextlib.redirect_stdout(io.StringIO()):
        check_decode_throughput(_loop_throughput)


def test_decode_throughput_wrong_answers():
    msg = rejected(check_decode_throughput, lambda batch, prompt_len, new_tokens, fixed_s, per_token_s:
                    _loop_throughput(1, prompt_len, new_tokens, fixed_s, per_token_s))
    assert "multiply by batch" in msg
    msg = rejected(check_decode_throughput, lambda batch, prompt_len, new_tokens, fixed_s, per_token_s:
                    1 / _loop_throughput(batch, prompt_len, new_tokens, fixed_s, per_token_s))
    assert "seconds per token" in msg
    msg = rejected(check_decode_throughput, lambda batch, prompt_len, new_tokens, fixed_s, per_token_s:
                    batch / (fixed_s + per_token_s * prompt_len))
    assert "grows by one token" in msg
    msg = rejected(check_decode_throughput, lambda batch, prompt_len, new_tokens, fixed_s, per_token_s:
                    _loop_throughput(batch, prompt_len, new_tokens, fixed_s, per_token_s, shift=1))
    assert "the first step sees the prompt only" in msg
    msg = rejected(check_decode_throughput, lambda batch, prompt_len, new_tokens, fixed_s, per_token_s: [1.0])
    assert "expected a number" in msg
