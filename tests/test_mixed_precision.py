"""Mixed precision: every model under bfloat16 and float16 autocast (CPU autocast here; CUDA's has the same
rules), and models converted to half precision.

Tolerances, from measurements on these small random models (logits of std ~1, max |logit| ~4): the largest
logit difference to float32, divided by the largest float32 logit, was at most 0.021 under bfloat16 and
0.0018 under float16 (8 and 11 bits of mantissa). The bounds below are about twice that.
"""
import pytest
import torch

from retnet_mini import (
    RetNetConfig,
    RetNetLM,
    TransformerConfig,
    TransformerLM,
    chunkwise_retention,
    parallel_retention,
    recurrent_retention,
    state_dtype,
)
from retnet_mini.layers import projection_dtype
from retnet_mini.layers import add_token_shift

HALF = (torch.bfloat16, torch.float16)
REL_TOL = {torch.bfloat16: 0.04, torch.float16: 0.004}
VOCAB = 48

CONFIGS = {
    "paper": lambda: RetNetConfig.paper(VOCAB, d_model=32, n_heads=4, n_layers=2),
    "torchscale": lambda: RetNetConfig.torchscale(VOCAB, d_model=32, n_heads=2, n_layers=2, value_dim=64, ffn_dim=64),
    "gated": lambda: RetNetConfig.paper(VOCAB, d_model=32, n_heads=4, n_layers=2, decay="gated"),
    "rescale": lambda: RetNetConfig.paper(VOCAB, d_model=32, n_heads=4, n_layers=2, rescale=True),
}


