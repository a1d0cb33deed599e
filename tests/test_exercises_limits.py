"""The exercises of book/limits.ipynb: the notebook's solutions pass their checkers, wrong answers do not."""

import contextlib
import io
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from retnet_mini import RetNetConfig, RetNetLM, TransformerConfig, TransformerLM
from retnet_mini.exercises.limits import (check_gate_log_decay, check_masked_accuracy, check_mqar_example,
                                          check_state_numbers, state_numbers_reference)

from exercise_notebooks import (notebook_solution_cells, rejected as _rejected, run_solution, solution_name,
                                stub_functions)

NOTEBOOK = Path(__file__).resolve().parent.parent / "book" / "limits.ipynb"


def solution_cells():
    return notebook_solution_cells(NOTEBOOK)


def test_notebook_has_four_solutions():
    assert len(solution_cells()) == 4


@pytest.mark.parametrize("index", range(4))
def test_notebook_solution_passes_its_checker(index):
    out, namespace = run_solution(NOTEBOOK, index)
    assert "correct on all 25 random cases" in out
    stub = stub_functions(NOTEBOOK)[index]
    # the solution's own name: running every cell keeps the learner's function
    assert callable(namespace[solution_name(stub)]) and stub not in namespace


def test_stubs_are_stubs():
    """Each exercise's stub cell has the checker call commented out (running it must not fail)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    stubs = [c.source for c in nb.cells if c.cell_type == "code" and "# your code here" in c.source]
    assert len(stubs) == 4
    for source in stubs:
        assert "\n# check_" in source
        exec(compile(source, "stub", "exec"), {})


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
    msg = _rejected(check_mqar_example, _mqar_answer(mask_shift=1))
    assert "wrong value in output[2]" in msg and "the mask marks the query positions" in msg
    msg = _rejected(check_mqar_example, _mqar_answer(next_token=False))
    assert "output[1]" in msg and "NEXT tokens" in msg
    msg = _rejected(check_mqar_example, _mqar_answer(mask_dtype=torch.long))
    assert "loss_mask should be a torch.bool tensor" in msg
    msg = _rejected(check_mqar_example, lambda keys, values, queried, slots, seq_len: torch.zeros(seq_len))
    assert "expected a tuple (inputs, targets, loss_mask)" in msg

    def values_before_keys(keys, values, queried, slots, seq_len):
        return _mqar_answer()(values, keys, queried, slots, seq_len)
    assert "wrong value in output[0]" in _rejected(check_mqar_example, values_before_keys)


def test_state_numbers_reference_matches_the_models():
    for d, H, V, L in ((16, 2, 32, 1), (32, 4, 48, 3)):
        model = RetNetLM(RetNetConfig.paper(vocab_size=7, d_model=d, n_heads=H, n_layers=L, value_dim=V))
        retnet, cache = state_numbers_reference(d, H, V, L, context=13)
        assert model.init_state(1).nbytes() // 4 == retnet
        tf = TransformerLM(TransformerConfig(vocab_size=7, d_model=d, n_heads=H, n_layers=L))
        _, kv = tf(torch.zeros(1, 13, dtype=torch.long))
        assert kv.nbytes() // 4 == cache


def test_state_numbers_wrong_answers():
    msg = _rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context:
                    (n_layers * d_model * value_dim, 2 * n_layers * context * d_model))
    assert "RetNet state: got" in msg and "d_k = d_model / H" in msg
    msg = _rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context:
                    (d_model * value_dim // n_heads, 2 * n_layers * context * d_model))
    assert "every layer has its own state" in msg
    msg = _rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context:
                    (n_layers * d_model * value_dim // n_heads, n_layers * context * d_model))
    assert "KV cache: got" in msg and "a key AND a value" in msg
    msg = _rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context: 5)
    assert "expected a tuple (retnet_state, kv_cache)" in msg
    msg = _rejected(check_state_numbers, lambda d_model, n_heads, value_dim, n_layers, context: ("a", "b"))
    assert "should be an int" in msg


def test_gate_log_decay_wrong_answers():
    msg = _rejected(check_gate_log_decay, lambda x, w, b, tau: (torch.log(torch.sigmoid(x @ w + b)) / tau).transpose(1, 2))
    assert "got -inf" in msg and "logsigmoid" in msg
    msg = _rejected(check_gate_log_decay, lambda x, w, b, tau: F.logsigmoid(x @ w + b).transpose(1, 2))
    assert "divide by tau" in msg
    msg = _rejected(check_gate_log_decay, lambda x, w, b, tau: (F.logsigmoid(x @ w + b) * tau).transpose(1, 2))
    assert "divided by tau, not multiplied" in msg
    msg = _rejected(check_gate_log_decay, lambda x, w, b, tau: (torch.sigmoid(x @ w + b) ** (1 / tau)).transpose(1, 2))
    assert "return ln(gamma)" in msg
    msg = _rejected(check_gate_log_decay, lambda x, w, b, tau: F.logsigmoid(x @ w + b) / tau)
    assert "has shape" in msg


def test_masked_accuracy_wrong_answers():
    msg = _rejected(check_masked_accuracy, lambda logits, targets, loss_mask:
                    (logits.argmax(-1) == targets).double().mean().item())
    assert "wrong value" in msg and "only the positions where loss_mask is True count" in msg
    msg = _rejected(check_masked_accuracy, lambda logits, targets, loss_mask:
                    ((logits.argmax(-1) == targets) & loss_mask).double().mean().item())
    assert "divide by the number of masked positions" in msg
    msg = _rejected(check_masked_accuracy, lambda logits, targets, loss_mask: "high")
    assert "expected a float" in msg
