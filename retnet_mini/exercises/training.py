"""Checkers for the exercises of the chapter "Training a small RetNet (and a Transformer of the same
size)" (``book/training.ipynb``).

- :func:`check_next_char_loss`: the cross-entropy of next-character prediction, from logits and targets.
- :func:`check_lr_at`: the learning rate of warm-up followed by cosine decay, at one step.
- :func:`check_unigram_entropy`: the entropy of the character distribution of a tensor of ids.
- :func:`check_loss_units`: a loss in nats per character as bits per character and as perplexity.

Each ``check_*`` calls the reader's function on random cases (shapes, sizes and values drawn with a fixed
seed, float64) and compares it with the package's reference (:func:`torch.nn.functional.cross_entropy`,
:func:`retnet_mini.training.lr_at`, :func:`retnet_mini.training.unigram_entropy`). It raises
:class:`ExerciseError` saying what is wrong (type, shape, a value that is not finite, or the first wrong
value with its case and position, plus a hint when the answer matches a known mistake) or prints
``"<name>: correct on all N random cases."``.
"""
from __future__ import annotations

import math
from typing import Any
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..training import TrainConfig, lr_at, unigram_entropy
from . import (ExerciseError, _describe_case, _two_numbers, call_answer, copy_case, first_hint, mutation_note, pick,
               randint, randn, random_cases, success, to_tensor, tolerances, uniform, wrong_type)

__all__ = ["check_next_char_loss", "check_lr_at", "check_unigram_entropy", "check_loss_units"]

DTYPE = torch.float64
LN2 = math.log(2.0)


def _describe(case: dict[str, Any]) -> str:
    """The case, with the largest |value| of each float tensor: large logits are why a naive softmax overflows."""
    return _describe_case(case, largest=True)


Output = tuple[Tensor, torch.dtype]     # an output as float64, and the dtype it was computed in


def _as_tensors(out: Any, n_outputs: int, name: str, case: dict[str, Any], scalar: bool) -> tuple[Output, ...]:
    """The output(s) as float64 tensors, each with the dtype it was computed in (for the tolerance); a
    clear error for a wrong type or count. Numpy arrays and numbers are converted."""
    where = f"\n  on {_describe(case)}"
    outs = out if n_outputs > 1 else (out,)
    if n_outputs > 1 and (not isinstance(out, (tuple, list)) or len(out) != n_outputs):
        raise ExerciseError(f"{name}: {wrong_type(out, f'a tuple of {n_outputs} values')}{where}")
    result = []
    for i, o in enumerate(outs):
        what = "the output" if n_outputs == 1 else f"output[{i}]"
        kind = "a number (or a 0-dim tensor)" if scalar else "a torch.Tensor"
        t = to_tensor(o)
        if t is None or t.dtype == torch.bool:
            raise ExerciseError(f"{name}: {wrong_type(o, kind, what)}{where}")
        if t.is_complex():
            raise ExerciseError(f"{name}: {what} is complex ({t.dtype}), expected real numbers{where}")
        result.append((t.to(DTYPE), t.dtype if t.is_floating_point() else DTYPE))
    return tuple(result)


