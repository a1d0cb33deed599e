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
  a crash during a save leaves the previous checkpoint intact, and its temporary file is removed by the
  next save. They hold the model, optimizer, step, RNG states (the batch generator, torch's CPU and CUDA
  generators for dropout) and history, plus the model config, training config, forward options and a
  hash of the training data, checked on resume, and a sha256 checksum of all of it, checked on load.
  Ctrl-C saves the last complete update before stopping. On CPU a run interrupted (by ``until_step``,
  Ctrl-C, or a crash after a checkpoint) and resumed gives bit-identical losses to one that was not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import numbers
import os
import pickle
import random
import re
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._checks import check_choice, check_int, check_real
from .data import get_batch, sequential_batches, write_atomically

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
    "CheckpointWarning",
]

CHECKPOINT_FORMAT = "retnet_mini.checkpoint/2"  # /2: with a checksum and the forward options
_OLD_FORMATS = ("retnet_mini.checkpoint/1",)

# TrainConfig fields that change the sequence of updates: a checkpoint resumes only if they all match.
# (Evaluation and checkpoint intervals may change between runs; they do not alter the training losses.)
# The precision is compared as resolved (see _forward_options): "auto" is "bfloat16" on an A100 and
# "float32" on a CPU, so comparing the field itself would miss the difference that matters.
_TRAJECTORY_FIELDS = (
    "steps", "batch_size", "seq_len", "lr", "min_lr", "warmup_steps",
    "weight_decay", "betas", "eps", "grad_clip", "seed",
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
        # Every field is checked and normalized to a plain int / float, so a typo such as steps=10.0,
        # steps=True or lr=float("nan") fails here, by name, instead of deep in the loop or never.
        for name, minimum in _INT_FIELDS.items():
            setattr(self, name, check_int(f"TrainConfig.{name}", getattr(self, name), minimum))
        if self.seed >= 2**64:
            raise ValueError(f"TrainConfig.seed must be < 2**64 (torch.Generator's range), got {self.seed}")
        for name in _OPTIONAL_INT_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, check_int(f"TrainConfig.{name} (or None)", getattr(self, name), 1))
        self.lr = check_real("TrainConfig.lr", self.lr, 0, low_open=True)
        self.min_lr = check_real("TrainConfig.min_lr", self.min_lr, 0, self.lr)
        self.weight_decay = check_real("TrainConfig.weight_decay", self.weight_decay, 0)
        self.eps = check_real("TrainConfig.eps", self.eps, 0, low_open=True)
        if self.grad_clip is not None:
            self.grad_clip = check_real("TrainConfig.grad_clip (or None)", self.grad_clip, 0, low_open=True)
        self.betas = _checked_betas(self.betas)  # a list from JSON becomes a tuple, for the resume check
        check_choice("TrainConfig.precision", self.precision, PRECISIONS)


# TrainConfig's int fields and their smallest allowed value; the optional ones are >= 1 or None.
_INT_FIELDS = {"steps": 1, "batch_size": 1, "seq_len": 1, "warmup_steps": 0, "seed": 0}
_OPTIONAL_INT_FIELDS = ("eval_interval", "eval_windows", "checkpoint_interval")


def _checked_betas(betas: Any) -> tuple[float, float]:
    if isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"TrainConfig.betas must be a pair (beta1, beta2), got {betas!r}")
    return tuple(check_real(f"TrainConfig.betas[{i}]", b, 0, 1, high_open=True) for i, b in enumerate(betas))


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


