"""Edges a user can reach in the models and the retention functions: no silent wrong answer, no opaque crash.

Each test names the behaviour it pins down; the package's error messages must name the argument and what
was expected, so most tests match on that text.
"""
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet_mini import (
    KVCache, RetNetConfig, RetNetLM, RetNetState, TransformerConfig, TransformerLM, chunkwise_retention,
    paper_log_decay, parallel_retention, read_state, recurrent_retention, update_state,
)
from retnet_mini.decay import rescale_factors
from retnet_mini.rotation import rope_theta, rotate, rotate_complex, rotation_tables
from retnet_mini.layers import add_token_shift
from retnet_mini.tasks import copy_task, evaluate_on_task, mqar, mqar_layout, train_on_task

FIXTURE = Path(__file__).parent / "data" / "torchscale_tiny.pt"
MODES = ("parallel", "recurrent", "chunkwise")
VOCAB = 13


def tiny_retnet(**overrides) -> RetNetLM:
    torch.manual_seed(0)
    config = RetNetConfig.paper(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=2, chunk_size=3, **overrides)
    return RetNetLM(config).double().eval()


def tiny_transformer() -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2, n_layers=2)).double().eval()


def tokens(B=2, T=9, seed=1):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# from_torchscale refuses what it cannot convert
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fx():
    return torch.load(FIXTURE, weights_only=True)


def test_torchscale_fixture_still_converts(fx):
    model = RetNetLM.from_torchscale(fx["state_dict"], **fx["config"])
    with torch.no_grad():
        logits = model(fx["tokens"])[0]
    assert (logits - fx["logits"]["0.0"]["parallel"]).abs().max().item() < 1e-9


@pytest.mark.parametrize("change, config_change, message", [
    (lambda sd: {**sd, "layers.0.retention.extra.weight": torch.zeros(3)}, {}, r"keys this conversion does not use.*extra"),
    (lambda sd: {**sd, "layernorm_embedding.weight": torch.ones(32)}, {}, "layernorm_embedding"),
    (lambda sd: {**sd, **{k.replace("layers.1.", "layers.2."): v for k, v in sd.items() if k.startswith("layers.1.")}},
     {}, r"3 layers \(layers\.0 \.\. layers\.2\) but decoder_layers is 2"),
    (lambda sd: sd, {"decoder_retention_heads": 4}, r"retnet_rel_pos\.decay has shape \(2,\).*decoder_retention_heads=4"),
    (lambda sd: {**sd, "retnet_rel_pos.decay": sd["retnet_rel_pos.decay"] * 2}, {}, r"retnet_rel_pos\.decay differs"),
    (lambda sd: {**sd, "retnet_rel_pos.angle": sd["retnet_rel_pos.angle"] + 1e-3}, {}, r"retnet_rel_pos\.angle differs"),
    (lambda sd: sd, {"share_decoder_input_output_embed": True}, "trained untied"),
    (lambda sd: {**sd, 3: torch.zeros(1)}, {}, "map names to tensors"),
])
def test_from_torchscale_refuses_what_it_would_get_wrong(fx, change, config_change, message):
    with pytest.raises(ValueError, match=message):
        RetNetLM.from_torchscale(change(dict(fx["state_dict"])), **{**fx["config"], **config_change})


def test_from_torchscale_head_count_mismatch_would_have_changed_the_logits(fx):
    """Why the head check matters: without the stored buffers the 4-head conversion loads and differs."""
    state_dict = {k: v for k, v in fx["state_dict"].items() if not k.startswith("retnet_rel_pos.")}
    wrong = RetNetLM.from_torchscale(state_dict, **{**fx["config"], "decoder_retention_heads": 4})
    with torch.no_grad():
        gap = (wrong(fx["tokens"])[0] - fx["logits"]["0.0"]["parallel"]).abs().max().item()
    assert gap > 1e-3
    with pytest.raises(ValueError, match="decoder_retention_heads=4"):
        RetNetLM.from_torchscale(fx["state_dict"], **{**fx["config"], "decoder_retention_heads": 4})


def test_from_torchscale_tied_weights_that_agree_are_accepted(fx):
    sd = dict(fx["state_dict"])
    sd["output_projection.weight"] = sd["embed_tokens.weight"].clone()
    model = RetNetLM.from_torchscale(sd, **fx["config"], share_decoder_input_output_embed=True)
    assert model.lm_head.weight is model.embed.weight


