"""Checkers for the book's exercises.

A checker calls the reader's function on many random cases (different shapes, decays and seeds, in the
spirit of property-based testing) and compares it with the package's reference. It raises
:class:`ExerciseError` with a message that says what is wrong (a type, a shape, or the first wrong
value with its case and position) and prints a short success line otherwise.

Each chapter's checkers live in ``retnet_mini/exercises/<chapter>.py`` and are built on :func:`compare`
(tensors) or :func:`compare_numbers` (a number per case), and on the helpers below, so that they all:

- compute the reference first, on a copy of the case of its own, then call the reader's function on
  another copy: nothing the answer does (changing an input in place, a model's weights, a module-level
  function the reference calls) can change what it is compared with. An answer that fails after
  changing one of its inputs in place is told so (:func:`mutation_note`);
- accept an answer as a tensor of any float dtype, a numpy array or number, or a Python int or float
  (:func:`to_tensor`, :func:`as_number`), compared with a tolerance suited to the precision it was
  computed in (:func:`tolerances`, :data:`LOW_PRECISION_RTOL`); outputs that must be exact stay exact;
- say plainly when the function crashed, returned ``None`` (a forgotten ``return``), or returned something
  else than asked (:func:`call_answer`, :func:`wrong_type`), rather than failing deep inside torch;
- add a hint when the answer makes a known mistake: it agrees on every case with a wrong variant
  (:func:`first_hint`), and print the same success line (:func:`success`), which the notebooks store.

Cases come from :func:`random_cases` (a fixed seed per checker), drawn with :func:`randint`, :func:`pick`,
:func:`randn` and :func:`uniform`; :func:`describe_numbers` shows a case of plain numbers in a message.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Any, Union
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ExerciseError", "compare", "compare_with_hints", "compare_numbers", "random_cases", "randint", "pick", "randn",
    "uniform", "describe_numbers", "LOW_PRECISION_RTOL", "tolerances", "to_tensor", "as_number", "wrong_type",
    "require_function", "call_answer", "copy_case", "changed_inputs", "mutation_note", "success", "first_hint",
]

Number = Union[int, float]


class ExerciseError(AssertionError):
    """The reader's answer is wrong; the message says how."""


