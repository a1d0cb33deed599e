"""The checkers of book/training.ipynb refuse wrong answers with a message that says what is wrong (the
notebook's own solutions pass them: tests/test_exercises_notebooks.py)."""

import contextlib
import io
import math

import pytest
import torch

from retnet_mini.exercises.training import (
    check_loss_units,
    check_lr_at,
    check_next_char_loss,
    check_unigram_entropy,
)

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


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

    msg = rejected(check_next_char_loss, naive_softmax)
    assert "not finite" in msg and "logsumexp" in msg and "max |value|" in msg

    msg = rejected(check_next_char_loss, lambda logits, targets: -_log_probs(logits, targets).sum())
    assert "wrong value" in msg and "average over all B * T positions" in msg

    msg = rejected(check_next_char_loss, lambda logits, targets: -_log_probs(logits, targets).mean() / math.log(2))
    assert "bits" in msg and "nats" in msg

    assert "NEGATIVE" in rejected(check_next_char_loss, lambda logits, targets: _log_probs(logits, targets).mean())

    def shifted(logits, targets):
        return -torch.log_softmax(logits[:, :-1], -1).gather(-1, targets[:, 1:, None]).mean()

    assert "already shifted" in rejected(check_next_char_loss, shifted)

    def per_position(logits, targets):
        return -_log_probs(logits, targets)

    msg = rejected(check_next_char_loss, per_position)
    assert "has shape" in msg and "expected ()" in msg
    assert "returned None" in rejected(check_next_char_loss, lambda logits, targets: None)


# -- exercise 2: warm-up then cosine --------------------------------------------------------------
def _lr(step, steps, lr, min_lr, warmup_steps, *, warm_offset=1, last=1, floor=True):
    if step < warmup_steps:
        return lr * (step + warm_offset) / warmup_steps
    progress = (step - warmup_steps) / (steps - warmup_steps - last)
    low = min_lr if floor else 0.0
    return low + (lr - low) * 0.5 * (1 + math.cos(math.pi * progress))


def test_lr_at_wrong_answers():
    msg = rejected(check_lr_at, lambda **c: _lr(**c, warm_offset=0))
    assert "got 0" in msg and "step 0" in msg and "warmup_steps=" in msg

    assert "exactly min_lr" in rejected(check_lr_at, lambda **c: _lr(**c, last=0))
    assert "not to 0" in rejected(check_lr_at, lambda **c: _lr(**c, floor=False))

    def one_based(step, steps, lr, min_lr, warmup_steps):
        return _lr(min(step + 1, steps - 1), steps, lr, min_lr, warmup_steps)

    msg = rejected(check_lr_at, one_based)
    assert "wrong value" in msg and "step=" in msg

    def constant(step, steps, lr, min_lr, warmup_steps):
        return lr

    assert "wrong value" in rejected(check_lr_at, constant)
    assert "expected a number" in rejected(check_lr_at, lambda **c: "0.001")


# -- exercise 3: the unigram entropy --------------------------------------------------------------
def _entropy(ids):
    _, counts = torch.unique(ids, return_counts=True)
    p = counts.double() / len(ids)
    return float(-(p * p.log()).sum())


def test_unigram_entropy_wrong_answers():
    def with_zero_counts(ids):
        p = torch.bincount(ids, minlength=int(ids.max()) + 3).double() / len(ids)
        return float(-(p * p.log()).sum())

    msg = rejected(check_unigram_entropy, with_zero_counts)
    assert "not finite" in msg and "0 * ln 0" in msg and "ids: shape" in msg

    assert "bits" in rejected(check_unigram_entropy, lambda ids: _entropy(ids) / math.log(2))
    assert "UNIFORM" in rejected(check_unigram_entropy, lambda ids: math.log(len(torch.unique(ids))))

    def per_distinct(ids):
        _, counts = torch.unique(ids, return_counts=True)
        return float(-(counts.double() / len(ids)).log().mean())

    assert "not over the distinct ids" in rejected(check_unigram_entropy, per_distinct)
    msg = rejected(check_unigram_entropy, lambda ids: torch.tensor([_entropy(ids)]))
    assert "has shape (1,)" in msg


# -- exercise 4: nats, bits, perplexity -----------------------------------------------------------
def test_loss_units_wrong_answers():
    assert "divide by ln 2" in rejected(check_loss_units, lambda loss: (loss * math.log(2), loss.exp()))
    assert "not 2 ** nats" in rejected(check_loss_units, lambda loss: (loss / math.log(2), 2 ** loss))
    assert "in that order" in rejected(check_loss_units, lambda loss: (loss.exp(), loss / math.log(2)))
    assert "expected a tuple of 2" in rejected(check_loss_units, lambda loss: loss / math.log(2))

    msg = rejected(check_loss_units, lambda loss: (loss.flatten() / math.log(2), loss.flatten().exp()))
    assert "has shape" in msg

    msg = rejected(check_loss_units, lambda loss: (loss / math.log(2), loss.exp() + 1e-3))
    assert "wrong value in output[1]" in msg and "at index" in msg