# ---------------------------------------------------------------------------------------------
# Token shift: the state carries the last token
# ---------------------------------------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(split=st.integers(1, 8), mode=st.sampled_from(MODES), then=st.sampled_from(MODES))
def test_token_shift_retnet_prefill_then_continue_equals_full_forward(split, mode, then):
    model = add_token_shift(tiny_retnet())
    x = tokens()
    with torch.no_grad():
        full, _ = model(x, mode)
        first, state = model(x[:, :split], mode)
        rest, _ = model(x[:, split:], then, state=state)
    assert state.last_tokens.tolist() == x[:, split - 1:split].tolist()
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-10, rtol=0)


@settings(max_examples=8, deadline=None)
@given(split=st.integers(1, 8))
def test_token_shift_transformer_prefill_then_continue_equals_full_forward(split):
    model = add_token_shift(tiny_transformer())
    x = tokens()
    with torch.no_grad():
        full, _ = model(x)
        first, cache = model(x[:, :split])
        rest, _ = model(x[:, split:], state=cache)
        assert cache.clone().last_tokens.tolist() == x[:, split - 1:split].tolist()
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=1e-10, rtol=0)


@pytest.mark.parametrize("make", [tiny_retnet, tiny_transformer])
def test_token_shift_generate_equals_greedy_full_forward(make):
    model = add_token_shift(make())
    out = model.generate(tokens(T=4), 6, temperature=0)
    with torch.no_grad():
        logits = model(out[:, :-1])[0]
    assert torch.equal(logits[:, 3:].argmax(-1), out[:, 4:])


def test_token_shift_refuses_a_state_without_its_last_token():
    model = add_token_shift(tiny_retnet())
    x = tokens()
    _, state = model(x[:, :4])
    with pytest.raises(ValueError, match="carries no last_tokens"):
        model(x[:, 4:], state=RetNetState(state.layers, state.offset))
    with pytest.raises(ValueError, match=r"last_tokens must be a \(2, 1\)"):
        model(x[:, 4:], state=RetNetState(state.layers, state.offset, x[:1, :1]))
    assert model(x[:, 4:], state=RetNetState(state.layers, 0))[0].shape == (2, 5, VOCAB)   # a fresh start
    plain = tiny_retnet()
    assert plain(x)[1].last_tokens is None and plain(x)[1].nbytes() == plain.init_state(2).nbytes()


# ---------------------------------------------------------------------------------------------
# A NaN or inf at one position never reaches earlier outputs, in any form
# ---------------------------------------------------------------------------------------------
def forms(q, k, v, log_decay, chunk):
    return {
        "parallel": parallel_retention(q, k, v, log_decay),
        "recurrent": recurrent_retention(q, k, v, log_decay)[0],
        "chunkwise": chunkwise_retention(q, k, v, log_decay, chunk)[0],
    }


@settings(max_examples=40, deadline=None)
@given(T=st.integers(2, 12), data=st.data(), which=st.sampled_from("qkv"), bad=st.sampled_from([math.nan, math.inf, -math.inf]),
       chunk=st.integers(1, 6), per_position=st.booleans(), whole_row=st.booleans())
def test_non_finite_input_stays_out_of_earlier_outputs(T, data, which, bad, chunk, per_position, whole_row):
    t = data.draw(st.integers(0, T - 1))
    g = torch.Generator().manual_seed(T)
    B, H, dk, dv = 2, 2, 4, 3
    x = {n: torch.randn(B, H, T, dv if n == "v" else dk, generator=g, dtype=torch.float64) for n in "qkv"}
    log_decay = (-torch.rand(B, H, T, generator=g, dtype=torch.float64) * 0.3) if per_position else paper_log_decay(H)
    clean = forms(x["q"], x["k"], x["v"], log_decay, chunk)
    if whole_row:
        x[which][:, :, t] = bad
    else:
        x[which][0, 1, t, 0] = bad
    dirty = forms(x["q"], x["k"], x["v"], log_decay, chunk)
    for mode, o in dirty.items():
        assert torch.allclose(o[:, :, :t], clean[mode][:, :, :t], atol=1e-12, rtol=0), mode
        # the same positions are non-finite in every form: those the recurrent form makes non-finite
        assert torch.equal(torch.isfinite(o), torch.isfinite(dirty["recurrent"])), mode
        assert not torch.isfinite(o[:, :, t:]).all()


