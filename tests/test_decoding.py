"""The public decoding step of both models: ``model.step(tokens, state) -> logits``, the state moved on in place."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet_mini import RetNetConfig, RetNetLM, RetNetState, TransformerConfig, TransformerLM
from retnet_mini.layers import add_token_shift

VOCAB = 11


def retnet(**overrides) -> RetNetLM:
    torch.manual_seed(0)
    return RetNetLM(RetNetConfig.paper(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=2, **overrides)).double().eval()


def transformer() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=2)).double().eval()


def tokens(B=2, T=7):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(3))


@settings(max_examples=10, deadline=None)
@given(overrides=st.sampled_from([{}, {"rescale": True}, {"decay": "gated"}]), prefix=st.integers(1, 5),
       shift=st.booleans())
def test_retnet_step_equals_the_full_forward_and_moves_the_state_in_place(overrides, prefix, shift):
    model = retnet(**overrides)
    if shift:
        add_token_shift(model)
    x = tokens()
    with torch.no_grad():
        full, _ = model(x)
        _, state = model(x[:, :prefix], mode="chunkwise")
    buffers = [s.data_ptr() for s in state.layers]
    for t in range(prefix, x.shape[1]):
        logits = model.step(x[:, t], state)                      # (B,) ids work as well as (B, 1)
        assert torch.allclose(logits, full[:, t], atol=1e-10, rtol=0)
        assert state.offset == t + 1
        assert [s.data_ptr() for s in state.layers] == buffers   # the same tensors, updated
    assert (state.last_tokens is not None) == shift


def test_retnet_step_from_a_fresh_state_and_the_forward_can_continue_it():
    model = retnet()
    x = tokens()
    state = model.init_state(2)                                  # made outside inference mode
    for t in range(3):
        model.step(x[:, t:t + 1], state)
    with torch.no_grad():
        rest, _ = model(x[:, 3:], mode="recurrent", state=state)
        full, _ = model(x)
    assert torch.allclose(rest, full[:, 3:], atol=1e-10, rtol=0)


def test_transformer_step_equals_the_full_forward_and_grows_its_cache_in_place():
    model = transformer()
    x = tokens(T=20)
    with torch.no_grad():
        full, _ = model(x)
    cache = model.init_cache(2, capacity=1)                      # too small: the step must grow it
    ks = cache.k
    for t in range(x.shape[1]):
        logits = model.step(x[:, t], cache)
        assert torch.allclose(logits, full[:, t], atol=1e-10, rtol=0)
    assert cache.offset == 20 and cache.k is ks and cache.capacity >= 20


@pytest.mark.parametrize("make", [retnet, transformer])
def test_generate_is_prefill_then_step(make):
    model = make()
    prompt = tokens(T=4)
    out = model.generate(prompt, 5, temperature=0)
    with torch.no_grad():
        logits, state = model(prompt)
    manual = [prompt]
    last = logits[:, -1]
    for _ in range(5):
        nxt = last.argmax(-1, keepdim=True)
        manual.append(nxt)
        last = model.step(nxt, state)
    assert torch.equal(out, torch.cat(manual, 1))


def test_step_checks_its_arguments():
    model = retnet()
    state = model.init_state(2)
    with pytest.raises(ValueError, match=r"one token per sequence"):
        model.step(tokens(T=2), state)
    with pytest.raises(ValueError, match=r"ids in \[0, 11\)"):
        model.step(torch.full((2, 1), VOCAB), state)
    expanded = RetNetState([s[:1].expand(2, -1, -1, -1) for s in state.layers], 0)
    with pytest.raises(ValueError, match="contiguous torch.float64 tensor to be updated in place"):
        model.step(tokens(T=1), expanded)
    as_float = RetNetState([s.float() for s in state.layers], 0)
    with pytest.raises(ValueError, match="contiguous torch.float64"):
        model.step(tokens(T=1), as_float)
    with pytest.raises(ValueError, match="one token per sequence"):
        transformer().step(tokens(T=3), transformer().init_cache(2))
