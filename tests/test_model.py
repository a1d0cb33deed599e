"""RetNetLM, with a fixed decay (the paper's and torchscale's presets) and with a gated one (computed from the
input, as in gated linear attention): the three modes give the same logits, states continue sequences,
generation is exact; and what only the gated decay has: its gate equation, gradients that reach the gate, a
constant gate that is RetNet."""
import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from retnet_mini import RetNetConfig, RetNetLM, RetNetState, TransformerLM, decay_matrix
from retnet_mini.decay import GATE_TEMPERATURE, decay_schedule, gate_logit_for, gated_log_decay, paper_log_decay
from retnet_mini.layers import MultiScaleRetention, rescale_factors

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: see conftest.py

MODES = ("parallel", "recurrent", "chunkwise")
# The models the tests of the three modes run on, as make_model's keywords
MODELS = {
    "paper": dict(preset="paper"),
    "paper-rescale": dict(preset="paper", rescale=True),
    "torchscale": dict(preset="torchscale"),
    "torchscale-rescale": dict(preset="torchscale", rescale=True),
    "gated": dict(preset="paper", decay="gated"),
}


def make_model(preset="paper", dtype=torch.float64, device="cpu", seed=0, **overrides):
    torch.manual_seed(seed)
    small = dict(vocab_size=37, d_model=16, n_heads=2, n_layers=2, chunk_size=4)
    if preset == "torchscale":
        small.update(value_dim=24, ffn_dim=20)
    small.update(overrides)
    config = getattr(RetNetConfig, preset)(**small)
    model = RetNetLM(config).to(device=device, dtype=dtype).eval()
    with torch.no_grad():  # move norm weights away from 1 and biases from 0 so they are exercised
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif "decay_proj.weight" in name:   # a gate far from its initial bias: decays vary along the sequence
                p.normal_(0.0, 2.0)
    return model


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("kind", MODELS)
def test_modes_agree_float64(kind, device):
    model = make_model(**MODELS[kind], device=device, norm_eps=0.0)
    tokens = torch.randint(0, 37, (3, 23), device=device)
    logits = {m: model(tokens, mode=m) for m in MODES}
    for m in ("recurrent", "chunkwise"):
        assert max_diff(logits[m][0], logits["parallel"][0]) < 1e-10
        for s, s_ref in zip(logits[m][1].layers, logits["parallel"][1].layers):
            assert max_diff(s, s_ref) < 1e-10
    for chunk_size in (1, 3, 7, 64):     # one position, chunks that do not divide T, one chunk longer than T
        assert max_diff(model(tokens, mode="chunkwise", chunk_size=chunk_size)[0], logits["parallel"][0]) < 1e-10


@pytest.mark.parametrize("kind", ["paper", "torchscale", "gated"])
def test_modes_agree_float32_default_config(kind, device):
    model = make_model(**MODELS[kind], dtype=torch.float32, device=device, chunk_size=8)
    tokens = torch.randint(0, 37, (2, 50), device=device)
    ref, _ = model(tokens, mode="parallel")
    for m in ("recurrent", "chunkwise"):
        assert max_diff(model(tokens, mode=m)[0], ref) < 1e-4


def test_rescaling_keeps_eps0_output_with_eps(device):
    """With eps > 0 our three modes still agree: the rescalings are the same per-position factors in each."""
    model = make_model("paper", device=device, rescale=True, norm_eps=1e-2)
    tokens = torch.randint(0, 37, (2, 19), device=device)
    ref, _ = model(tokens, mode="parallel")
    for m in ("recurrent", "chunkwise"):
        assert max_diff(model(tokens, mode=m)[0], ref) < 1e-10


def test_rescale_factors_are_row_sums_of_D():
    ld = torch.log(torch.tensor([0.5, 0.999, 1.0], dtype=torch.float64))
    f = rescale_factors(ld, offset=3, length=5)
    D = decay_matrix(ld, 8)
    assert torch.allclose(f[:, :, 0], D.sum(-1)[:, 3:8].rsqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["paper", "gated"])
