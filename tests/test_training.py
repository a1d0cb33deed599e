"""The training loop (retnet_mini.training): schedule, optimizer groups, evaluation, loss going down,
atomic checkpoints and exact resume, clear errors. CPU only; uses a tiny stand-in model so it is fast."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from torch import nn

from retnet_mini.data import prepare_corpus
from retnet_mini.training import (
    History,
    TrainConfig,
    choose_precision,
    default_device,
    evaluate,
    load_checkpoint,
    lr_at,
    split_decay_params,
    train,
    unigram_entropy,
)

CORPUS = prepare_corpus("python-docs")
V = CORPUS.tokenizer.vocab_size
# Short slices keep every test fast; they are still real text.
TRAIN, VAL = CORPUS.train[:50_000], CORPUS.val[:5_000]


@dataclass
class TinyConfig:
    vocab_size: int
    d_model: int = 16


class TinyLM(nn.Module):
    """A stand-in with the package's interface: ``logits, state = model(tokens)``, a ``config`` dataclass.

    Next-character prediction from the current character plus a causal running mean of the past (so the
    loss can drop below a bigram's), with dropout (so resuming must restore torch's RNG to be exact)."""

    def __init__(self, config: TinyConfig, crash_after: int | None = None):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.mix = nn.Linear(2 * config.d_model, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.crash_after, self.calls = crash_after, 0  # to simulate a crash mid-run

    def forward(self, tokens: torch.Tensor, state=None, scale: float = 1.0):
        self.calls += self.training  # count training forwards only
        if self.crash_after is not None and self.calls > self.crash_after:
            raise KeyboardInterrupt("simulated crash")
        e = self.embed(tokens)  # (B, T, d)
        past = e.cumsum(1) / torch.arange(1, tokens.shape[1] + 1)[:, None]  # (B, T, d) causal mean
        h = self.norm(torch.relu(self.mix(torch.cat([e, past], -1))))
        return scale * self.head(self.drop(h)), None


def tiny(seed: int = 0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(TinyConfig(V, **kw))


CFG = TrainConfig(
    steps=12, batch_size=8, seq_len=32, lr=1e-2, min_lr=1e-3, warmup_steps=3,
    eval_interval=4, eval_windows=16,
)  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: one thread beats two that wait on each other (and on a busy CI machine).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def same_run(a: History, b: History) -> bool:
    """Every reproducible number equal, bit for bit (tokens_per_s is timing and excluded)."""
    return (a.steps, a.train_loss, a.lr, a.grad_norm, a.val_steps, a.val_loss) == (
        b.steps, b.train_loss, b.lr, b.grad_norm, b.val_steps, b.val_loss
    )  # fmt: skip


# --- pieces ---------------------------------------------------------------------------------------


def test_lr_schedule_warmup_then_cosine() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear, never 0
    assert lrs[9] == lrs[10] == 1.0  # peak at the end of warm-up
    assert lrs[-1] == pytest.approx(0.1)  # the last update uses min_lr
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then decreasing
    assert lr_at(54, cfg) == pytest.approx(0.55, abs=0.01)  # halfway: the cosine's midpoint
    assert lr_at(0, TrainConfig(steps=5, warmup_steps=0, lr=0.5)) == 0.5


def test_weight_decay_only_on_matrices() -> None:
    decay, no_decay = split_decay_params(tiny())
    assert decay == ["mix.weight", "head.weight"]
    assert set(no_decay) == {"embed.weight", "mix.bias", "norm.weight", "norm.bias", "head.bias"}
    tied = tiny()
    tied.head.weight = tied.embed.weight  # a tied output layer is the embedding: not decayed
    assert "head.weight" not in split_decay_params(tied)[0]


def test_unigram_entropy() -> None:
    assert unigram_entropy(torch.tensor([0, 1, 2, 3] * 5)) == pytest.approx(math.log(4))
    assert unigram_entropy(torch.tensor([7, 7, 7])) == 0.0
    assert unigram_entropy("aab") == pytest.approx(unigram_entropy(torch.tensor([5, 5, 9])))
    assert 2.5 < unigram_entropy(CORPUS.val) < math.log(V)
    with pytest.raises(ValueError, match="empty"):
        unigram_entropy(torch.zeros(0, dtype=torch.long))


def test_evaluate_is_exact_deterministic_and_restores_mode() -> None:
    model = tiny()
    model.head.weight.data.zero_()
    model.head.bias.data.zero_()  # uniform prediction: loss is exactly ln V
    assert evaluate(model, VAL, 4, 32, max_windows=8) == pytest.approx(math.log(V), abs=1e-6)
    model = tiny().train()
    a = evaluate(model, VAL, 4, 32, max_windows=8)
    assert a == evaluate(model, VAL, 4, 32, max_windows=8)  # eval mode: dropout off
    assert model.training
    assert evaluate(model, VAL, 4, 32, forward_kwargs={"scale": 0.0}) == pytest.approx(math.log(V))


def test_default_device() -> None:
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


# --- training -------------------------------------------------------------------------------------


def test_a_few_steps_beat_the_unigram_baseline() -> None:
    cfg = TrainConfig(steps=60, batch_size=16, seq_len=64, lr=2e-2, min_lr=2e-3, warmup_steps=5,
                      eval_interval=20, eval_windows=32)  # fmt: skip
    h = train(tiny(), CORPUS.train, CORPUS.val, cfg, progress=False)
    assert h.steps == list(range(1, 61)) and h.val_steps == [0, 20, 40, 60]
    assert h.val_loss[0] == pytest.approx(math.log(V), abs=0.3)  # untrained: about uniform
    assert all(a > b for a, b in zip(h.val_loss, h.val_loss[1:]))
    assert h.final_val_loss < unigram_entropy(CORPUS.val) - 0.3
    assert len(h.lr) == len(h.grad_norm) == len(h.tokens_per_s) == 60
    assert all(t > 0 for t in h.tokens_per_s)


def test_training_is_reproducible() -> None:
    a = train(tiny(seed=1), TRAIN, VAL, CFG, progress=False)
    b = train(tiny(seed=1), TRAIN, VAL, CFG, progress=False)
    assert same_run(a, b)
    assert a.val_steps == [0, 4, 8, 12]
    assert a.lr == [lr_at(s, CFG) for s in range(CFG.steps)]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    model = tiny()
    h = train(model, TRAIN, VAL, CFG, checkpoint_path=path, progress=False)
    other = tiny(seed=99)
    payload = load_checkpoint(path, other)
    for (name, p), q in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(p, q), name
    assert payload["step"] == CFG.steps
    assert same_run(History.from_dict(payload["history"]), h)
    assert payload["model_config"] == {"vocab_size": V, "d_model": 16}
    # A finished checkpoint: train() loads it and returns its history without training further.
    again = train(tiny(seed=5), TRAIN, VAL, CFG, checkpoint_path=path, progress=False)
    assert same_run(again, h)


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    straight_model = tiny(seed=2)
    straight = train(straight_model, TRAIN, VAL, CFG, progress=False)

    path = tmp_path / "ckpt.pt"
    first = train(tiny(seed=2), TRAIN, VAL, CFG, checkpoint_path=path, until_step=6, progress=False)
    assert first.steps == list(range(1, 7))
    torch.rand(1000)  # disturb the global RNG, as other work between sessions would
    resumed_model = tiny(seed=77)  # a fresh process would build the model with any init
    resumed = train(resumed_model, TRAIN, VAL, CFG, checkpoint_path=path, progress=False)

    assert same_run(straight, resumed)
    for p, q in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_crash_mid_run_resumes_from_last_checkpoint_exactly(tmp_path: Path) -> None:
    cfg = replace(CFG, checkpoint_interval=5)
    straight = train(tiny(seed=3), TRAIN, VAL, cfg, progress=False)
    path = tmp_path / "ckpt.pt"
    crashing = TinyLM(TinyConfig(V), crash_after=8)  # dies in update 8 (validation calls don't count)
    crashing.load_state_dict(tiny(seed=3).state_dict())
    with pytest.raises(KeyboardInterrupt):
        train(crashing, TRAIN, VAL, cfg, checkpoint_path=path, progress=False)
    assert torch.load(path, weights_only=True)["step"] == 5
    resumed = train(tiny(seed=0), TRAIN, VAL, cfg, checkpoint_path=path, progress=False)
    assert same_run(straight, resumed)


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pt"
    train(tiny(), TRAIN, VAL, CFG, checkpoint_path=path, until_step=4, progress=False)
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # some bytes reach the disk, then the save dies
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        train(tiny(), TRAIN, VAL, CFG, checkpoint_path=path, until_step=8, progress=False)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    assert load_checkpoint(path, tiny())["step"] == 4


def test_checkpoint_from_another_config_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    train(tiny(), TRAIN, VAL, CFG, checkpoint_path=path, until_step=2, progress=False)
    with pytest.raises(ValueError, match=r"another model config: d_model: checkpoint 16, now 32"):
        train(tiny(d_model=32), TRAIN, VAL, CFG, checkpoint_path=path, progress=False)
    with pytest.raises(ValueError, match=r"another model config"):
        load_checkpoint(path, tiny(d_model=32))

    class OtherLM(TinyLM):
        pass

    with pytest.raises(ValueError, match="for a TinyLM, but the model is a OtherLM"):
        load_checkpoint(path, OtherLM(TinyConfig(V)))
    with pytest.raises(ValueError, match=r"another training config \(lr: checkpoint 0.01, now 0.02\)"):
        train(tiny(), TRAIN, VAL, replace(CFG, lr=0.02), checkpoint_path=path)
    with pytest.raises(ValueError, match="different training data"):
        train(tiny(), TRAIN[1:], VAL, CFG, checkpoint_path=path, progress=False)
    # resume=False starts over instead.
    h = train(tiny(), TRAIN, VAL, replace(CFG, lr=0.02), checkpoint_path=path,
              resume=False, until_step=2, progress=False)  # fmt: skip
    assert h.steps == [1, 2]


@pytest.mark.parametrize(
    "train_data, val_data, kwargs, message",
    [
        (torch.zeros(0, dtype=torch.long), VAL, {}, "train_data is empty"),
        (TRAIN, VAL[:20], {}, r"seq_len=32 is too long for val_data of 20 tokens"),
        (TRAIN.float(), VAL, {}, "integer tensor"),
        (TRAIN + V, VAL, {}, r"token ids must lie in \[0, "),
        (TRAIN, VAL, {"until_step": 13}, "until_step must be in"),
    ],
)
def test_bad_inputs_give_clear_errors(train_data, val_data, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        train(tiny(), train_data, val_data, CFG, progress=False, **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"steps": 0}, "steps must be >= 1"), ({"min_lr": 1.0, "lr": 0.1}, "min_lr <= lr"),
     ({"eval_interval": 0}, "eval_interval"), ({"grad_clip": 0.0}, "grad_clip")],
)  # fmt: skip
def test_bad_train_config(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**kwargs)


def test_diverging_loss_stops_with_a_clear_error() -> None:
    with pytest.raises(FloatingPointError, match="step 1"):
        train(tiny(), TRAIN, VAL, CFG, forward_kwargs={"scale": math.nan}, progress=False)


# --- the real models ------------------------------------------------------------------------------


def test_trains_and_resumes_the_real_retnet_in_chunkwise_form(tmp_path: Path) -> None:
    from retnet_mini.model import RetNetConfig, RetNetLM

    def retnet(seed: int) -> RetNetLM:
        torch.manual_seed(seed)
        return RetNetLM(RetNetConfig(vocab_size=V, d_model=32, n_heads=2, n_layers=1))

    cfg = TrainConfig(steps=20, batch_size=8, seq_len=32, lr=5e-3, warmup_steps=2, eval_interval=10,
                      eval_windows=8)  # fmt: skip
    kw = {"forward_kwargs": {"mode": "chunkwise", "chunk_size": 8}, "progress": False}
    model = retnet(0)
    h = train(model, TRAIN, VAL, cfg, **kw)
    assert h.val_steps == [0, 10, 20]
    assert h.val_loss[-1] < h.val_loss[0] - 0.5
    # The trained model evaluates the same in the parallel form (the forms agree).
    par = evaluate(model, VAL, 8, 32, max_windows=8, forward_kwargs={"mode": "parallel"})
    assert par == pytest.approx(h.val_loss[-1], abs=1e-4)
    # Interrupted at step 7 and resumed: the same run, bit for bit.
    path = tmp_path / "retnet.pt"
    train(retnet(0), TRAIN, VAL, cfg, checkpoint_path=path, until_step=7, **kw)
    assert same_run(train(retnet(1), TRAIN, VAL, cfg, checkpoint_path=path, **kw), h)
    with pytest.raises(ValueError, match="n_layers: checkpoint 1, now 2"):
        torch.manual_seed(0)
        train(RetNetLM(RetNetConfig(vocab_size=V, d_model=32, n_heads=2, n_layers=2)), TRAIN, VAL, cfg,
              checkpoint_path=path, **kw)  # fmt: skip


def test_trains_the_transformer_baseline() -> None:
    transformer = pytest.importorskip("retnet_mini.transformer")
    from retnet_mini.model import RetNetConfig

    torch.manual_seed(0)
    model = transformer.TransformerLM.matching(RetNetConfig(vocab_size=V, d_model=32, n_heads=2, n_layers=1))
    cfg = TrainConfig(steps=20, batch_size=8, seq_len=32, lr=5e-3, warmup_steps=2, eval_interval=None,
                      eval_windows=8)  # fmt: skip
    h = train(model, TRAIN, VAL, cfg, progress=False)
    assert h.val_loss[-1] < h.val_loss[0] - 0.5


# --- precision ------------------------------------------------------------------------------------


def fake_gpu(monkeypatch, name: str, capability: tuple[int, int], bf16: bool) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)


@pytest.mark.parametrize("name, capability, bf16, expected, scaled", [
    ("NVIDIA A100-SXM4-40GB", (8, 0), True, "bfloat16", False),
    ("NVIDIA L4", (8, 9), True, "bfloat16", False),
    ("Tesla T4", (7, 5), False, "float16", True),
    ("Tesla V100-SXM2-16GB", (7, 0), False, "float16", True),
    ("Tesla P100-PCIE-16GB", (6, 0), False, "float32", False),
])  # fmt: skip
def test_auto_precision_per_gpu(monkeypatch, name, capability, bf16, expected, scaled) -> None:
    fake_gpu(monkeypatch, name, capability, bf16)
    p = choose_precision("cuda", "auto")
    assert (p.name, p.loss_scaling) == (expected, scaled)
    assert name in p.describe()


def test_precision_on_cpu_and_by_request() -> None:
    auto = choose_precision("cpu")
    assert (auto.name, auto.loss_scaling, auto.autocast_dtype) == ("float32", False, None)
    assert choose_precision("cpu", "bfloat16").autocast_dtype == torch.bfloat16
    fp16 = choose_precision("cpu", "float16")
    assert fp16.loss_scaling and fp16.describe() == "float16 autocast with loss scaling (asked for)"
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("cpu", "fp8")
    with pytest.raises(ValueError, match="TrainConfig.precision must be one of"):
        TrainConfig(precision="half")


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_retnet_trains_in_half_precision_and_resumes_exactly(tmp_path: Path, precision: str) -> None:
    """CPU autocast runs the same code path as CUDA's: the loss follows the float32 run closely, float16
    goes through the GradScaler (its state is checkpointed), and a resumed run is the same run."""
    from retnet_mini.model import RetNetConfig, RetNetLM

    def retnet() -> RetNetLM:
        torch.manual_seed(0)
        return RetNetLM(RetNetConfig(vocab_size=V, d_model=32, n_heads=2, n_layers=1))

    cfg = TrainConfig(steps=16, batch_size=8, seq_len=32, lr=5e-3, warmup_steps=2, eval_interval=8,
                      eval_windows=8)  # fmt: skip
    kw = {"forward_kwargs": {"mode": "chunkwise", "chunk_size": 8}, "progress": False}
    full = train(retnet(), TRAIN, VAL, cfg, **kw)
    half_cfg = replace(cfg, precision=precision)
    half = train(retnet(), TRAIN, VAL, half_cfg, **kw)
    assert half.precision == f"{precision} autocast{' with loss scaling' if precision == 'float16' else ''} (asked for)"
    assert full.precision.startswith("float32")
    assert all(math.isfinite(x) for x in half.train_loss)
    # measured on one seed here: a difference of 0.0002 nats (both dtypes) after 16 steps; runs of different
    # seeds differ by ~0.03 (book/checks.md), so 0.01 still tells rounding from a broken half path
    assert half.val_loss[-1] == pytest.approx(full.val_loss[-1], abs=0.01)
    assert half.val_loss[-1] < half.val_loss[0] - 0.5
    path = tmp_path / "half.pt"
    train(retnet(), TRAIN, VAL, half_cfg, checkpoint_path=path, until_step=5, **kw)
    payload = torch.load(path, weights_only=True)
    assert (payload["scaler"] is not None) == (precision == "float16")
    assert same_run(train(retnet(), TRAIN, VAL, half_cfg, checkpoint_path=path, **kw), half)
