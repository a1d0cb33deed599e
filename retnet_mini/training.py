"""One training loop for every model in the book (RetNet in any form, the Transformer baseline).

The model interface is ``logits, state = model(x, **forward_kwargs)`` with ``x`` of shape ``(B, T)`` and
``logits`` of shape ``(B, T, V)``; the loss is the cross-entropy of the next character, averaged over all
``B * T`` positions, in nats. ``forward_kwargs`` picks the form, e.g. ``{"mode": "chunkwise",
"chunk_size": 64}`` for RetNet and ``{}`` for the Transformer.

What the loop does, and why:

- **Optimizer**: AdamW. Weight decay applies to weight *matrices* of linear maps only; biases, norm gains,
  and embeddings are not decayed (:func:`split_decay_params`). Embedding rows of rare characters receive
  few gradient updates, so decay would mostly shrink them toward zero rather than regularize.
- **Schedule**: linear warm-up from ~0 to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr``
  at ``steps`` (:func:`lr_at`). It is a pure function of the step, so resuming needs only the step.
- **Gradient clipping** by global norm (``grad_clip``); the norm before clipping goes into the history.
- **Validation** on fixed windows spread over the whole validation set (:func:`~retnet_mini.data.
  sequential_batches`), so every validation number is measured on the same text and curves are comparable.
- **Precision** (:func:`choose_precision`): by default bfloat16 autocast on GPUs that have native bfloat16
  (A100, L4, H100), float16 autocast with a loss scaler (``torch.amp.GradScaler``) on GPUs with float16
  tensor cores but no bfloat16 (Colab's T4), float32 on a CPU, where runs stay bit-reproducible. The run
  says which it chose (``History.precision``, and one printed line with ``progress=True``).
- **More than one process** (``torchrun``; :func:`init_distributed`): the model is wrapped in
  ``DistributedDataParallel``; every rank draws the same global batch and trains on its own slice of it,
  so a run on N processes follows the single-process run of the same global batch (up to float rounding
  of the gradient all-reduce). Validation windows are shared out between the ranks; rank 0 alone writes
  checkpoints and prints. ``python -m retnet_mini.training`` is a command line for it.
- **Checkpoints** are written atomically (temporary file in the same directory, fsync, ``os.replace``):
  a crash during a save leaves the previous checkpoint intact. They hold the model, optimizer, step,
  RNG states (the batch generator, torch's CPU and CUDA generators for dropout) and history, plus the
  model config, training config and a hash of the training data, checked on resume. On CPU a run
  interrupted and resumed gives bit-identical losses to one that was not interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import get_batch, sequential_batches

__all__ = [
    "TrainConfig",
    "Precision",
    "PRECISIONS",
    "choose_precision",
    "init_distributed",
    "History",
    "train",
    "evaluate",
    "unigram_entropy",
    "lr_at",
    "split_decay_params",
    "make_optimizer",
    "default_device",
    "seed_everything",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "retnet_mini.checkpoint/1"

# TrainConfig fields that change the sequence of updates: a checkpoint resumes only if they all match.
# (Evaluation and checkpoint intervals may change between runs; they do not alter the training losses.)
_TRAJECTORY_FIELDS = (
    "steps", "batch_size", "seq_len", "lr", "min_lr", "warmup_steps",
    "weight_decay", "betas", "eps", "grad_clip", "seed", "precision",
)  # fmt: skip

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TrainConfig:
    """Hyperparameters of one run. Defaults suit a small character model on a CPU."""

    steps: int = 1000  # optimizer updates in the whole run
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # learning rate at the last step (end of the cosine)
    warmup_steps: int = 100
    weight_decay: float = 0.1  # on weight matrices only, see split_decay_params
    betas: tuple[float, float] = (0.9, 0.98)  # the RetNet paper's AdamW betas
    eps: float = 1e-8
    grad_clip: float | None = 1.0  # max global gradient norm; None disables clipping
    seed: int = 0  # seeds the batch generator and torch's global RNG (dropout)
    eval_interval: int | None = 100  # validate every this many steps (and at step 0 and the end)
    eval_windows: int | None = 64  # validation windows of seq_len; None = the whole validation set
    checkpoint_interval: int | None = None  # also save every this many steps (None: only at the end)
    precision: str = "auto"  # "auto" (see choose_precision) | "float32" | "bfloat16" | "float16"

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a list from JSON would otherwise break the resume check
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("steps", "batch_size", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        for name in ("eval_interval", "eval_windows", "checkpoint_interval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1 or None, got {value}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"TrainConfig.grad_clip must be > 0 or None, got {self.grad_clip}")


@dataclass
class History:
    """What a run measured. Per update: ``steps[i]`` (1-based count of updates done), ``train_loss``,
    ``lr`` used, ``grad_norm`` before clipping, ``tokens_per_s``. Per validation: ``val_steps``,
    ``val_loss`` (nats/token). Losses and lr are exactly reproducible on CPU; ``tokens_per_s`` is timing."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    precision: str = ""  # how the run computed, e.g. "float32" (see Precision.describe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "History":
        return cls(**{f.name: d[f.name] if f.name == "precision" else list(d[f.name])
                      for f in dataclasses.fields(cls) if f.name in d})

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1] if self.val_loss else math.nan


