"""The checkers of book/three_forms.ipynb refuse wrong answers with a message that says what is wrong (the
notebook's own solutions pass them: tests/test_exercises_notebooks.py)."""

import pytest
import torch

from retnet_mini import chunkwise_retention, decay_matrix, parallel_retention
from retnet_mini.exercises.forms import (check_chunkwise, check_padded_decay, check_recurrent_step,
                                         padded_decay_reference)

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


# ---------------------------------------------------------------------------------------------
# Exercise 1: one recurrent step
# ---------------------------------------------------------------------------------------------
def _step(q_n, k_n, v_n, log_decay, state, decay=True, read_after=True):
    gamma = log_decay.exp()[:, None, None] if decay else 1.0
    new_state = gamma * state + k_n[..., :, None] * v_n[..., None, :]
    read = new_state if read_after else state
    return (q_n[..., None, :] @ read)[..., 0, :], new_state


def test_recurrent_step_accepts_a_right_answer():
    check_recurrent_step(_step)


def test_recurrent_step_wrong_answers():
    msg = rejected(check_recurrent_step, lambda **kw: _step(**kw, read_after=False))
    assert "wrong value in output[0]" in msg and "after" in msg
    msg = rejected(check_recurrent_step, lambda **kw: _step(**kw, decay=False))
    assert "wrong value in output" in msg and "multiplied by gamma" in msg
    msg = rejected(check_recurrent_step, lambda **kw: _step(**kw)[0])
    assert "expected a tuple of 2 tensors" in msg
    msg = rejected(check_recurrent_step, lambda **kw: (_step(**kw)[0][..., None], _step(**kw)[1]))
    assert "has shape" in msg and "expected" in msg
    # one gamma for all heads (the first head's) is caught too
    msg = rejected(check_recurrent_step, lambda **kw: _step(**{**kw, "log_decay": kw["log_decay"][:1].expand_as(kw["log_decay"])}))
    assert "wrong value" in msg
    msg = rejected(check_recurrent_step, lambda q_n, k_n, v_n, log_decay: None)
    assert "raised TypeError" in msg


# ---------------------------------------------------------------------------------------------
# Exercise 2: the chunkwise form with one loop
# ---------------------------------------------------------------------------------------------
def _chunkwise(q, k, v, log_decay, chunk_size, zeta=True, own_length=True):
    B, H, T, d_k = q.shape
    R = q.new_zeros(B, H, d_k, v.shape[-1])
    outputs = []
    for start in range(0, T, chunk_size):
        qc, kc, vc = (x[:, :, start:start + chunk_size] for x in (q, k, v))
        L = qc.shape[2]
        steps = L if own_length else chunk_size
        j = torch.arange(L, dtype=q.dtype)
        xi = torch.exp((j + 1) * log_decay[:, None])[..., None]
        z = torch.exp((steps - 1 - j) * log_decay[:, None])[..., None] if zeta else 1.0
        outputs.append(((qc @ kc.transpose(-1, -2)) * decay_matrix(log_decay, L)) @ vc + (qc @ R) * xi)
        R = torch.exp(steps * log_decay)[:, None, None] * R + kc.transpose(-1, -2) @ (vc * z)
    return torch.cat(outputs, dim=2), R


def test_chunkwise_accepts_a_right_answer():
    check_chunkwise(_chunkwise)


def test_chunkwise_cases_cover_short_last_chunks_and_oversized_chunks():
    from retnet_mini.exercises.forms import _chunk_case
    from retnet_mini.exercises import random_cases
    cases = list(random_cases(_chunk_case, 25, seed=2))
    Ts = [c["q"].shape[2] for c in cases]
    assert any(T % c["chunk_size"] and c["chunk_size"] < T for T, c in zip(Ts, cases))
    assert any(c["chunk_size"] > T for T, c in zip(Ts, cases))
    assert any(T % c["chunk_size"] == 0 and 1 < c["chunk_size"] < T for T, c in zip(Ts, cases))


def test_chunkwise_wrong_answers():
    msg = rejected(check_chunkwise, lambda **kw: _chunkwise(**kw, zeta=False))
    assert "wrong value" in msg and "zeta" in msg and "pseudocode figure" in msg
    msg = rejected(check_chunkwise, lambda **kw: _chunkwise(**kw, own_length=False))
    assert "wrong value in output[1]" in msg and "short last chunk" in msg
    # the outputs alone (no state) are not accepted
    msg = rejected(check_chunkwise, lambda **kw: _chunkwise(**kw)[0])
    assert "expected a tuple of 2 tensors" in msg
    # a version that only works when the chunk size divides T crashes on the first other case: reported
    def divisors_only(q, k, v, log_decay, chunk_size):
        B, H, T, d = q.shape
        assert T % chunk_size == 0, "chunk_size must divide T"
        return chunkwise_retention(q, k, v, log_decay, chunk_size)
    msg = rejected(check_chunkwise, divisors_only)
    assert "raised AssertionError: chunk_size must divide T" in msg and "chunk_size=" in msg


# ---------------------------------------------------------------------------------------------
# Exercise 3: the decay of a left-padded batch
# ---------------------------------------------------------------------------------------------
def test_padded_decay_accepts_a_right_answer():
    check_padded_decay(padded_decay_reference)


def test_padded_decay_reference_gives_unpadded_outputs():
    torch.manual_seed(0)
    pad, T, H = torch.tensor([0, 3, 9]), 12, 2
    log_decay = torch.log(torch.tensor([0.9, 0.7], dtype=torch.float64))
    q, k, v = (torch.randn(3, H, T, 4, dtype=torch.float64) for _ in range(3))
    o = ((q @ k.transpose(-1, -2)) * padded_decay_reference(log_decay, pad, T)) @ v
    for b, p in enumerate(pad.tolist()):
        alone = parallel_retention(q[b:b + 1, :, p:], k[b:b + 1, :, p:], v[b:b + 1, :, p:], log_decay)[0]
        assert (o[b, :, p:] - alone).abs().max() < 1e-12
        assert o[b, :, :p].abs().max() == 0 if p else True


def test_padded_decay_wrong_answers():
    plain = lambda log_decay, pad, length: decay_matrix(log_decay, length).expand(len(pad), -1, -1, -1)
    msg = rejected(check_padded_decay, plain)
    assert "wrong value" in msg and "columns m < pad[b]" in msg
    def rows_only(log_decay, pad, length):
        D = plain(log_decay, pad, length)
        return D * (torch.arange(length)[None, :] >= pad[:, None])[:, None, :, None]
    msg = rejected(check_padded_decay, rows_only)
    assert "wrong value" in msg and "padded columns" in msg
    # decay counted from the first real token instead of from the key: gamma^(n - pad) for every key
    def from_first_token(log_decay, pad, length):
        n = torch.arange(length)
        allowed = (n[None, :, None] >= n[None, None, :]) & (n[None, None, :] >= pad[:, None, None])
        exponent = (n[None, :, None] - pad[:, None, None]).clamp(min=0).to(log_decay.dtype)
        return torch.where(allowed[:, None], exponent[:, None] * log_decay[None, :, None, None], -torch.inf).exp()
    assert "wrong value" in rejected(check_padded_decay, from_first_token)
    msg = rejected(check_padded_decay, lambda log_decay, pad, length: decay_matrix(log_decay, length))
    assert "has shape" in msg and "expected" in msg
