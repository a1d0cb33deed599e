"""Synthetic probes of what a fixed-size state can hold: associative recall and copying.

Both tasks are generated in code from a ``torch.Generator`` (no data files) and come as next-token
prediction: ``inputs`` and ``targets`` are ``(B, T)`` int64 with ``targets[:, t]`` the token that follows
``inputs[:, t]``, and a boolean ``loss_mask`` ``(B, T)`` that is True exactly at the positions whose
target is an answer. Only those positions are scored (:func:`masked_cross_entropy`,
:func:`masked_accuracy`); everything else in the sequence is context that cannot be predicted.

- :func:`mqar`: multi-query associative recall, as in the Zoology study (Arora et al. 2023): key-value
  pairs, then some of the keys again; after each queried key the model must produce its value.
- :func:`copy_task`: a random string, a separator, then the string again (as in "Repeat After Me",
  Jelassi et al. 2024): after the separator the model must reproduce the string token by token.

Attention can look an answer up in its KV cache at any distance. A recurrent model must have kept it in
its state: with ``N`` pairs (or ``L`` symbols) to remember and a state of fixed size, recall must fail
once ``N`` (or ``L``) is large enough, and a fixed decay forgets early pairs whatever the state size.

:func:`train_on_task` (the book's training loop with fresh random batches every step and a masked
loss) and :func:`evaluate_on_task` are what the chapter ``book/limits.ipynb`` uses, for any model called as
``logits, state = model(tokens)`` (:class:`~retnet_mini.model.RetNetLM`,
:class:`~retnet_mini.transformer.TransformerLM`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_real
from .training import TrainConfig, train

__all__ = [
    "FILLER",
    "SEPARATOR",
    "mqar_vocab",
    "mqar",
    "mqar_layout",
    "copy_task",
    "masked_cross_entropy",
    "masked_accuracy",
    "TaskHistory",
    "train_on_task",
    "evaluate_on_task",
]

Batch = tuple[Tensor, Tensor, Tensor]

FILLER = 0      # MQAR: the token between queries (it carries no information)
SEPARATOR = 0   # copying: the token between the string and its copy


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (batches are drawn on the CPU), got one on {generator.device}")


def _random_subsets(batch: int, population: int, size: int, generator: torch.Generator | None) -> Tensor:
    """``(batch, size)``: in each row ``size`` distinct numbers from ``0 .. population - 1``, in random order."""
    return torch.rand(batch, population, generator=generator).argsort(dim=-1)[:, :size]


# ---------------------------------------------------------------------------------------------
# Multi-query associative recall
# ---------------------------------------------------------------------------------------------
def mqar_vocab(vocab_size: int) -> tuple[range, range]:
    """The ids MQAR uses as keys and as values: ``FILLER = 0``, keys ``1 .. K``, values ``K + 1 .. V - 1``
    with ``K = (V - 1) // 2`` (so keys and values never share an id). Returns ``(keys, values)`` ranges."""
    check_int("vocab_size", vocab_size, 3)
    n_keys = (vocab_size - 1) // 2
    return range(1, 1 + n_keys), range(1 + n_keys, vocab_size)


def mqar(
    batch_size: int,
    num_pairs: int,
    seq_len: int,
    vocab_size: int,
    num_queries: int | None = None,
    generator: torch.Generator | None = None,
) -> Batch:
    """A batch of multi-query associative recall sequences.

    Each sequence of ``seq_len + 1`` tokens is ``k_1 v_1 k_2 v_2 ... k_N v_N`` (``N = num_pairs``
    distinct keys, distinct values; see :func:`mqar_vocab`), then a query region of ``seq_len - 2N + 1``
    tokens: ``num_queries`` of the keys (a random subset, in random order), each followed by its value,
    at random places among :data:`FILLER` tokens. ``inputs`` are its first ``seq_len`` tokens, ``targets``
    its last ``seq_len`` (the next token), and ``loss_mask`` is True at each queried key: there the
    target is the value paired with that key earlier.

    Args:
        batch_size: ``B``; num_pairs: ``N >= 1``; seq_len: ``T``, needs ``T >= 2N + 2Q - 1``;
        vocab_size: needs at least ``N`` keys and ``N`` values, i.e. ``vocab_size >= 2N + 1``;
        num_queries: ``Q``, 1 to ``N`` (None: ``N``, every key is queried, as in Zoology);
        generator: a ``torch.Generator`` (CPU) for reproducible batches.
    Returns:
        ``inputs, targets``: ``(B, T)`` int64; ``loss_mask``: ``(B, T)`` bool with ``Q`` True per row.
    """
    B = check_int("batch_size", batch_size, 1)
    _check_generator(generator)
    N = check_int("num_pairs", num_pairs, 1)
    T = check_int("seq_len", seq_len, 1)
    Q = N if num_queries is None else check_int("num_queries", num_queries, 1)
    if Q > N:
        raise ValueError(f"num_queries ({Q}) cannot exceed num_pairs ({N}): only {N} keys can be queried")
    keys, values = mqar_vocab(vocab_size)
    if N > len(keys) or N > len(values):
        raise ValueError(
            f"num_pairs ({N}) needs {N} distinct keys and {N} distinct values, but vocab_size {vocab_size} "
            f"has {len(keys)} keys and {len(values)} values: use vocab_size >= {2 * N + 1}"
        )
    region = T + 1 - 2 * N                  # tokens after the pairs (the sequence has T + 1 tokens)
    slots = region // 2                     # room for this many (query, answer) couples
    if slots < Q:
        raise ValueError(
            f"seq_len ({T}) is too short for {N} pairs and {Q} queries: needs seq_len >= {2 * N + 2 * Q - 1}"
        )
    k = _random_subsets(B, len(keys), N, generator) + keys.start           # (B, N) distinct keys
    v = _random_subsets(B, len(values), N, generator) + values.start       # (B, N) distinct values
    queried = _random_subsets(B, N, Q, generator)                          # which pairs are queried
    slots_used = _random_subsets(B, slots, Q, generator)                   # in which slots
    return mqar_layout(k, v, queried, slots_used, T)


