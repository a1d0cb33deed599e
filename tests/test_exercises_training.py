"""The exercises of book/training.ipynb: the notebook's solutions pass their checkers, and wrong answers
are rejected with a message that says what is wrong."""

import contextlib
import io
import math
from pathlib import Path

import nbformat
import pytest
import torch

from retnet_mini.exercises.training import (
    check_loss_units,
    check_lr_at,
    check_next_char_loss,
    check_unigram_entropy,
)

from exercise_notebooks import (notebook_solution_cells, rejected as _rejected, run_solution, solution_name,
                                stub_functions)

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "training.ipynb"
EXERCISES = ["my_next_char_loss", "my_lr_at", "my_unigram_entropy", "my_loss_units"]


def solution_cells():
    return notebook_solution_cells(NOTEBOOK)


def test_notebook_has_a_solution_per_exercise():
    cells = solution_cells()
    assert len(cells) == len(EXERCISES) >= 3
    assert stub_functions(NOTEBOOK) == EXERCISES
    for source, name in zip(cells, EXERCISES):
        # the solution's own name: running every cell keeps the learner's function
        assert f"def {solution_name(name)}(" in source and f"def {name}(" not in source


def test_notebook_stubs_leave_the_checker_commented_out():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    stubs = [c.source for c in nb.cells if c.cell_type == "code" and "# your code here" in c.source]
    assert len(stubs) == len(EXERCISES)
    for source, name in zip(stubs, EXERCISES):
        assert f"def {name}(" in source and "# check_" in source


@pytest.mark.parametrize("index", range(len(EXERCISES)))
def test_notebook_solution_passes_its_checker(index):
    out, namespace = run_solution(NOTEBOOK, index)
    assert "correct on all 25 random cases" in out
    assert callable(namespace[solution_name(EXERCISES[index])])
    assert EXERCISES[index] not in namespace


# -- exercise 1: the cross-entropy of the next character -----------------------------------------
def _log_probs(logits, targets):
    return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]


def test_next_char_loss_accepts_a_float():
    with contextlib.redirect_stdout(io.StringIO()):
        check_next_char_loss(lambda logits, targets: float(-_log_probs(logits, targets).mean()))


def test_next_char_loss_wrong_answers():
    def naive_softmax(logits, targets):
        p = logits.exp() / logits.exp().sum(-1, keepdim=True)
        return -p.gather(-1, targets[..., None]).log().mean()

    msg = _rejected(check_next_char_loss, naive_softmax)
    assert "not finite" in msg and "logsumexp" in msg and "max |value|" in msg

    msg = _rejected(check_next_char_loss, lambda logits, targets: -_log_probs(logits, targets).sum())
    assert "wrong value" in msg and "average over all B * T positions" in msg

    msg = _rejected(check_next_char_loss, lambda logits, targets: -_log_probs(logits, targets).mean() / math.log(2))
    assert "bits" in msg and "nats" in msg

    assert "NEGATIVE" in _rejected(check_next_char_loss, lambda logits, targets: _log_probs(logits, targets).mean())

    def shifted(logits, targets):
        return -torch.log_softmax(logits[:, :-1], -1).gather(-1, targets[:, 1:, None]).mean()

    assert "already shifted" in _rejected(check_next_char_loss, shifted)

    def per_position(logits, targets):
        return -_log_probs(logits, targets)

    msg = _rejected(check_next_char_loss, per_position)
    assert "has shape" in msg and "expected ()" in msg
    assert "returned None" in _rejected(check_next_char_loss, lambda logits, targets: None)


# -- exercise 2: warm-up then cosine --------------------------------------------------------------
def _lr(step, steps, lr, min_lr, warmup_steps, *, warm_offset=1, last=1, floor=True):
    if step < warmup_steps:
        return lr * (step + warm_offset) / warmup_steps
    progress = (step - warmup_steps) / (steps - warmup_steps - last)
    low = min_lr if floor else 0.0
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


def test_lr_at_wrong_answers():
    msg = _rejected(check_lr_at, lambda **c: _lr(**c, warm_offset=0))
    assert "got 0" in msg and "step 0" in msg and "warmup_steps=" in msg

    assert "exactly min_lr" in _rejected(check_lr_at, lambda **c: _lr(**c, last=0))
    assert "not to 0" in _rejected(check_lr_at, lambda **c: _lr(**c, floor=False))

    def one_based(step, steps, lr, min_lr, warmup_steps):
        return _lr(min(step + 1, steps - 1), steps, lr, min_lr, warmup_steps)

    msg = _rejected(check_lr_at, one_based)
    assert "wrong value" in msg and "step=" in msg

    def constant(step, steps, lr, min_lr, warmup_steps):
        return lr

    assert "wrong value" in _rejected(check_lr_at, constant)
    assert "expected a number" in _rejected(check_lr_at, lambda **c: "0.001")


# -- exercise 3: the unigram entropy --------------------------------------------------------------
def _entropy(ids):
    _, counts = torch.unique(ids, return_counts=True)
    p = counts.double() / len(ids)
    return float(-(p * p.log()).sum())


def test_unigram_entropy_wrong_answers():
    def with_zero_counts(ids):
        p = torch.bincount(ids, minlength=int(ids.max()) + 3).double() / len(ids)
        return float(-(p * p.log()).sum())

    msg = _rejected(check_unigram_entropy, with_zero_counts)
    assert "not finite" in msg and "0 * ln 0" in msg and "ids: shape" in msg

    assert "bits" in _rejected(check_unigram_entropy, lambda ids: _entropy(ids) / math.log(2))
    assert "UNIFORM" in _rejected(check_unigram_entropy, lambda ids: math.log(len(torch.unique(ids))))

    def per_distinct(ids):
        _, counts = torch.unique(ids, return_counts=True)
        return float(-(counts.double() / len(ids)).log().mean())

    assert "not over the distinct ids" in _rejected(check_unigram_entropy, per_distinct)
    msg = _rejected(check_unigram_entropy, lambda ids: torch.tensor([_entropy(ids)]))
    assert "has shape (1,)" in msg


# -- exercise 4: nats, bits, perplexity -----------------------------------------------------------
def test_loss_units_wrong_answers():
    assert "divide by ln 2" in _rejected(check_loss_units, lambda loss: (loss * math.log(2), loss.exp()))
    assert "not 2 ** nats" in _rejected(check_loss_units, lambda loss: (loss / math.log(2), 2 ** loss))
    assert "in that order" in _rejected(check_loss_units, lambda loss: (loss.exp(), loss / math.log(2)))
    assert "expected a tuple of 2" in _rejected(check_loss_units, lambda loss: loss / math.log(2))

    msg = _rejected(check_loss_units, lambda loss: (loss.flatten() / math.log(2), loss.flatten().exp()))
    assert "has shape" in msg

    msg = _rejected(check_loss_units, lambda loss: (loss / math.log(2), loss.exp() + 1e-3))
    assert "wrong value in output[1]" in msg and "at index" in msg
