"""Counts: what retention's three forms and the two decoding models cost, in numbers held, FLOPs and bytes.

Pure arithmetic on sizes (no tensors), and the project's only cost model: :mod:`retnet_mini.viz` draws it,
:mod:`retnet_mini.bench` divides its measured times by it, and the chapters print it.

**Memory while decoding.** RetNet keeps, per layer and head, one ``d_k x d_v`` state matrix ``S`` (eq. 6
of the paper), whatever the context; a Transformer keeps a key and a value of width ``d_model`` per layer
and token. For the paper's 6.7B model (32 layers, d_model 4096, 16 heads, key head dim 256, value head
dim 512): ``32 * 16 * 256 * 512 = 67,108,864`` numbers = 128 MiB in fp16 per sequence for the state, and
``2 * 32 * 4096 * n`` numbers = 1 GiB at n = 2048 and 4 GiB at n = 8192 for the cache. The paper writes MB
and GB for these binary units (MiB, GiB), which :func:`format_bytes` prints. The paper's "3.4x less GPU
memory" compares the whole memory, weights included: :func:`decoding_memory_bytes`, :func:`memory_ratio`
and :func:`batch_for_memory_ratio` make that comparison under a simple model (weights plus one cache or
state per sequence; activations and workspace left out).

**FLOPs: what is counted.**

- A FLOP is one scalar addition or multiplication; a multiply-add ``a * b + c`` is 2.
- A matrix product ``(a x b) @ (b x c)`` is ``a * c * b`` multiply-adds, ``2abc`` FLOPs: each of the
  ``a * c`` results is built by ``b`` multiply-adds into a starting value. Where an equation adds the
  product to a matrix (``S <- gamma S + k^T v``), that matrix is the starting value, so the sum is part of
  the product and is not counted again (a GEMM's ``C <- beta C + A B``, ``torch.addmm``, works this way).
  With nothing to add to, ``2abc`` is the usual count (``torch.mm``'s ``2 n^3``), one addition per result
  more than strictly needed.
- An elementwise product or sum costs 1 FLOP per entry, the decay factors included.
- Not counted: what depends only on gamma and the sizes (``D``, ``xi``, ``zeta``, ``gamma^L``: built once
  and reused), the scaling and rotation of q and k (the caller's, before the form), indexing and copies.
  What a form moves to and from memory is counted apart, in bytes.
- A form is counted as written: the parallel form computes all ``T x T`` scores, the masked half too.

Why count the elementwise work: a count of the matrix products alone leaves out ``gamma S``, a fifth of a
recurrent step, so it makes the recurrent form look cheaper than it is and hides that chunks of a few
dozen positions need fewer FLOPs than the recurrent form (they decay the state once per chunk, not at every
position). Elsewhere it changes little: with the paper's head sizes the elementwise work of the parallel
form, and of the chunkwise form with chunks of 64 or more, is under 1% of their FLOPs, so an achieved
GFLOP/s still compares with ``torch.mm``'s ``2 n^3``.

**The three forms**, for one head of one sequence of length ``T``, head widths ``d_k``, ``d_v``:

- parallel (eq. 5), ``O = (Q K^T * D) V``: ``Q K^T`` costs ``2 T^2 d_k``, ``* D`` ``T^2``, the product
  with ``V`` ``2 T^2 d_v``; in all ``T^2 (2 d_k + 2 d_v + 1)`` (:func:`parallel_flops`).
- recurrent (eq. 6), per position ``S_n = gamma S_(n-1) + k_n^T v_n``, ``o_n = q_n S_n``: ``gamma S``
  costs ``d_k d_v``, adding ``k_n^T v_n`` to it ``d_k d_v`` multiply-adds (``2 d_k d_v``), ``q_n S_n``
  ``2 d_k d_v``; in all ``5 d_k d_v`` per position, ``5 T d_k d_v`` (:func:`recurrent_flops`).
- chunkwise (eq. 7), per chunk of length ``L`` (a short last chunk has its own ``L``) and the state ``R``
  it receives, as :func:`retnet_mini.retention.chunkwise_retention` writes it:
  inner ``(Q K^T * D) V``: ``L^2 (2 d_k + 2 d_v + 1)``;
  cross ``(Q * xi) R``, added to the inner part: ``L d_k`` (the rows of Q scaled) ``+ 2 L d_k d_v``;
  state ``R <- gamma^L R + (K * zeta)^T V``: ``d_k d_v + L d_k + 2 L d_k d_v``.
  Summed over the chunks (:func:`chunkwise_flops`). Every chunk reads the state it receives, the first one
  too (zero for a fresh sequence, a state passed in otherwise: the product is the same).

Two checks of the counts against each other: with chunks of 1 the chunkwise form is the recurrent one
plus, per position, its 1 x 1 inner part and the two scalings, ``4 d_k + 2 d_v + 1``; with one chunk of
length ``T`` it is the parallel form plus one reading and one update of the state,
``4 T d_k d_v + 2 T d_k + d_k d_v``. Per position the parallel form costs ``T (2 d_k + 2 d_v + 1)`` and the
recurrent one ``5 d_k d_v``, so the parallel form needs fewer FLOPs while ``T`` is below their ratio.

**Numbers held** by a form (:func:`memory_numbers`), besides q, k, v and the output: the ``T x T`` scores
and ``D`` (parallel), the state (recurrent), one chunk's scores and ``D`` and the state (chunkwise, a chunk
at a time), or what ``chunkwise_retention`` holds when it runs all whole chunks at once ("chunkwise,
batched"). :func:`form_costs` gathers FLOPs, numbers held and sequential steps.

**One decoding step** of a whole model, per sequence (:class:`ModelShape`): the weights cost 2 FLOPs per
parameter (each weight one multiply-add); retention, per layer, ``n_heads`` recurrent steps
(``5 n_heads d_k d_v``); attention over ``n`` keys, per layer (:func:`attention_step_flops`): ``q . k_m``
for every key and head (``2 n d_model``), the softmax's exponential, sum and division (3 per score,
``3 n n_heads``; its ``1/sqrt(d)`` is folded into q, as retention's callers fold theirs), and the weighted
sum of the values (``2 n d_model``). Norms, rotations, gates and residual sums, ``O(d_model)`` per layer
and the same kind of work in both models, are left out. Bytes moved (:func:`decode_step_bytes`): a step
reads the weights once for the whole batch, and each sequence's state (RetNet, written back too) or its
cache of ``n`` tokens (the Transformer, which writes one token's key and value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._checks import check_choice, check_int, check_real, check_str

__all__ = [
    # memory while decoding
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
    # the three forms
    "FORMS",
    "chunk_lengths",
    "parallel_flops",
    "recurrent_flops",
    "chunkwise_flops",
    "CHUNK_RANGE",
    "default_chunk_size",
    "memory_numbers",
    "form_costs",
    # one decoding step
    "attention_step_flops",
    "attention_flops",
    "BytesMoved",
    "decode_step_bytes",
]

#: Bytes per number for the dtypes a model is usually served in. Keys are lower-case names; torch dtypes
#: (``torch.float16``) and their short names (``"fp16"``, ``"bf16"``) are accepted by :func:`bytes_per_number`.
DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}

_ALIASES: dict[str, str] = {
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


_UNITS: tuple[str, ...] = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


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



# =============================================================================================
# The three forms: FLOPs, numbers held, sequential steps (one head of one sequence)
# =============================================================================================
#: The forms :func:`memory_numbers` knows: the three of the paper, and the chunkwise form as
#: ``retention.chunkwise_retention`` runs it (all whole chunks at once).
FORMS: tuple[str, ...] = ("parallel", "recurrent", "chunkwise", "chunkwise, batched")


def _check_sizes(length: Any, d_k: Any, d_v: Any) -> None:
    check_int("length", length, 0)
    check_int("d_k", d_k, 1)
    check_int("d_v", d_v, 1)


def chunk_lengths(length: int, chunk_size: int) -> list[int]:
    """The chunks' lengths, e.g. ``(10, 4) -> [4, 4, 2]``; ``chunk_size > length`` gives one chunk.

    ``length`` is an int >= 0 (0 gives no chunks), ``chunk_size`` an int >= 1.
    """
    check_int("length", length, 0)
    check_int("chunk_size", chunk_size, 1)
    full, last = divmod(length, chunk_size)
    return [chunk_size] * full + ([last] if last else [])


def parallel_flops(length: int, d_k: int, d_v: int) -> int:
    """FLOPs of the parallel form (eq. 5) for one head of one sequence: ``T^2 (2 d_k + 2 d_v + 1)``.

    ``Q K^T`` (``2 T^2 d_k``), ``* D`` (``T^2``) and the product with ``V`` (``2 T^2 d_v``), the masked
    half included. ``length`` is an int >= 0, ``d_k`` and ``d_v`` ints >= 1.

    >>> parallel_flops(1024, 256, 512)
    1611661312
    """
    _check_sizes(length, d_k, d_v)
    return length * length * (2 * d_k + 2 * d_v + 1)


def recurrent_flops(length: int, d_k: int, d_v: int) -> int:
    """FLOPs of the recurrent form (eq. 6) for one head of one sequence: ``5 T d_k d_v``.

    Per position: ``gamma S`` (``d_k d_v``), ``k^T v`` added to it (``2 d_k d_v``), ``q S`` (``2 d_k d_v``).
    ``recurrent_flops(1, d_k, d_v)`` is one decoding step of one head. Arguments as :func:`parallel_flops`.

    >>> recurrent_flops(1, 256, 512)
    655360
    """
    _check_sizes(length, d_k, d_v)
    return 5 * length * d_k * d_v


def _chunk_flops(L: int, d_k: int, d_v: int) -> int:
    inner = L * L * (2 * d_k + 2 * d_v + 1)              # (Q K^T * D) V
    cross = L * d_k + 2 * L * d_k * d_v                  # (Q * xi) R, added to the inner part
    state = d_k * d_v + L * d_k + 2 * L * d_k * d_v      # gamma^L R + (K * zeta)^T V
    return inner + cross + state


def chunkwise_flops(length: int, d_k: int, d_v: int, chunk_size: int) -> int:
    """FLOPs of the chunkwise form (eq. 7) for one head of one sequence, summed over the actual chunks
    (:func:`chunk_lengths`: the whole ones and a short last one).

    Per chunk of length ``L``: ``L^2 (2 d_k + 2 d_v + 1) + 4 L d_k d_v + 2 L d_k + d_k d_v`` (the inner
    part, the cross part and the state update; see the module's docstring). ``length`` is an int >= 0,
    ``d_k``, ``d_v`` and ``chunk_size`` ints >= 1.

    >>> chunkwise_flops(1024, 256, 512, 64)
    640221184
    """
    _check_sizes(length, d_k, d_v)
    return sum(_chunk_flops(L, d_k, d_v) for L in chunk_lengths(length, chunk_size))


CHUNK_RANGE = (64, 512)   # the smallest and largest chunk default_chunk_size picks


def default_chunk_size(length: int, d_k: int, d_v: int) -> int:
    """The chunk length ``mode="chunkwise"`` uses when none is given: a power of two in ``CHUNK_RANGE``,
    and never longer than the sequence rounded up to a power of two.

    Per position a chunk of length ``L`` costs ``L (2 d_k + 2 d_v + 1)`` FLOPs inside the chunk and
    ``4 d_k d_v`` (plus lower-order terms) to read and update the state (:func:`chunkwise_flops`). Below
    ``L* = 2 d_k d_v / (d_k + d_v)``, where the two are equal, longer chunks add few FLOPs and make every
    product larger, hence faster per FLOP; above it the FLOPs grow in proportion to ``L``. The rule takes
    the power of two nearest to ``L*`` (in ratio). Clamped below at 64: shorter chunks leave products too
    small to run near a CPU's peak (measured, training at d_model 512, 2 heads, T = 2048, in tokens/s
    against the same-size Transformer: chunks of 64 at 0.35x on an Intel Xeon, batch 4, and 0.87-1.06x
    on an AMD EPYC, batch 1-4; chunks of 256 at 0.85x and 0.97-1.35x). Clamped above at 512, where the memory of the batched chunk scores (``T L``
    numbers per head) passes its minimum near ``sqrt(2 d_k d_v)``. With the paper's head sizes (``d_k``
    256, ``d_v`` 512) it gives 256; with the book's small models (``d_k`` <= 64) 64.

    >>> default_chunk_size(2048, 256, 512), default_chunk_size(2048, 32, 64), default_chunk_size(100, 256, 512)
    (256, 64, 128)
    """
    _check_sizes(length, d_k, d_v)
    balanced = 2 * d_k * d_v / (d_k + d_v)
    nearest = 2 ** round(math.log2(balanced))
    chunk = min(max(nearest, CHUNK_RANGE[0]), CHUNK_RANGE[1])
    whole = 2 ** math.ceil(math.log2(max(length, 1)))   # one chunk covers a short sequence
    return min(chunk, whole)


def memory_numbers(form: str, length: int, d_k: int, d_v: int, chunk_size: int = 0) -> int:
    """Numbers a form holds at once besides q, k, v and the output, for one head of one sequence.

    - ``"parallel"``: the ``T x T`` scores and ``D``: ``2 T^2``;
    - ``"recurrent"``: the ``d_k x d_v`` state;
    - ``"chunkwise"``: one chunk at a time, its ``C x C`` scores and ``D``, and the state (``C`` at most
      ``T``);
    - ``"chunkwise, batched"``: as ``retention.chunkwise_retention`` runs the ``N`` whole chunks (all at
      once, for speed): every chunk's scores (``N C^2``), one ``D`` block, each chunk's contribution to the
      state and the state each chunk receives (``2 N d_k d_v``), and the state. A short last chunk, run
      afterwards, holds less than that.

    ``form`` is one of :data:`FORMS`; ``length`` an int >= 0, ``d_k`` and ``d_v`` ints >= 1; ``chunk_size``
    an int >= 1 for the chunkwise forms (ignored, and 0 by default, for the others).
    """
    check_choice("form", form, FORMS)
    _check_sizes(length, d_k, d_v)
    check_int("chunk_size", chunk_size, 1 if form.startswith("chunkwise") else 0)
    C = min(chunk_size, length) if chunk_size else 0
    if form == "parallel":
        return 2 * length * length
    if form == "recurrent":
        return d_k * d_v
    if form == "chunkwise":
        return 2 * C * C + d_k * d_v
    n_full = length // C if C else 0                      # length 0: no chunk at all
    if n_full == 0:
        return 2 * C * C + d_k * d_v
    return n_full * C * C + C * C + 2 * n_full * d_k * d_v + d_k * d_v


def form_costs(length: int, chunk_size: int, d_k: int, d_v: int) -> dict[str, dict[str, int]]:
    """``{form: {"flops", "memory", "steps"}}`` for each of :data:`FORMS`, one head of one sequence.

    ``flops`` from :func:`parallel_flops`, :func:`recurrent_flops`, :func:`chunkwise_flops` (the two
    chunkwise entries do the same work); ``memory`` from :func:`memory_numbers`; ``steps`` counts the
    sequential steps (parallel 1, recurrent ``T``, chunkwise one per chunk). ``length`` is an int >= 0,
    ``chunk_size``, ``d_k`` and ``d_v`` ints >= 1.
    """
    _check_sizes(length, d_k, d_v)
    check_int("chunk_size", chunk_size, 1)
    chunk = {"flops": chunkwise_flops(length, d_k, d_v, chunk_size),
             "steps": len(chunk_lengths(length, chunk_size))}
    return {
        "parallel": {"flops": parallel_flops(length, d_k, d_v), "steps": 1,
                     "memory": memory_numbers("parallel", length, d_k, d_v)},
        "recurrent": {"flops": recurrent_flops(length, d_k, d_v), "steps": length,
                      "memory": memory_numbers("recurrent", length, d_k, d_v)},
        "chunkwise": dict(chunk, memory=memory_numbers("chunkwise", length, d_k, d_v, chunk_size)),
        "chunkwise, batched": dict(chunk, memory=memory_numbers("chunkwise, batched", length, d_k, d_v,
                                                                chunk_size)),
    }


# =============================================================================================
# One decoding step: attention's FLOPs, and the bytes a step moves
# =============================================================================================
def attention_step_flops(context_len: int, d_model: int, n_heads: int) -> int:
    """FLOPs of one layer of (multi-head) attention for one new token over ``context_len`` keys (the new one
    included), one sequence: ``4 n d_model + 3 n n_heads``.

    ``q . k_m`` for every key and head (``2 n d_model``), the softmax's exponential, sum and division
    (3 per score), and the weighted sum of the values (``2 n d_model``). ``context_len``, ``d_model`` and
    ``n_heads`` are ints >= 1. Compare one layer of retention: ``n_heads * recurrent_flops(1, d_k, d_v)``.

    >>> attention_step_flops(8192, 4096, 16)
    134610944
    """
    n = check_int("context_len", context_len, 1)
    d_model = check_int("d_model", d_model, 1)
    n_heads = check_int("n_heads", n_heads, 1)
    return 4 * n * d_model + 3 * n * n_heads


def attention_flops(length: int, d_model: int, n_heads: int) -> int:
    """FLOPs of one layer of causal attention over a whole sequence (training, prefill): position ``n``
    (1-based) attends to ``n`` keys, the masked scores are skipped (as a fused kernel skips them), so the
    count is :func:`attention_step_flops` summed over ``n = 1 .. T``: ``(4 d_model + 3 n_heads) T (T + 1) / 2``.
    ``length`` is an int >= 0, ``d_model`` and ``n_heads`` ints >= 1."""
    T = check_int("length", length, 0)
    d_model = check_int("d_model", d_model, 1)
    n_heads = check_int("n_heads", n_heads, 1)
    return (4 * d_model + 3 * n_heads) * T * (T + 1) // 2


class BytesMoved(NamedTuple):
    """Bytes a step reads from memory and writes back."""

    read: float
    written: float

    @property
    def total(self) -> float:
        """``read + written``."""
        return self.read + self.written


def decode_step_bytes(weight_bytes: float, read_per_sequence: float, written_per_sequence: float,
                      batch_size: int) -> BytesMoved:
    """Bytes one decoding step moves: the weights read once for the whole batch, plus what each sequence's
    state or cache adds: ``read = W + b * r``, ``written = b * w``.

    RetNet reads and writes its state (``r = w = S``); a Transformer at ``n`` tokens reads its cache and
    writes one token's key and value (``r = C(n)``, ``w = C(1)``). :meth:`ModelShape.retnet_step_bytes` and
    :meth:`ModelShape.transformer_step_bytes` fill these in. Activations (``O(d_model)`` per sequence) are
    left out.

    Raises:
        ValueError: for negative or non-finite sizes, or a batch size < 1.
    """
    weight_bytes = _check_nonnegative_number("weight_bytes", weight_bytes)
    read_per_sequence = _check_nonnegative_number("read_per_sequence", read_per_sequence)
    written_per_sequence = _check_nonnegative_number("written_per_sequence", written_per_sequence)
    batch_size = _check_positive_int("batch_size", batch_size)
    return BytesMoved(weight_bytes + batch_size * read_per_sequence, batch_size * written_per_sequence)


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

    def retnet_step_flops(self) -> float:
        """FLOPs of one RetNet decoding step, one sequence: ``2 n_params`` for the weights plus, per layer,
        ``n_heads`` recurrent steps (:func:`recurrent_flops`), at any context."""
        return 2 * self.n_params + self.n_layers * self.n_heads * recurrent_flops(1, self.key_head_dim,
                                                                                   self.value_head_dim)

    def transformer_step_flops(self, context_len: int) -> float:
        """FLOPs of one decoding step of the same-size Transformer over ``context_len`` keys, one sequence:
        ``2 n_params`` plus, per layer, :func:`attention_step_flops`."""
        return 2 * self.n_params + self.n_layers * attention_step_flops(context_len, self.d_model, self.n_heads)

    def retnet_step_bytes(self, batch_size: int = 1, dtype: Any = "float16") -> BytesMoved:
        """Bytes one RetNet decoding step moves for ``batch_size`` sequences: the weights and every state
        read, every state written (:func:`decode_step_bytes`), all in ``dtype``."""
        state = numbers_to_bytes(self.state_numbers(), dtype)
        return decode_step_bytes(self.weight_bytes(dtype), state, state, batch_size)

    def transformer_step_bytes(self, context_len: int, batch_size: int = 1, dtype: Any = "float16") -> BytesMoved:
        """Bytes one decoding step of the same-size Transformer moves at ``context_len`` tokens (the new one
        included) for ``batch_size`` sequences: the weights and every cache read, one token's key and
        value written per sequence (:func:`decode_step_bytes`), all in ``dtype``."""
        cache = numbers_to_bytes(self.kv_cache_numbers(context_len), dtype)
        return decode_step_bytes(self.weight_bytes(dtype), cache, numbers_to_bytes(self.kv_cache_numbers(1), dtype),
                                 batch_size)


#: The paper's model sizes (Table of hyperparameters): key head dim 256 throughout, value head dim 512.
PAPER_SHAPES: dict[str, ModelShape] = {
    "1.3B": ModelShape("1.3B", 1.3e9, n_layers=24, d_model=2048, n_heads=8),
    "2.7B": ModelShape("2.7B", 2.7e9, n_layers=32, d_model=2560, n_heads=10),
    "6.7B": ModelShape("6.7B", 6.7e9, n_layers=32, d_model=4096, n_heads=16),
}
