"""The Transformer baseline: KV-cache decoding equals the full forward pass, generation, parameter matching,
input validation."""
import pytest
import torch

from retnet_mini.model import RetNetConfig, RetNetLM
from retnet_mini.transformer import KVCache, TransformerConfig, TransformerLM, matching_config


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: one thread (tests/conftest.py)


@pytest.fixture
def device(request):
    # Uses a --device option when the suite's conftest defines one; CPU otherwise.
    return torch.device(request.config.getoption("--device", default="cpu"))


def small_model(device, dtype=torch.float64, seed=0, **overrides):
    torch.manual_seed(seed)
    settings = dict(vocab_size=37, d_model=32, n_heads=4, n_layers=2, ffn_dim=48)
    settings.update(overrides)
    model = TransformerLM(TransformerConfig(**settings)).to(device=device, dtype=dtype).eval()
    for p in model.parameters():   # non-trivial norms and biases, so every parameter is exercised
        if p.ndim == 1:
            torch.nn.init.normal_(p, mean=float(p.detach().mean()), std=0.3)
    return model


def tokens_for(model, B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (B, T), generator=g).to(model.embed.weight.device)


def decode_pieces(model, tokens, pieces, state=None):
    """Feed ``tokens`` in consecutive pieces of the given lengths, carrying the cache; concat the logits."""
    out, t = [], 0
    for n in pieces:
        logits, state = model(tokens[:, t : t + n], state=state)
        out.append(logits)
        t += n
    assert t == tokens.shape[1]
    return torch.cat(out, dim=1), state


VARIANTS = [
    dict(),
    dict(positions="learned", max_len=64),
    dict(norm="rmsnorm", bias=False, n_heads=2),
    dict(tie_embeddings=True, n_heads=1),
]


# ---------------------------------------------------------------------------------------------
# Cached == uncached
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_prefill_then_steps_equals_full_float64(device, variant):
    model = small_model(device, **variant)
    x = tokens_for(model, 3, 30)
    full, _ = model(x)
    cached, state = decode_pieces(model, x, [6] + [1] * 24)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)
    assert state.offset == 30


@torch.no_grad()
def test_prefill_then_steps_equals_full_float32(device):
    model = small_model(device, dtype=torch.float32, d_model=64, n_heads=2, ffn_dim=128, n_layers=3)
    x = tokens_for(model, 2, 40)
    full, _ = model(x)
    cached, _ = decode_pieces(model, x, [9] + [1] * 31)
    assert (cached - full).abs().max() <= 1e-4 * full.abs().max()


@pytest.mark.parametrize("pieces", [[7, 12, 1, 1, 1, 1, 1], [1, 13, 2, 5, 1], [3, 3, 3, 3, 3, 3, 3]])
@torch.no_grad()
def test_uneven_prefill_pieces_then_decode(device, pieces):
    model = small_model(device)
    x = tokens_for(model, 2, sum(pieces))
    full, _ = model(x)
    cached, _ = decode_pieces(model, x, pieces)
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)
    # The same with a preallocated cache (writes in place, no growth).
    cached, state = decode_pieces(model, x, pieces, state=model.init_cache(2, sum(pieces)))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-10)
    assert state.capacity == sum(pieces)


@torch.no_grad()
def test_cache_grows_geometrically_and_stays_exact(device):
    model = small_model(device, n_layers=1, d_model=16, n_heads=2, ffn_dim=16)
    T = 150
    x = tokens_for(model, 2, T)
    full, _ = model(x)
    state = model.init_cache(2, capacity=3)
    capacities, pointers, out = [], set(), []
    for t in range(T):
        logits, state = model(x[:, t : t + 1], state=state)
        out.append(logits)
        capacities.append(state.capacity)
        pointers.add(state.k[0].data_ptr())
    torch.testing.assert_close(torch.cat(out, 1), full, rtol=0, atol=1e-10)
    grown = sorted(set(capacities))
    assert grown == [3, 16, 32, 64, 128, 256]            # doubling from the minimum of 16
    assert len(pointers) == len(grown)                        # in place between growths
    # Filled bytes only: 2 (k, v) * layers * B * H * offset * head_dim * 8 bytes.
    assert state.nbytes() == 2 * 1 * 2 * 2 * T * 8 * 8
    assert state.allocated_nbytes() == 2 * 1 * 2 * 2 * 256 * 8 * 8


@torch.no_grad()
def test_branching_from_one_cache(device):
    model = small_model(device)
    x = tokens_for(model, 2, 20)
    _, state = model(x[:, :10], state=model.init_cache(2, 32))
    a, _ = model(x[:, 10:], state=state)
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % model.config.vocab_size
    b, _ = model(y[:, 10:], state=state)          # overwrites a's slots, but state's prefix is intact
    torch.testing.assert_close(a, model(x)[0][:, 10:], rtol=0, atol=1e-10)
    torch.testing.assert_close(b, model(y)[0][:, 10:], rtol=0, atol=1e-10)
    c = state.clone()
    assert c.capacity == c.offset == 10 and c.nbytes() == state.nbytes()


