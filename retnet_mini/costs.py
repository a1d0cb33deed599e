"""Inference memory: RetNet's recurrent state versus a Transformer's KV cache.

Pure arithmetic (no tensors): how many numbers each model must keep per sequence while it decodes, and
what that costs in bytes. The opening chapter uses these functions to reproduce the paper's numbers for
its 6.7B model (32 layers, d_model = 4096, 16 heads with key head dim 256 and value head dim 512):

- RetNet keeps, per layer and per head, one ``d_k x d_v`` state matrix ``S`` (eq. 6 of the paper):
  ``32 * 16 * 256 * 512 = 67,108,864`` numbers = 128 MiB in fp16 per sequence, at ANY context length.
- A Transformer keeps a key and a value vector of width ``d_model`` per layer and per token:
  ``2 * 32 * 4096 * n`` numbers = 1 GiB at n = 2048 and 4 GiB at n = 8192 in fp16.

The paper writes MB and GB for what are binary units (MiB, GiB); :func:`format_bytes` prints binary units.

The paper's "3.4x less GPU memory" (the "70%") compares the WHOLE GPU memory while decoding, which also
holds the model's weights; :func:`decoding_memory_bytes`, :func:`memory_ratio` and
:func:`batch_for_memory_ratio` make that comparison explicit under a simple model (weights plus
per-sequence cache or state; activations and workspace ignored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ._checks import check_int, check_real, check_str

__all__ = [
    "DTYPE_BYTES",
    "ModelShape",
    "PAPER_SHAPES",
    "bytes_per_number",
    "retnet_state_numbers",
    "kv_cache_numbers",
    "numbers_to_bytes",
    "format_bytes",
    "crossover_context_len",
    "decoding_memory_bytes",
    "memory_ratio",
    "batch_for_memory_ratio",
    "max_batch_size",
]

#: Bytes per number for the dtypes a model is usually served in. Keys are lower-case names; torch dtypes
#: (``torch.float16``) and their short names (``"fp16"``, ``"bf16"``) are accepted by :func:`bytes_per_number`.
DTYPE_BYTES: Dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}

_ALIASES: Dict[str, str] = {
    "fp64": "float64",
    "double": "float64",
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn",
}


# Every check raises a ValueError naming the argument (a wrong type raises _checks.ArgumentTypeError, which
# is a ValueError and a TypeError), before any arithmetic.
def _check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (bools refused)."""
    return check_int(name, value, 1)


def _check_nonnegative_number(name: str, value: Any) -> float:
    """Return ``value`` if it is a finite real number >= 0 (bools refused); ints stay ints (exact)."""
    check_real(name, value, 0)
    return value


def bytes_per_number(dtype: Any = "float16") -> int:
    """Bytes one number takes in ``dtype``.

    Args:
        dtype: a name (``"float16"``, ``"fp16"``, ``"bf16"``, ``"float32"``, ...) or a ``torch.dtype``.

    Returns:
        The size in bytes, e.g. 2 for ``"float16"``.

    Raises:
        ValueError: for a dtype that is not in :data:`DTYPE_BYTES` (or one of its aliases).
    """
    if isinstance(dtype, (bool, int, float)) or dtype is None:   # str() would make a "name" of them
        raise ValueError(f"dtype must be a name such as 'float16' or a torch.dtype, got {dtype!r}")
    name = str(dtype).lower()
    if name.startswith("torch."):
        name = name[len("torch."):]
    name = _ALIASES.get(name, name)
    if name not in DTYPE_BYTES:
        known = sorted(set(DTYPE_BYTES) | set(_ALIASES))
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(known)}")
    return DTYPE_BYTES[name]


def retnet_state_numbers(n_layers: int, n_heads: int, key_head_dim: int, value_head_dim: int) -> int:
    """Numbers in RetNet's recurrent state for ONE sequence (independent of the context length).

    Each layer keeps one ``key_head_dim x value_head_dim`` matrix per head (``S_n`` of eq. 6), so the
    state holds ``n_layers * n_heads * key_head_dim * value_head_dim`` numbers.

    >>> retnet_state_numbers(32, 16, 256, 512)   # the paper's 6.7B model
    67108864

    Raises:
        ValueError: if any argument is not a positive integer.
    """
    n_layers = _check_positive_int("n_layers", n_layers)
    n_heads = _check_positive_int("n_heads", n_heads)
    key_head_dim = _check_positive_int("key_head_dim", key_head_dim)
    value_head_dim = _check_positive_int("value_head_dim", value_head_dim)
    return n_layers * n_heads * key_head_dim * value_head_dim