def random_cases(make_case: Callable[[torch.Generator], dict[str, Any]], n_cases: int = 25, seed: int = 0):
    """Yield ``n_cases`` keyword-argument dicts drawn by ``make_case(generator)`` with a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_cases):
        yield make_case(g)


def randint(g: torch.Generator, low: int, high: int) -> int:
    """An int in ``[low, high]`` (both included), drawn from ``g``."""
    return int(torch.randint(low, high + 1, (1,), generator=g))


def pick(g: torch.Generator, options: Sequence[Any]) -> Any:
    """One of ``options``, drawn from ``g`` (all equally likely; repeat one to make it likelier)."""
    return options[randint(g, 0, len(options) - 1)]


def randn(g: torch.Generator, *shape: int) -> Tensor:
    """Standard normal float64 numbers of ``shape``, drawn from ``g``."""
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def uniform(g: torch.Generator, low: float, high: float, *shape: int) -> Tensor:
    """Uniform float64 numbers in ``[low, high)`` of ``shape``, drawn from ``g``."""
    return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Precision: the tolerance follows the dtype the answer was computed in.
# ---------------------------------------------------------------------------------------------
#: The relative tolerance for an answer computed in lower precision than the float64 references.
#: float32 rounds at 2^-24 ~ 6e-8: every reference, computed in float32 on the checkers' cases, stays
#: within 2e-5 of its float64 result (relative to the largest entry; rotate, with angles up to ~750
#: radians, is the worst; most stay within 1e-6), so 1e-4 accepts any sound float32 answer and still
#: rejects one off by more than 1 part in 10,000 (tests/test_exercise_checkers.py checks both). Half
#: precision rounds at 2^-11 (float16) and 2^-8 (bfloat16): such an answer is checked to about 2 digits.
#: A checker's own tolerance (for float64 answers) applies when it is looser; exact checks stay exact.
LOW_PRECISION_RTOL: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def tolerances(dtype: torch.dtype, rtol: float, atol: float, scale: float = 0.0) -> tuple[float, float]:
    """``(rtol, atol)`` for an answer of ``dtype``, given the checker's tolerance for float64 answers.

    For float32 and half precision: at least :data:`LOW_PRECISION_RTOL` relative to each expected entry
    and, as ``atol``, relative to ``scale`` (the largest expected entry, where an output is a sum whose
    rounding errors follow the size of its terms rather than of a result that may cancel to near 0; 0
    for outputs computed entry by entry). An exact check (``rtol = atol = 0``) stays exact: a whole
    number off by one is wrong in any precision.
    """
    low = LOW_PRECISION_RTOL.get(dtype)
    if low is None or (rtol == 0 and atol == 0):
        return rtol, atol
    return max(rtol, low), max(atol, low * scale)


def _float_dtype(x: float) -> torch.dtype:
    """The precision a Python float was most likely computed in: float32 when it is exactly a float32
    number and not a whole one (as ``.item()`` of a float32 tensor gives), else float64. A float64
    result is a float32 number by chance about once in 5 * 10^8; whole numbers are left exact."""
    if math.isfinite(x) and not x.is_integer() and abs(x) < 3e38 and float(np.float32(x)) == x:
        return torch.float32
    return torch.float64


# ---------------------------------------------------------------------------------------------
# What the answer returned: conversions, and plain words for the wrong types.
# ---------------------------------------------------------------------------------------------
def to_tensor(x: Any) -> Tensor | None:
    """``x`` as a CPU tensor (detached), from a tensor, a numpy array or number, or a Python int, float or
    complex; None for anything else (None, a list, a string, a bool, ...), for the caller to report."""
    if isinstance(x, Tensor):
        return x.detach().cpu()
    if isinstance(x, (np.ndarray, np.generic)):        # np.float64 is also a Python float: numpy first
        try:
            return torch.as_tensor(x)
        except (TypeError, RuntimeError):              # strings, objects: not numbers
            return None
    if isinstance(x, bool):                            # True is an int in Python, not an answer here
        return None
    if isinstance(x, int):
        try:
            return torch.tensor(x, dtype=torch.int64)
        except (OverflowError, RuntimeError):
            return torch.tensor(float(x), dtype=torch.float64)
    if isinstance(x, float):
        return torch.tensor(x, dtype=_float_dtype(x))   # exact either way: a float32 number fits float32
    if isinstance(x, complex):
        return torch.tensor(x, dtype=torch.complex128)
    return None


def _kind(x: Any) -> str:
    """What ``x`` is, in a few words: ``a list of 3 values``, ``a string ('abc')``, ``a tensor of shape (2,)``."""
    if x is None:
        return "None"
    if isinstance(x, Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape} and dtype {x.dtype}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)} value{'' if len(x) == 1 else 's'}"
    if isinstance(x, str):
        return f"a string ({x!r:.40})"
    if isinstance(x, complex) or (isinstance(x, np.generic) and np.iscomplexobj(x)):
        return f"a complex number ({x!r:.40})"
    return f"{type(x).__name__} ({x!r:.40})"


def wrong_type(got: Any, expected: str, what: str = "the output") -> str:
    """The message (without the checker's name) for an output ``got`` that is not ``expected``."""
    if got is None:
        subject = "your function returned None" if what == "the output" else f"{what} is None"
        return f"{subject}, expected {expected}: did you forget `return`?"
    message = (f"expected {expected}, got {_kind(got)}" if what == "the output"
               else f"{what} should be {expected}, got {_kind(got)}")
    if isinstance(got, list) and "tensor" in expected and "tuple" not in expected:
        message += " (torch.stack or torch.tensor makes one tensor of a list)"
    elif isinstance(got, tuple) and "tuple" not in expected:
        message += " (return just the one value asked for)"
    return message


def as_number(got: Any, name: str, where: str = "", expected: str = "a number",
              what: str = "the output") -> tuple[Number, torch.dtype]:
    """``got`` as a Python int or float, from an int, a float, a numpy number or a 0-dim tensor, with the
    dtype it was computed in (see :func:`tolerances`); an :class:`ExerciseError` says what else it is."""
    if isinstance(got, int) and not isinstance(got, bool):
        return got, torch.int64                         # Python ints are exact at any size
    if isinstance(got, float) and not isinstance(got, np.generic):
        return got, _float_dtype(got)
    t = to_tensor(got)
    if t is None or t.ndim != 0 or t.dtype == torch.bool or t.is_complex():
        raise ExerciseError(f"{name}: {wrong_type(got, expected, what)}{where}")
    return t.item(), t.dtype


def _two_numbers(got: float, want: float, digits: int = 6) -> tuple[str, str]:
    """``got`` and ``want`` with ``digits`` significant digits, or more when that would print them equal."""
    for d in (digits, 10, 17):
        a, b = f"{got:.{d}g}", f"{want:.{d}g}"
        if a != b:
            break
    return a, b


# ---------------------------------------------------------------------------------------------
# Calling the answer: on a copy, after the reference; crashes and changed inputs reported.
# ---------------------------------------------------------------------------------------------
def _copy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.clone()
    if value is None or isinstance(value, (bool, int, float, complex, str)):
        return value                                    # immutable: shared
    return copy.deepcopy(value)                         # a model, a list, ...: its own copy


def copy_case(case: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``case`` that a function may change freely (tensors cloned, models deep-copied)."""
    return {k: _copy(v) for k, v in case.items()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        return (isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and (torch.equal(a, b) or (a.is_floating_point()
                                           and bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all()))))
    if isinstance(a, nn.Module):
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(_same(sa[k], sb[k]) for k in sa)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return True                                         # numbers and strings cannot change in place


def changed_inputs(original: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """The names of the inputs a function changed in place: where its copy ``given`` differs from ``original``."""
    return [k for k in original if not _same(original[k], given[k])]


def mutation_note(changed: Sequence[str]) -> str:
    """A line for a failure message, when the answer changed inputs in place (empty otherwise)."""
    if not changed:
        return ""
    names = ", ".join(f"`{k}`" for k in changed)
    return (f"\n  note: your function changed its input {names} in place (+=, x[...] = ..., .zero_(), ...). "
            "The checker compares with the result for the original inputs, and a caller may still need them: "
            "compute new tensors (x = x + ..., or work on x.clone()).")


def _describe_case(case: dict[str, Any], largest: bool = False) -> str:
    """A case, for a message: each tensor's shape and dtype (``largest``: and the largest ``|value|`` of a
    float tensor, where the size of the inputs is the reason an answer overflows), other values as reprs."""
    parts = []
    for k, v in case.items():
        if isinstance(v, Tensor):
            extra = (f", max |value| {v.abs().max().item():.3g}"
                     if largest and v.is_floating_point() and v.numel() else "")
            parts.append(f"{k}: shape {tuple(v.shape)} {str(v.dtype).replace('torch.', '')}{extra}")
        else:
            parts.append(f"{k}={v!r}")
    return ", ".join(parts)


def describe_numbers(case: dict[str, Any]) -> str:
    """A case of numbers, for a message: ints with thousands separators (``d_model=4,096``), floats to 6
    significant digits, anything else as its repr."""
    def one(k: str, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{k}={v!r}"
        return f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:.6g}"
    return ", ".join(one(k, v) for k, v in case.items())


def require_function(answer: Any, name: str) -> None:
    """Raise a plain :class:`ExerciseError` when ``answer`` is not a function (a result passed instead)."""
    if not callable(answer):
        raise ExerciseError(f"{name}: pass your function itself, as in {name}(my_function), "
                            f"not its result; got {_kind(answer)}")


def call_answer(answer: Callable[..., Any], case: dict[str, Any], name: str,
                describe: Callable[[dict[str, Any]], str] = _describe_case) -> tuple[Any, list[str]]:
    """Call ``answer(**case)`` on a copy of ``case``: its output, and the inputs it changed in place.

    Call it after computing the reference. A crash becomes an :class:`ExerciseError` that names the input;
    an ``ExerciseError`` raised by a checker's own wrapper around the answer passes through unchanged.
    """
    require_function(answer, name)
    args = copy_case(case)
    try:
        got = answer(**args)
    except ExerciseError:
        raise
    except Exception as e:  # the reader's code crashed: say on which input
        raise ExerciseError(f"{name}: your function raised {type(e).__name__}: {e}\n  on {describe(case)}") from e
    return got, changed_inputs(case, args)


# ---------------------------------------------------------------------------------------------
# Comparing: tensors (compare) and single numbers (compare_numbers).
# ---------------------------------------------------------------------------------------------
def compare(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[dict[str, Any]],
    name: str,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    elementwise: bool = False,
    outputs: Sequence[tuple[str, float, float]] | None = None,
) -> str:
    """Run ``reference(**case)`` then ``answer(**case)`` on every case; raise on the first difference.

    Outputs may be tensors or tuples of tensors; the answer's may also be numpy arrays or numbers, in any
    float dtype. ``rtol``, ``atol``: the tolerance for a float64 answer (see :func:`tolerances` for lower
    precision); ``elementwise``: the outputs are computed entry by entry, without sums that cancel (a decay
    matrix, a per-head quantity), so each entry is held to its own size even when entries span many
    orders of magnitude; ``outputs``: for a tuple, each output's name (in messages) and tolerance
    ``(name, rtol, atol)``, e.g. ``rtol = atol = 0`` for a whole number next to a float. Returns (and
    prints) a one-line success message.
    """
    n = 0
    for n, case in enumerate(cases, start=1):
        want = reference(**copy_case(case))        # first, on its own copy: the answer cannot change it
        got, changed = call_answer(answer, case, name)
        try:
            _compare_outputs(got, want, name, case, rtol, atol, elementwise=elementwise, outputs=outputs)
        except ExerciseError as error:
            raise ExerciseError(f"{error}{mutation_note(changed)}") from None
    return success(name, n)


def success(name: str, n_cases: int, detail: str = "") -> str:
    """Print and return a checker's success line, ``<name>: correct on all <n_cases> random cases<detail>.``:
    the notebooks store it, and nbval compares it byte for byte."""
    message = f"{name}: correct on all {n_cases} random cases{detail}."
    print(message)
    return message


def first_hint(hints: Sequence[tuple[Callable[..., Any], str]], check: Callable[..., Any],
               answer: Callable[..., Any], cases: list[dict[str, Any]], **options: Any) -> str:
    """The hint of the first known wrong variant in ``hints`` (pairs of a variant function and its hint) that
    ``answer`` agrees with on every case, "" if none: the one for which ``check(answer, variant, cases,
    "hint", **options)``, the checker's own comparison with the variant as the reference, passes."""
    for variant, hint in hints:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                check(answer, variant, cases, "hint", **options)
            return hint
        except Exception:  # a mismatch, or the answer crashed: not this variant
            continue
    return ""


def compare_with_hints(
    answer: Callable[..., Any],
    reference: Callable[..., Any],
    cases: Iterable[dict[str, Any]],
    name: str,
    hints: Sequence[tuple[Callable[..., Any], str]] = (),
    **options: Any,
) -> None:
    """:func:`compare` (prints one success line); on failure, adds a hint when the answer gives the same
    outputs as a known wrong variant (``hints``: pairs of a variant function and the hint to show).
    ``options``: :func:`compare`'s ``rtol``, ``atol``, ``elementwise``, ``outputs``."""
    cases = list(cases)
    try:
        compare(answer, reference, cases, name, **options)
    except ExerciseError as error:
        hint = first_hint(hints, compare, answer, cases, **options)
        if hint:
            raise ExerciseError(f"{error}\n  hint: {hint}") from None
        raise


def _largest(t: Tensor) -> float:
    """The largest finite ``|entry|`` of ``t`` (0 if none): the size of an output's terms."""
    if not t.is_floating_point() or t.numel() == 0:
        return float(t.abs().max()) if t.numel() else 0.0
    finite = t[torch.isfinite(t)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _compare_outputs(got, want, name, case, rtol, atol, what="output", elementwise=False, outputs=None):
    where = f"\n  on {_describe_case(case)}"
    if isinstance(want, tuple):
        named = outputs or [(f"output[{i}]", rtol, atol) for i in range(len(want))]
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            expected = f"a tuple of {len(want)} tensors" + (f" ({', '.join(o[0] for o in outputs)})" if outputs else "")
            raise ExerciseError(f"{name}: {wrong_type(got, expected)}{where}")
        for g, w, (what_i, rtol_i, atol_i) in zip(got, want, named):
            _compare_outputs(g, w, name, case, rtol_i, atol_i, what=what_i, elementwise=elementwise)
        return
    subject = "the output" if what == "output" else what
    tensor = to_tensor(got)
    if tensor is None:
        raise ExerciseError(f"{name}: {wrong_type(got, 'a torch.Tensor', subject)}{where}")
    got = tensor
    if got.is_complex() and not want.is_complex():
        raise ExerciseError(f"{name}: {what} has complex dtype {got.dtype}, expected real numbers ({want.dtype}); "
                            f"if you computed with complex numbers, turn them back into real ones "
                            f"(z.real, or torch.view_as_real(z)){where}")
    if got.dtype == torch.bool and want.dtype != torch.bool:
        raise ExerciseError(f"{name}: {what} has dtype torch.bool (True/False), expected numbers ({want.dtype}){where}")
    if got.shape != want.shape:
        raise ExerciseError(f"{name}: {what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}{where}")
    dtype = got.dtype if got.is_floating_point() else torch.float64     # ints are exact
    rtol, atol = tolerances(dtype, rtol, atol, 0.0 if elementwise else _largest(want))
    close = torch.isclose(got.to(want.dtype), want, rtol=rtol, atol=atol)
    if not close.all():
        index = tuple(int(i) for i in (~close).nonzero()[0])
        shown_got, shown_want = _two_numbers(got[index].item(), want[index].item())
        message = (f"{name}: wrong value in {what} at index {index}: got {shown_got}, expected {shown_want} "
                   f"({int((~close).sum())} of {close.numel()} entries differ)\n  on {_describe_case(case)}")
        raise ExerciseError(message + _precision_note(got[index].item(), want[index].item(), dtype, what))


def _precision_note(got: float, want: float, dtype: torch.dtype, what: str = "output") -> str:
    """A note when a lower-precision answer missed by about its own rounding (an exact check, or a
    whole number too large for it): the answer may be right, computed in too few digits."""
    low = LOW_PRECISION_RTOL.get(dtype)
    if low is None or not (math.isfinite(got) and math.isfinite(want)) or abs(got - want) > low * abs(want):
        return ""
    return (f"\n  note: your {what} is {str(dtype).replace('torch.', '')}, which holds about "
            f"{round(-math.log10(torch.finfo(dtype).eps))} significant digits: too few for this value. "
            "Compute it in float64 (or, for a count, with Python ints or int64).")


def compare_numbers(
    answer: Callable[..., Any],
    reference: Callable[..., Number],
    cases: Iterable[dict[str, Any]],
    name: str,
    hints: Sequence[tuple[Callable[..., Any], str]] = (),
    integer: bool = False,
    rel_tol: float = 1e-12,
    describe: Callable[[dict[str, Any]], str] = _describe_case,
) -> str:
    """:func:`compare` for answers that are one number per case (an int, a float, a numpy number or a
    0-dim tensor); ``integer``: a whole number, compared exactly. On a mismatch, adds the hint of the
    first known wrong variant the answer agrees with on every case. Returns (and prints) the success line."""
    cases = list(cases)
    for case in cases:
        want = reference(**copy_case(case))         # first, on its own copy: the answer cannot change it
        got, changed = call_answer(answer, case, name, describe)
        where = f"\n  on {describe(case)}"
        value, dtype = as_number(got, name, where + mutation_note(changed))
        if integer and not _is_whole(value):
            raise ExerciseError(f"{name}: expected a whole number, got {value!r}{where}{mutation_note(changed)}")
        if not _numbers_agree(value, dtype, want, integer, rel_tol):
            shown = (f"got {int(value):,}, expected {int(want):,}" if integer
                     else "got {}, expected {}".format(*_two_numbers(float(value), float(want), digits=10)))
            message = f"{name}: {shown}{where}" + _precision_note(float(value), float(want), dtype, "answer")
            message += mutation_note(changed)
            hint = first_hint(hints, compare_numbers, answer, cases, integer=integer, rel_tol=rel_tol)
            raise ExerciseError(message + (f"\n  hint: {hint}" if hint else ""))
    return success(name, len(cases))


def _is_whole(value: Number) -> bool:
    return isinstance(value, int) or (math.isfinite(value) and value.is_integer())


def _numbers_agree(value: Number, dtype: torch.dtype, want: Number, integer: bool, rel_tol: float) -> bool:
    if integer:
        return value == want                        # counts are exact, however large (int == float is exact)
    rtol, atol = tolerances(dtype, rel_tol, 0.0)
    return math.isfinite(float(value)) and math.isclose(float(value), float(want), rel_tol=rtol, abs_tol=atol)
