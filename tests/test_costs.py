"""Tests for retnet_mini.costs: the paper's 6.7B numbers, the memory formulas, the FLOPs of the three forms
(by hand, against each other and against the operations the forms run), a decoding step's FLOPs and bytes,
and argument validation."""

import doctest
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from retnet_mini import costs
from retnet_mini.costs import (
    FORMS,
    PAPER_SHAPES,
    BytesMoved,
    ModelShape,
    attention_flops,
    attention_step_flops,
    batch_for_memory_ratio,
    bytes_per_number,
    chunk_lengths,
    chunkwise_flops,
    crossover_context_len,
    decode_step_bytes,
    decoding_memory_bytes,
    form_costs,
    format_bytes,
    kv_cache_numbers,
    max_batch_size,
    memory_numbers,
    memory_ratio,
    numbers_to_bytes,
    parallel_flops,
    recurrent_flops,
    retnet_state_numbers,
)

MiB = 2**20
GiB = 2**30


def test_paper_state_is_67_1m_numbers_128_mib_fp16():
    n = retnet_state_numbers(n_layers=32, n_heads=16, key_head_dim=256, value_head_dim=512)
    assert n == 67_108_864
    assert round(n / 1e6, 1) == 67.1
    assert numbers_to_bytes(n, "float16") == 128 * MiB
    assert format_bytes(numbers_to_bytes(n, "fp16")) == "128.0 MiB"


@pytest.mark.parametrize("context_len, gib", [(2048, 1), (8192, 4)])
def test_paper_kv_cache_1_gib_at_2k_4_gib_at_8k(context_len, gib):
    n = kv_cache_numbers(n_layers=32, d_model=4096, context_len=context_len)
    assert n == 2 * 32 * 4096 * context_len
    assert numbers_to_bytes(n, "float16") == gib * GiB
    assert format_bytes(numbers_to_bytes(n, "float16")) == f"{gib}.0 GiB"


def test_model_shape_matches_free_functions():
    shape = PAPER_SHAPES["6.7B"]
    assert (shape.key_head_dim, shape.value_head_dim) == (256, 512)
    assert shape.state_numbers() == retnet_state_numbers(32, 16, 256, 512)
    assert shape.kv_cache_numbers(8192) == kv_cache_numbers(32, 4096, 8192)
    assert shape.weight_bytes("fp16") == 6.7e9 * 2
    for s in PAPER_SHAPES.values():
        assert s.key_head_dim == 256 and s.value_head_dim == 512


def test_state_does_not_grow_and_cache_grows_linearly():
    shape = PAPER_SHAPES["1.3B"]
    caches = [shape.kv_cache_numbers(n) for n in (1, 2, 4, 1000)]
    assert caches == [caches[0] * n for n in (1, 2, 4, 1000)]


@pytest.mark.parametrize("name", sorted(PAPER_SHAPES))
def test_crossover_is_key_head_dim_for_paper_shapes(name):
    s = PAPER_SHAPES[name]
    n_star = crossover_context_len(s.n_layers, s.d_model, s.n_heads, s.key_head_dim, s.value_head_dim)
    assert n_star == 256
    assert s.kv_cache_numbers(int(n_star)) == s.state_numbers()


@pytest.mark.parametrize(
    "dtype, size",
    [("float16", 2), ("fp16", 2), ("half", 2), ("bf16", 2), ("BFloat16", 2), ("float32", 4), ("fp32", 4),
     ("float64", 8), ("int8", 1), ("torch.float16", 2)],
)
def test_bytes_per_number(dtype, size):
    assert bytes_per_number(dtype) == size


def test_bytes_per_number_accepts_torch_dtypes():
    torch = pytest.importorskip("torch")
    assert bytes_per_number(torch.float16) == 2
    assert bytes_per_number(torch.bfloat16) == 2
    assert bytes_per_number(torch.float32) == 4


def test_unknown_dtype_raises():
    with pytest.raises(ValueError, match="unknown dtype"):
        bytes_per_number("float12")


@pytest.mark.parametrize("bad", [0, -1, 2.0, "4", None, True])
def test_state_numbers_validates(bad):
    with pytest.raises(ValueError, match="n_heads"):
        retnet_state_numbers(32, bad, 256, 512)