# --------------------------------------------------------------------------------------------------
# Small pieces
# --------------------------------------------------------------------------------------------------


def default_device() -> str:
    """``"cuda"`` when a GPU is there, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators, e.g. before building a model."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # numpy is optional for the package
        pass
    torch.manual_seed(seed)  # also seeds every CUDA device


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for update number ``step + 1`` (``step`` = updates already done, 0-based).

    Warm-up: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` updates (never exactly 0).
    Then cosine: ``min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2`` with ``p`` going from 0 to 1 over the
    remaining updates, so the last update uses exactly ``min_lr``.
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    decay_steps = config.steps - config.warmup_steps
    progress = 1.0 if decay_steps <= 1 else min(1.0, (step - config.warmup_steps) / (decay_steps - 1))
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def split_decay_params(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of the parameters that get weight decay, and of those that do not.

    Decayed: tensors with 2+ dimensions (weight matrices of linear maps). Not decayed: biases, norm gains,
    other vectors, and embedding tables (also when tied to the output layer, since it is one tensor).
    """
    embedding_ids = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # shared (tied) tensors are listed once
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and id(p) not in embedding_ids else no_decay).append(name)
    return decay, no_decay


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with two parameter groups: weight matrices (decayed) and everything else (not)."""
    params = dict(model.named_parameters())
    decay, no_decay = split_decay_params(model)
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": config.weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)


@dataclass(frozen=True)
class Precision:
    """How a run computes: ``name`` is ``"float32"``, ``"bfloat16"`` or ``"float16"`` (the autocast dtype
    of the forward pass; weights and optimizer state stay float32), ``loss_scaling`` whether gradients go
    through a ``GradScaler``, ``reason`` why this was chosen."""

    name: str
    loss_scaling: bool
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.name)

    def autocast(self, device: torch.device):
        """The context the forward pass runs in: autocast to this dtype, or nothing for float32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        how = {"float32": "float32", "bfloat16": "bfloat16 autocast",
               "float16": "float16 autocast"}[self.name]
        return how + (" with loss scaling" if self.loss_scaling else "") + f" ({self.reason})"