def mqar_layout(keys: Tensor, values: Tensor, queried: Tensor, slots: Tensor, seq_len: int) -> Batch:
    """Lay out MQAR sequences from their parts (what :func:`mqar` draws at random).

    Args:
        keys, values: ``(B, N)`` ids; pair ``i`` is ``keys[:, i], values[:, i]``.
        queried: ``(B, Q)`` indices into the pairs, in the order they are asked.
        slots: ``(B, Q)`` distinct slot numbers; query ``j`` is written at position ``2N + 2 slots[:, j]``
            (its key), followed by its value; slots must satisfy ``2N + 2 slot + 1 <= seq_len``.
        seq_len: ``T``.
    Returns:
        ``inputs, targets`` ``(B, T)`` int64 and ``loss_mask`` ``(B, T)`` bool, as :func:`mqar` describes.
    """
    T = check_int("seq_len", seq_len, 1)
    parts = dict(keys=keys, values=values, queried=queried, slots=slots)
    for name, t in parts.items():
        if not isinstance(t, Tensor) or t.ndim != 2 or t.dtype != torch.long:
            got = f"shape {tuple(t.shape)}, dtype {t.dtype}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 2-D int64 tensor, got {got}")
    B, N = keys.shape
    if values.shape != (B, N) or queried.shape != slots.shape or queried.shape[0] != B:
        raise ValueError(
            f"keys and values must both be (B, N), queried and slots both (B, Q); got keys {tuple(keys.shape)}, "
            f"values {tuple(values.shape)}, queried {tuple(queried.shape)}, slots {tuple(slots.shape)}"
        )
    if queried.numel() and (queried.min() < 0 or queried.max() >= N):
        raise ValueError(f"queried must hold pair indices in [0, {N}), got values in "
                         f"[{queried.min().item()}, {queried.max().item()}]")
    if slots.numel() and (slots.min() < 0 or 2 * N + 2 * slots.max() + 1 > T):
        raise ValueError(f"slots must be >= 0 with 2N + 2 slot + 1 <= seq_len ({T}), i.e. slot <= "
                         f"{(T - 1) // 2 - N}; got values in [{slots.min().item()}, {slots.max().item()}]")
    seq = torch.full((B, seq_len + 1), FILLER, dtype=torch.long, device=keys.device)
    seq[:, 0:2 * N:2], seq[:, 1:2 * N:2] = keys, values                     # k_1 v_1 ... k_N v_N
    query_pos = 2 * N + 2 * slots                                          # (B, Q) where the queries go
    seq.scatter_(1, query_pos, keys.gather(1, queried))
    seq.scatter_(1, query_pos + 1, values.gather(1, queried))
    mask = torch.zeros(B, seq_len, dtype=torch.bool, device=keys.device)
    mask.scatter_(1, query_pos, True)                                      # answer = the value after the key
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous(), mask


# ---------------------------------------------------------------------------------------------
# Copying
# ---------------------------------------------------------------------------------------------
def copy_task(
    batch_size: int, string_length: int, vocab_size: int, generator: torch.Generator | None = None
) -> Batch:
    """A batch of copying sequences: a random string, :data:`SEPARATOR`, then the string again.

    The full sequence ``s_1 .. s_L SEP s_1 .. s_L`` has ``2L + 1`` tokens (symbols are ids ``1 ..
    vocab_size - 1``, drawn uniformly and independently); ``inputs`` are its first ``2L``, ``targets`` its
    last ``2L``, and ``loss_mask`` is True at the last ``L`` positions (from the separator on), where the
    target is the next symbol of the copy.

    Args:
        batch_size: ``B``; string_length: ``L >= 1``; vocab_size: ``>= 2`` (the separator and at least one
        symbol; with one symbol the task is trivial); generator: a ``torch.Generator`` (CPU).
    Returns:
        ``inputs, targets``: ``(B, 2L)`` int64; ``loss_mask``: ``(B, 2L)`` bool with ``L`` True per row.
    """
    B = check_int("batch_size", batch_size, 1)
    _check_generator(generator)
    L = check_int("string_length", string_length, 1)
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2 (the separator and at least one symbol), got {vocab_size!r}")
    s = torch.randint(1, vocab_size, (B, L), generator=generator)
    seq = torch.cat([s, torch.full((B, 1), SEPARATOR, dtype=torch.long), s], dim=1)
    mask = torch.zeros(B, 2 * L, dtype=torch.bool)
    mask[:, L:] = True
    return seq[:, :-1].contiguous(), seq[:, 1:].contiguous(), mask