@pytest.mark.parametrize("bad", [0, -8, 8.5, "8", None, False])
def test_kv_cache_numbers_validates(bad):
    with pytest.raises(ValueError, match="context_len"):
        kv_cache_numbers(32, 4096, bad)


def test_numbers_to_bytes_validates():
    with pytest.raises(ValueError, match="n_numbers"):
        numbers_to_bytes(-1)
    with pytest.raises(ValueError, match="n_numbers"):
        numbers_to_bytes(1.5)


def test_format_bytes():
    assert format_bytes(0) == "0.0 B"
    assert format_bytes(1023) == "1023.0 B"
    assert format_bytes(1024) == "1.0 KiB"
    assert format_bytes(1536, digits=2) == "1.50 KiB"
    assert format_bytes(3 * GiB, digits=0) == "3 GiB"
    assert format_bytes(2**60) == "1024.0 PiB"
    for bad in (-1, math.inf, math.nan, "1"):
        with pytest.raises(ValueError, match="n_bytes"):
            format_bytes(bad)
    with pytest.raises(ValueError, match="digits"):
        format_bytes(1, digits=5)


def test_memory_ratio_and_its_inverse_agree():
    s = PAPER_SHAPES["6.7B"]
    w = s.weight_bytes()
    c = numbers_to_bytes(s.kv_cache_numbers(8192))
    st = numbers_to_bytes(s.state_numbers())
    # batch 1: the weights dominate, so the whole-memory ratio is small
    assert 1.3 < memory_ratio(w, c, st, 1) < 1.32
    b = batch_for_memory_ratio(3.4, w, c, st)
    assert 8 < b < 9
    assert memory_ratio(w, c, st, 8) < 3.4 < memory_ratio(w, c, st, 9)
    # plugging the real-valued batch back in gives the ratio
    assert math.isclose((w + b * c) / (w + b * st), 3.4, rel_tol=1e-12)
    # without weights, the ratio is the per-sequence cache/state ratio: 32x at 8k
    assert memory_ratio(0, c, st, 5) == 32


def test_decoding_memory_bytes():
    assert decoding_memory_bytes(10, 100, 3, dtype="fp32") == 10 * 4 + 3 * 100
    with pytest.raises(ValueError, match="batch_size"):
        decoding_memory_bytes(10, 100, 0)
    with pytest.raises(ValueError, match="n_params"):
        decoding_memory_bytes(-1, 100, 1)


def test_ratio_validation():
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        batch_for_memory_ratio(0.5, 1, 2, 1)
    with pytest.raises(ValueError, match="never reached"):
        batch_for_memory_ratio(3, 1, 2, 1)
    with pytest.raises(ValueError, match="undefined"):
        memory_ratio(0, 1, 0, 1)
    with pytest.raises(ValueError, match="batch_size"):
        memory_ratio(1, 1, 1, 0)


def test_model_shape_validation():
    with pytest.raises(ValueError, match="divisible"):
        ModelShape("bad", 1e6, n_layers=2, d_model=100, n_heads=3)
    with pytest.raises(ValueError, match="n_layers"):
        ModelShape("bad", 1e6, n_layers=0, d_model=64, n_heads=2)


def test_max_batch_size():
    s = PAPER_SHAPES["6.7B"]
    gpu = 80 * GiB
    cache = numbers_to_bytes(s.kv_cache_numbers(8192))
    state = numbers_to_bytes(s.state_numbers())
    assert max_batch_size(gpu, s.weight_bytes(), cache) == 16
    assert max_batch_size(gpu, s.weight_bytes(), state) == 540
    assert max_batch_size(100, 40, 20) == 3
    assert max_batch_size(100, 40, 61) == 0
    assert max_batch_size(100, 100, 1) == 0
    assert max_batch_size(100, 150, 1) == 0
    with pytest.raises(ValueError, match="per_sequence_bytes"):
        max_batch_size(100, 40, 0)
    with pytest.raises(ValueError, match="memory_bytes"):
        max_batch_size(-1, 40, 1)


# ------------------------------------------------------------------------------------------ the three forms
def test_docstring_examples():
    assert doctest.testmod(costs).failed == 0