def choose_precision(device: str | torch.device, precision: str = "auto") -> Precision:
    """The precision a run on ``device`` uses.

    ``"auto"``: bfloat16 autocast where the GPU computes bfloat16 natively (compute capability 8.0 and up:
    A100, L4, H100; bfloat16 has float32's range, so no loss scaling); float16 autocast with a
    ``GradScaler`` on GPUs with float16 tensor cores but no bfloat16 (compute capability 7.x: V100, and
    Colab's free T4, where float16 is several times faster than float32); float32 elsewhere, and on a CPU,
    where half precision brings no speed and float32 runs are bit-reproducible. ``"float32"``,
    ``"bfloat16"`` and ``"float16"`` force a choice (float16 always with loss scaling), also on a CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if precision != "auto":
        return Precision(precision, precision == "float16", "asked for")
    if device.type != "cuda":
        return Precision("float32", False, f"the default on {device.type}: half precision is not faster there")
    name, capability = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Precision("bfloat16", False, f"{name} computes bfloat16 natively")
    if capability >= (7, 0):
        return Precision("float16", True, f"{name} (compute capability {capability[0]}.{capability[1]}) has "
                         "float16 tensor cores but no native bfloat16")
    return Precision("float32", False, f"{name} has neither native bfloat16 nor float16 tensor cores")


# --------------------------------------------------------------------------------------------------
# More than one process (torchrun)
# --------------------------------------------------------------------------------------------------


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` set up (its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
    ``MASTER_ADDR``/``MASTER_PORT`` environment variables) and return this process's device.

    ``backend``: default ``"nccl"`` with CUDA (one GPU per process: ``cuda:LOCAL_RANK``), ``"gloo"`` on CPUs.
    Without torchrun's variables it does nothing and returns :func:`default_device`, so one script runs
    either way. :func:`train` then shares the work between the processes.
    """
    dist = torch.distributed
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return torch.device(default_device())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def _wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    # The buffers (decay, rotation frequencies) are constants: no need to broadcast them at every forward
    # pass. The option was renamed in newer torch; Colab's may be older.
    import inspect

    ddp = nn.parallel.DistributedDataParallel
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
               else {"broadcast_buffers": False})
    return ddp(model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if _world()[1] == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _logits(out: Any) -> torch.Tensor:
    # Models return (logits, state); accept a bare tensor too so simple models work unchanged.
    return out[0] if isinstance(out, (tuple, list)) else out


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check_ids(data: torch.Tensor, name: str, seq_len: int) -> None:
    if not isinstance(data, torch.Tensor) or data.dim() != 1 or data.is_floating_point():
        raise ValueError(f"{name} must be a 1-D integer tensor of token ids (N,)")
    if len(data) == 0:
        raise ValueError(f"{name} is empty (empty corpus?)")
    if len(data) < seq_len + 1:
        raise ValueError(
            f"seq_len={seq_len} is too long for {name} of {len(data)} tokens: a window needs "
            f"seq_len + 1 = {seq_len + 1} tokens"
        )


def _fingerprint(data: torch.Tensor) -> str:
    # A hash of the training ids: resuming on different data would silently break exactness.
    return hashlib.sha256(data.detach().cpu().long().contiguous().numpy().tobytes()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    # Config values as plain Python, so checkpoints load with torch.load(weights_only=True).
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _model_config(model: nn.Module) -> dict | None:
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    if dataclasses.is_dataclass(cfg):
        return _plain(asdict(cfg))
    return _plain(dict(cfg)) if isinstance(cfg, dict) else {"repr": repr(cfg)}


def _diff(saved: dict, current: dict) -> str:
    keys = sorted(set(saved) | set(current))
    return ", ".join(
        f"{k}: checkpoint {saved.get(k, '<missing>')!r}, now {current.get(k, '<missing>')!r}"
        for k in keys
        if saved.get(k, "<missing>") != current.get(k, "<missing>")
    )


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` with ``torch.save`` atomically.

    The bytes go to a temporary file in the same directory (same filesystem, so the rename is atomic),
    are fsync'ed, then ``os.replace`` puts the file in place. Readers see the old checkpoint or the new
    one, never a torn file; a failure midway removes the temporary file and keeps the old checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Persist the rename itself (POSIX); not possible on every platform, and not needed for atomicity.
    with contextlib.suppress(OSError, AttributeError):
        dir_fd = os.open(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Load a checkpoint written by :func:`train` into ``model`` (and ``optimizer``); return its payload.

    Raises ValueError if the checkpoint was written for another model class or config (both are stored
    in it), so that a mismatch is reported by name rather than as a shape error deep in PyTorch.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a retnet_mini training checkpoint ({CHECKPOINT_FORMAT})")
    cls = type(model).__name__
    if payload["model_class"] != cls:
        raise ValueError(f"checkpoint {path} is for a {payload['model_class']}, but the model is a {cls}")
    saved, current = payload["model_config"], _model_config(model)
    if saved != current:
        detail = _diff(saved, current) if saved and current else f"checkpoint {saved!r}, now {current!r}"
        raise ValueError(f"checkpoint {path} was written for another model config: {detail}")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:  # a model without a config attribute: shapes are the last line of defence
        raise ValueError(f"checkpoint {path} does not fit this model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    return payload


# --------------------------------------------------------------------------------------------------
# Evaluation and the baseline
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: torch.Tensor,
    batch_size: int = 32,
    seq_len: int = 128,
    *,
    forward_kwargs: dict | None = None,
    max_windows: int | None = None,
    device: str | torch.device | None = None,
    precision: str | Precision = "auto",
) -> float:
    """Mean next-token cross-entropy (nats/token) over fixed windows of ``data`` (N,).

    Uses :func:`~retnet_mini.data.sequential_batches` (non-overlapping windows, or ``max_windows`` of them
    spread evenly), so the number is deterministic. Each window starts without context, as in training.
    The model is put in eval mode (no dropout) and restored to its previous mode afterwards. ``precision``
    as in :func:`choose_precision`. Under ``torchrun`` every rank evaluates every ``world_size``-th batch
    and all ranks return the same total.
    """
    _check_ids(data, "data", seq_len)
    forward_kwargs = forward_kwargs or {}
    device = torch.device(device) if device is not None else _model_device(model)
    if not isinstance(precision, Precision):
        precision = choose_precision(device, precision)
    rank, world_size = _world()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        batches = sequential_batches(data, batch_size, seq_len, max_windows=max_windows, device=device)
        for i, (x, y) in enumerate(batches):
            if i % world_size != rank:
                continue
            with precision.autocast(device):
                logits = _logits(model(x, **forward_kwargs))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum")
            total += loss.item()
            count += y.numel()
    finally:
        model.train(was_training)
    total, count = _all_reduce_sum([total, float(count)], device)
    return total / count


def unigram_entropy(data: torch.Tensor | str) -> float:
    """Entropy (nats per character) of the character distribution of ``data`` (ids (N,) or a string).

    The best loss any model that ignores context can reach on this data: the baseline a language model
    must beat. (A unigram model fitted on other text can only do worse, so this baseline is generous.)
    """
    if isinstance(data, str):
        data = torch.tensor([ord(c) for c in data], dtype=torch.long)
    if len(data) == 0:
        raise ValueError("unigram_entropy of empty data is undefined")
    _, counts = torch.unique(data, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log()).sum())


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    train_data: torch.Tensor,
    val_data: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    forward_kwargs: dict | None = None,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = True,
    until_step: int | None = None,
    progress: bool = True,
) -> History:
    """Train ``model`` on ``train_data`` (N_train,) ids, validating on ``val_data`` (N_val,); return the history.

    - ``forward_kwargs``: passed to every forward call, e.g. ``{"mode": "chunkwise", "chunk_size": 64}``.
    - ``device``: default ``"cuda"`` if available (under torchrun ``cuda:LOCAL_RANK``), else ``"cpu"``;
      the model is moved there. The precision follows ``config.precision`` (:func:`choose_precision`).
    - ``checkpoint_path``: where to save (at the end, at ``until_step``, every ``checkpoint_interval``).
      If the file exists and ``resume`` is true, training continues from it exactly (a finished
      checkpoint just loads the weights and returns its history); ``resume=False`` starts over and
      overwrites it. A checkpoint from another model config, training config or training data raises
      ValueError.
    - ``until_step``: stop after this many updates (saving a checkpoint), as if interrupted; a later call
      with the same arguments and no ``until_step`` finishes the run.
    - ``progress``: show a tqdm bar (a widget in notebooks) and print the precision chosen.

    Under ``torchrun`` (after :func:`init_distributed`) call it on every rank with the same arguments:
    ``config.batch_size`` is the global batch, split evenly between the ranks.
    """
    config = config or TrainConfig()
    forward_kwargs = dict(forward_kwargs or {})
    rank, world_size = _world()
    if config.batch_size % world_size:
        raise ValueError(
            f"TrainConfig.batch_size ({config.batch_size}) must be divisible by the number of processes "
            f"({world_size}): each process trains on an equal slice of the global batch"
        )
    if device is None:
        device = default_device()
        if device == "cuda" and world_size > 1:
            device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    dev = torch.device(device)
    precision = choose_precision(dev, config.precision)
    _check_ids(train_data, "train_data", config.seq_len)
    _check_ids(val_data, "val_data", config.seq_len)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None:
        top = int(max(train_data.max(), val_data.max()))
        if top >= vocab_size or int(min(train_data.min(), val_data.min())) < 0:
            raise ValueError(f"token ids must lie in [0, {vocab_size}) for this model; data has id {top}")
    stop = config.steps if until_step is None else until_step
    if not 1 <= stop <= config.steps:
        raise ValueError(f"until_step must be in [1, {config.steps}], got {until_step}")

    model.to(dev)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision.loss_scaling)   # a no-op when disabled
    batch_gen = torch.Generator().manual_seed(config.seed)  # on CPU: same batches on any device
    history, step = History(), 0
    data_hash = _fingerprint(train_data)
    train_cfg = _plain(asdict(config))

    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        ckpt = load_checkpoint(checkpoint_path, model, optimizer)
        saved = {k: ckpt["train_config"][k] for k in _TRAJECTORY_FIELDS}
        now = {k: train_cfg[k] for k in _TRAJECTORY_FIELDS}
        if saved != now:
            raise ValueError(
                f"checkpoint {checkpoint_path} was written with another training config ({_diff(saved, now)}); "
                "resuming would not reproduce the run. Use another checkpoint_path or resume=False."
            )
        if ckpt["data_hash"] != data_hash:
            raise ValueError(f"checkpoint {checkpoint_path} was written for different training data")
        step, history = ckpt["step"], History.from_dict(ckpt["history"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        batch_gen.set_state(ckpt["rng"]["batches"])
        torch.set_rng_state(ckpt["rng"]["torch_cpu"])
        cuda_states = ckpt["rng"]["torch_cuda"]
        if cuda_states is not None and dev.type == "cuda" and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    else:
        torch.manual_seed(config.seed)  # dropout masks, if the model has dropout
    history.precision = precision.describe()

    def save() -> None:  # rank 0 writes; every rank waits for the file before going on
        if rank == 0:
            _write_checkpoint()
        if world_size > 1:
            torch.distributed.barrier()

    def _write_checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT,
            "model_class": type(model).__name__,
            "model_config": _model_config(model),
            "train_config": train_cfg,
            "data_hash": data_hash,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": {
                "batches": batch_gen.get_state(),
                "torch_cpu": torch.get_rng_state(),
                "torch_cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None,
            },
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "history": history.to_dict(),
        })  # fmt: skip

    def validate() -> None:
        loss = evaluate(
            model, val_data, config.batch_size, config.seq_len, forward_kwargs=forward_kwargs,
            max_windows=config.eval_windows, device=dev, precision=precision,
        )  # fmt: skip
        history.val_steps.append(step)
        history.val_loss.append(loss)

    was_training = model.training
    model.train()
    # Several processes: DDP averages the gradients of the ranks' slices during backward.
    forward_model = model if world_size == 1 else _wrap_ddp(model, dev)
    if progress and rank == 0:
        print(f"{type(model).__name__} on {dev}" + (f" x {world_size} processes" if world_size > 1 else "")
              + f": {precision.describe()}")
    if step == 0:
        validate()  # the untrained model: about ln(vocab_size)
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.grad_clip if config.grad_clip is not None else math.inf  # inf: measure, don't clip
    share = config.batch_size // world_size
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc=type(model).__name__)
    try:
        while step < stop:
            t0 = time.perf_counter()
            # every rank draws the same global batch (same generator) and keeps its own slice of it
            x, y = get_batch(train_data, config.batch_size, config.seq_len, generator=batch_gen, device=dev)
            x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with precision.autocast(dev):
                logits = _logits(forward_model(x, **forward_kwargs))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            loss_value = loss.item() if world_size == 1 else _all_reduce_sum([loss.item()], dev)[0] / world_size
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss is {loss_value} at step {step + 1}; try a lower lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()   # with float16: the loss scaled up so small gradients survive
            scaler.unscale_(optimizer)      # true gradients again, before they are clipped and measured
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
            scaler.step(optimizer)          # skipped (and the scale lowered) if a gradient overflowed
            scaler.update()
            step += 1

            history.steps.append(step)
            history.train_loss.append(loss_value)
            history.lr.append(lr)
            history.grad_norm.append(grad_norm)
            history.tokens_per_s.append(y.numel() * world_size / (time.perf_counter() - t0))
            if step == config.steps or (config.eval_interval and step % config.eval_interval == 0):
                validate()
            if checkpoint_path is not None and (
                step == stop or (config.checkpoint_interval and step % config.checkpoint_interval == 0)
            ):
                save()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{history.final_val_loss:.3f}", refresh=False)
    finally:
        bar.close()
        model.train(was_training)
    return history


# --------------------------------------------------------------------------------------------------
# Command line: python -m retnet_mini.training (alone, or under torchrun)
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> History:
    """Train the training chapter's RetNet (or the Transformer) on a corpus; see ``--help``.

    One process: ``python -m retnet_mini.training --steps 300``. Several (e.g. 2 GPUs, or 2 CPU processes):
    ``torchrun --standalone --nproc_per_node 2 -m retnet_mini.training --steps 300``.
    """
    import argparse
    import json

    from .data import prepare_corpus
    from .model import RetNetConfig, RetNetLM
    from .transformer import TransformerLM

    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m retnet_mini.training", description=main.__doc__.splitlines()[0])
    p.add_argument("--model", choices=("retnet", "transformer"), default="retnet")
    p.add_argument("--corpus", default="python-docs", help="a corpus name of retnet_mini.data.load_corpus")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--mode", choices=("parallel", "chunkwise", "recurrent"), default="chunkwise")
    p.add_argument("--chunk-size", type=int, default=64)
    for name in ("steps", "batch_size", "seq_len", "warmup_steps", "seed", "eval_interval", "eval_windows",
                 "checkpoint_interval"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    for name in ("lr", "min_lr", "weight_decay"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision)
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if there is one (one GPU per process)")
    p.add_argument("--checkpoint", help="checkpoint file: resumed if it exists, written by rank 0")
    p.add_argument("--until-step", type=int, help="stop after this many updates, as if interrupted")
    p.add_argument("--json", help="rank 0 writes the history here (JSON)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    device = init_distributed(backend="gloo" if args.device == "cpu" else None)
    if args.device == "cpu":
        device = torch.device("cpu")
    elif args.device == "cuda" and device.type != "cuda":
        raise SystemExit("--device cuda: no CUDA device is available")
    rank, world_size = _world()
    try:
        corpus = prepare_corpus(args.corpus)
        seed_everything(args.seed)  # every rank builds the same initial weights (DDP also broadcasts rank 0's)
        config = RetNetConfig.paper(corpus.tokenizer.vocab_size, d_model=args.d_model, n_heads=args.n_heads,
                                    n_layers=args.n_layers)
        if args.model == "retnet":
            model, forward_kwargs = RetNetLM(config), {"mode": args.mode, "chunk_size": args.chunk_size}
        else:
            model, forward_kwargs = TransformerLM.matching(config), {}
        train_config = TrainConfig(**{name: getattr(args, name) for name in (
            "steps", "batch_size", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay", "seed",
            "eval_interval", "eval_windows", "checkpoint_interval", "precision")})
        history = train(model, corpus.train, corpus.val, train_config, forward_kwargs=forward_kwargs,
                        device=device, checkpoint_path=args.checkpoint, until_step=args.until_step,
                        progress=not args.quiet)
        if rank == 0:
            print(f"{args.model} after {history.steps[-1]} steps on {world_size} process(es): train loss "
                  f"{history.train_loss[-1]:.4f}, validation loss {history.final_val_loss:.4f} nats/char")
            if args.json:
                Path(args.json).write_text(json.dumps(history.to_dict()))
        return history
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