@settings(max_examples=12, deadline=None)
@given(cuts=st.lists(st.integers(1, 8), min_size=1, max_size=4), data=st.data())
def test_state_continues_in_any_mode(kind, cuts, data, device):
    # a fixed decay with or without the rescalings (with eps 0, where they cancel); a gated one with the default eps
    options = dict(decay="gated") if kind == "gated" else dict(rescale=data.draw(st.booleans()), norm_eps=0.0)
    model = make_model("paper", device=device, **options)
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


@pytest.mark.parametrize("kind", ["paper", "gated"])
@pytest.mark.parametrize("prefill", ["chunkwise", "parallel"])
def test_greedy_generation_equals_parallel_rerun(kind, prefill, device):
    model = make_model(**MODELS[kind], device=device)
    prompt = torch.randint(0, 37, (3, 6), device=device)   # a batch of prompts
    out = model.generate(prompt, 12, temperature=0, prefill=prefill)
    assert out.shape == (3, 18) and torch.equal(out[:, :6], prompt)
    seq = prompt
    for _ in range(12):
        logits, _ = model(seq, mode="parallel")
        seq = torch.cat([seq, logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, seq)


def test_sampling_is_reproducible_and_respects_top_k(device):
    model = make_model("paper", device=device)
    prompt = torch.randint(0, 37, (2, 3), device=device)
    a = model.generate(prompt, 20, temperature=1.0, top_k=1, generator=torch.Generator(device).manual_seed(1))
    assert torch.equal(a, model.generate(prompt, 20, temperature=0))     # top_k=1 is greedy
    b1 = model.generate(prompt, 20, top_k=5, generator=torch.Generator(device).manual_seed(7))
    b2 = model.generate(prompt, 20, top_k=5, generator=torch.Generator(device).manual_seed(7))
    assert torch.equal(b1, b2)
    assert model.generate(prompt, 0).shape == (2, 3)


def test_state_size_does_not_grow():
    model = make_model("paper")
    _, s_short = model(torch.randint(0, 37, (1, 5)))
    _, s_long = model(torch.randint(0, 37, (1, 300)), mode="chunkwise")
    assert s_short.nbytes() == s_long.nbytes() == 2 * 2 * 8 * 16 * 8   # layers * H * d_k * d_v * 8 bytes


def test_parameter_count_is_12_d_squared_per_layer():
    d, L = 64, 3
    model = RetNetLM(RetNetConfig.paper(vocab_size=100, d_model=d, n_heads=4, n_layers=L))
    per_layer = (model.num_parameters() - 2 * 100 * d - 2 * d) / L    # minus embedding, head, final norm
    weights_only = sum(m.weight.numel() for m in model.blocks[0].modules() if isinstance(m, torch.nn.Linear))
    assert weights_only == 12 * d * d
    assert per_layer == 12 * d * d + 18 * d    # biases (10d), two LayerNorms (4d), GroupNorm affine (4d)


def test_presets():
    paper = RetNetConfig.paper(vocab_size=256, d_model=512, n_heads=2, n_layers=4)
    assert (paper.value_dim, paper.ffn_dim, paper.norm, paper.head_norm, paper.ffn) == (1024, 1024, "layernorm", "groupnorm", "gelu")
    official = RetNetConfig.torchscale(vocab_size=256)
    assert (official.d_model, official.value_dim, official.n_heads, official.ffn_dim, official.n_layers) == (512, 864, 2, 864, 6)
    assert (official.norm, official.head_norm, official.ffn, official.bias, official.norm_eps) == ("rmsnorm", "rmsnorm", "glu", False, 1e-6)


def test_ablation_switches_change_the_model():
    base = dict(vocab_size=37, d_model=16, n_heads=2, n_layers=1)
    assert RetNetLM(RetNetConfig.paper(**base, gate=False)).blocks[0].retention.g_proj is None
    for decay in ("none", "single", "experiment"):
        ld = RetNetLM(RetNetConfig.paper(**base, decay=decay)).blocks[0].retention.log_decay
        assert ld.shape == (2,) and (ld <= 0).all()
    model = make_model("paper", head_norm="none")
    assert torch.isfinite(model(torch.randint(0, 37, (1, 5)))[0]).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randint(0, 37, (5,))), r"tokens must be an int64 tensor of shape \(B, T\)"),
        (lambda m: m(torch.rand(2, 5)), "tokens must be an int64"),
        (lambda m: m(torch.tensor([[1, 37]])), r"ids in \[0, 37\)"),
        (lambda m: m(torch.tensor([[-1, 3]])), "vocab_size"),
        (lambda m: m(torch.tensor([[1, 2]]), mode="fast"), "mode must be one of"),
        (lambda m: m(torch.tensor([[1, 2]]), chunk_size=0), "chunk_size"),
        (lambda m: m(torch.tensor([[1, 2]]), state=RetNetState([], 0)), "RetNetState with 2 layer"),
        (lambda m: m(torch.tensor([[1, 2]]), state=m(torch.tensor([[1], [2]]))[1]), r"state.layers\[0\] must have shape"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), -1), "max_new_tokens"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), 3, temperature=-1.0), "temperature"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), 3, top_k=0), "top_k"),
        (lambda m: m.generate(torch.tensor([[1, 2]]), 3, prefill="recurrentish"), "prefill"),
    ],
)
def test_bad_model_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_model("paper"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=30, n_heads=4), "must split into n_heads"),
        (dict(d_model=6, n_heads=2), "even size"),
        (dict(vocab_size=0), "vocab_size must be a positive int"),
        (dict(norm="batchnorm"), "norm must be"),
        (dict(decay="linear"), "decay must be one of"),
        (dict(decay="gated", rescale=True), "rescale=True needs a fixed decay"),
        (dict(norm_eps=-1.0), "norm_eps"),
    ],
)
def test_bad_configs(kwargs, message):
    base = dict(vocab_size=10, d_model=16, n_heads=2, n_layers=1)
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        RetNetLM(RetNetConfig.paper(**base))


