"""Checkers for the book's exercises.

A checker calls the reader's function on many random cases (different shapes, decays and seeds, in the
spirit of property-based testing) and compares it with the package's reference. It raises
:class:`ExerciseError` with a message that says what is wrong (a type, a shape, or the first wrong
value with its case and position) and prints a short success line otherwise.

Each chapter's checkers live in ``retnet_mini/exercises/<chapter>.py`` and are built on :func:`compare`.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["ExerciseError", "compare", "compare_with_hints", "random_cases", "randint", "randn", "uniform"]


class ExerciseError(AssertionError):
    """The reader's answer is wrong; the message says how."""


def random_cases(make_case: Callable[[torch.Generator], Dict[str, Any]], n_cases: int = 25, seed: int = 0):
    """Yield ``n_cases`` keyword-argument dicts drawn by ``make_case(generator)`` with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_cases):
        yield make_case(g)


def compare(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[Dict[str, Any]],
    name: str,
    rtol: float = 1e-7,
    atol: float = 1e-9,
) -> str:
    """Run ``answer(**case)`` and ``reference(**case)`` on every case; raise on the first difference.

    Outputs may be tensors or tuples of tensors. Returns (and prints) a one-line success message.
    """
    n = 0
    for n, case in enumerate(cases, start=1):
        args = {k: (v.clone() if isinstance(v, Tensor) else v) for k, v in case.items()}
        try:
            got = answer(**args)
        except Exception as e:  # the reader's code crashed: say on which input
            raise ExerciseError(f"{name}: your function raised {type(e).__name__}: {e}\n  on {_describe_case(case)}") from e
        want = reference(**case)
        _compare_outputs(got, want, name, case, rtol, atol)
    message = f"{name}: correct on all {n} random cases."
    print(message)
    return message


def compare_with_hints(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[Dict[str, Any]],
    name: str,
    hints: Sequence[Tuple[Callable[..., Any], str]] = (),
    **tolerances: float,
) -> None:
    """:func:`compare` (prints one success line); on failure, adds a hint when the answer gives the same
    outputs as a known wrong variant (``hints``: pairs of a variant function and the hint to show)."""
    cases = list(cases)
    try:
        compare(answer, reference, cases, name, **tolerances)
    except ExerciseError as error:
        for variant, hint in hints:
            if _same_outputs(answer, variant, cases):
                raise ExerciseError(f"{error}\n  hint: {hint}") from None
        raise


def _same_outputs(answer: Callable[..., Any], variant: Callable[..., Any], cases: List[Dict[str, Any]]) -> bool:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            compare(answer, variant, cases, "hint")
        return True
    except Exception:  # a mismatch, or the answer crashed: not this variant
        return False


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]`` (both included), drawn from ``g``."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def randn(g: torch.Generator, *shape: int) -> Tensor:
    """Standard normal float64 numbers of ``shape``, drawn from ``g``."""
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    """Uniform float64 numbers in ``[low, high)`` of ``shape``, drawn from ``g``."""
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


def _compare_outputs(got, want, name, case, rtol, atol, what="output"):
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            raise ExerciseError(f"{name}: expected a tuple of {len(want)} tensors, got {type(got).__name__}")
        for i, (g, w) in enumerate(zip(got, want)):
            _compare_outputs(g, w, name, case, rtol, atol, what=f"output[{i}]")
        return
    if not isinstance(got, Tensor):
        raise ExerciseError(f"{name}: {what} should be a torch.Tensor, got {type(got).__name__}")
    if got.shape != want.shape:
        raise ExerciseError(
            f"{name}: {what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}\n  on {_describe_case(case)}"
        )
    close = torch.isclose(got.to(want.dtype), want, rtol=rtol, atol=atol)
    if not close.all():
        index = tuple(int(i) for i in (~close).nonzero()[0])
        raise ExerciseError(
            f"{name}: wrong value in {what} at index {index}: got {got[index].item():.6g}, expected "
            f"{want[index].item():.6g} ({int((~close).sum())} of {close.numel()} entries differ)\n"
            f"  on {_describe_case(case)}"
        )


def _describe_case(case: Dict[str, Any]) -> str:
    parts = []
    for k, v in case.items():
        if isinstance(v, Tensor):
            parts.append(f"{k}: shape {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}")
        else:
            parts.append(f"{k}={v!r}")
    return ", ".join(parts)
