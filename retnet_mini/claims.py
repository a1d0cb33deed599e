"""Claims about the results of a run, each checked against a stated bound.

A number that comes out of a training run, a sampling run or a timing depends on the machine: another CPU
rounds floats differently, training then follows a slightly different path, and the fourth decimal of a
loss moves. The book therefore splits its outputs in two kinds:

- **exact facts** (equivalences in float64, counts, bytes, shapes): printed in cells that nbval compares
  digit by digit;
- **results of a run**: printed in cells tagged ``run-result`` (and ``nbval-ignore-output``), and every
  statement the text makes about them is a :func:`claim` in that cell, with a bound wide enough for every
  machine and seed and narrow enough that a broken model fails it.

``claim`` prints the measured value next to its bound (so a reader in Jupyter or Colab sees their own
number checked) and raises :class:`ClaimError` when the bound is broken, so a wrong result fails the book's
tests on every machine. Bounds are chosen from the spread measured over several seeds and numeric
environments with ``scripts/claim_spread.py``, which re-runs a notebook with another ``SEED`` and collects
every claim's value through :func:`recorded`.

    >>> claim("the model ends below the unigram baseline minus 0.5", 1.59, at_most=2.63)
    claim holds: the model ends below the unigram baseline minus 0.5: 1.5900 (bound: <= 2.6300)
    1.59
"""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass

from ._checks import check_bool

__all__ = ["Claim", "ClaimError", "claim", "claim_true", "format_bound", "format_value", "recorded", "record_only",
           "reset"]


class ClaimError(AssertionError):
    """A result of a run broke the bound the book states for it."""


@dataclass(frozen=True)
class Claim:
    """One checked statement: the measured value, its bounds, and whether it held."""

    statement: str
    value: float
    at_least: float | None
    at_most: float | None
    holds: bool

    def __post_init__(self) -> None:
        # claim() builds these from checked values; a Claim made by hand is checked the same way.
        _statement(self.statement)
        _number("value", self.value)
        _number("at_least", self.at_least, allow_none=True)
        _number("at_most", self.at_most, allow_none=True)
        check_bool("holds", self.holds)


_recorded: list[Claim] = []
_raise_on_failure = True


def format_value(x: float) -> str:
    """4 decimals, or 3 significant digits for the tiny and the huge (round-off bounds, counts)."""
    x = _number("x", x)
    return f"{x:.4f}" if x == 0 or not math.isfinite(x) or 1e-3 <= abs(x) < 1e6 else f"{x:.2e}"


def format_bound(at_least: float | None, at_most: float | None) -> str:
    """The bound as the claims print it: "between a and b", ">= a" or "<= b" (at least one is given)."""
    at_least = _number("at_least", at_least, allow_none=True)
    at_most = _number("at_most", at_most, allow_none=True)
    if at_least is None and at_most is None:
        raise ValueError("format_bound needs at_least, at_most or both")
    if at_least is not None and at_most is not None:
        return f"between {format_value(at_least)} and {format_value(at_most)}"
    if at_least is not None:
        return f">= {format_value(at_least)}"
    return f"<= {format_value(at_most)}"


def _statement(statement) -> str:
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError("statement must be a non-empty string saying what is claimed")
    return statement


def _number(name: str, value, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (a 0-dim tensor: pass .item())" if hasattr(value, "item") else ""
        raise TypeError(f"{name} must be a real number{hint}, got {type(value).__name__}")
    return float(value)


def claim(statement: str, value: float, *, at_least: float | None = None,
          at_most: float | None = None) -> float:
    """Check ``at_least <= value <= at_most`` (either bound may be omitted, not both); return ``value``.

    Prints one line, ``claim holds: <statement>: <value> (bound: ...)``. A value that is not finite
    breaks every bound. Raises :class:`ClaimError` when the claim fails (unless :func:`record_only`
    is in effect), ``TypeError`` / ``ValueError`` for a malformed claim.
    """
    __tracebackhide__ = True   # IPython and pytest show the failing claim, not this module's frames
    _statement(statement)
    value = _number("value", value)
    at_least = _number("at_least", at_least, allow_none=True)
    at_most = _number("at_most", at_most, allow_none=True)
    if at_least is None and at_most is None:
        raise ValueError(f"claim {statement!r}: give at_least, at_most or both")
    for name, bound in (("at_least", at_least), ("at_most", at_most)):
        if bound is not None and not math.isfinite(bound):
            raise ValueError(f"claim {statement!r}: {name} must be finite, got {bound}")
    if at_least is not None and at_most is not None and at_least > at_most:
        raise ValueError(f"claim {statement!r}: at_least ({at_least}) is above at_most ({at_most})")
    holds = math.isfinite(value) and (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    bound = format_bound(at_least, at_most)
    _settle(Claim(statement, value, at_least, at_most, holds), format_value(value), f" (bound: {bound})", bound)
    return value


def claim_true(statement: str, condition: bool) -> bool:
    """Check that ``condition`` is true (a fact of the run that has no magnitude); return it."""
    __tracebackhide__ = True
    _statement(statement)
    if not isinstance(condition, bool):
        # A tensor or an array would be truth-tested element-wise or raise deep inside; ask for a bool.
        raise TypeError(f"claim {statement!r}: condition must be a bool, got {type(condition).__name__}")
    _settle(Claim(statement, float(condition), 1.0, None, condition), "yes" if condition else "no", "", "yes")
    return condition


def _settle(result: Claim, shown: str, bound_note: str, expected: str) -> None:
    __tracebackhide__ = True
    _recorded.append(result)
    print(f"claim {'holds' if result.holds else 'FAILS'}: {result.statement}: {shown}{bound_note}")
    if not result.holds and _raise_on_failure:
        raise ClaimError(f"claim broken: {result.statement}: measured {shown}, expected {expected}")


def recorded() -> list[dict]:
    """Every claim checked so far in this process, in order, as plain dicts (for scripts/claim_spread.py)."""
    return [asdict(c) for c in _recorded]


def record_only(enabled: bool = True) -> None:
    """Record failing claims without raising (how scripts/claim_spread.py measures the spread).

    ``enabled`` is True or False (a string such as ``"no"`` would be truthy).
    """
    global _raise_on_failure
    check_bool("enabled", enabled)
    _raise_on_failure = not enabled


def reset() -> None:
    """Forget the recorded claims and raise on failure again."""
    global _raise_on_failure
    _recorded.clear()
    _raise_on_failure = True
