"""The checkers of book/intro.ipynb refuse wrong answers with a message that says what is wrong (the notebook's
own solutions pass them: tests/test_exercises_notebooks.py)."""

import math

import pytest

from retnet_mini.exercises.intro import check_kv_cache_bytes, check_max_batch, check_state_bytes

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


def test_kv_cache_wrong_answers():
    msg = rejected(check_kv_cache_bytes, lambda n_layers, d_model, context_len, bytes_per_number:
                    n_layers * d_model * context_len * bytes_per_number)
    assert "got" in msg and "expected" in msg and "key AND a value" in msg
    msg = rejected(check_kv_cache_bytes, lambda n_layers, d_model, context_len, bytes_per_number:
                    2 * n_layers * d_model * context_len)
    assert "bytes_per_number" in msg
    msg = rejected(check_kv_cache_bytes, lambda **kw: None)
    assert "expected a number" in msg
    msg = rejected(check_kv_cache_bytes, lambda n_layers, d_model, context_len: 0)
    assert "raised TypeError" in msg


def test_state_wrong_answers():
    msg = rejected(check_state_bytes, lambda n_layers, n_heads, key_head_dim, value_head_dim, bytes_per_number:
                    n_layers * n_heads * key_head_dim**2 * bytes_per_number)
    assert "key_head_dim x value_head_dim" in msg
    msg = rejected(check_state_bytes, lambda n_layers, n_heads, key_head_dim, value_head_dim, bytes_per_number:
                    n_heads * key_head_dim * value_head_dim * bytes_per_number)
    assert "n_layers" in msg


def test_max_batch_wrong_answers():
    msg = rejected(check_max_batch, lambda memory_bytes, weight_bytes, per_sequence_bytes:
                    (memory_bytes - weight_bytes) // per_sequence_bytes)
    assert "return 0" in msg
    msg = rejected(check_max_batch, lambda memory_bytes, weight_bytes, per_sequence_bytes:
                    math.ceil((memory_bytes - weight_bytes) / per_sequence_bytes) if weight_bytes < memory_bytes else 0)
    assert "round down" in msg
    msg = rejected(check_max_batch, lambda memory_bytes, weight_bytes, per_sequence_bytes:
                    max(0, (memory_bytes - weight_bytes) / per_sequence_bytes))
    assert "whole number" in msg
