"""Tests for retnet_mini.memory: the paper's 6.7B numbers, the formulas, and argument validation."""

import math

import pytest

from retnet_mini.memory import (
    PAPER_SHAPES,
    ModelShape,
    batch_for_memory_ratio,
    bytes_per_number,
    crossover_context_len,
    decoding_memory_bytes,
    format_bytes,
    kv_cache_numbers,
    max_batch_size,
    memory_ratio,
    numbers_to_bytes,
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