def test_non_finite_value_column_poisons_the_chunkwise_state_like_the_recurrent_one():
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 7, 4, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(1, 2, 7, 3, generator=g, dtype=torch.float64)
    v[0, 0, 2, 1] = math.nan
    ld = paper_log_decay(2)
    rec = recurrent_retention(q, k, v, ld)[1]
    chunk = chunkwise_retention(q, k, v, ld, 3)[1]
    assert torch.equal(torch.isfinite(rec), torch.isfinite(chunk))
    assert torch.allclose(rec.nan_to_num(), chunk.nan_to_num(), atol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_nan_embedding_at_one_position_leaves_earlier_logits_of_the_model_alone(mode):
    model = tiny_retnet()
    x = tokens()
    with torch.no_grad():
        clean = model(x, mode)[0]
        hook = model.embed.register_forward_hook(lambda m, i, out: out.index_fill(1, torch.tensor([5]), math.nan))
        dirty = model(x, mode)[0]
        hook.remove()
    assert torch.allclose(dirty[:, :5], clean[:, :5], atol=1e-12, rtol=0)
    assert torch.isnan(dirty[:, 5:]).all()


# ---------------------------------------------------------------------------------------------
# Positions are ints >= 0
# ---------------------------------------------------------------------------------------------
BAD_POSITIONS = [-1, 1.5, 2.0, True, torch.tensor(3), "3", None]


@pytest.mark.parametrize("offset", BAD_POSITIONS)
def test_state_offset_must_be_a_non_negative_int(offset):
    model = tiny_retnet()
    layers = model.init_state(2).layers
    with pytest.raises(ValueError, match=r"RetNetState\.offset must be an int >= 0"):
        RetNetState(layers, offset)
    state = RetNetState(layers, 0)
    state.offset = offset                       # changed after it was made: the forward pass checks again
    with pytest.raises(ValueError, match=r"state\.offset must be an int >= 0"):
        model(tokens(), state=state)
    with pytest.raises(ValueError, match=r"KVCache\.offset must be an int >= 0"):
        KVCache([], [], offset)


@pytest.mark.parametrize("offset", BAD_POSITIONS)
def test_position_arguments_of_the_rotation_and_rescaling(offset):
    theta = rope_theta(4)
    x = torch.randn(3, 4, dtype=torch.float64)
    for call in (lambda: rotation_tables(theta, offset, 3, torch.float64, "cpu"), lambda: rotate(x, theta, offset),
                 lambda: rotate_complex(x, theta, offset), lambda: rescale_factors(paper_log_decay(2), offset, 3)):
        with pytest.raises(ValueError, match="offset must be an int >= 0"):
            call()
    with pytest.raises(ValueError, match="length must be an int >= 0"):
        rotation_tables(theta, 0, -2, torch.float64, "cpu")


# ---------------------------------------------------------------------------------------------
# Configs refuse invalid values and cannot be changed into invalid ones
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("norm_eps", math.nan, "norm_eps must be a finite number >= 0"),
    ("norm_eps", math.inf, "norm_eps must be a finite number >= 0"),
    ("norm_eps", -1e-6, "norm_eps must be a finite number >= 0"),
    ("norm_eps", "1e-5", "norm_eps must be a finite number >= 0"),
    ("theta", "xpos", r"theta must be one of \['rope', 'torchscale'\]"),
    ("norm", "batchnorm", "norm must be one of"),
    ("head_norm", "layernorm", "head_norm must be one of"),
    ("ffn", "relu", "ffn must be one of"),
    ("decay", None, "decay must be one of"),
    ("bias", "no", r"bias must be True or False, got 'no' \(str\)"),
    ("gate", "False", "gate must be True or False"),
    ("rescale", 1, "rescale must be True or False"),
    ("tie_embeddings", "yes", "tie_embeddings must be True or False"),
    ("chunk_size", True, "chunk_size must be a positive int"),
    ("n_layers", 2.0, "n_layers must be a positive int"),
])
def test_retnet_config_refuses(field, value, message):
    with pytest.raises(ValueError, match=message):
        RetNetConfig.paper(vocab_size=VOCAB, d_model=16, n_heads=2, **{field: value})