def test_the_fixed_decay_conversion_follows_the_buffer():
    msr = RetNetLM(RetNetConfig.paper(vocab_size=16, d_model=8, n_heads=2, n_layers=1)).blocks[0].retention
    assert msr.log_decay.dtype == torch.float64                       # exact until the model is converted
    first = msr.fixed_log_decay(torch.float32)
    assert first.dtype == torch.float32 and msr.fixed_log_decay(torch.float32) is first    # converted once
    assert torch.equal(first, msr.log_decay.float())
    with torch.no_grad():
        msr.log_decay.mul_(2.0)                                       # an in-place change is seen
    assert torch.equal(msr.fixed_log_decay(torch.float32), msr.log_decay.float())
    assert msr.fixed_log_decay(torch.float64) is msr.log_decay
    twin = copy.deepcopy(msr)
    assert torch.equal(twin.fixed_log_decay(torch.float32), msr.log_decay.float())
    pickle.loads(pickle.dumps(msr))                                   # the cache does not block pickling


def test_generate_runs_in_inference_mode_and_returns_an_ordinary_tensor():
    torch.manual_seed(0)
    model = RetNetLM(RetNetConfig.paper(vocab_size=16, d_model=8, n_heads=2, n_layers=2))   # float64 decay buffer
    prompt = torch.randint(0, 16, (2, 5))
    out = model.generate(prompt, 4, temperature=0)
    assert not out.is_inference()
    out[:, 0] = 0                                                   # the caller may edit it
    # the decay conversion cached during generation also serves training afterwards
    logits, _ = model(prompt, mode="chunkwise", chunk_size=2)
    logits.sum().backward()
    assert model.blocks[0].retention.q_proj.weight.grad is not None
    with torch.inference_mode():                                     # a model built in inference mode works too
        built_inside = RetNetLM(RetNetConfig.paper(vocab_size=16, d_model=8, n_heads=2, n_layers=2))
        for mode in ("parallel", "recurrent", "chunkwise"):
            built_inside(prompt, mode=mode)
            built_inside(prompt, mode=mode)
    assert not TransformerLM.matching(model.config).generate(prompt, 3).is_inference()


