"""Argument checks shared by the package's modules.

Each check returns the value (converted where that is harmless, e.g. a sequence to a list) or raises an
error whose message names the argument and says what was expected. They run before any expensive work
(drawing, rendering, allocating), so a bad call fails at once with a message about the call, not deep
inside matplotlib or torch.

A value of the wrong type raises :class:`ArgumentTypeError`: a ``TypeError`` that is also a
``ValueError``, because these modules used to raise ``ValueError`` for every bad argument and code written
against that (``except ValueError``) must keep working.
"""
from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["ArgumentTypeError", "check_bool", "check_callable", "check_choice", "check_int", "check_real",
           "check_sequence", "check_str", "describe_tensor"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError``, and a ``ValueError`` for older callers)."""


def _got(value: Any) -> str:
    return f"got {value!r} ({type(value).__name__})"


def _range_text(low: float | None, high: float | None, low_open: bool = False,
                high_open: bool = False) -> str:
    if low is not None and high is not None:
        if not low_open and not high_open:
            return f" from {low} to {high}"
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` if it is an int in ``[low, high]`` (either bound may be None).

    Bools are refused (``True`` is an int to Python, but never meant as a size); so are floats, even whole
    ones (``2.0`` usually means a computation went wrong upstream) and tensors.
    """
    want = f"an int{_range_text(low, high)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be {want}, {_got(value)}")
    value = int(value)   # numpy integers are Integral; hand back a plain int
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def check_real(name: str, value: Any, low: float | None = None, high: float | None = None, *,
               low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number in the given range (bounds open or closed).

    NaN and infinities are refused (a NaN passes no comparison, so ``x < 0`` alone would let it through);
    bools and tensors are refused too (pass ``.item()`` for a 0-dim tensor).
    """
    want = f"a finite number{_range_text(low, high, low_open, high_open)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        hint = " (a 0-dim tensor: pass .item())" if hasattr(value, "item") else ""
        raise ArgumentTypeError(f"{name} must be {want}{hint}, {_got(value)}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        raise ValueError(f"{name} must be {want}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """A real bool: ``"no"`` is a non-empty string, so truthy; it must not quietly mean True."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, {_got(value)}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` if it is a string (non-empty unless ``empty``)."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name} must be a string, {_got(value)}")
    if not empty and not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: Collection[str]) -> str:
    """``value`` if it is one of the names in ``allowed`` (the message lists them)."""
    names = list(allowed)
    if not isinstance(value, str):   # also keeps an unhashable value (a list) away from ``in``
        raise ArgumentTypeError(f"{name} must be one of {names}, {_got(value)}")
    if value not in names:
        raise ValueError(f"{name} must be one of {names}, got {value!r}")
    return value


def check_callable(name: str, value: Any) -> Callable[..., Any]:
    """``value`` if it can be called."""
    if not callable(value):
        raise ArgumentTypeError(f"{name} must be callable (a function), {_got(value)}")
    return value


def check_sequence(name: str, value: Any, *, min_len: int = 1, max_len: int | None = None,
                   unique: bool = False) -> list[Any]:
    """``value`` as a list if it is a list-like of ``min_len`` to ``max_len`` items (each once if ``unique``;
    the items must then be hashable).

    A string is refused although Python iterates it (``"16"`` would be the values ``"1"``, ``"6"``), and so
    is a mapping (its keys alone would be taken) and a set (its order is arbitrary). Generators are fine.
    """
    if isinstance(value, (str, bytes, Mapping, set, frozenset)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"{name} must be a list or tuple, {_got(value)}")
    items = list(value)
    if len(items) < min_len:
        raise ValueError(f"{name} needs at least {min_len} item{'s' * (min_len > 1)}, got {items!r}")
    if max_len is not None and len(items) > max_len:
        raise ValueError(f"{name} may hold at most {max_len} items, got {len(items)}")
    if unique:
        repeated = [item for item, count in Counter(items).items() if count > 1]
        if repeated:
            raise ValueError(f"{name} repeats {', '.join(map(repr, repeated))}: give each value once")
    return items


def describe_tensor(x: Any) -> str:
    """``shape (..), dtype .., device ..`` of a tensor, for error messages."""
    return f"shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}"