def rel_max_err(x, ref):
    return ((x.float() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, VOCAB, (2, 70), generator=torch.Generator().manual_seed(0))


def retnet(name):
    torch.manual_seed(0)
    return RetNetLM(CONFIGS[name]())


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", CONFIGS)
def test_every_mode_under_autocast_matches_float32(name, dtype, tokens):
    model = retnet(name)
    with torch.no_grad():
        ref, _ = model(tokens)
        for mode in ("parallel", "recurrent", "chunkwise"):
            with torch.autocast("cpu", dtype=dtype):
                logits, state = model(tokens, mode=mode, chunk_size=16)
            assert logits.dtype == dtype                       # the output projection ran in half precision
            assert all(s.dtype == torch.float32 for s in state.layers)
            assert rel_max_err(logits, ref) < REL_TOL[dtype], (mode, rel_max_err(logits, ref))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_state_continues_under_autocast(dtype, tokens):
    """Prefill under autocast in one mode, continue in another: the same logits as one float32 pass."""
    model = retnet("paper")
    with torch.no_grad():
        ref, _ = model(tokens)
        with torch.autocast("cpu", dtype=dtype):
            first, state = model(tokens[:, :40], mode="chunkwise", chunk_size=16)
            rest, _ = model(tokens[:, 40:], mode="recurrent", state=state)
    assert rel_max_err(torch.cat([first, rest], dim=1), ref) < REL_TOL[dtype]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", ["paper", "gated"])
def test_backward_under_autocast(name, dtype, tokens):
    model = retnet(name)
    grads = {}
    for precision in (None, dtype):
        model.zero_grad()
        with torch.autocast("cpu", dtype=precision or torch.bfloat16, enabled=precision is not None):
            logits, _ = model(tokens, mode="chunkwise", chunk_size=16)
        torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten()).backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.isfinite(grads[dtype]).all()
    cosine = torch.nn.functional.cosine_similarity(grads[dtype].double(), grads[None].double(), dim=0).item()
    assert cosine > 0.99, cosine


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_generate_under_autocast(dtype, tokens):
    model = retnet("paper")
    with torch.autocast("cpu", dtype=dtype):
        out = model.generate(tokens[:, :5], 12, temperature=0)
    assert out.shape == (2, 17) and out.dtype == torch.int64
    assert torch.equal(out[:, :5], tokens[:, :5])


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_transformer_under_autocast(dtype, tokens):
    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2))
    with torch.no_grad():
        ref, _ = model(tokens)
        with torch.autocast("cpu", dtype=dtype):
            first, cache = model(tokens[:, :40])
            rest, _ = model(tokens[:, 40:], state=cache)      # a cache made under autocast is accepted
            out = model.generate(tokens[:, :5], 6, temperature=0)
    assert rel_max_err(torch.cat([first, rest], dim=1), ref) < REL_TOL[dtype]
    assert out.shape == (2, 11)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_model_keeps_a_float32_state(dtype, tokens):
    model = retnet("rescale")
    with torch.no_grad():
        ref, _ = model(tokens)
        model.to(dtype)
        assert all(s.dtype == torch.float32 for s in model.init_state(2).layers)
        for mode in ("parallel", "recurrent", "chunkwise"):
            logits, state = model(tokens, mode=mode, chunk_size=16)
            assert logits.dtype == dtype and all(s.dtype == torch.float32 for s in state.layers)
            assert rel_max_err(logits, ref) < REL_TOL[dtype]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_retention_functions_ignore_autocast(dtype):
    """Inside autocast the retention functions compute as outside it: float32 inputs stay float32, and
    half inputs give the same result (computed in float32) with a float32 state."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 40, 8, generator=g) for _ in range(3))
    ld = torch.log(torch.tensor([0.9, 0.99]))
    for inputs in ((q, k, v), tuple(x.to(dtype) for x in (q, k, v))):
        plain = [parallel_retention(*inputs, ld), *recurrent_retention(*inputs, ld), *chunkwise_retention(*inputs, ld, 16)]
        with torch.autocast("cpu", dtype=dtype):
            auto = [parallel_retention(*inputs, ld), *recurrent_retention(*inputs, ld), *chunkwise_retention(*inputs, ld, 16)]
        for a, p in zip(auto, plain):
            assert a.dtype == p.dtype and torch.equal(a, p)
        assert plain[0].dtype == inputs[0].dtype and plain[2].dtype == state_dtype(inputs[0].dtype)


def test_inplace_decoding_needs_a_state_in_state_dtype():
    q = torch.randn(1, 2, 1, 4, dtype=torch.bfloat16)
    ld = torch.log(torch.tensor([0.9, 0.99]))
    state = torch.zeros(1, 2, 4, 4)
    with torch.no_grad():
        _, out = recurrent_retention(q, q, q, ld, state, inplace=True)
        assert out.data_ptr() == state.data_ptr() and state.abs().sum() > 0     # the caller's state moved on
        with pytest.raises(ValueError, match=r"inplace=True needs a contiguous state of dtype torch\.float32"):
            recurrent_retention(q, q, q, ld, state.bfloat16(), inplace=True)


def test_projection_dtype():
    x = torch.zeros(2, 3)
    assert projection_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert projection_dtype(x) == torch.bfloat16
        assert projection_dtype(x.double()) == torch.float64 == torch.nn.Linear(3, 1).double()(x.double()).dtype
    assert projection_dtype(x.double()) == torch.float64


MODELS = {
    "retnet": lambda: retnet("paper"),
    "retnet + token shift": lambda: add_token_shift(retnet("paper")),
    "transformer": lambda: TransformerLM(TransformerConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2)),
    "transformer + token shift": lambda: add_token_shift(
        TransformerLM(TransformerConfig(vocab_size=VOCAB, d_model=32, n_heads=4, n_layers=2))),
}


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_step_under_autocast(name, dtype, tokens):
    """Forward, backward and an optimizer step (float16 through a GradScaler) for every model the book
    trains, including the limits chapter's token-shift variants."""
    torch.manual_seed(0)
    model = MODELS[name]()
    with torch.no_grad():
        ref = model(tokens)[0]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == torch.float16)
    with torch.autocast("cpu", dtype=dtype):
        logits = model(tokens)[0]
    assert rel_max_err(logits, ref) < REL_TOL[dtype]
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.flatten())
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(optimizer)
    scaler.update()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
