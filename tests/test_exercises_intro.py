"""The exercises of book/intro.ipynb: the notebook's solutions pass their checkers, wrong answers do not."""

import math
from pathlib import Path

import pytest

from retnet_mini.exercises.intro import check_kv_cache_bytes, check_max_batch, check_state_bytes

from exercise_notebooks import (notebook_solution_cells, rejected as _rejected, run_solution, solution_name,
                                stub_functions)

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "intro.ipynb"


def solution_cells():
    return notebook_solution_cells(NOTEBOOK)


def test_notebook_has_three_solutions():
    assert len(solution_cells()) == 3


@pytest.mark.parametrize("index", range(3))
def test_notebook_solution_passes_its_checker(index):
    out, namespace = run_solution(NOTEBOOK, index)
    assert "correct on all 25 random cases" in out
    stub = stub_functions(NOTEBOOK)[index]
    # the solution's own name: running every cell keeps the learner's function
    assert callable(namespace[solution_name(stub)]) and stub not in namespace


def test_kv_cache_wrong_answers():
    msg = _rejected(check_kv_cache_bytes, lambda n_layers, d_model, context_len, bytes_per_number:
                    n_layers * d_model * context_len * bytes_per_number)
    assert "got" in msg and "expected" in msg and "key AND a value" in msg
    msg = _rejected(check_kv_cache_bytes, lambda n_layers, d_model, context_len, bytes_per_number:
                    2 * n_layers * d_model * context_len)
    assert "bytes_per_number" in msg
    msg = _rejected(check_kv_cache_bytes, lambda **kw: None)
    assert "expected a number" in msg
    msg = _rejected(check_kv_cache_bytes, lambda n_layers, d_model, context_len: 0)
    assert "raised TypeError" in msg


def test_state_wrong_answers():
    msg = _rejected(check_state_bytes, lambda n_layers, n_heads, key_head_dim, value_head_dim, bytes_per_number:
                    n_layers * n_heads * key_head_dim**2 * bytes_per_number)
    assert "key_head_dim x value_head_dim" in msg
    msg = _rejected(check_state_bytes, lambda n_layers, n_heads, key_head_dim, value_head_dim, bytes_per_number:
                    n_heads * key_head_dim * value_head_dim * bytes_per_number)
    assert "n_layers" in msg


def test_max_batch_wrong_answers():
    msg = _rejected(check_max_batch, lambda memory_bytes, weight_bytes, per_sequence_bytes:
                    (memory_bytes - weight_bytes) // per_sequence_bytes)
    assert "return 0" in msg
    msg = _rejected(check_max_batch, lambda memory_bytes, weight_bytes, per_sequence_bytes:
                    math.ceil((memory_bytes - weight_bytes) / per_sequence_bytes) if weight_bytes < memory_bytes else 0)
    assert "round down" in msg
    msg = _rejected(check_max_batch, lambda memory_bytes, weight_bytes, per_sequence_bytes:
                    max(0, (memory_bytes - weight_bytes) / per_sequence_bytes))
    assert "whole number" in msg
