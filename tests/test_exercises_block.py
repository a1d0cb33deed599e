"""The checkers of book/block.ipynb refuse wrong answers with a message that says what is wrong (the notebook's
own solutions pass them: tests/test_exercises_notebooks.py)."""

from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from retnet_mini import RetNetConfig, RetNetLM
from retnet_mini.exercises.block import (block_linear_weights, check_gated_output, check_head_rmsnorm,
                                         check_param_count)

from exercise_notebooks import BOOK, rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py


def test_gated_output_wrong_answers():
    msg = rejected(check_gated_output, lambda x, y, w_g, w_o: (torch.sigmoid(x @ w_g) * y) @ w_o)
    assert "wrong value" in msg and "sigmoid(z) alone" in msg
    msg = rejected(check_gated_output, lambda x, y, w_g, w_o: (x @ w_g * y) @ w_o)
    assert "wrong value" in msg and "through swish" in msg
    msg = rejected(check_gated_output, lambda x, y, w_g, w_o: (F.silu(y) * (x @ w_g)) @ w_o)
    assert "applied to the gate" in msg
    msg = rejected(check_gated_output, lambda x, y, w_g, w_o: F.silu(x @ w_g) * y)
    assert "has shape" in msg


def test_head_rmsnorm_wrong_answers():
    msg = rejected(check_head_rmsnorm, lambda y, n_heads, eps: y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps))
    assert "wrong value" in msg and "each head's d_v features separately" in msg

    def eps_outside(y, n_heads, eps):
        h = y.unflatten(-1, (n_heads, -1))
        return (h / (h.pow(2).mean(-1, keepdim=True).sqrt() + eps)).flatten(-2)
    assert "inside the square root" in rejected(check_head_rmsnorm, eps_outside)

    def layer_norm(y, n_heads, eps):
        h = y.unflatten(-1, (n_heads, -1))
        h = h - h.mean(-1, keepdim=True)
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)
    assert "does not subtract the mean" in rejected(check_head_rmsnorm, layer_norm)

    def heads_split_wrong(y, n_heads, eps):   # (d_v, H) instead of (H, d_v): features of several heads mixed
        h = y.unflatten(-1, (-1, n_heads)).transpose(-1, -2)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return h.transpose(-1, -2).flatten(-2)
    assert "wrong value" in rejected(check_head_rmsnorm, heads_split_wrong)


def test_block_linear_weights_matches_the_model():
    """The checker's reference counts what RetNetLM builds: 12 d^2 for the paper's shape."""
    for d in (32, 96):
        model = RetNetLM(RetNetConfig.paper(vocab_size=10, d_model=d, n_heads=4, n_layers=1))
        counted = sum(m.weight.numel() for m in model.blocks[0].modules() if isinstance(m, torch.nn.Linear))
        assert counted == block_linear_weights(d, 2 * d, 2 * d, glu=False) == 12 * d * d
    ts = RetNetConfig.torchscale(vocab_size=10, n_layers=1)
    block = RetNetLM(ts).blocks[0]
    counted = sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    assert counted == block_linear_weights(ts.d_model, ts.value_dim, ts.ffn_dim, glu=True)


def test_param_count_wrong_answers():
    msg = rejected(check_param_count, lambda d_model, value_dim, ffn_dim, glu: 12 * d_model ** 2)
    assert "got" in msg and "expected" in msg and "d_model^2" in msg
    msg = rejected(check_param_count, lambda d_model, value_dim, ffn_dim, glu:
                    2 * d_model ** 2 + 3 * d_model * value_dim + 2 * d_model * ffn_dim)
    assert "three d_model x ffn_dim matrices" in msg
    msg = rejected(check_param_count, lambda d_model, value_dim, ffn_dim, glu: "many")
    assert "expected an int" in msg
    msg = rejected(check_param_count, lambda d_model, value_dim, ffn_dim: 0)
    assert "raised TypeError" in msg


def test_the_chapters_official_normalizers_reproduce_the_official_logits():
    """The chapter rewrites torchscale's three per-mode normalizers as small functions (a teaching device).
    Plugged into a converted model in place of the package's retention, they give the official code's logits
    in each of its modes (tests/data/torchscale_tiny.pt, recorded from torchscale 0.3.0), for eps 0 and 1e-6."""
    import retnet_mini.layers as layers
    from retnet_mini import decay_matrix

    notebook = BOOK / "block.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    source = next(c.source for c in nb.cells if c.cell_type == "code" and "def official_chunkwise" in c.source)
    ns = {"torch": torch, "decay_matrix": decay_matrix}
    exec(compile(source, f"{notebook.name}[official normalizers]", "exec"), ns)
    fx = torch.load(Path(__file__).parent / "data" / "torchscale_tiny.pt", weights_only=True)

    def official_retention(q, k, v, log_decay, mode, state, chunk_size, inplace=False):
        if mode == "parallel":
            return ns["official_parallel"](q, k, v, log_decay), None
        if mode == "recurrent":
            return ns["official_recurrent"](q, k, v, log_decay), None
        return ns["official_chunkwise"](q, k, v, log_decay, chunk_size), None

    for eps in fx["eps_values"]:
        model = RetNetLM.from_torchscale(fx["state_dict"], **{**fx["config"], "layernorm_eps": eps})
        for block in model.blocks:
            block.retention.rescale = False          # the official normalizers replace the package's rescaling
        original = layers.retention
        layers.retention = official_retention
        try:
            for mode in ("parallel", "recurrent", "chunkwise"):
                with torch.no_grad():
                    logits, _ = model(fx["tokens"], mode=mode, chunk_size=fx["config"]["recurrent_chunk_size"])
                assert (logits - fx["logits"][repr(eps)][mode]).abs().max() < 1e-12, (eps, mode)
        finally:
            layers.retention = original