def test_configs_cannot_be_changed_after_they_are_made():
    config = RetNetConfig.paper(vocab_size=VOCAB, d_model=16, n_heads=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_heads = 3
    assert dataclasses.replace(config, chunk_size=8).chunk_size == 8
    with pytest.raises(ValueError, match="must split into n_heads"):
        dataclasses.replace(config, n_heads=3)
    tconfig = TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tconfig.max_len = 0


@pytest.mark.parametrize("field, value", [("norm_eps", math.nan), ("bias", "no"), ("tie_embeddings", 1),
                                          ("rope_base", math.inf), ("rope_base", True), ("max_len", True)])
def test_transformer_config_refuses(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig(vocab_size=VOCAB, d_model=16, n_heads=2, **{field: value})


# ---------------------------------------------------------------------------------------------
# Empty inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 5), (2, 0), (0, 0)])
@pytest.mark.parametrize("mode", MODES)
def test_models_refuse_empty_tokens_clearly(shape, mode):
    x = torch.zeros(shape, dtype=torch.long)
    with pytest.raises(ValueError, match=r"tokens must have B >= 1 and T >= 1"):
        tiny_retnet()(x, mode)
    with pytest.raises(ValueError, match=r"tokens must have B >= 1 and T >= 1"):
        tiny_transformer()(x)


@pytest.mark.parametrize("B, T", [(0, 5), (2, 0), (0, 0)])
def test_retention_functions_give_empty_results_for_empty_inputs(B, T):
    q = torch.randn(B, 2, T, 4, dtype=torch.float64)
    v = torch.randn(B, 2, T, 3, dtype=torch.float64)
    ld = paper_log_decay(2)
    state = torch.ones(B, 2, 4, 3, dtype=torch.float64)
    assert parallel_retention(q, q, v, ld).shape == (B, 2, T, 3)
    for o, s in (recurrent_retention(q, q, v, ld, state), chunkwise_retention(q, q, v, ld, 4, state)):
        assert o.shape == (B, 2, T, 3) and torch.equal(s, state * math.exp(0) if T == 0 else s)
    assert read_state(q, state, ld).shape == (B, 2, T, 3)
    assert torch.equal(update_state(state, q, v, ld), state) if T == 0 else True


# ---------------------------------------------------------------------------------------------
# generate: temperature and top_k
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_retnet, tiny_transformer])
@pytest.mark.parametrize("temperature", [None, math.inf, math.nan, -1.0, "1", True])
def test_generate_refuses_bad_temperatures(make, temperature):
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0 \(0 for greedy"):
        make().generate(tokens(T=3), 4, temperature=temperature)


@pytest.mark.parametrize("make", [tiny_retnet, tiny_transformer])
@pytest.mark.parametrize("top_k", [0, VOCAB + 1, -1, 1.5, True, "3", torch.tensor(3)])
def test_generate_refuses_bad_top_k(make, top_k):
    with pytest.raises(ValueError, match=rf"top_k must be None or an int in \[1, {VOCAB}\]"):
        make().generate(tokens(T=3), 4, top_k=top_k)


@pytest.mark.parametrize("make", [tiny_retnet, tiny_transformer])
@pytest.mark.parametrize("temperature", [1e-30, 1e-300, 5e-324])
def test_a_tiny_temperature_is_greedy_decoding(make, temperature):
    model = make()
    greedy = model.generate(tokens(T=3), 6, temperature=0)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(tokens(T=3), 6, temperature=temperature, generator=g), greedy)


def test_generate_with_numpy_style_numbers():
    np = pytest.importorskip("numpy")
    model = tiny_retnet()
    out = model.generate(tokens(T=3), 4, temperature=np.float64(0.5), top_k=np.int64(3),
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("make", [tiny_retnet, tiny_transformer])
def test_nan_logits_give_a_clear_error_when_sampling(make):
    model = make()
    with torch.no_grad():
        model.lm_head.weight.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="logits contain NaN"):
        model.generate(tokens(T=3), 4, temperature=1.0)


# ---------------------------------------------------------------------------------------------
# A stride-0 (expanded) state
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("overrides", [{}, {"rescale": True}, {"decay": "gated"}])
def test_expanded_state_works_in_every_mode(mode, overrides):
    model = tiny_retnet(**overrides)
    x = tokens()
    with torch.no_grad():
        _, one = model(x[:1, :4])
        expanded = RetNetState([s.expand(2, *s.shape[1:]) for s in one.layers], one.offset)
        copied = RetNetState([s.expand(2, *s.shape[1:]).contiguous() for s in one.layers], one.offset)
        got, s_got = model(x[:, 4:], mode, state=expanded)
        want, s_want = model(x[:, 4:], mode, state=copied)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(s_got.layers, s_want.layers))
    assert all(s.stride(0) == 0 for s in expanded.layers)        # read, never written through


