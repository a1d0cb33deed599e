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


# ---------------------------------------------------------------------------------------------
# Without autograd, a layer's four projections are one product with cached concatenated weights
# ---------------------------------------------------------------------------------------------
def logits_with_autograd(model, x, mode="parallel"):
    """The logits from the four separate projections (autograd on: the fused weights are not used)."""
    with torch.enable_grad():
        return model(x, mode=mode)[0].detach()


@pytest.mark.parametrize("overrides", [{}, {"gate": False}, {"bias": True}, {"decay": "gated"}, {"rescale": True}])
@pytest.mark.parametrize("mode", ["parallel", "recurrent", "chunkwise"])
def test_fused_projections_give_the_four_projections_numbers(overrides, mode):
    model, x = retnet(**overrides), tokens()
    layer = model.blocks[0].retention
    with torch.no_grad():
        h = torch.randn(2, 5, 16, dtype=torch.float64)
        fused = layer.projections(h)
        assert layer._fused_weights is not None                    # the fused path ran
        separate = [p(h) if p is not None else None for p in (layer.q_proj, layer.k_proj, layer.v_proj, layer.g_proj)]
        for a, b in zip(fused, separate):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
        no_grad = model(x, mode=mode)[0]
    torch.testing.assert_close(no_grad, logits_with_autograd(model, x, mode), rtol=1e-12, atol=1e-12)


def test_fused_weights_follow_every_counted_change_of_the_parameters():
    model, x = retnet(), tokens()
    def agree():
        with torch.no_grad():
            torch.testing.assert_close(model(x)[0], logits_with_autograd(model, x), rtol=1e-12, atol=1e-12)
    agree()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)             # an optimizer step (in place)
    model(x)[0].square().mean().backward()
    opt.step()
    agree()
    other = retnet()
    torch.manual_seed(5)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    model.load_state_dict(other.state_dict())                     # copy_ into the parameters
    agree()
    with torch.no_grad():
        model.blocks[1].retention.k_proj.weight.mul_(3.0)          # an in-place edit
    agree()
    model.float()                                                  # a new dtype: new tensors
    x32 = model(x)[0]
    assert x32.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], logits_with_autograd(model, x), rtol=1e-5, atol=1e-5)


def test_writes_through_data_need_drop_fused_weights():
    """PyTorch does not count writes through ``.data``: the documented way out is drop_fused_weights."""
    model, x = retnet(), tokens()
    with torch.no_grad():
        model(x)
    for block in model.blocks:
        block.retention.q_proj.weight.data.mul_(2.0)
    with torch.no_grad():
        stale = model(x)[0]
    fresh = logits_with_autograd(model, x)
    assert not torch.allclose(stale, fresh)                        # the caveat is real
    for block in model.blocks:
        block.retention.drop_fused_weights()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], fresh, rtol=1e-12, atol=1e-12)


def test_a_model_made_in_inference_mode_uses_the_four_projections():
    x = tokens()
    with torch.inference_mode():
        model = retnet()
        logits = model(x)[0]
        assert all(b.retention._fused_weights is None for b in model.blocks)
    torch.testing.assert_close(logits, logits_with_autograd(retnet(), x), rtol=1e-12, atol=1e-12)