def test_chunk_lengths():
    assert chunk_lengths(50, 7) == [7] * 7 + [1]
    assert chunk_lengths(5, 8) == [5]
    assert chunk_lengths(8, 4) == [4, 4]
    assert chunk_lengths(0, 4) == []


def test_flops_by_hand():
    T, dk, dv = 1024, 256, 512
    # parallel: Q K^T (2 T^2 d_k), * D (T^2), @ V (2 T^2 d_v)
    assert parallel_flops(T, dk, dv) == 2 * T * T * dk + T * T + 2 * T * T * dv == 1_611_661_312
    # recurrent, per position: gamma S (d_k d_v), + k^T v (2 d_k d_v), q S (2 d_k d_v)
    assert recurrent_flops(T, dk, dv) == T * (dk * dv + 2 * dk * dv + 2 * dk * dv) == 671_088_640
    # chunkwise, per chunk of L: inner, cross (q * xi, then @ R), state (gamma^L R, k * zeta, then @ v)
    def chunk(L):
        inner = 2 * L * L * dk + L * L + 2 * L * L * dv
        cross = L * dk + 2 * L * dk * dv
        state = dk * dv + L * dk + 2 * L * dk * dv
        return inner + cross + state
    assert chunkwise_flops(T, dk, dv, 64) == 16 * chunk(64) == 640_221_184
    assert chunkwise_flops(T, dk, dv, 96) == 10 * chunk(96) + chunk(64)        # a short last chunk of 64
    assert chunkwise_flops(T, dk, dv, 4096) == chunk(T)                         # one chunk, C clamped to T
    assert chunkwise_flops(0, dk, dv, 4) == parallel_flops(0, dk, dv) == recurrent_flops(0, dk, dv) == 0


