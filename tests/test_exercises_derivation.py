"""The checkers of book/recurrence_to_retention.ipynb refuse wrong answers with a message that says what is
wrong (the notebook's own solutions pass them: tests/test_exercises_notebooks.py)."""

import pytest
import torch

from retnet_mini import decay_matrix
from retnet_mini.exercises.derivation import check_decay_matrix, check_retention, check_rotate, check_ssm_kernel
from retnet_mini.rotation import rotate

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


# -- exercise 1: the convolution kernel -----------------------------------------------------------
def _kernel(A, q, k, length, start=0):
    out, column = [], torch.linalg.matrix_power(A, start) @ k
    for _ in range(length):
        out.append(q @ column)
        column = A @ column
    return torch.stack(out)


def test_ssm_kernel_wrong_answers():
    msg = rejected(check_ssm_kernel, lambda A, q, k, length: _kernel(A, q, k, length, start=1))
    assert "wrong value" in msg and "A^0 = I" in msg
    msg = rejected(check_ssm_kernel, lambda A, q, k, length: _kernel(A.T, q, k, length))
    assert "not by its transpose" in msg
    msg = rejected(check_ssm_kernel, lambda A, q, k, length: _kernel(A, q, k, length + 1))
    assert "has shape" in msg and "length=" in msg


# -- exercise 2: rotate pairs ---------------------------------------------------------------------
def test_rotate_wrong_answers():
    assert "offset + t" in rejected(check_rotate, lambda x, theta, offset: rotate(x, theta))
    assert "rotate by +n theta" in rejected(check_rotate, lambda x, theta, offset: rotate(x, -theta, offset))

    def halves(x, theta, offset):     # GPT-NeoX-style pairs (x_i, x_{i + d/2})
        n = torch.arange(offset, offset + x.shape[-2], dtype=x.dtype)
        angle = n[:, None] * theta[None, :]
        first, second = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
        return torch.cat((first * angle.cos() - second * angle.sin(), first * angle.sin() + second * angle.cos()), -1)

    assert "adjacent coordinates" in rejected(check_rotate, halves)
    msg = rejected(check_rotate, lambda x, theta, offset: x)
    assert "wrong value" in msg and "offset=" in msg


# -- exercise 3: the decay matrix -----------------------------------------------------------------
def test_decay_matrix_wrong_answers():
    def split(log_decay, length):          # gamma^n * gamma^-m, then masked: overflows
        n = torch.arange(length, dtype=log_decay.dtype)
        gamma = torch.exp(log_decay)[:, None, None]
        return gamma ** n[:, None] * gamma ** (-n[None, :]) * (n[:, None] >= n[None, :])

    msg = rejected(check_decay_matrix, split)
    assert "got nan" in msg and "length=1100" in msg and "overflow" in msg

    def split_where(log_decay, length):    # the split, masked with where: still inf below the diagonal
        n = torch.arange(length, dtype=log_decay.dtype)
        gamma = torch.exp(log_decay)[:, None, None]
        full = gamma ** n[:, None] * gamma ** (-n[None, :])
        return torch.where(n[:, None] >= n[None, :], full, torch.zeros((), dtype=full.dtype))

    assert "overflow" in rejected(check_decay_matrix, split_where)

    def no_mask(log_decay, length):
        n = torch.arange(length, dtype=log_decay.dtype)
        return torch.exp((n[:, None] - n[None, :]).abs() * log_decay[:, None, None])

    assert "0 above the diagonal" in rejected(check_decay_matrix, no_mask)
    msg = rejected(check_decay_matrix, lambda log_decay, length: decay_matrix(log_decay, length).transpose(-1, -2))
    assert "lower triangle" in msg
    msg = rejected(check_decay_matrix, lambda log_decay, length: decay_matrix(log_decay, length)[0])
    assert "has shape" in msg


# -- exercise 4: retention from the input ---------------------------------------------------------
def _retention(x, w_q, w_k, w_v, theta, log_decay, rotate_k=True, scale=1.0):
    q = rotate(x @ w_q, theta)
    k = rotate(x @ w_k, theta) if rotate_k else x @ w_k
    D = decay_matrix(torch.tensor([log_decay], dtype=x.dtype), x.shape[1])[0]
    return ((q @ k.transpose(-1, -2)) * D) @ (x @ w_v) * scale


def test_retention_wrong_answers():
    msg = rejected(check_retention, lambda x, w_q, w_k, w_v, theta, log_decay:
                    _retention(x, w_q, w_k, w_v, 0 * theta, log_decay))
    assert "rotate q and k" in msg
    msg = rejected(check_retention, lambda x, w_q, w_k, w_v, theta, log_decay:
                    _retention(x, w_q, w_k, w_v, theta, log_decay, scale=w_q.shape[1] ** -0.5))
    assert "no scaling" in msg
    msg = rejected(check_retention, lambda x, w_q, w_k, w_v, theta, log_decay:
                    _retention(x, w_q, w_k, w_v, theta, 0.0))
    assert "decay matrix D" in msg
    msg = rejected(check_retention, lambda x, w_q, w_k, w_v, theta, log_decay:
                    _retention(x, w_q, w_k, w_v, theta, log_decay, rotate_k=False))
    assert "wrong value" in msg and "theta: shape" in msg