def test_gradients_through_the_cache_equal_the_full_pass(device):
    model = small_model(device)
    x = tokens_for(model, 2, 12)
    model.zero_grad()
    model(x)[0].square().sum().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits, _ = decode_pieces(model, x, [5, 1, 4, 1, 1], state=model.init_cache(2, 12))
    logits.square().sum().backward()
    for p, g in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-10)


def test_rope_frequencies_stay_float64(device):
    model = small_model(device).float()
    assert model.theta.dtype == torch.float64 and model.embed.weight.dtype == torch.float32
    model = model.half()
    assert model.theta.dtype == torch.float64
    assert "theta" not in model.state_dict()


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def greedy_by_rerunning(model, prompt, n):
    out = prompt
    for _ in range(n):
        logits, _ = model(out)
        out = torch.cat([out, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return out


@pytest.mark.parametrize("B", [1, 3])
@torch.no_grad()
def test_generate_greedy_equals_rerunning_the_full_model(device, B):
    model = small_model(device, vocab_size=11)
    prompt = tokens_for(model, B, 5)
    got = model.generate(prompt, 12, temperature=0)
    assert got.shape == (B, 17) and torch.equal(got[:, :5], prompt)
    assert torch.equal(got, greedy_by_rerunning(model, prompt, 12))
    assert torch.equal(model.generate(prompt, 12, top_k=1), got)   # top-1 sampling is greedy
    assert torch.equal(model.generate(prompt, 0), prompt)


@torch.no_grad()
def test_generate_learned_positions_up_to_max_len(device):
    model = small_model(device, positions="learned", max_len=16)
    prompt = tokens_for(model, 2, 4)
    got = model.generate(prompt, 13, temperature=0)               # feeds positions 0..15
    assert torch.equal(got, greedy_by_rerunning(model, prompt, 13))
    with pytest.raises(ValueError, match="max_len"):
        model.generate(prompt, 14)


@torch.no_grad()
def test_generate_sampling_is_reproducible(device):
    model = small_model(device, dtype=torch.float32)
    prompt = tokens_for(model, 2, 3)
    a = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator(device).manual_seed(3))
    b = model.generate(prompt, 20, temperature=1.0, top_k=5, generator=torch.Generator(device).manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 23)
    assert int(a.min()) >= 0 and int(a.max()) < model.config.vocab_size


# ---------------------------------------------------------------------------------------------
# Parameter matching
# ---------------------------------------------------------------------------------------------
MATCH_CONFIGS = [
    RetNetConfig.paper(256, d_model=64, n_heads=2, n_layers=2),
    RetNetConfig.paper(256, d_model=128, n_heads=4, n_layers=3),
    RetNetConfig.paper(256, d_model=512, n_heads=2, n_layers=4),     # issue 7's benchmark model
    RetNetConfig.paper(1000, d_model=512, n_heads=4, n_layers=6, rescale=True),
    RetNetConfig.torchscale(256, n_heads=4),                           # the preset's default shape
    RetNetConfig.torchscale(300, d_model=128, n_heads=2, n_layers=2, value_dim=192, ffn_dim=256),
    RetNetConfig.paper(50, d_model=64, n_heads=2, n_layers=2, tie_embeddings=True),
]


def count(config):
    with torch.device("meta"):
        return TransformerLM(config).num_parameters()


@pytest.mark.parametrize("retnet_config", MATCH_CONFIGS, ids=lambda c: f"{c.norm}-d{c.d_model}-h{c.n_heads}-L{c.n_layers}")
def test_matching_parameter_count(retnet_config):
    with torch.device("meta"):
        target = RetNetLM(retnet_config).num_parameters()
    config = matching_config(retnet_config)
    got = count(config)
    assert abs(got - target) <= 0.05 * target
    # As close as an integer width allows: one unit wider or narrower is no closer.
    for f in (config.ffn_dim - 1, config.ffn_dim + 1):
        if f >= 1:
            other = count(TransformerConfig(**{**vars(config), "ffn_dim": f}))
            assert abs(other - target) >= abs(got - target)
    for name in ("vocab_size", "d_model", "n_heads", "n_layers", "norm", "bias", "tie_embeddings"):
        assert getattr(config, name) == getattr(retnet_config, name)


def test_matching_builds_the_model_and_takes_overrides():
    rc = RetNetConfig.paper(64, d_model=64, n_heads=2, n_layers=2)
    target = RetNetLM(rc).num_parameters()                           # a real build agrees with the meta count
    model = TransformerLM.matching(rc, n_heads=4, positions="learned", max_len=128)
    assert model.config.n_heads == 4 and model.pos_embed is not None
    assert abs(model.num_parameters() - target) <= 0.05 * target
    assert model.num_parameters() == count(model.config)
    with pytest.raises(ValueError, match="ffn_dim"):
        TransformerLM.matching(rc, ffn_dim=100)
    with pytest.raises(ValueError, match="within 5%"):               # a huge position table can't be matched
        matching_config(rc, positions="learned", max_len=100_000)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_bad_tokens_raise(device):
    model = small_model(device)
    ok = tokens_for(model, 2, 4)
    cases = [
        (ok.float(), "tokens"),
        (ok[0], "tokens"),
        (ok[:, :0], "T >= 1"),
        (ok + model.config.vocab_size, "vocab_size"),
        (ok - 100, r"\[0, 37\)"),
        (torch.zeros(2, 3, dtype=torch.long, device="meta"), "model is on"),
    ]
    for tokens, message in cases:
        with pytest.raises(ValueError, match=message):
            model(tokens)
    with pytest.raises(ValueError, match="tokens"):
        model([[1, 2]])


def test_bad_cache_raises(device):
    model = small_model(device)
    x = tokens_for(model, 2, 4)
    _, state = model(x)
    with pytest.raises(ValueError, match="batch size 2 but tokens have batch size 3"):
        model(tokens_for(model, 3, 1), state=state)
    with pytest.raises(ValueError, match="KVCache"):
        model(x, state=(state.k, state.v))
    with pytest.raises(ValueError, match="2 layers"):
        model(x, state=KVCache(state.k[:1], state.v[:1], 4))
    with pytest.raises(ValueError, match="dtype"):
        model(x, state=KVCache([t.float() for t in state.k], [t.float() for t in state.v], 4))
    with pytest.raises(ValueError, match="capacity >= offset"):
        model(x, state=KVCache(state.k, state.v, 5))
    with pytest.raises(ValueError, match="offset"):
        model(x, state=KVCache(state.k, state.v, -1))
    with pytest.raises(ValueError, match="model is on"):
        model(x, state=KVCache([t.to("meta") for t in state.k], state.v, 4))
    with pytest.raises(ValueError, match="max_len"):
        learned = small_model(device, positions="learned", max_len=6)
        _, s = learned(x)
        learned(x, state=s)
    with pytest.raises(ValueError, match="batch_size"):
        model.init_cache(0)
    with pytest.raises(ValueError, match="capacity"):
        model.init_cache(1, capacity=-1)


def test_bad_generate_args_raise(device):
    model = small_model(device)
    prompt = tokens_for(model, 1, 3)
    for kwargs, message in [
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(max_new_tokens=2, temperature=-1.0), "temperature"),
        (dict(max_new_tokens=2, top_k=0), "top_k"),
        (dict(max_new_tokens=2, top_k=38), "top_k"),
    ]:
        with pytest.raises(ValueError, match=message):
            model.generate(prompt, **kwargs)
    with pytest.raises(ValueError, match="prompt_tokens"):
        model.generate(prompt[:, :0], 2)
    with pytest.raises(ValueError, match="vocab_size"):
        model.generate(prompt + 40, 2)


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=30, n_heads=4), "divisible by n_heads"),
    (dict(d_model=12, n_heads=4), "even"),
    (dict(positions="learned"), "max_len"),
    (dict(positions="alibi"), "positions"),
    (dict(norm="batchnorm"), "norm"),
    (dict(ffn_dim=0), "ffn_dim"),
    (dict(n_layers=True), "n_layers"),
    (dict(max_len=0), "max_len"),
    (dict(norm_eps=-1.0), "norm_eps"),
])
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(vocab_size=10, **kwargs)