@pytest.mark.parametrize("T, dk, dv", [(1, 1, 1), (7, 3, 5), (64, 16, 32), (1024, 256, 512)])
def test_flops_agree_between_forms(T, dk, dv):
    # chunks of 1: the recurrent form plus each position's 1 x 1 inner part and the xi, zeta scalings
    assert chunkwise_flops(T, dk, dv, 1) == recurrent_flops(T, dk, dv) + T * (4 * dk + 2 * dv + 1)
    # one chunk: the parallel form plus one reading and one update of the state
    assert chunkwise_flops(T, dk, dv, T) == parallel_flops(T, dk, dv) + 4 * T * dk * dv + 2 * T * dk + dk * dv
    # the whole ones and the short last one add up: splitting a sequence in two costs the sum of the halves
    for C in (2, 3, 5):
        head = (T // C) * C
        assert chunkwise_flops(T, dk, dv, C) == chunkwise_flops(head, dk, dv, C) + chunkwise_flops(T - head, dk, dv, C)


def test_parallel_needs_fewer_flops_below_the_ratio():
    dk, dv = 256, 512
    ratio = recurrent_flops(1, dk, dv) / parallel_flops(1, dk, dv)       # 5 d_k d_v / (2 d_k + 2 d_v + 1)
    assert math.floor(ratio) == 426
    assert parallel_flops(426, dk, dv) < recurrent_flops(426, dk, dv)
    assert parallel_flops(427, dk, dv) > recurrent_flops(427, dk, dv)


def _count_ops(fn):
    """Scalar multiplications and additions of ``fn(mul, add)``, run on plain numbers."""
    n = {"ops": 0}

    def mul(a, b):
        n["ops"] += 1
        return a * b

    def add(a, b):
        n["ops"] += 1
        return a + b
    fn(mul, add)
    return n["ops"]


def _matmul_into(mul, add, A, B, C=None):
    """``C + A @ B`` one multiply-add at a time (starting from 0 where there is no C): 2 FLOPs each."""
    a, b, c = len(A), len(B), len(B[0])
    out = [[C[i][j] if C else 0.0 for j in range(c)] for i in range(a)]
    for i in range(a):
        for j in range(c):
            for t in range(b):
                out[i][j] = add(out[i][j], mul(A[i][t], B[t][j]))
    return out


@pytest.mark.parametrize("T, dk, dv, C", [(5, 2, 3, 2), (6, 3, 2, 6), (7, 2, 2, 3), (4, 1, 1, 1)])
def test_counts_are_the_operations_the_equations_run(T, dk, dv, C):
    """Run each form's equations on scalars, one operation at a time, and count them."""
    q = [[1.0 + i + t for t in range(dk)] for i in range(T)]
    k = [[0.5 * i - t for t in range(dk)] for i in range(T)]
    v = [[i * t + 1.0 for t in range(dv)] for i in range(T)]
    g = 0.9
    tr = lambda M: [list(r) for r in zip(*M)]                         # noqa: E731

    def parallel(mul, add):
        S = _matmul_into(mul, add, q, tr(k))
        S = [[mul(S[n][m], g ** (n - m) if m <= n else 0.0) for m in range(T)] for n in range(T)]
        _matmul_into(mul, add, S, v)

    def recurrent(mul, add):
        S = [[0.0] * dv for _ in range(dk)]
        for n in range(T):
            S = [[mul(g, x) for x in row] for row in S]
            S = _matmul_into(mul, add, tr([k[n]]), [v[n]], S)         # S + k_n^T v_n
            _matmul_into(mul, add, [q[n]], S)

    def chunkwise(mul, add):
        R = [[0.0] * dv for _ in range(dk)]
        start = 0
        for L in chunk_lengths(T, C):
            qc, kc, vc = q[start:start + L], k[start:start + L], v[start:start + L]
            S = _matmul_into(mul, add, qc, tr(kc))
            S = [[mul(S[n][m], g ** (n - m) if m <= n else 0.0) for m in range(L)] for n in range(L)]
            inner = _matmul_into(mul, add, S, vc)
            q_xi = [[mul(x, g ** (j + 1)) for x in qc[j]] for j in range(L)]
            _matmul_into(mul, add, q_xi, R, inner)                      # inner + (q * xi) R
            k_zeta = [[mul(x, g ** (L - 1 - j)) for x in kc[j]] for j in range(L)]
            R = [[mul(g ** L, x) for x in row] for row in R]
            R = _matmul_into(mul, add, tr(k_zeta), vc, R)               # gamma^L R + (k * zeta)^T v
            start += L

    assert _count_ops(parallel) == parallel_flops(T, dk, dv)
    assert _count_ops(recurrent) == recurrent_flops(T, dk, dv)
    assert _count_ops(chunkwise) == chunkwise_flops(T, dk, dv, C)


def test_memory_numbers_by_hand():
    T, dk, dv = 1024, 256, 512
    assert memory_numbers("parallel", T, dk, dv) == 2 * T * T
    assert memory_numbers("recurrent", T, dk, dv) == 131_072
    assert memory_numbers("chunkwise", T, dk, dv, 96) == 2 * 96 ** 2 + 131_072
    assert memory_numbers("chunkwise", T, dk, dv, 4096) == 2 * T * T + 131_072      # C clamped to T
    # batched: 10 whole chunks of 96: 10 * 96^2 scores, one 96 x 96 D, 2 * 10 states, and the state
    assert memory_numbers("chunkwise, batched", T, dk, dv, 96) == 10 * 96 ** 2 + 96 ** 2 + 21 * 131_072
    assert memory_numbers("chunkwise, batched", 0, 2, 3, 4) == 6                      # no chunk: the state
    with pytest.raises(ValueError, match="form must be one of"):
        memory_numbers("attention", T, dk, dv)


def test_form_costs_gathers_the_counts():
    c = form_costs(10, 4, 2, 3)
    assert set(c) == set(FORMS)
    assert c["chunkwise"]["steps"] == 3 and c["recurrent"]["steps"] == 10 and c["parallel"]["steps"] == 1
    assert c["parallel"]["flops"] == parallel_flops(10, 2, 3)
    assert c["recurrent"]["flops"] == recurrent_flops(10, 2, 3)
    assert c["chunkwise"]["flops"] == c["chunkwise, batched"]["flops"] == chunkwise_flops(10, 2, 3, 4)
    assert [c[f]["memory"] for f in FORMS] == [memory_numbers(f, 10, 2, 3, 4 if f.startswith("chunk") else 0)
                                               for f in FORMS]
    assert form_costs(0, 4, 2, 3)["chunkwise"] == {"flops": 0, "steps": 0, "memory": 6}


# ------------------------------------------------------------------------------------------ a decoding step
def test_attention_flops():
    # one head, 2 keys of width 3: q . k (2 x 2 x 3), softmax (3 x 2), weighted sum (2 x 2 x 3)
    assert attention_step_flops(2, 3, 1) == 12 + 6 + 12
    assert attention_step_flops(8192, 4096, 16) == 4 * 8192 * 4096 + 3 * 8192 * 16
    # a causal sequence: position n (1-based) attends to n keys
    assert attention_flops(5, 8, 2) == sum(attention_step_flops(n, 8, 2) for n in range(1, 6))
    assert attention_flops(0, 8, 2) == 0


def test_decoding_step_flops_of_the_paper_shape():
    s = PAPER_SHAPES["6.7B"]
    retention = s.n_layers * s.n_heads * 5 * 256 * 512
    assert s.retnet_step_flops() == 2 * 6.7e9 + retention
    assert s.transformer_step_flops(8192) == 2 * 6.7e9 + 32 * attention_step_flops(8192, 4096, 16)
    # one layer: attention costs as much as retention's 5 h d_k d_v near n = 5 d_v / 4 keys (d_model = h d_k)
    per_layer = s.n_heads * recurrent_flops(1, 256, 512)
    assert attention_step_flops(630, 4096, 16) < per_layer < attention_step_flops(640, 4096, 16)


def test_decoding_step_bytes():
    assert decode_step_bytes(100, 10, 3, 4) == BytesMoved(140, 12)
    assert decode_step_bytes(100, 10, 3, 4).total == 152
    s = PAPER_SHAPES["6.7B"]
    W, S = s.weight_bytes("fp16"), numbers_to_bytes(s.state_numbers())
    assert s.retnet_step_bytes(8) == BytesMoved(W + 8 * S, 8 * S)
    C, one = numbers_to_bytes(s.kv_cache_numbers(8192)), numbers_to_bytes(s.kv_cache_numbers(1))
    assert s.transformer_step_bytes(8192, 8) == BytesMoved(W + 8 * C, 8 * one)
    assert s.retnet_step_bytes(1, "float32").written == 2 * S
    # the read part is the whole-memory model's numerator and denominator
    assert s.transformer_step_bytes(8192, 8).read / s.retnet_step_bytes(8).read == memory_ratio(W, C, S, 8)
    with pytest.raises(ValueError, match="batch_size"):
        decode_step_bytes(1, 1, 1, 0)
    with pytest.raises(ValueError, match="read_per_sequence"):
        decode_step_bytes(1, -1, 1, 1)


# --- the default chunk size ----------------------------------------------------------------------
@pytest.mark.parametrize("length, d_k, d_v, want", [
    (2048, 256, 512, 256),    # the paper's heads: L* = 341, the nearest power of two in ratio
    (8192, 512, 1024, 512),   # L* = 683 -> 512, the upper clamp
    (2048, 32, 64, 64),       # the book's small models: L* = 43 -> the lower clamp
    (2048, 8, 8, 64),
    (100, 256, 512, 128),     # a short sequence: one chunk, the length rounded up to a power of two
    (1, 256, 512, 1),
    (0, 256, 512, 1),
])
def test_default_chunk_size_follows_its_rule(length, d_k, d_v, want):
    assert costs.default_chunk_size(length, d_k, d_v) == want


@given(st.integers(0, 10**6), st.integers(1, 2048), st.integers(1, 2048))
def test_default_chunk_size_is_a_power_of_two_in_range(length, d_k, d_v):
    chunk = costs.default_chunk_size(length, d_k, d_v)
    assert chunk & (chunk - 1) == 0
    assert chunk <= costs.CHUNK_RANGE[1] and (chunk >= costs.CHUNK_RANGE[0] or chunk >= length)
    # the power of two nearest to L* = 2 d_k d_v / (d_k + d_v), in ratio: within a factor sqrt(2) of it,
    # unless a clamp or a short sequence decided
    balanced = 2 * d_k * d_v / (d_k + d_v)
    assert chunk <= max(costs.CHUNK_RANGE[0], math.sqrt(2) * balanced * (1 + 1e-9))
    assert chunk >= min(costs.CHUNK_RANGE[1], balanced / math.sqrt(2) * (1 - 1e-9), 2 ** math.ceil(math.log2(max(length, 1))))