def _checked_task_batch(batch: Any, batch_size: int) -> tuple:
    """``(inputs, targets, loss_mask or None)`` from what a batch function returned, checked."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError("a train_data function must return (inputs, targets) or (inputs, targets, loss_mask), "
                         f"got {type(batch).__name__}" + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    x, y, mask = (*batch, None) if len(batch) == 2 else batch
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or x.dim() != 2 or y.shape != x.shape \
            or x.is_floating_point() or y.is_floating_point():
        raise ValueError("a train_data function's inputs and targets must be integer (B, T) tensors of one shape")
    if x.shape[0] != batch_size:
        raise ValueError(f"the batches have B = {x.shape[0]} rows but TrainConfig.batch_size is {batch_size}")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != x.shape):
        raise ValueError("a train_data function's loss_mask must be a bool tensor of the inputs' shape (B, T)")
    if mask is not None and not bool(mask.any()):
        raise ValueError("a batch's loss_mask selects no position: nothing to train on")
    return x, y, mask


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


def _forward_options(model: nn.Module, forward_kwargs: dict, precision: Precision) -> dict:
    """What decides the function the model computes besides its weights and config: a resumed run must
    match the checkpoint in all of it (e.g. mode and chunk_size change the rounding, hence the run)."""
    options = {f"forward_kwargs[{k!r}]": v for k, v in _plain(forward_kwargs).items()}
    options["precision"] = precision.name  # as resolved: "auto" is bfloat16 on an A100, float32 on a CPU
    options["parameter dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    return options


def _check_writable(path: Path) -> None:
    """Raise ValueError unless a checkpoint can be written at ``path``: its directory exists (or is made)
    and a file can be created in it. Checked before step 1, so the run does not fail at its end."""
    if path.is_dir():
        raise ValueError(f"checkpoint_path {path} is a directory; expected a file path, e.g. {path / 'run.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    except OSError as exc:
        raise ValueError(f"checkpoint_path {path} is not writable: cannot create a file in {path.parent} "
                         f"({type(exc).__name__}: {exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then raise it.

    Only with Python's own handler in the main thread (a script, a notebook cell); anywhere else the block
    runs as is, and :func:`train` then does not save a state it was interrupted in the middle of.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        raise KeyboardInterrupt


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


class CheckpointWarning(UserWarning):
    """A checkpoint could not be written; the run went on (or returned its history) without it."""


# mkstemp's temporary files next to a checkpoint: "<name>.<8 random characters>.tmp". A save killed
# before its rename (power loss, SIGKILL) leaves one behind; the next save, or a load, removes it.
_TMP_RANDOM = r"[a-z0-9_]{8}"
_STALE_TMP_AGE_S = 600  # a load only removes temporaries this old: a newer one may be a save in progress

# What a payload written by train() must hold (load_checkpoint checks before using any of it).
_PAYLOAD_KEYS = ("format", "model_class", "model_config", "train_config", "forward", "data_hash", "step",
                 "model", "optimizer", "rng", "scaler", "history")  # fmt: skip


def _temporaries(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.name) + r"\." + _TMP_RANDOM + r"\.tmp")
    with contextlib.suppress(OSError):  # an unreadable directory: nothing we could clean anyway
        return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    return []


def _remove_stale_temporaries(path: Path, min_age_s: float = 0.0) -> None:
    now = time.time()
    for tmp in _temporaries(path):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if now - tmp.stat().st_mtime >= min_age_s:
                tmp.unlink()


def _checksum(payload: dict) -> str:
    """sha256 over every value of ``payload`` but ``"checksum"``: each tensor's dtype, shape and raw bytes,
    each other value's repr, in a fixed order (sorted keys, list order), each tagged with where it is."""
    h = hashlib.sha256()

    def feed(where: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)  # 1-D, so any dtype views as bytes
            h.update(f"{where}: tensor {t.dtype} {tuple(value.shape)}\n".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(value, dict):
            for k in sorted(value, key=repr):
                feed(f"{where}[{k!r}]", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                feed(f"{where}[{i}]", v)
        else:
            h.update(f"{where}: {type(value).__name__} {value!r}\n".encode())

    feed("", {k: v for k, v in payload.items() if k != "checksum"})
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Write ``payload`` (a dict) with ``torch.save`` atomically, with a checksum of its contents.

    The stored dict is ``payload`` plus ``"checksum"`` (:func:`_checksum`), which :func:`load_checkpoint`
    verifies. The bytes go to a temporary file in the same directory (same filesystem, so the rename is
    atomic), are fsync'ed, then ``os.replace`` puts the file in place. Readers see the old checkpoint or
    the new one, never a torn file; a failure midway removes the temporary file and keeps the old
    checkpoint. Temporaries left by an earlier save that was killed are removed first.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"save_checkpoint: payload must be a dict, got {type(payload).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)  # we are the writer of this path: any temporary of it is dead
    payload = {**payload, "checksum": _checksum(payload)}
    write_atomically(path, lambda f: torch.save(payload, f))


def _first_sentence(exc: BaseException) -> str:
    # torch's errors can be long and advise loading with weights_only=False, which we never want passed
    # on (it runs arbitrary code from the file): keep the first sentence, and only if it has no such advice.
    text = str(exc).strip().split("\n")[0].split(". ")[0].strip()
    return "" if not text or "weights_only" in text else f" ({type(exc).__name__}: {text})"


def _read_checkpoint(path: str | os.PathLike) -> dict:
    """The verified payload of the checkpoint at ``path``.

    Every way a file can fail to be one of our checkpoints (missing, empty, truncated, not a zip archive,
    holding Python objects, holding something else than our dict, an older format, damaged contents)
    gives one ValueError (FileNotFoundError if missing) that names the file and says what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, not a checkpoint file")
    _remove_stale_temporaries(path, min_age_s=_STALE_TMP_AGE_S)
    hint = "; delete it, or call train(..., resume=False) to overwrite it"  # ours, but unusable
    other = "; is this the right path? (train(..., resume=False) would overwrite the file)"  # not ours
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): a copy or save that never completed?{hint}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive; anything else is some other file
        raise ValueError(f"{path} is not a retnet_mini checkpoint: checkpoints are zip archives written by "
                         f"torch.save, this file starts with {head!r}{other}")
    failure = None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        failure = (f"{path} holds Python objects other than tensors, numbers, strings, lists and dicts (a "
                   f"pickled model or another program's file?), or its data is damaged: not a retnet_mini "
                   f"checkpoint. It was not loaded: unpickling arbitrary objects can run code{other}")
    except Exception as exc:  # torch raises RuntimeError, OSError, EOFError, ... for a torn zip archive
        failure = (f"checkpoint {path} is truncated or damaged ({size} bytes; an interrupted copy or a full "
                   f"disk?): it cannot be read{_first_sentence(exc)}{hint}")
    if failure is not None:
        raise ValueError(failure)  # outside the except block: torch's message is not even the context
    if not isinstance(payload, dict):
        raise ValueError(f"{path} holds a {type(payload).__name__}, not a retnet_mini training checkpoint "
                         f"(a dict of format {CHECKPOINT_FORMAT!r}){other}")
    fmt = payload.get("format")
    if fmt in _OLD_FORMATS:
        raise ValueError(f"checkpoint {path} has the older format {fmt!r}, which stores no checksum, so its "
                         f"contents cannot be verified; this version reads {CHECKPOINT_FORMAT!r}. Train "
                         f"again (train(..., resume=False) overwrites it)")
    if fmt != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a retnet_mini training checkpoint: format {fmt!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}{other}")
    missing = [k for k in (*_PAYLOAD_KEYS, "checksum") if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}: not written by train(){hint}")
    if payload["checksum"] != _checksum(payload):
        raise ValueError(f"checkpoint {path} is corrupted: its contents do not match the sha256 checksum "
                         f"saved with them (damaged on disk or in a copy?){hint}")
    return payload


def _check_model_fits(payload: dict, model: nn.Module, path: str | os.PathLike) -> None:
    cls = type(model).__name__
    if payload["model_class"] != cls:
        raise ValueError(f"checkpoint {path} is for a {payload['model_class']}, but the model is a {cls}")
    saved, current = payload["model_config"], _model_config(model)
    if saved != current:
        detail = _diff(saved, current) if saved and current else f"checkpoint {saved!r}, now {current!r}"
        raise ValueError(f"checkpoint {path} was written for another model config: {detail}")


def _load_states(payload: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None, path) -> None:
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:  # a model without a config attribute: shapes are the last line of defence
        raise ValueError(f"checkpoint {path} does not fit this model: {exc}") from exc
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict:
    """Load a checkpoint written by :func:`train` into ``model`` (and ``optimizer``); return its payload.

    Raises ValueError naming the file if it is not a readable checkpoint of this version (empty,
    truncated, another kind of file, an older format, or contents that fail their checksum), or if it
    was written for another model class or config (both are stored in it), so that a mismatch is
    reported by name rather than as a shape error deep in PyTorch. Nothing is loaded into ``model`` or
    ``optimizer`` unless every check passes.
    """
    payload = _read_checkpoint(path)
    _check_model_fits(payload, model, path)
    _load_states(payload, model, optimizer, path)
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
    train_data: torch.Tensor | Callable[[torch.Generator], tuple],
    val_data: torch.Tensor | None,
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

    ``train_data`` may instead be a function ``generator -> (inputs, targets)`` or ``(inputs, targets,
    loss_mask)``, ``(B, T)`` tensors, that draws a fresh batch from the batch generator at every step (the
    synthetic tasks of :mod:`retnet_mini.tasks`); with a ``loss_mask`` only its True positions are scored.
    ``config.batch_size`` must then be the batches' B (``seq_len`` is not used). ``val_data=None``: no
    validation.

    - ``forward_kwargs``: passed to every forward call, e.g. ``{"mode": "chunkwise", "chunk_size": 64}``.
    - ``device``: default ``"cuda"`` if available (under torchrun ``cuda:LOCAL_RANK``), else ``"cpu"``;
      the model is moved there. The precision follows ``config.precision`` (:func:`choose_precision`).
    - ``checkpoint_path``: where to save (at the end, at ``until_step``, every ``checkpoint_interval``,
      and on Ctrl-C). It is checked to be writable before any work (ValueError if not). If the file
      exists and ``resume`` is true, training continues from it exactly (a finished checkpoint just loads
      the weights and returns its history); ``resume=False`` starts over and overwrites it. A checkpoint
      from another model config, training config, forward options (``forward_kwargs``, the resolved
      precision, the parameters' dtype) or training data raises ValueError, as does a file that is not
      a readable checkpoint (damaged, truncated, failing its checksum), before anything is loaded.
    - A save that fails (disk full) warns (:class:`CheckpointWarning`) instead of raising: at the end,
      the history is still returned; in the middle, training goes on and the next save tries again.
    - Ctrl-C (KeyboardInterrupt) saves the last complete update first (with ``checkpoint_path``), then
      propagates; calling ``train`` again with the same arguments resumes exactly. A Ctrl-C that arrives
      while the optimizer updates the weights takes effect once that update is done.
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
    draws = callable(train_data) and not isinstance(train_data, torch.Tensor)
    if draws:   # a batch from a fresh generator, to check the batches and fingerprint the task
        probe = _checked_task_batch(train_data(torch.Generator().manual_seed(config.seed)), config.batch_size)
        ids = [probe[0], probe[1]]
    else:
        _check_ids(train_data, "train_data", config.seq_len)
        ids = [train_data]
    if val_data is not None:
        _check_ids(val_data, "val_data", config.seq_len)
        ids.append(val_data)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None:
        top = max(int(t.max()) for t in ids)
        if top >= vocab_size or min(int(t.min()) for t in ids) < 0:
            raise ValueError(f"token ids must lie in [0, {vocab_size}) for this model; data has id {top}")
    stop = config.steps if until_step is None else until_step
    if not 1 <= stop <= config.steps:
        raise ValueError(f"until_step must be in [1, {config.steps}], got {until_step}")

    if checkpoint_path is not None and rank == 0:
        _check_writable(Path(checkpoint_path))  # before any work: a bad path should not cost a run

    model.to(dev)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision.loss_scaling)   # a no-op when disabled
    batch_gen = torch.Generator().manual_seed(config.seed)  # on CPU: same batches on any device
    history, step, saved_step = History(), 0, None  # saved_step: the step of the checkpoint on disk
    data_hash = _fingerprint(torch.cat([t.flatten() for t in probe[:2]]) if draws else train_data)
    train_cfg = _plain(asdict(config))
    forward = _forward_options(model, forward_kwargs, precision)

    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        # Every check before anything is loaded: a refused checkpoint leaves model and optimizer as they were.
        ckpt = _read_checkpoint(checkpoint_path)
        _check_model_fits(ckpt, model, checkpoint_path)
        saved = {k: ckpt["train_config"].get(k, "<missing>") for k in _TRAJECTORY_FIELDS}
        now = {k: train_cfg[k] for k in _TRAJECTORY_FIELDS}
        if saved != now:
            raise ValueError(
                f"checkpoint {checkpoint_path} was written with another training config ({_diff(saved, now)}); "
                "resuming would not reproduce the run. Use another checkpoint_path or resume=False."
            )
        if ckpt["forward"] != forward:
            raise ValueError(
                f"checkpoint {checkpoint_path} was trained with other forward options "
                f"({_diff(ckpt['forward'], forward)}); the model would compute something else from here "
                "on. Pass the checkpoint's options, or use another checkpoint_path or resume=False."
            )
        if ckpt["data_hash"] != data_hash:
            raise ValueError(f"checkpoint {checkpoint_path} was written for different training data")
        _load_states(ckpt, model, optimizer, checkpoint_path)
        step, history = ckpt["step"], History.from_dict(ckpt["history"])
        saved_step = step
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

    def rng_states() -> dict:
        return {
            "batches": batch_gen.get_state(),
            "torch_cpu": torch.get_rng_state(),
            "torch_cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else None,
        }

    def write_checkpoint(rng: dict, final: bool) -> None:
        """Save the run as it is after ``step`` updates (``rng``: the generators at that point).

        A failed write (disk full, directory gone) warns and does not raise: at the end, train() still
        returns the history; in the middle, training goes on and the next save tries again. The previous
        checkpoint, if any, stays intact (save_checkpoint is atomic)."""
        nonlocal saved_step
        payload = {
            "format": CHECKPOINT_FORMAT,
            "model_class": type(model).__name__,
            "model_config": _model_config(model),
            "train_config": train_cfg,
            "forward": forward,
            "data_hash": data_hash,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng,
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "history": history.to_dict(),
        }
        try:
            save_checkpoint(checkpoint_path, payload)
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as a RuntimeError
            then = ("train() returns the history, but the run cannot be resumed from this step" if final
                    else "training goes on, and the next save tries again")
            warnings.warn(f"could not write the checkpoint {checkpoint_path} at step {step} "
                          f"({type(exc).__name__}: {exc}); {then}", CheckpointWarning, stacklevel=3)
        else:
            saved_step = step

    def save(final: bool) -> None:  # rank 0 writes; every rank waits for the file before going on
        if rank == 0:
            write_checkpoint(rng, final)
        if world_size > 1:
            torch.distributed.barrier()

    def due(k: int) -> bool:  # is there a validation after k updates?
        if val_data is None:
            return False
        return k == 0 or k == config.steps or bool(config.eval_interval and k % config.eval_interval == 0)

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
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = config.grad_clip if config.grad_clip is not None else math.inf  # inf: measure, don't clip
    share = config.batch_size // world_size
    bar = tqdm(total=config.steps, initial=step, disable=not progress or rank != 0, desc=type(model).__name__)
    # The state after `step` updates is always at hand for a save on Ctrl-C: model and optimizer change
    # only inside the update below (which holds Ctrl-C until it is done), and `rng` is the generators'
    # state taken right after it, before the next batch is drawn and dropout masks are sampled.
    rng, updating = rng_states(), False
    try:
        # At step 0, the untrained model (about ln(vocab_size)). A run saved on Ctrl-C during a validation
        # lacks it: it is measured now, on the same weights, so the history is the uninterrupted one.
        if due(step) and history.val_steps[-1:] != [step]:
            validate()
        while step < stop:
            t0 = time.perf_counter()
            # every rank draws the same global batch (same generator) and keeps its own slice of it
            if draws:
                batch = _checked_task_batch(train_data(batch_gen), config.batch_size)
                x, y, mask = (None if t is None else t[rank * share:(rank + 1) * share].to(dev) for t in batch)
            else:
                x, y = get_batch(train_data, config.batch_size, config.seq_len, generator=batch_gen, device=dev)
                x, y, mask = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share], None
            lr = lr_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with precision.autocast(dev):
                logits = _logits(forward_model(x, **forward_kwargs))
            if mask is None:
                loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
            else:   # only the scored positions (e.g. the answers of a recall task)
                loss = F.cross_entropy(logits[mask].float(), y[mask])
            loss_value = loss.item() if world_size == 1 else _all_reduce_sum([loss.item()], dev)[0] / world_size
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss is {loss_value} at step {step + 1}; try a lower lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()   # with float16: the loss scaled up so small gradients survive
            scaler.unscale_(optimizer)      # true gradients again, before they are clipped and measured
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
            with _sigint_held():  # a Ctrl-C here would leave the weights half updated: it waits
                updating = True
                scaler.step(optimizer)      # skipped (and the scale lowered) if a gradient overflowed
                scaler.update()
                step += 1
                history.steps.append(step)
                history.train_loss.append(loss_value)
                history.lr.append(lr)
                history.grad_norm.append(grad_norm)
                history.tokens_per_s.append(y.numel() * world_size / (time.perf_counter() - t0))
                rng, updating = rng_states(), False
            if due(step):
                validate()
            if checkpoint_path is not None and (
                step == stop or (config.checkpoint_interval and step % config.checkpoint_interval == 0)
            ):
                save(final=step == stop)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{history.final_val_loss:.3f}", refresh=False)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C: keep the work done so far. Rank 0 alone, without waiting for the others (they are being
        # interrupted too); all ranks hold the same weights after every update.
        if checkpoint_path is not None and rank == 0 and step > 0 and step != saved_step:
            if updating:  # raised from inside the update itself (not a held Ctrl-C): weights half updated
                warnings.warn(f"interrupted in the middle of update {step + 1}: no consistent state to save; "
                              f"the checkpoint {checkpoint_path} is left as it was", CheckpointWarning,
                              stacklevel=2)
            else:
                write_checkpoint(rng, final=True)
                if saved_step == step and hasattr(interrupt, "add_note"):  # Python 3.11+
                    interrupt.add_note(f"retnet_mini: saved the run after {step} steps to {checkpoint_path}; "
                                       "call train() again with the same arguments to resume it")
        raise
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
    p.add_argument("--chunk-size", type=int, default=None,
                   help="chunk length of the chunkwise form (default: retnet_mini.costs.default_chunk_size)")
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