def kv_cache_numbers(n_layers: int, d_model: int, context_len: int) -> int:
    """Numbers in a (multi-head attention) Transformer's KV cache for ONE sequence of ``context_len`` tokens.

    Every layer stores a key and a value vector of width ``d_model`` for every token seen:
    ``2 * n_layers * d_model * context_len`` numbers.

    >>> kv_cache_numbers(32, 4096, 8192)   # 6.7B shape, 8k tokens
    2147483648

    Raises:
        ValueError: if any argument is not a positive integer.
    """
    n_layers = _check_positive_int("n_layers", n_layers)
    d_model = _check_positive_int("d_model", d_model)
    context_len = _check_positive_int("context_len", context_len)
    return 2 * n_layers * d_model * context_len


def numbers_to_bytes(n_numbers: int, dtype: Any = "float16") -> int:
    """Bytes that ``n_numbers`` numbers take in ``dtype`` (see :func:`bytes_per_number`).

    Raises:
        ValueError: if ``n_numbers`` is not an integer >= 0, or the dtype is unknown.
    """
    n_numbers = check_int("n_numbers", n_numbers, 0)
    return n_numbers * bytes_per_number(dtype)


_UNITS: Tuple[str, ...] = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n_bytes: float, digits: int = 1) -> str:
    """A byte count in binary units, e.g. ``format_bytes(134217728) == "128.0 MiB"``.

    Args:
        n_bytes: the number of bytes (>= 0).
        digits: decimals to show, 0 to 4.

    Raises:
        ValueError: for a negative or non-finite ``n_bytes``, or ``digits`` outside 0..4.
    """
    n_bytes = _check_nonnegative_number("n_bytes", n_bytes)
    digits = check_int("digits", digits, 0, 4)
    value = float(n_bytes)
    unit = 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{value:.{digits}f} {_UNITS[unit]}"


def crossover_context_len(n_layers: int, d_model: int, n_heads: int, key_head_dim: int,
                          value_head_dim: int) -> float:
    """Context length at which the KV cache holds as many numbers as RetNet's state.

    Below it the KV cache is the smaller of the two; above it the state is. For the paper's shapes
    (``n_heads * key_head_dim = d_model`` and ``value_head_dim = 2 * key_head_dim``) it equals
    ``key_head_dim``: 256 tokens.

    Raises:
        ValueError: if any argument is not a positive integer.
    """
    state = retnet_state_numbers(n_layers, n_heads, key_head_dim, value_head_dim)
    per_token = kv_cache_numbers(n_layers, d_model, 1)
    return state / per_token


def decoding_memory_bytes(n_params: float, cache_bytes_per_sequence: float, batch_size: int,
                          dtype: Any = "float16") -> float:
    """Memory a decoding model holds under a simple model: its weights plus a cache (or state) per sequence.

    ``n_params * bytes_per_number(dtype) + batch_size * cache_bytes_per_sequence``. Activations, workspace
    and allocator overhead are ignored: this is the part that differs between RetNet and a Transformer.

    Raises:
        ValueError: for negative or non-finite sizes, a batch size < 1, or an unknown dtype.
    """
    n_params = _check_nonnegative_number("n_params", n_params)
    cache_bytes_per_sequence = _check_nonnegative_number("cache_bytes_per_sequence", cache_bytes_per_sequence)
    batch_size = _check_positive_int("batch_size", batch_size)
    return n_params * bytes_per_number(dtype) + batch_size * cache_bytes_per_sequence


def memory_ratio(weight_bytes: float, cache_bytes: float, state_bytes: float, batch_size: int) -> float:
    """Whole-memory ratio Transformer / RetNet at one batch size: ``(W + b*C) / (W + b*S)``.

    Args:
        weight_bytes: ``W``, the weights (the same for both models).
        cache_bytes: ``C``, the Transformer's KV cache per sequence.
        state_bytes: ``S``, RetNet's state per sequence.
        batch_size: ``b``, sequences decoded at once.

    Raises:
        ValueError: for negative or non-finite sizes, a zero denominator, or a batch size < 1.
    """
    weight_bytes = _check_nonnegative_number("weight_bytes", weight_bytes)
    cache_bytes = _check_nonnegative_number("cache_bytes", cache_bytes)
    state_bytes = _check_nonnegative_number("state_bytes", state_bytes)
    batch_size = _check_positive_int("batch_size", batch_size)
    denominator = weight_bytes + batch_size * state_bytes
    if denominator == 0:
        raise ValueError("weight_bytes and state_bytes are both 0: the ratio is undefined")
    return (weight_bytes + batch_size * cache_bytes) / denominator


