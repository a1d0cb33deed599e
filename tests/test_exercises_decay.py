"""The exercises of book/decay.ipynb: the notebook's solutions pass their checkers, wrong answers do not."""

import contextlib
import io
import math
from pathlib import Path

import nbformat
import pytest
import torch

from retnet_mini import decay_matrix
from retnet_mini.exercises.decay import check_half_life_schedule, check_memory, check_normalized_decay

from exercise_notebooks import (notebook_solution_cells, rejected as _rejected, run_solution, solution_name,
                                stub_functions)

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "decay.ipynb"
CHECKERS = ["check_memory", "check_half_life_schedule", "check_normalized_decay"]


def solution_cells():
    return notebook_solution_cells(NOTEBOOK)


def test_notebook_has_three_hidden_solutions():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    solutions = [c for c in nb.cells if "solution" in c.metadata.get("tags", [])]
    assert len(solutions) == 3
    assert all("hide-input" in c.metadata["tags"] for c in solutions)


@pytest.mark.parametrize("index", range(3))
def test_notebook_solution_passes_its_checker(index):
    out, namespace = run_solution(NOTEBOOK, index)
    assert f"{CHECKERS[index]}: correct on all 25 random cases." in out
    stub = stub_functions(NOTEBOOK)[index]
    # the solution's own name: running every cell keeps the learner's function
    assert callable(namespace[solution_name(stub)]) and stub not in namespace


def test_stubs_leave_the_checker_commented_out():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    for name in CHECKERS:
        stub = [s for s in code if f"# {name}(my_" in s]
        assert len(stub) == 1 and "# your code here" in stub[0], name


# ------------------------------------------------------------------------------------------ exercise 1
def _half_life(log_decay):
    return math.log(0.5) / log_decay


def test_memory_wrong_answers():
    msg = _rejected(check_memory, lambda log_decay, tol: (
        math.log(2) / -torch.expm1(log_decay), torch.floor(math.log(tol) / log_decay) + 1))
    assert "wrong value in half_life" in msg and "ln(gamma) ~ -(1 - gamma)" in msg
    msg = _rejected(check_memory, lambda log_decay, tol: (
        _half_life(log_decay), torch.floor(math.log(tol) / log_decay)))
    assert "wrong value in span" in msg and "got" in msg and "expected" in msg and "LAST n" in msg
    msg = _rejected(check_memory, lambda log_decay, tol: (
        _half_life(log_decay), torch.round(math.log(tol) / log_decay)))
    assert "not to the nearest" in msg
    msg = _rejected(check_memory, lambda log_decay, tol: _half_life(log_decay))
    assert "expected a tuple of 2 tensors (half_life, span)" in msg
    msg = _rejected(check_memory, lambda log_decay: (log_decay, log_decay))
    assert "raised TypeError" in msg
    # a loop over heads with Python floats: a list is not a tensor
    msg = _rejected(check_memory, lambda log_decay, tol: (
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
    msg = _rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    math.log(0.5) / torch.linspace(shortest, longest, n_heads, dtype=torch.float64))
    assert "geometrically" in msg
    msg = _rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    torch.log1p(-1 / _lives(n_heads, shortest, longest)))
    assert "time constant" in msg
    msg = _rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    torch.exp(math.log(0.5) / _lives(n_heads, shortest, longest)))
    assert "return ln(gamma), not gamma" in msg
    msg = _rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    (math.log(0.5) / _lives(n_heads, shortest, longest)).flip(0))
    assert "head 0 is the fastest" in msg
    msg = _rejected(check_half_life_schedule, lambda n_heads, shortest, longest:
                    math.log(0.5) / _lives(n_heads + 1, shortest, longest))
    assert "has shape" in msg


# ------------------------------------------------------------------------------------------ exercise 3
def test_normalized_decay_wrong_answers():
    def overflowing(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        gamma = log_decay.exp()[:, None, None]
        D = gamma ** n[:, None] * gamma ** (-n[None, :]) * (n[:, None] >= n[None, :])
        return D / D.sum(-1, keepdim=True).sqrt()

    msg = _rejected(check_normalized_decay, overflowing)
    assert "got nan" in msg and "overflowed" in msg and "length 1100" in msg
    msg = _rejected(check_normalized_decay, lambda log_decay, length:
                    decay_matrix(log_decay, length) / decay_matrix(log_decay, length).sum(-1, keepdim=True))
    assert "SQUARE ROOT" in msg
    msg = _rejected(check_normalized_decay, lambda log_decay, length:
                    decay_matrix(log_decay, length) / decay_matrix(log_decay, length).sum(-2, keepdim=True).sqrt())
    assert "not down a column" in msg
    msg = _rejected(check_normalized_decay, decay_matrix)
    assert "that is D itself" in msg

    def unmasked(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        D = torch.exp((n[:, None] - n[None, :]).abs() * log_decay[:, None, None])
        return D / decay_matrix(log_decay, length).sum(-1, keepdim=True).sqrt()

    msg = _rejected(check_normalized_decay, unmasked)
    assert "causality" in msg and "wrong value in output at index" in msg
    msg = _rejected(check_normalized_decay, lambda log_decay, length: decay_matrix(log_decay, length)[0])
    assert "has shape" in msg
