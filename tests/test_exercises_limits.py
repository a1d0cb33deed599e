"""The checkers of book/limits.ipynb refuse wrong answers with a message that says what is wrong (the notebook's
own solutions pass them: tests/test_exercises_notebooks.py)."""

import contextlib
import io

import pytest
import torch
import torch.nn.functional as F

from retnet_mini import RetNetConfig, RetNetLM, TransformerConfig, TransformerLM
from retnet_mini.exercises.limits import (check_gate_log_decay, check_masked_accuracy, check_mqar_example,
                                          check_state_numbers, state_numbers_reference)

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


def _mqar_answer(mask_shift=0, next_token=True, mask_dtype=torch.bool):
    def answer(keys, values, queried, slots, seq_len):
        N = keys.shape[0]
        seq = torch.zeros(seq_len + 1, dtype=torch.long)
        seq[0:2 * N:2], seq[1:2 * N:2] = keys, values
        where = 2 * N + 2 * slots
        seq[where], seq[where + 1] = keys[queried], values[queried]
        mask = torch.zeros(seq_len, dtype=torch.bool)
        mask[where] = True
        targets = seq[1:] if next_token else seq[:-1].clone()
        return seq[:-1], targets, torch.roll(mask, mask_shift).to(mask_dtype)
    return answer


def test_mqar_example_wrong_answers():
    with contextlib.redirect_stdout(io.StringIO()):
        check_mqar_example(_mqar_answer())
    msg = rejected(check_mqar_example, _mqar_answer(mask_shift=1))
    assert "wrong value in output[2]" in msg and "the mask marks the query positions" in msg
    msg = rejected(check_mqar_example, _mqar_answer(next_token=False))
    assert "output[1]" in msg and "NEXT tokens" in msg
    msg = rejected(check_mqar_example, _mqar_answer(mask_dtype=torch.long))
    assert "loss_mask should be a torch.bool tensor" in msg
    msg = rejected(check_mqar_example, lambda keys, values, queried, slots, seq_len: torch.zeros(seq_len))
    assert "expected a tuple (inputs, targets, loss_mask)" in msg

    def values_before_keys(keys, values, queried, slots, seq_len):
        return _mqar_answer()(values, keys, queried, slots, seq_len)
    assert "wrong value in output[0]" in rejected(check_mqar_example, values_before_keys)


def test_state_numbers_reference_matches_the_models():
    for d, H, V, L in ((16, 2, 32, 1), (32, 4, 48, 3)):
        model = RetNetLM(RetNetConfig.paper(vocab_size=7, d_model=d, n_heads=H, n_layers=L, value_dim=V))
        retnet, cache = state_numbers_reference(d, H, V, L, context=13)
        assert model.init_state(1).nbytes() // 4 == retnet
        tf = TransformerLM(TransformerConfig(vocab_size=7, d_model=d, n_heads=H, n_layers=L))
        _, kv = tf(torch.zeros(1, 13, dtype=torch.long))
        assert kv.nbytes() // 4 == cache


def test_state_numbers_wrong_answers():
    msg = rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context:
                    (n_layers * d_model * value_dim, 2 * n_layers * context * d_model))
    assert "RetNet state: got" in msg and "d_k = d_model / H" in msg
    msg = rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context:
                    (d_model * value_dim // n_heads, 2 * n_layers * context * d_model))
    assert "every layer has its own state" in msg
    msg = rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context:
                    (n_layers * d_model * value_dim // n_heads, n_layers * context * d_model))
    assert "KV cache: got" in msg and "a key AND a value" in msg
    msg = rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context: 5)
    assert "expected a tuple (retnet_state, kv_cache)" in msg
    msg = rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context: ("a", "b"))
    assert "should be an int" in msg


def test_gate_log_decay_wrong_answers():
    msg = rejected(check_gate_log_decay, lambda x, w, b, tau: (torch.log(torch.sigmoid(x @ w + b)) / tau).transpose(1, 2))
    assert "got -inf" in msg and "logsigmoid" in msg
    msg = rejected(check_gate_log_decay, lambda x, w, b, tau: F.logsigmoid(x @ w + b).transpose(1, 2))
    assert "divide by tau" in msg
    msg = rejected(check_gate_log_decay, lambda x, w, b, tau: (F.logsigmoid(x @ w + b) * tau).transpose(1, 2))
    assert "divided by tau, not multiplied" in msg
    msg = rejected(check_gate_log_decay, lambda x, w, b, tau: (torch.sigmoid(x @ w + b) ** (1 / tau)).transpose(1, 2))
    assert "return ln(gamma)" in msg
    msg = rejected(check_gate_log_decay, lambda x, w, b, tau: F.logsigmoid(x @ w + b) / tau)
    assert "has shape" in msg


def test_masked_accuracy_wrong_answers():
    msg = rejected(check_masked_accuracy, lambda logits, targets, loss_mask:
                    (logits.argmax(-1) == targets).double().mean().item())
    assert "wrong value" in msg and "only the positions where loss_mask is True count" in msg
    msg = rejected(check_masked_accuracy, lambda logits, targets, loss_mask:
                    ((logits.argmax(-1) == targets) & loss_mask).double().mean().item())
    assert "divide by the number of masked positions" in msg
    msg = rejected(check_masked_accuracy, lambda logits, targets, loss_mask: "high")
    assert "expected a float" in msg