# -- the gated decay ------------------------------------------------------------------------------
def test_gate_equation():
    z = torch.linspace(-30, 8, 39, dtype=torch.float64)     # the naive log loses digits for z >> 1
    gamma = torch.sigmoid(z) ** (1 / 16)
    assert GATE_TEMPERATURE == 16
    assert torch.allclose(gated_log_decay(z), gamma.log(), rtol=1e-10, atol=0)
    assert (gated_log_decay(z) < 0).all()
    assert torch.isfinite(gated_log_decay(torch.tensor([-1e4, 1e4], dtype=torch.float64))).all()
    ld = paper_log_decay(8)
    assert torch.allclose(gated_log_decay(gate_logit_for(ld)), ld, rtol=1e-10, atol=0)
    with pytest.raises(ValueError, match="no fixed schedule"):
        decay_schedule("gated", 4)


def test_the_gate_starts_at_the_papers_schedule():
    msr = MultiScaleRetention(RetNetConfig.paper(vocab_size=5, d_model=16, n_heads=4, n_layers=1, decay="gated"))
    assert torch.allclose(gated_log_decay(msr.decay_proj.bias.double()), paper_log_decay(4), rtol=1e-5)


def test_the_decay_varies_with_the_input(device):
    model = make_model(**MODELS["gated"], device=device)
    msr = model.blocks[0].retention
    x = torch.randn(2, 9, 16, dtype=torch.float64, device=device)
    ld = gated_log_decay(msr.decay_proj(x)).transpose(1, 2)
    assert ld.shape == (2, 2, 9) and ld.std() > 1e-3 and (ld < 0).all()
    assert msr.log_decay is None and "log_decay" not in model.state_dict()
    names = [n for n, _ in model.named_parameters() if "decay" in n]
    assert names == [f"blocks.{i}.retention.decay_proj.{w}" for i in range(2) for w in ("weight", "bias")]


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_the_gate(mode, device):
    model = make_model(**MODELS["gated"], device=device).train()
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


def test_chunkwise_without_a_chunk_size_uses_the_rule_and_agrees_with_parallel():
    from retnet_mini.costs import default_chunk_size
    torch.manual_seed(0)
    model = RetNetLM(RetNetConfig.paper(vocab_size=11, d_model=16, n_heads=2, n_layers=1)).double()
    assert model.config.chunk_size is None
    assert model.chunk_size_for(300) == default_chunk_size(300, 8, 32) == 64
    assert model.chunk_size_for(10) == 16 and model.chunk_size_for(300, 7) == 7
    fixed = RetNetLM(RetNetConfig.paper(vocab_size=11, d_model=16, n_heads=2, n_layers=1, chunk_size=5))
    assert fixed.chunk_size_for(300) == 5
    tokens = torch.randint(0, 11, (2, 150))
    parallel, _ = model(tokens)
    chunkwise, _ = model(tokens, mode="chunkwise")
    assert (parallel - chunkwise).abs().max() < 1e-10
    with pytest.raises(ValueError, match="RetNetConfig.chunk_size must be a positive int or None"):
        RetNetConfig.paper(vocab_size=11, chunk_size=0)


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(MODELS)), chunk_size=st.integers(1, 13), T=st.integers(1, 13))
def test_the_form_changes_the_cost_not_the_training_gradients(name, chunk_size, T):
    """What the training chapter relies on: a cross-entropy loss has the same value and the same gradient
    for every parameter whichever form computes it (float64, to round-off), for any chunk size."""
    model = make_model(**MODELS[name]).train()
    tokens = torch.randint(0, 37, (2, T + 1), generator=torch.Generator().manual_seed(T))
    losses, grads = {}, {}
    for mode in MODES:
        model.zero_grad(set_to_none=True)
        logits, _ = model(tokens[:, :-1], mode=mode, chunk_size=chunk_size if mode == "chunkwise" else None)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        losses[mode] = loss.item()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads["parallel"]) == {n for n, p in model.named_parameters() if p.requires_grad}
    for mode in ("recurrent", "chunkwise"):
        assert abs(losses[mode] - losses["parallel"]) < 1e-12
        for n, g in grads["parallel"].items():
            torch.testing.assert_close(grads[mode][n], g, rtol=1e-9, atol=1e-12, msg=f"{mode}: {n}")