# ---------------------------------------------------------------------------------------------
# Scoring only the answers
# ---------------------------------------------------------------------------------------------
def _check_scored(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> None:
    if logits.ndim != 3 or targets.shape != logits.shape[:2] or loss_mask.shape != targets.shape:
        raise ValueError(
            f"need logits (B, T, V), targets (B, T) and loss_mask (B, T); got {tuple(logits.shape)}, "
            f"{tuple(targets.shape)}, {tuple(loss_mask.shape)}"
        )
    if loss_mask.dtype != torch.bool:
        raise ValueError(f"loss_mask must be a bool tensor, got {loss_mask.dtype}")
    if not loss_mask.any():
        raise ValueError("loss_mask selects no position: nothing to score")


def masked_cross_entropy(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean cross-entropy (nats) over the positions where ``loss_mask`` is True; the others do not count."""
    _check_scored(logits, targets, loss_mask)
    return F.cross_entropy(logits[loss_mask].float(), targets[loss_mask])


def masked_accuracy(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> float:
    """Fraction of the masked positions where the most likely token (argmax) is the target."""
    _check_scored(logits, targets, loss_mask)
    return (logits.argmax(-1)[loss_mask] == targets[loss_mask]).double().mean().item()


# ---------------------------------------------------------------------------------------------
# Training on a probe: the book's training loop with a fresh batch each step
# ---------------------------------------------------------------------------------------------
@dataclass
class TaskHistory:
    """``loss[i]``: the masked training loss of update ``i + 1`` (nats)."""

    loss: list[float] = field(default_factory=list)


def _logits(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


def train_on_task(
    model: nn.Module,
    make_batch: Callable[[torch.Generator], Batch],
    steps: int,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    precision: str = "float32",
) -> TaskHistory:
    """Train ``model`` for ``steps`` AdamW updates on fresh batches ``make_batch(generator)``, masked loss.

    The book's one training loop, :func:`retnet_mini.training.train`, with a probe's settings: a fresh batch
    ``(inputs, targets, loss_mask)`` every step, only the ``loss_mask`` positions scored, no validation,
    no checkpoint. The learning rate warms up linearly over ``warmup_steps`` then follows a cosine down to
    10% of ``lr`` at the last step (:func:`~retnet_mini.training.lr_at`); weight matrices are decayed,
    embeddings, norms and biases are not (:func:`~retnet_mini.training.split_decay_params`). Batches come
    from a CPU ``torch.Generator`` seeded with ``seed`` (the same batches on any device) and are moved to
    ``device`` (default: the model's). ``precision`` as in :class:`~retnet_mini.training.TrainConfig`
    (float32 by default, as the chapter's claims were measured). A non-finite loss raises
    ``FloatingPointError``. The model is left in evaluation mode.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not callable(make_batch):
        raise ValueError(f"make_batch must be a function generator -> (inputs, targets, loss_mask), got {make_batch!r}")
    check_int("steps", steps, 1)
    check_real("lr", lr, 0, low_open=True)
    check_real("weight_decay", weight_decay, 0)
    check_int("warmup_steps", warmup_steps, 0)
    check_real("grad_clip", grad_clip, 0, low_open=True)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    probe = make_batch(torch.Generator().manual_seed(seed))  # train() checks it; here only its batch size
    if not isinstance(probe, (tuple, list)) or len(probe) != 3 or not isinstance(probe[0], Tensor) or probe[0].dim() != 2:
        raise ValueError("make_batch must return (inputs, targets, loss_mask), each a (B, T) tensor, "
                         "as mqar and copy_task do")
    config = TrainConfig(
        steps=steps, batch_size=probe[0].shape[0], lr=lr, min_lr=0.1 * lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, grad_clip=grad_clip, seed=seed, eval_interval=None, precision=precision,
    )  # fmt: skip
    device = device if device is not None else next(model.parameters()).device
    history = train(model, make_batch, None, config, device=device, progress=False)
    model.eval()
    return TaskHistory(loss=history.train_loss)


@torch.no_grad()
def evaluate_on_task(model: nn.Module, batch: Batch, **forward_kwargs) -> float:
    """Accuracy of ``model`` on the answers of ``batch`` (inputs, targets, loss_mask): see :func:`masked_accuracy`."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 3 or not all(isinstance(t, Tensor) for t in batch):
        raise ValueError("batch must be a tuple (inputs, targets, loss_mask) of tensors, as mqar and copy_task return")
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x, y, mask = (t.to(dev) for t in batch)
    accuracy = masked_accuracy(_logits(model(x, **forward_kwargs)), y, mask)
    model.train(was_training)
    return accuracy
