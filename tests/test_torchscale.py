"""``RetNetLM.from_torchscale`` against the official code (torchscale 0.3.0), without installing it.

tests/data/torchscale_tiny.pt was written by scripts/make_torchscale_fixture.py from a tiny official
``RetNetDecoder`` in float64: its config (official names), state dict, input tokens and the logits of
its three modes, for ``layernorm_eps`` 0 and 1e-6 (see the script's docstring for how it was made).
"""
from pathlib import Path

import pytest
import torch

from retnet_mini.model import RetNetLM

FIXTURE = Path(__file__).parent / "data" / "torchscale_tiny.pt"
MODES = ("parallel", "recurrent", "chunkwise")


@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def convert(fx, **changes):
    return RetNetLM.from_torchscale(fx["state_dict"], **{**fx["config"], **changes})


@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("mode", MODES)
def test_logits_equal_official_parallel_logits(fx, eps, mode, device):
    """Every mode of ours gives the official parallel form's logits, with or without eps in the norms."""
    model = convert(fx, layernorm_eps=eps).to(device)
    assert model.embed.weight.dtype == torch.float64
    with torch.no_grad():
        logits, state = model(fx["tokens"].to(device), mode)
    official = fx["logits"][repr(eps)]["parallel"]
    assert logits.dtype == torch.float64
    assert (logits.cpu() - official).abs().max().item() < 1e-9
    assert state.offset == fx["tokens"].shape[1]


def test_official_modes_agree_only_without_eps(fx):
    """The target is well defined with eps = 0; with eps > 0 the official modes disagree with each other.

    Its recurrent form lacks the parallel form's division by max(1, |row sum|), its chunkwise form
    normalizes per chunk; with eps = 0 the weightless head RMSNorm cancels all of that, with eps > 0 not.
    """
    for key, logits in fx["logits"].items():
        recorded = fx["disagreement"][key]["float64"]
        for mode in ("recurrent", "chunkwise"):
            gap = (logits[mode] - logits["parallel"]).abs().max().item()
            assert gap == pytest.approx(recorded[mode], rel=1e-6, abs=1e-18)
            if float(key) == 0.0:
                assert gap < 1e-12
            else:
                assert 1e-7 < gap < 1e-3
    assert fx["torchscale_version"] == "0.3.0"


def test_close_to_the_official_code_as_shipped(fx):
    """torchscale's norms cast float64 down to float32: its own float64 logits are off by ~3e-7."""
    for key, as_shipped in fx["logits_as_shipped"].items():
        gap = (as_shipped["parallel"] - fx["logits"][key]["parallel"]).abs().max().item()
        assert gap == pytest.approx(fx["disagreement"][key]["as_shipped_vs_float64"])
        assert 0 < gap < 1e-5


def test_rotation_and_decay_are_the_official_buffers(fx):
    """The official decoder stores its angles ([t0, t0, t1, t1, ...]) and ln(gamma) as buffers."""
    retention = convert(fx).blocks[0].retention
    angle, decay = fx["state_dict"]["retnet_rel_pos.angle"], fx["state_dict"]["retnet_rel_pos.decay"]
    assert torch.equal(retention.theta.repeat_interleave(2), angle)
    assert torch.equal(retention.log_decay, decay)


@pytest.mark.parametrize("dtype, expected", [
    (torch.float64, torch.float64), (torch.float32, torch.float32), (torch.float16, torch.float32),
])
def test_weights_keep_their_precision(fx, dtype, expected):
    state_dict = {k: v.to(dtype) for k, v in fx["state_dict"].items()}
    model = RetNetLM.from_torchscale(state_dict, **fx["config"])
    assert {p.dtype for p in model.parameters()} == {expected}
    assert torch.equal(model.blocks[1].ffn.gate.weight, state_dict["layers.1.ffn.gate.weight"].to(expected))


def test_shared_input_output_embedding(fx):
    """share_decoder_input_output_embed: the official output projection is the embedding matrix."""
    state_dict = dict(fx["state_dict"])
    state_dict["output_projection.weight"] = state_dict["embed_tokens.weight"]
    tied = RetNetLM.from_torchscale(without(state_dict, "output_projection.weight"), **fx["config"],
                                    share_decoder_input_output_embed=True)
    untied = RetNetLM.from_torchscale(state_dict, **fx["config"])
    assert tied.lm_head.weight is tied.embed.weight
    with torch.no_grad():
        assert torch.equal(tied(fx["tokens"])[0], untied(fx["tokens"])[0])


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


@pytest.mark.parametrize("make_args, message", [
    (lambda sd, cfg: (sd, without(cfg, "vocab_size")), "needs vocab_size"),
    (lambda sd, cfg: (sd, {**cfg, "decoder_embed_dims": 32}), r"unsupported official config names: \['decoder_embed_dims'\]"),
    (lambda sd, cfg: (sd, {**cfg, "activation_fn": "relu"}), "activation_fn='gelu'"),
    (lambda sd, cfg: (sd, {**cfg, "no_output_layer": True}), "no_output_layer"),
    (lambda sd, cfg: (without(sd, "layers.1.retention.g_proj.weight"), cfg), r"lacks 1 official keys, e\.g\. \['layers\.1\.retention\.g_proj\.weight'\]"),
    (lambda sd, cfg: (sd, {**cfg, "decoder_layers": 3}), r"lacks .*layers\.2\."),
    (lambda sd, cfg: (sd, {**cfg, "decoder_ffn_embed_dim": 64}), r"layers\.0\.ffn\.fc1\.weight has shape \(40, 32\), expected \(64, 32\)"),
    (lambda sd, cfg: ({**sd, "layer_norm.weight": sd["layer_norm.weight"][:-1]}, cfg), r"layer_norm\.weight has shape \(31,\), expected \(32,\)"),
    (lambda sd, cfg: (sd, {**cfg, "decoder_retention_heads": 3}), "divisible by n_heads|must split into n_heads"),
])
def test_bad_inputs_name_the_problem(fx, make_args, message):
    state_dict, config = make_args(fx["state_dict"], fx["config"])
    with pytest.raises(ValueError, match=message):
        RetNetLM.from_torchscale(state_dict, **config)