def test_expanded_state_in_the_retention_functions():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 5, 4, generator=g, dtype=torch.float64)
    v = torch.randn(3, 2, 5, 3, generator=g, dtype=torch.float64)
    ld = paper_log_decay(2)
    base = torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64)
    expanded, copied = base.expand(3, -1, -1, -1), base.expand(3, -1, -1, -1).contiguous()
    for f in (lambda s: recurrent_retention(q, q, v, ld, s), lambda s: chunkwise_retention(q, q, v, ld, 2, s),
              lambda s: (read_state(q, s, ld), update_state(s, q, v, ld))):
        for a, b in zip(f(expanded), f(copied)):
            assert torch.allclose(a, b, atol=1e-12, rtol=0)
    with torch.no_grad(), pytest.raises(ValueError, match="inplace=True needs a contiguous state"):
        recurrent_retention(q, q, v, ld, expanded, inplace=True)


# ---------------------------------------------------------------------------------------------
# Task builders and the probes' training loop check their arguments first
# ---------------------------------------------------------------------------------------------
def test_task_builders_refuse_bad_generators():
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        mqar(2, 2, 16, 9, generator=0)
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        copy_task(2, 3, 5, generator="seed")


@pytest.mark.parametrize("change, message", [
    (dict(keys=torch.ones(2, 3)), "keys must be a 2-D int64 tensor"),
    (dict(values=torch.ones(2, 2, dtype=torch.long)), r"keys and values must both be \(B, N\)"),
    (dict(queried=torch.tensor([[0], [3]])), r"queried must hold pair indices in \[0, 3\)"),
    (dict(slots=torch.tensor([[0], [9]])), "slots must be >= 0 with 2N"),
    (dict(seq_len=0), "seq_len must be an int >= 1"),
])
def test_mqar_layout_checks_its_parts(change, message):
    args = dict(keys=torch.tensor([[1, 2, 3], [3, 2, 1]]), values=torch.tensor([[4, 5, 6], [6, 5, 4]]),
                queried=torch.tensor([[0], [2]]), slots=torch.tensor([[0], [1]]), seq_len=12)
    args.update(change)
    with pytest.raises(ValueError, match=message):
        mqar_layout(**args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=2.0), "steps must be an int"), (dict(steps=True), "steps must be an int"),
    (dict(lr=math.nan), "lr must be a finite number > 0"), (dict(lr=0.0), "lr must be a finite number > 0"),
    (dict(grad_clip=math.inf), "grad_clip must be a finite number > 0"),
    (dict(weight_decay=-0.1), "weight_decay must be a finite number >= 0"),
    (dict(warmup_steps=-1), "warmup_steps must be an int >= 0"), (dict(seed=1.0), "seed must be an int"),
    (dict(make_batch=None), "make_batch must be a function"), (dict(model="model"), "model must be an nn.Module"),
])
def test_train_on_task_refuses_bad_arguments_before_any_work(kwargs, message):
    calls = []

    def make_batch(g):
        calls.append(1)
        return copy_task(2, 3, VOCAB, generator=g)

    args = dict(model=tiny_retnet(), make_batch=make_batch, steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        train_on_task(**args)
    assert not calls


def test_evaluate_on_task_checks_the_batch():
    with pytest.raises(ValueError, match=r"batch must be a tuple \(inputs, targets, loss_mask\)"):
        evaluate_on_task(tiny_retnet(), tokens())


# ---------------------------------------------------------------------------------------------
# Half-precision decoding keeps a float32 state (why: a state rounded at every step drifts)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_decoding_keeps_a_float32_state_and_is_much_closer(dtype):
    g = torch.Generator().manual_seed(0)
    T = 256
    q, k, v = (torch.randn(1, 2, T, 8, generator=g, dtype=torch.float64) for _ in range(3))
    ld = torch.log(torch.tensor([0.99, 0.999], dtype=torch.float64))
    exact = recurrent_retention(q, k, v, ld)[0]
    qh, kh, vh = (x.to(dtype) for x in (q, k, v))
    ours, rounded, state, s_rounded = [], [], None, None
    with torch.no_grad():
        for t in range(T):
            step = slice(t, t + 1)
            o, state = recurrent_retention(qh[:, :, step], kh[:, :, step], vh[:, :, step], ld, state)
            assert state.dtype == torch.float32
            ours.append(o)
            # the same step with the state rounded to the half dtype, as a half-precision state would be
            o_r, s_rounded = recurrent_retention(qh[:, :, step], kh[:, :, step], vh[:, :, step], ld, s_rounded)
            s_rounded = s_rounded.to(dtype).float()
            rounded.append(o_r)
    err = (torch.cat(ours, 2).double() - exact).abs().max().item()
    err_rounded = (torch.cat(rounded, 2).double() - exact).abs().max().item()
    assert err * 3 < err_rounded, (err, err_rounded)
