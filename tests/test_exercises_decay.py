"""The checkers of book/decay.ipynb refuse wrong answers with a message that says what is wrong (the notebook's
own solutions pass them: tests/test_exercises_notebooks.py)."""

import contextlib
import io
import math

import pytest
import torch

from retnet_mini import decay_matrix
from retnet_mini.exercises.decay import check_half_life_schedule, check_memory, check_normalized_decay

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


# ------------------------------------------------------------------------------------------ exercise 1
def _half_life(log_decay):
    return math.log(0.5) / log_decay


def test_memory_wrong_answers():
    msg = rejected(check_memory, lambda log_decay, tol: (
        math.log(2) / -torch.expm1(log_decay), torch.floor(math.log(tol) / log_decay) + 1))
    assert "wrong value in half_life" in msg and "ln(gamma) ~ -(1 - gamma)" in msg
    msg = rejected(check_memory, lambda log_decay, tol: (
        _half_life(log_decay), torch.floor(math.log(tol) / log_decay)))
    assert "wrong value in span" in msg and "got" in msg and "expected" in msg and "LAST n" in msg
    msg = rejected(check_memory, lambda log_decay, tol: (
        _half_life(log_decay), torch.round(math.log(tol) / log_decay)))
    assert "not to the nearest" in msg
    msg = rejected(check_memory, lambda log_decay, tol: _half_life(log_decay))
    assert "expected a tuple of 2 tensors (half_life, span)" in msg
    msg = rejected(check_memory, lambda log_decay: (log_decay, log_decay))
    assert "raised TypeError" in msg
    # a loop over heads with Python floats: a list is not a tensor
    msg = rejected(check_memory, lambda log_decay, tol: (
        [math.log(0.5) / x for x in log_decay.tolist()], torch.floor(math.log(tol) / log_decay) + 1))
    assert "should be a torch.Tensor" in msg


def test_memory_accepts_int_spans_and_ceil():
    """Equivalent answers pass: spans as int64, and ceil (equal to floor + 1 off exact ties)."""
    with contextlib.redirect_stdout(io.StringIO()):
        check_memory(lambda log_decay, tol: (
            _half_life(log_decay), (torch.floor(math.log(tol) / log_decay) + 1).long()))
        check_memory(lambda log_decay, tol: (_half_life(log_decay), torch.ceil(math.log(tol) / log_decay)))


# ------------------------------------------------------------------------------------------ exercise 2
def _lives(n_heads, shortest, longest):
    return torch.exp(torch.linspace(math.log(shortest), math.log(longest), n_heads, dtype=torch.float64))


def test_half_life_schedule_wrong_answers():
    msg = rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    math.log(0.5) / torch.linspace(shortest, longest, n_heads, dtype=torch.float64))
    assert "geometrically" in msg
    msg = rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    torch.log1p(-1 / _lives(n_heads, shortest, longest)))
    assert "time constant" in msg
    msg = rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    torch.exp(math.log(0.5) / _lives(n_heads, shortest, longest)))
    assert "return ln(gamma), not gamma" in msg
    msg = rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    (math.log(0.5) / _lives(n_heads, shortest, longest)).flip(0))
    assert "head 0 is the fastest" in msg
    msg = rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    math.log(0.5) / _lives(n_heads + 1, shortest, longest))
    assert "has shape" in msg


# ------------------------------------------------------------------------------------------ exercise 3
def test_normalized_decay_wrong_answers():
    def overflowing(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        gamma = log_decay.exp()[:, None, None]
        D = gamma ** n[:, None] * gamma ** (-n[None, :]) * (n[:, None] >= n[None, :])
        return D / D.sum(-1, keepdim=True).sqrt()

    msg = rejected(check_normalized_decay, overflowing)
    assert "got nan" in msg and "overflowed" in msg and "length 1100" in msg
    msg = rejected(check_normalized_decay, lambda log_decay, length:
                    decay_matrix(log_decay, length) / decay_matrix(log_decay, length).sum(-1, keepdim=True))
    assert "SQUARE ROOT" in msg
    msg = rejected(check_normalized_decay, lambda log_decay, length:
                    decay_matrix(log_decay, length) / decay_matrix(log_decay, length).sum(-2, keepdim=True).sqrt())
    assert "not down a column" in msg
    msg = rejected(check_normalized_decay, decay_matrix)
    assert "that is D itself" in msg

    def unmasked(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        D = torch.exp((n[:, None] - n[None, :]).abs() * log_decay[:, None, None])
        return D / decay_matrix(log_decay, length).sum(-1, keepdim=True).sqrt()

    msg = rejected(check_normalized_decay, unmasked)
    assert "causality" in msg and "wrong value in output at index" in msg
    msg = rejected(check_normalized_decay, lambda log_decay, length: decay_matrix(log_decay, length)[0])
    assert "has shape" in msg