def batch_for_memory_ratio(ratio: float, weight_bytes: float, cache_bytes: float, state_bytes: float) -> float:
    """Batch size ``b`` (real-valued) at which :func:`memory_ratio` equals ``ratio``.

    Solves ``W + b*C = ratio * (W + b*S)``: ``b = W * (ratio - 1) / (C - ratio * S)``.

    Raises:
        ValueError: if ``ratio < 1``, a size is negative or non-finite, or the ratio is never reached
            (``C <= ratio * S``: the cache is not ``ratio`` times larger than the state).
    """
    ratio = _check_nonnegative_number("ratio", ratio)
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1 (Transformer memory over RetNet memory), got {ratio}")
    weight_bytes = _check_nonnegative_number("weight_bytes", weight_bytes)
    cache_bytes = _check_nonnegative_number("cache_bytes", cache_bytes)
    state_bytes = _check_nonnegative_number("state_bytes", state_bytes)
    gap = cache_bytes - ratio * state_bytes
    if gap <= 0:
        raise ValueError(f"a ratio of {ratio} is never reached: the cache ({cache_bytes} B) is not more than "
                         f"{ratio} times the state ({state_bytes} B)")
    return weight_bytes * (ratio - 1) / gap


def max_batch_size(memory_bytes: float, weight_bytes: float, per_sequence_bytes: float) -> int:
    """Most sequences that fit in ``memory_bytes`` next to the weights: ``floor((M - W) / P)``, at least 0.

    Args:
        memory_bytes: ``M``, the memory available (e.g. 80 GiB for an A100-80GB).
        weight_bytes: ``W``, the weights.
        per_sequence_bytes: ``P``, the KV cache (or the RetNet state) of one sequence; must be > 0.

    Returns:
        The largest integer ``b >= 0`` with ``W + b * P <= M`` (0 when the weights alone do not fit).

    Raises:
        ValueError: for negative or non-finite sizes, or ``per_sequence_bytes == 0``.
    """
    memory_bytes = _check_nonnegative_number("memory_bytes", memory_bytes)
    weight_bytes = _check_nonnegative_number("weight_bytes", weight_bytes)
    per_sequence_bytes = _check_nonnegative_number("per_sequence_bytes", per_sequence_bytes)
    if per_sequence_bytes == 0:
        raise ValueError("per_sequence_bytes must be > 0")
    if weight_bytes >= memory_bytes:
        return 0
    return int((memory_bytes - weight_bytes) // per_sequence_bytes)


@dataclass(frozen=True)
class ModelShape:
    """The shape of a RetNet (and of the same-size Transformer it is compared with).

    Attributes:
        name: a label, e.g. ``"6.7B"``.
        n_params: nominal parameter count (for the weights' memory).
        n_layers: number of blocks.
        d_model: hidden size.
        n_heads: retention heads (the Transformer uses ``d_model`` wide keys and values per layer).
        value_factor: value width over key width; the paper uses 2 (W_V is d x 2d).
    """

    name: str
    n_params: float
    n_layers: int
    d_model: int
    n_heads: int
    value_factor: int = 2

    def __post_init__(self) -> None:
        check_str("name", self.name)
        _check_nonnegative_number("n_params", self.n_params)
        for field in ("n_layers", "d_model", "n_heads", "value_factor"):
            _check_positive_int(field, getattr(self, field))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    @property
    def key_head_dim(self) -> int:
        """Key (and query) width per head: ``d_model // n_heads``."""
        return self.d_model // self.n_heads

    @property
    def value_head_dim(self) -> int:
        """Value width per head: ``value_factor * d_model // n_heads``."""
        return self.value_factor * self.key_head_dim

    def state_numbers(self) -> int:
        """RetNet state per sequence, in numbers (see :func:`retnet_state_numbers`)."""
        return retnet_state_numbers(self.n_layers, self.n_heads, self.key_head_dim, self.value_head_dim)

    def kv_cache_numbers(self, context_len: int) -> int:
        """The same-size Transformer's KV cache per sequence, in numbers (see :func:`kv_cache_numbers`)."""
        return kv_cache_numbers(self.n_layers, self.d_model, context_len)

    def weight_bytes(self, dtype: Any = "float16") -> float:
        """Bytes of the weights, ``n_params * bytes_per_number(dtype)``."""
        return self.n_params * bytes_per_number(dtype)


#: The paper's model sizes (Table of hyperparameters): key head dim 256 throughout, value head dim 512.
PAPER_SHAPES: Dict[str, ModelShape] = {
    "1.3B": ModelShape("1.3B", 1.3e9, n_layers=24, d_model=2048, n_heads=8),
    "2.7B": ModelShape("2.7B", 2.7e9, n_layers=32, d_model=2560, n_heads=10),
    "6.7B": ModelShape("6.7B", 6.7e9, n_layers=32, d_model=4096, n_heads=16),
}
