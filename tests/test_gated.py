"""Gated RetNet (decay computed from the input, as in gated linear attention): exact across the three modes,
states continue, generation is exact, gradients reach the gate, and a constant gate is RetNet."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from retnet_mini import RetNetConfig, RetNetLM
from retnet_mini.decay import GATE_TEMPERATURE, decay_schedule, gate_logit_for, gated_log_decay, paper_log_decay
from retnet_mini.layers import MultiScaleRetention

MODES = ("parallel", "recurrent", "chunkwise")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: one thread beats two that wait on each other (and on a busy CI machine).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_gated(device="cpu", dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    small = dict(vocab_size=37, d_model=16, n_heads=2, n_layers=2, chunk_size=4, decay="gated")
    small.update(overrides)
    model = RetNetLM(RetNetConfig.paper(**small)).to(device=device, dtype=dtype).eval()
    with torch.no_grad():   # a gate far from its initial bias, so decays vary a lot along the sequence
        for block in model.blocks:
            block.retention.decay_proj.weight.normal_(0.0, 2.0)
    return model


def max_diff(a, b):
    return (a - b).abs().max().item()


def test_gate_equation():
    z = torch.linspace(-30, 8, 39, dtype=torch.float64)     # the naive log loses digits for z >> 1
    gamma = torch.sigmoid(z) ** (1 / 16)
    assert GATE_TEMPERATURE == 16
    assert torch.allclose(gated_log_decay(z), gamma.log(), rtol=1e-10, atol=0)
    assert (gated_log_decay(z) < 0).all()
    assert torch.isfinite(gated_log_decay(torch.tensor([-1e4, 1e4], dtype=torch.float64))).all()
    ld = paper_log_decay(8)
    assert torch.allclose(gated_log_decay(gate_logit_for(ld)), ld, rtol=1e-10, atol=0)


def test_the_decay_varies_with_the_input(device):
    model = make_gated(device)
    msr = model.blocks[0].retention
    x = torch.randn(2, 9, 16, dtype=torch.float64, device=device)
    ld = gated_log_decay(msr.decay_proj(x)).transpose(1, 2)
    assert ld.shape == (2, 2, 9) and ld.std() > 1e-3 and (ld < 0).all()
    assert msr.log_decay is None and "log_decay" not in model.state_dict()
    names = [n for n, _ in model.named_parameters() if "decay" in n]
    assert names == [f"blocks.{i}.retention.decay_proj.{w}" for i in range(2) for w in ("weight", "bias")]


def test_modes_agree_float64(device):
    model = make_gated(device, norm_eps=0.0)
    tokens = torch.randint(0, 37, (3, 23), device=device)
    out = {m: model(tokens, mode=m) for m in MODES}
    for m in ("recurrent", "chunkwise"):
        assert max_diff(out[m][0], out["parallel"][0]) < 1e-10
        for s, s_ref in zip(out[m][1].layers, out["parallel"][1].layers):
            assert max_diff(s, s_ref) < 1e-10
    for chunk_size in (1, 3, 7, 64):
        assert max_diff(model(tokens, mode="chunkwise", chunk_size=chunk_size)[0], out["parallel"][0]) < 1e-10


def test_modes_agree_float32(device):
    model = make_gated(device, dtype=torch.float32, chunk_size=8)
    tokens = torch.randint(0, 37, (2, 50), device=device)
    ref, _ = model(tokens, mode="parallel")
    for m in ("recurrent", "chunkwise"):
        assert max_diff(model(tokens, mode=m)[0], ref) < 1e-4


@settings(max_examples=12, deadline=None)
@given(cuts=st.lists(st.integers(1, 8), min_size=1, max_size=4), data=st.data())
def test_state_continues_in_any_mode(cuts, data, device):
    model = make_gated(device)
    T = sum(cuts)
    tokens = torch.randint(0, 37, (2, T), device=device)
    ref, ref_state = model(tokens, mode="parallel")
    pieces, state, start = [], None, 0
    for n in cuts:
        mode = data.draw(st.sampled_from(MODES))
        logits, state = model(tokens[:, start:start + n], mode=mode, state=state,
                              chunk_size=data.draw(st.integers(1, 9)))
        pieces.append(logits)
        start += n
    assert max_diff(torch.cat(pieces, 1), ref) < 1e-10
    assert state.offset == T
    for s, s_ref in zip(state.layers, ref_state.layers):
        assert max_diff(s, s_ref) < 1e-10


@pytest.mark.parametrize("prefill", ["chunkwise", "parallel"])
def test_greedy_generation_equals_parallel_rerun(prefill, device):
    model = make_gated(device)
    prompt = torch.randint(0, 37, (3, 6), device=device)
    out = model.generate(prompt, 12, temperature=0, prefill=prefill)
    seq = prompt
    for _ in range(12):
        logits, _ = model(seq, mode="parallel")
        seq = torch.cat([seq, logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_the_gate(mode, device):
    model = make_gated(device).train()
    tokens = torch.randint(0, 37, (2, 11), device=device)
    logits, _ = model(tokens, mode=mode)
    logits.square().mean().backward()
    for block in model.blocks:
        for p in block.retention.decay_proj.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0


def test_gradcheck_of_the_gate_through_chunkwise_retention():
    """Analytic gradients of the gate's weights equal finite differences (float64), chunks across the gate."""
    torch.manual_seed(0)
    msr = MultiScaleRetention(RetNetConfig.paper(vocab_size=5, d_model=8, n_heads=2, n_layers=1,
                                                  decay="gated")).double()
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    w0, b0 = msr.decay_proj.weight.detach().clone(), msr.decay_proj.bias.detach().clone()

    def f(w, b):
        params = {"decay_proj.weight": w, "decay_proj.bias": b}
        return functional_call(msr, params, (x,), {"mode": "chunkwise", "chunk_size": 3})[0]

    assert torch.autograd.gradcheck(f, (w0.requires_grad_(), b0.requires_grad_()), eps=1e-6, atol=1e-6)


