"""The synthetic probes: MQAR and copying sequences have the structure they claim, only answers are scored."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet_mini import RetNetConfig, RetNetLM, TransformerConfig, TransformerLM
from retnet_mini.layers import add_token_shift
from retnet_mini.tasks import (FILLER, SEPARATOR, copy_task, evaluate_on_task, masked_accuracy,
                               masked_cross_entropy, mqar, mqar_vocab, train_on_task)


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models: one thread (tests/conftest.py)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def check_mqar(inputs, targets, mask, num_pairs, num_queries, vocab_size):
    B, T = inputs.shape
    keys, values = mqar_vocab(vocab_size)
    assert inputs.dtype == targets.dtype == torch.int64 and mask.dtype == torch.bool
    assert targets.shape == mask.shape == (B, T)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])                    # targets are the next tokens
    assert (inputs >= 0).all() and (inputs < vocab_size).all() and (targets < vocab_size).all()
    N = num_pairs
    for b in range(B):
        k, v = inputs[b, 0:2 * N:2].tolist(), inputs[b, 1:2 * N:2].tolist()
        assert len(set(k)) == N and len(set(v)) == N                       # keys (and values) unique
        assert all(x in keys for x in k) and all(x in values for x in v)
        pairs = dict(zip(k, v))
        assert not mask[b, :2 * N].any()                                   # the pairs themselves are not scored
        positions = mask[b].nonzero().flatten().tolist()
        assert len(positions) == num_queries
        queried = [inputs[b, p].item() for p in positions]
        assert len(set(queried)) == num_queries and set(queried) <= set(k)
        for p in positions:                                                # the answer: that key's value
            assert targets[b, p].item() == pairs[inputs[b, p].item()]
        # everything after the pairs that is not a query or its answer is filler
        answer_positions = {p + 1 for p in positions}
        for t in range(2 * N, T):
            if t not in positions and t not in answer_positions:
                assert inputs[b, t].item() == FILLER
        # masks cover exactly the answers: any position whose target is predictable from an earlier pair
        for t in range(2 * N, T):
            token = inputs[b, t].item()
            assert bool(mask[b, t]) == (token in pairs)


@settings(max_examples=60, deadline=None)
@given(N=st.integers(1, 10), extra_len=st.integers(0, 20), extra_vocab=st.integers(0, 20),
       q_frac=st.floats(0.0, 1.0), B=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_mqar_properties(N, extra_len, extra_vocab, q_frac, B, seed):
    Q = max(1, round(q_frac * N))
    T = 2 * N + 2 * Q - 1 + extra_len
    V = 2 * N + 1 + extra_vocab
    inputs, targets, mask = mqar(B, N, T, V, num_queries=Q, generator=gen(seed))
    check_mqar(inputs, targets, mask, N, Q, V)


def test_mqar_defaults_query_every_key_and_smallest_sizes_work():
    inputs, targets, mask = mqar(8, 4, 15, 9, generator=gen(1))          # T = 2N + 2Q - 1, V = 2N + 1
    check_mqar(inputs, targets, mask, 4, 4, 9)
    assert (mask.sum(1) == 4).all()


def test_mqar_query_positions_and_values_vary():
    inputs, _, mask = mqar(64, 4, 48, 40, num_queries=2, generator=gen(2))
    assert len({tuple(r.nonzero().flatten().tolist()) for r in mask}) > 10
    assert len(set(inputs[:, 1].tolist())) > 5


def test_determinism_with_a_seed():
    for make in (lambda g: mqar(4, 3, 20, 16, generator=g), lambda g: copy_task(4, 6, 5, generator=g)):
        a, b, c = make(gen(7)), make(gen(7)), make(gen(8))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert not torch.equal(a[0], c[0])


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 30), V=st.integers(2, 40), B=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_copy_properties(L, V, B, seed):
    inputs, targets, mask = copy_task(B, L, V, generator=gen(seed))
    assert inputs.shape == targets.shape == mask.shape == (B, 2 * L)
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    string = inputs[:, :L]
    assert (string >= 1).all() and (string < V).all()
    assert (inputs[:, L] == SEPARATOR).all()
    assert torch.equal(mask, torch.arange(2 * L).expand(B, -1) >= L)   # exactly the copy is scored
    assert torch.equal(targets[mask].view(B, L), string)               # and its targets are the string


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: mqar(2, 8, 64, 16), r"vocab_size >= 17"),                # 7 keys for 8 pairs
        (lambda: mqar(2, 4, 12, 32), r"seq_len >= 15"),
        (lambda: mqar(2, 4, 20, 32, num_queries=5), "cannot exceed num_pairs"),
        (lambda: mqar(2, 0, 20, 32), "num_pairs must be an int >= 1"),
        (lambda: mqar(0, 2, 20, 32), "batch_size"),
        (lambda: mqar(2, 2, 20, 2), "vocab_size must be an int >= 3"),
        (lambda: mqar(2, 2, 20, 32, num_queries=0), "num_queries"),
        (lambda: copy_task(2, 0, 8), "string_length"),
        (lambda: copy_task(2, 4, 1), "vocab_size must be an int >= 2"),
    ],
)
def test_impossible_knobs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_masked_metrics_ignore_unmasked_positions():
    targets = torch.tensor([[1, 2, 3, 0]])
    mask = torch.tensor([[False, True, True, False]])
    logits = torch.full((1, 4, 5), -10.0)
    logits[0, 0, 4] = logits[0, 3, 4] = 10.0        # wrong, but not scored
    logits[0, 1, 2] = 10.0                           # right
    logits[0, 2, 1] = 10.0                           # wrong
    assert masked_accuracy(logits, targets, mask) == 0.5
    full = torch.nn.functional.cross_entropy(logits[0, 1:3], targets[0, 1:3])
    assert torch.allclose(masked_cross_entropy(logits, targets, mask), full)
    with pytest.raises(ValueError, match="selects no position"):
        masked_accuracy(logits, targets, torch.zeros_like(mask))
    with pytest.raises(ValueError, match="bool"):
        masked_accuracy(logits, targets, mask.long())
    with pytest.raises(ValueError, match="need logits"):
        masked_accuracy(logits[0], targets, mask)


@pytest.mark.parametrize("kind", ["transformer", "gated"])
def test_training_loop_learns_copying_of_short_strings(kind):
    torch.manual_seed(0)
    if kind == "transformer":
        model = TransformerLM(TransformerConfig(vocab_size=6, d_model=16, n_heads=2, n_layers=1))
    else:
        model = RetNetLM(RetNetConfig.paper(vocab_size=6, d_model=16, n_heads=2, n_layers=1, decay="gated"))
    test = copy_task(64, 3, 6, generator=gen(99))
    before = evaluate_on_task(model, test)
    history = train_on_task(model, lambda g: copy_task(32, 3, 6, generator=g), steps=120, lr=1e-2)
    after = evaluate_on_task(model, test)
    assert len(history.loss) == 120 and history.loss[-1] < history.loss[0]
    assert after > max(0.6, before + 0.3), (before, after)
    assert not model.training                                     # evaluation mode after training


def test_token_shift_adds_the_previous_token_and_keeps_ties():
    torch.manual_seed(0)
    model = RetNetLM(RetNetConfig.paper(vocab_size=9, d_model=8, n_heads=2, n_layers=1, tie_embeddings=True))
    E = model.embed.weight
    add_token_shift(model)
    assert model.embed.weight is E and model.lm_head.weight is E          # still tied
    tokens = torch.tensor([[3, 1, 4, 1, 5]])
    x = model.embed(tokens)
    P = model.embed.previous
    assert torch.allclose(x[0, 0], E[3])                                   # nothing before the first token
    for t in range(1, 5):
        assert torch.allclose(x[0, t], E[tokens[0, t]] + P[tokens[0, t - 1]])
    with pytest.raises(ValueError, match="plain nn.Embedding"):
        add_token_shift(model)                                             # not twice
    tf = add_token_shift(TransformerLM(TransformerConfig(vocab_size=9, d_model=8, n_heads=2, n_layers=1)))
    logits, _ = tf(tokens)
    assert logits.shape == (1, 5, 9)


def test_token_shift_lets_one_layer_bind_pairs():
    """MQAR needs each value bound to the key before it: with the shift one layer learns it quickly."""
    def run(shift):
        torch.manual_seed(0)
        model = TransformerLM(TransformerConfig(vocab_size=16, d_model=32, n_heads=2, n_layers=1))
        if shift:
            add_token_shift(model)
        train_on_task(model, lambda g: mqar(32, 3, 12, 16, generator=g), steps=150, lr=1e-2)
        return evaluate_on_task(model, mqar(256, 3, 12, 16, generator=gen(5)))
    without, with_shift = run(False), run(True)
    assert with_shift > 0.95 and without < 0.8, (without, with_shift)