def test_gpt2_init_gives_a_retnet_the_transformers_initialization_family():
    from retnet_mini import RetNetConfig, RetNetLM
    from retnet_mini.transformer import gpt2_init_

    torch.manual_seed(0)
    config = RetNetConfig.paper(vocab_size=37, d_model=64, n_heads=4, n_layers=3, decay="gated", bias=True)
    model = RetNetLM(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert gpt2_init_(model, config.n_layers) is model
    for name, p in model.named_parameters():
        if "decay_proj" in name or "norm" in name or name in ("embed.weight", "lm_head.weight"):
            assert torch.equal(p, before[name]), name                      # left as they were
        elif name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        else:
            residual = name.endswith(("out_proj.weight", "fc2.weight"))
            want = 0.02 * ((2 * config.n_layers) ** -0.5 if residual else 1.0)
            assert abs(p.std().item() / want - 1) < 0.1 and abs(p.mean().item()) < 0.1 * want, name
    x = torch.randint(0, 37, (2, 9))
    model = model.double()
    outs = [model(x, mode=m)[0] for m in ("parallel", "recurrent", "chunkwise")]
    assert max((o - outs[0]).abs().max().item() for o in outs) < 1e-10


def test_gpt2_init_refuses_bad_arguments():
    from retnet_mini.transformer import gpt2_init_

    with pytest.raises(ValueError, match="model"):
        gpt2_init_("not a model", 2)
    with pytest.raises((ValueError, TypeError), match="n_layers"):
        gpt2_init_(torch.nn.Linear(2, 2), 0)