def test_a_constant_gate_is_retnet():
    """Zero gate weights and the bias gate_logit_for(ln gamma) give the fixed-decay model exactly."""
    torch.manual_seed(0)
    base = dict(vocab_size=37, d_model=16, n_heads=4, n_layers=2, chunk_size=4)
    retnet = RetNetLM(RetNetConfig.paper(**base)).double().eval()
    gated = RetNetLM(RetNetConfig.paper(**base, decay="gated")).double().eval()
    missing, unexpected = gated.load_state_dict(retnet.state_dict(), strict=False)
    assert not unexpected and all("decay_proj" in k for k in missing)
    with torch.no_grad():
        for block in gated.blocks:
            block.retention.decay_proj.weight.zero_()
            block.retention.decay_proj.bias.copy_(gate_logit_for(decay_schedule("paper", 4)))
    tokens = torch.randint(0, 37, (2, 19))
    for mode in MODES:
        assert max_diff(gated(tokens, mode=mode)[0], retnet(tokens, mode=mode)[0]) < 1e-10


def test_the_gate_starts_at_the_papers_schedule():
    msr = MultiScaleRetention(RetNetConfig.paper(vocab_size=5, d_model=16, n_heads=4, n_layers=1, decay="gated"))
    assert torch.allclose(gated_log_decay(msr.decay_proj.bias.double()), paper_log_decay(4), rtol=1e-5)


def test_gated_config_errors():
    with pytest.raises(ValueError, match="rescale=True needs a fixed decay"):
        RetNetConfig.paper(vocab_size=10, d_model=16, n_heads=2, decay="gated", rescale=True)
    with pytest.raises(ValueError, match="decay must be one of"):
        RetNetConfig.paper(vocab_size=10, d_model=16, n_heads=2, decay="learned")
    with pytest.raises(ValueError, match="no fixed schedule"):
        decay_schedule("gated", 4)