def _check(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Sequence[dict[str, Any]],
    name: str,
    hints: Sequence[tuple[Callable[..., Any], str]] = (),
    nonfinite_hint: str = "",
    n_outputs: int = 1,
    scalar: bool = False,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> str:
    """Run ``reference(**case)`` then ``answer(**case)`` on every case; raise on the first difference.

    ``rtol``, ``atol``: for a float64 answer; one in lower precision gets the tolerance of its dtype
    (:func:`retnet_mini.exercises.tolerances`), relative to each entry: these outputs are single numbers
    or computed entry by entry."""
    cases = list(cases)
    options = dict(n_outputs=n_outputs, scalar=scalar, rtol=rtol, atol=atol)   # to compare with the hints' variants
    for case in cases:
        want = _as_tensors(reference(**copy_case(case)), n_outputs, name, case, scalar)   # first, on its own copy
        out, changed = call_answer(answer, case, name, describe=_describe)
        note = mutation_note(changed)
        try:
            got = _as_tensors(out, n_outputs, name, case, scalar)
        except ExerciseError as error:
            raise ExerciseError(f"{error}{note}") from None
        for i, ((g, dtype), (w, _)) in enumerate(zip(got, want)):
            what = "the output" if n_outputs == 1 else f"output[{i}]"
            if g.shape != w.shape:
                raise ExerciseError(f"{name}: {what} has shape {tuple(g.shape)}, expected {tuple(w.shape)}\n"
                                    f"  on {_describe(case)}{note}")
            r, a = tolerances(dtype, rtol, atol)
            bad = ~torch.isfinite(g) & torch.isfinite(w)
            if bad.any():
                index = tuple(int(j) for j in bad.nonzero()[0]) if g.dim() else ()
                where = f" at index {index}" if g.dim() else ""
                message = (f"{name}: {what} is not finite ({g[index].item()}){where}, expected "
                           f"{w[index].item():.10g}\n  on {_describe(case)}{note}")
                hint = first_hint(hints, _check, answer, cases, **options) or nonfinite_hint
                raise ExerciseError(message + (f"\n  hint: {hint}" if hint else ""))
            close = torch.isclose(g, w, rtol=r, atol=a, equal_nan=True)    # nan as a hint's variant gives it
            if not close.all():
                index = tuple(int(j) for j in (~close).nonzero()[0]) if g.dim() else ()
                where = f" at index {index}" if g.dim() else ""
                shown_got, shown_want = _two_numbers(g[index].item(), w[index].item(), digits=10)
                message = f"{name}: wrong value in {what}{where}: got {shown_got}, expected {shown_want}"
                if g.dim():
                    message += f" ({int((~close).sum())} of {close.numel()} entries differ)"
                message += f"\n  on {_describe(case)}{note}"
                hint = first_hint(hints, _check, answer, cases, **options)
                raise ExerciseError(message + (f"\n  hint: {hint}" if hint else ""))
    return success(name, len(cases))


# ---------------------------------------------------------------------------------------------
# 1. The loss: cross-entropy of the next character.
# ---------------------------------------------------------------------------------------------
def reference_next_char_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over all ``B * T`` positions of ``-log softmax(logits[b, t])[targets[b, t]]``, in nats.

    logits: ``(B, T, V)``; targets: ``(B, T)`` int64 ids (the next character at each position).
    Returns a 0-dim tensor: exactly the loss :func:`retnet_mini.training.train` minimizes.
    """
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def _loss_case(g: torch.Generator) -> dict[str, Any]:
    B, T, V = randint(g, 1, 3), randint(g, 1, 16), randint(g, 2, 110)
    scale = pick(g, [1.0, 1.0, 5.0, 1000.0])   # 1000: exp overflows in float64 unless the max is subtracted
    return {"logits": scale * randn(g, B, T, V),
            "targets": torch.randint(0, V, (B, T), generator=g)}


def check_next_char_loss(my_next_char_loss: Callable[[Tensor, Tensor], Tensor], n_cases: int = 25) -> None:
    """``my_next_char_loss(logits (B, T, V), targets (B, T)) -> 0-dim tensor`` (or a float): the mean
    cross-entropy of the next character, in nats."""
    def logp(logits, targets):
        return torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]

    hints = [
        (lambda logits, targets: -logp(logits, targets).sum(),
         "average over all B * T positions (a sum grows with the batch and the length)."),
        (lambda logits, targets: -logp(logits, targets).mean() / LN2,
         "that is bits (log base 2); the training loss is in nats (natural log)."),
        (lambda logits, targets: logp(logits, targets).mean(),
         "the loss is the NEGATIVE log-probability of the target: it is >= 0."),
        (lambda logits, targets: -torch.log_softmax(logits, 1).gather(-1, targets[..., None]).mean(),
         "normalize over the vocabulary, the last dimension (dim=-1), not over positions."),
        (lambda logits, targets: -torch.log_softmax(logits[:, :-1], -1).gather(-1, targets[:, 1:, None]).mean(),
         "targets are already shifted: targets[b, t] is the character after position t, so compare "
         "logits[b, t] with targets[b, t], with no further shift."),
    ]
    cases = list(random_cases(_loss_case, n_cases=n_cases, seed=71))
    _check(
        my_next_char_loss, reference_next_char_loss, cases, "check_next_char_loss", hints, scalar=True,
        nonfinite_hint="exp of large logits overflows: subtract each row's max logit first "
                       "(log-sum-exp trick), or use torch.logsumexp / torch.log_softmax.",
    )


# ---------------------------------------------------------------------------------------------
# 2. The learning-rate schedule: linear warm-up, then cosine decay.
# ---------------------------------------------------------------------------------------------
def reference_lr_at(step: int, steps: int, lr: float, min_lr: float, warmup_steps: int) -> float:
    """The learning rate of update number ``step + 1`` (:func:`retnet_mini.training.lr_at`)."""
    return lr_at(step, TrainConfig(steps=steps, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps))


def _lr_case(g: torch.Generator) -> dict[str, Any]:
    steps = randint(g, 3, 3000)
    warmup_steps = pick(g, [0, 1, randint(g, 1, steps - 2), randint(g, 1, max(1, steps // 5))])
    lr = 10 ** float(uniform(g, -4.5, -2))
    min_lr = pick(g, [0.0, lr / 10, lr * float(uniform(g, 0, 1))])
    kind = pick(g, ["first", "warmup", "end of warmup", "middle", "last", "any", "any"])
    step = {
        "first": 0,
        "warmup": randint(g, 0, max(0, warmup_steps - 1)),
        "end of warmup": warmup_steps,
        "middle": (warmup_steps + steps - 1) // 2,
        "last": steps - 1,
        "any": randint(g, 0, steps - 1),
    }[kind]
    return {"step": step, "steps": steps, "lr": lr, "min_lr": min_lr, "warmup_steps": warmup_steps}


def check_lr_at(my_lr_at: Callable[..., float], n_cases: int = 25) -> None:
    """``my_lr_at(step, steps, lr, min_lr, warmup_steps) -> float``; ``steps - warmup_steps >= 2``."""
    def cosine(step, steps, lr, min_lr, warmup_steps, denominator, floor):
        progress = (step - warmup_steps) / denominator(steps - warmup_steps)
        return floor(min_lr) + (lr - floor(min_lr)) * 0.5 * (1 + math.cos(math.pi * progress))

    def variant(warmup, denominator=lambda n: n - 1, floor=lambda m: m):
        def f(step, steps, lr, min_lr, warmup_steps):
            if step < warmup_steps:
                return warmup(step, lr, warmup_steps)
            return cosine(step, steps, lr, min_lr, warmup_steps, denominator, floor)
        return f

    right_warmup = lambda step, lr, w: lr * (step + 1) / w   # noqa: E731
    hints = [
        (variant(lambda step, lr, w: lr * step / w),
         "warm-up: update number step + 1 uses lr * (step + 1) / warmup_steps, so the first update "
         "(step 0) does not use a learning rate of 0."),
        (variant(right_warmup, denominator=lambda n: n),
         "the last update (step = steps - 1) should use exactly min_lr: the cosine's progress is "
         "(step - warmup_steps) / (steps - warmup_steps - 1)."),
        (variant(right_warmup, floor=lambda m: 0.0),
         "the cosine decays to min_lr, not to 0: min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2."),
        (lambda step, steps, lr, min_lr, warmup_steps: reference_lr_at(step + 1, steps, lr, min_lr, warmup_steps),
         "step counts the updates already done (0-based): step 0 is the first update."),
    ]
    cases = list(random_cases(_lr_case, n_cases=n_cases, seed=72))
    _check(my_lr_at, reference_lr_at, cases, "check_lr_at", hints, scalar=True, rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# 3. The unigram baseline: the entropy of the character distribution.
# ---------------------------------------------------------------------------------------------
def reference_unigram_entropy(ids: Tensor) -> float:
    """``-sum_c p_c ln p_c`` over the ids that occur, ``p_c`` = count / N (nats)."""
    return unigram_entropy(ids)


def _entropy_case(g: torch.Generator) -> dict[str, Any]:
    V, N = randint(g, 1, 120), randint(g, 1, 3000)
    weights = randn(g, V).mul(float(uniform(g, 0.0, 3.0))).exp()
    if V > 3 and randint(g, 0, 1):
        weights[torch.randperm(V, generator=g)[: V // 3]] = 0.0   # ids that never occur
    ids = torch.multinomial(weights, N, replacement=True, generator=g)
    return {"ids": ids}


def check_unigram_entropy(my_unigram_entropy: Callable[[Tensor], float], n_cases: int = 25) -> None:
    """``my_unigram_entropy(ids (N,) int64) -> float``: entropy of the id distribution, nats."""
    def counts(ids):
        return torch.unique(ids, return_counts=True)[1].to(DTYPE)

    def entropy(p):
        return float(-(p * p.log()).sum())

    hints = [
        (lambda ids: entropy(counts(ids) / len(ids)) / LN2,
         "that is bits (log base 2); the baseline is compared with losses in nats (natural log)."),
        (lambda ids: math.log(len(counts(ids))),
         "that is the entropy of a UNIFORM distribution over the ids that occur: weight each id by "
         "its frequency, p = count / N."),
        (lambda ids: float(-(counts(ids) / len(ids)).log().mean()),
         "average -ln p over the N characters (weights p_c), not over the distinct ids."),
        (lambda ids: entropy(counts(ids) / len(counts(ids))),
         "the probabilities are count / N (the number of characters), so that they sum to 1."),
    ]
    cases = list(random_cases(_entropy_case, n_cases=n_cases, seed=73))
    _check(
        my_unigram_entropy, reference_unigram_entropy, cases, "check_unigram_entropy", hints, scalar=True,
        nonfinite_hint="ids that never occur have p = 0, and 0 * ln 0 is nan in floating point; by "
                       "convention it counts as 0: keep only the ids that occur (torch.unique(ids, "
                       "return_counts=True) gives their counts).",
    )


# ---------------------------------------------------------------------------------------------
# 4. Units: nats per character -> bits per character and perplexity.
# ---------------------------------------------------------------------------------------------
def reference_loss_units(loss: Tensor) -> tuple[Tensor, Tensor]:
    """``(bits per character, perplexity) = (loss / ln 2, exp(loss))`` elementwise, for a loss in nats."""
    return loss / LN2, loss.exp()


def _units_case(g: torch.Generator) -> dict[str, Any]:
    shape = tuple(randint(g, 1, 4) for _ in range(randint(g, 0, 2)))
    return {"loss": torch.rand(shape, generator=g, dtype=DTYPE) * 6}


def check_loss_units(my_loss_units: Callable[[Tensor], tuple[Tensor, Tensor]], n_cases: int = 25) -> None:
    """``my_loss_units(loss) -> (bits_per_char, perplexity)``, elementwise, same shape as ``loss``."""
    hints = [
        (lambda loss: (loss * LN2, loss.exp()),
         "bits = nats / ln 2 (a bit is the larger unit: ln 2 ~ 0.693 nats), so divide by ln 2."),
        (lambda loss: (loss / LN2, 2 ** loss),
         "the loss is in nats, so perplexity = e ** loss (or 2 ** bits), not 2 ** nats."),
        (lambda loss: (loss.exp(), loss / LN2),
         "return (bits_per_char, perplexity) in that order."),
        (lambda loss: (loss / math.log(10), loss.exp()),
         "bits use log base 2: bits = nats / ln 2, not nats / ln 10."),
    ]
    cases = list(random_cases(_units_case, n_cases=n_cases, seed=74))
    _check(my_loss_units, reference_loss_units, cases, "check_loss_units", hints, n_outputs=2)
