"""The three retention forms agree with each other and with a loop written straight from the equations."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet_mini import (
    chunkwise_retention,
    decay_matrix,
    experiment_log_decay,
    paper_log_decay,
    parallel_retention,
    read_state,
    recurrent_retention,
    state_dtype,
    update_state,
)

GAMMAS = [0.01, 0.5, 0.9, 0.96875, 1 - 2 ** -12, 1.0]


def naive_retention(q, k, v, gammas, state=None):
    """o_n = sum_{m<=n} gamma^(n-m) (q_n . k_m) v_m + gamma^(n+1) q_n S0, one term at a time."""
    B, H, T, _ = q.shape
    o = torch.zeros(B, H, T, v.shape[-1], dtype=q.dtype, device=q.device)
    for b in range(B):
        for h in range(H):
            g = gammas[h]
            for n in range(T):
                for m in range(n + 1):
                    o[b, h, n] += g ** (n - m) * torch.dot(q[b, h, n], k[b, h, m]) * v[b, h, m]
                if state is not None:
                    o[b, h, n] += g ** (n + 1) * (q[b, h, n] @ state[b, h])
    return o


def naive_state(k, v, gammas, state=None):
    """S = sum_m gamma^(T-1-m) k_m^T v_m (+ gamma^T S0)."""
    B, H, T, _ = k.shape
    S = torch.zeros(B, H, k.shape[-1], v.shape[-1], dtype=k.dtype, device=k.device)
    for h in range(H):
        g = gammas[h]
        if state is not None:
            S[:, h] += g ** T * state[:, h]
        for m in range(T):
            S[:, h] += g ** (T - 1 - m) * torch.einsum("bi,bj->bij", k[:, h, m], v[:, h, m])
    return S


def random_inputs(B, H, T, d_k, d_v, gammas, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, d_k, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, T, d_k, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, T, d_v, generator=g, dtype=torch.float64)
    log_decay = torch.log(torch.tensor(gammas, dtype=torch.float64))
    return [x.to(device=device, dtype=dtype) for x in (q, k, v, log_decay)]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


shapes = st.tuples(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 24), st.integers(1, 6), st.integers(1, 6)
)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, data=st.data())
def test_forms_match_naive_loop(shape, data, device):
    B, H, T, d_k, d_v = shape
    gammas = data.draw(st.lists(st.sampled_from(GAMMAS) | st.floats(0.05, 1.0), min_size=H, max_size=H))
    chunk = data.draw(st.integers(1, T + 3))
    with_state = data.draw(st.booleans())
    q, k, v, ld = random_inputs(B, H, T, d_k, d_v, gammas, device=device, seed=data.draw(st.integers(0, 99)))
    S0 = torch.randn(B, H, d_k, d_v, dtype=q.dtype, device=device) if with_state else None
    want = naive_retention(q, k, v, gammas, S0)
    want_state = naive_state(k, v, gammas, S0)

    o_r, s_r = recurrent_retention(q, k, v, ld, S0)
    o_c, s_c = chunkwise_retention(q, k, v, ld, chunk, S0)
    assert rel_err(o_r, want) < 1e-12 and rel_err(s_r, want_state) < 1e-12
    assert rel_err(o_c, want) < 1e-12 and rel_err(s_c, want_state) < 1e-12
    o_p = parallel_retention(q, k, v, ld)
    if S0 is not None:
        o_p = o_p + read_state(q, S0, ld)
    assert rel_err(o_p, want) < 1e-12
    assert rel_err(update_state(S0, k, v, ld), want_state) < 1e-12


@pytest.mark.parametrize("chunk", [1, 64, 100, 2048, 5000])
def test_forms_agree_float64_long(chunk, device):
    """T = 2048, float64: every kind of chunk size (1, divisor, non-divisor, = T, > T) to 1e-12."""
    q, k, v, ld = random_inputs(1, 6, 2048, 8, 12, GAMMAS, device=device)
    o_p = parallel_retention(q, k, v, ld)
    o_c, s_c = chunkwise_retention(q, k, v, ld, chunk)
    assert rel_err(o_c, o_p) < 1e-12
    if chunk == 64:
        o_r, s_r = recurrent_retention(q, k, v, ld)
        assert rel_err(o_r, o_p) < 1e-12
        assert rel_err(s_c, s_r) < 1e-12


def test_forms_agree_float32_4096(device):
    q, k, v, ld = random_inputs(1, 6, 4096, 16, 16, GAMMAS, device=device)
    ref, s_ref = chunkwise_retention(q, k, v, ld, 256)   # float64 reference (agrees to 1e-12 above)
    q32, k32, v32, ld32 = (x.float() for x in (q, k, v, ld))
    assert rel_err(parallel_retention(q32, k32, v32, ld32).double(), ref) < 1e-4
    o_c, s_c = chunkwise_retention(q32, k32, v32, ld32, 128)
    assert rel_err(o_c.double(), ref) < 1e-4
    o_r, s_r = recurrent_retention(q32, k32, v32, ld32)
    assert rel_err(o_r.double(), ref) < 1e-4
    assert rel_err(s_c.double(), s_ref) < 1e-4 and rel_err(s_r.double(), s_ref) < 1e-4


@settings(max_examples=15, deadline=None)
@given(T=st.integers(2, 40), data=st.data())
def test_split_and_carry_state(T, data, device):
    """Split a sequence anywhere, carry the state, with any form on each side: same outputs as one pass."""
    q, k, v, ld = random_inputs(2, 3, T, 4, 5, [0.3, 0.9, 1.0], device=device)
    cut = data.draw(st.integers(1, T - 1))
    chunk = data.draw(st.integers(1, T))
    forms = {
        "recurrent": lambda q, k, v, s: recurrent_retention(q, k, v, ld, s),
        "chunkwise": lambda q, k, v, s: chunkwise_retention(q, k, v, ld, chunk, s),
    }
    first, second = data.draw(st.sampled_from(list(forms))), data.draw(st.sampled_from(list(forms)))
    o_full, s_full = chunkwise_retention(q, k, v, ld, chunk)
    o1, s1 = forms[first](q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], None)
    o2, s2 = forms[second](q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], s1)
    assert rel_err(torch.cat([o1, o2], dim=2), o_full) < 1e-12
    assert rel_err(s2, s_full) < 1e-12


def test_decay_matrix_and_schedules():
    ld = torch.log(torch.tensor([0.5, 1.0], dtype=torch.float64))
    D = decay_matrix(ld, 4)
    assert D.shape == (2, 4, 4)
    assert D[0, 3, 1].item() == 0.25 and D[0, 1, 3].item() == 0.0 and D[1, 3, 0].item() == 1.0
    gammas = paper_log_decay(4).exp()
    assert torch.allclose(gammas, 1 - 2.0 ** -torch.arange(5, 9, dtype=torch.float64), rtol=0, atol=1e-15)
    g_exp = experiment_log_decay(3).exp()
    assert torch.allclose(1 - g_exp, torch.tensor([1 / 32, 1 / 128, 1 / 512], dtype=torch.float64))
    assert experiment_log_decay(16).exp().max() == g_exp.max()      # capped at 1 - 1/512 for any H
    assert paper_log_decay(16).exp().max() > 1 - 2 ** -19           # eq. 8 is not


def test_no_overflow_in_parallel_form_at_long_range(device):
    """The upper triangle must give exact zeros, not inf * 0 = NaN (naive gamma^(n-m) everywhere does)."""
    q, k, v, ld = random_inputs(1, 2, 3000, 4, 4, [0.5, 0.96875], dtype=torch.float32, device=device)
    assert torch.isfinite(parallel_retention(q, k, v, ld)).all()


@pytest.mark.parametrize("form", ["recurrent", "chunkwise"])
def test_long_sequence_float32_matches_float64(form, device):
    """T = 65536 with gamma = 0.01 and 1 - 2^-12: no NaN/inf, and float32 tracks a float64 run."""
    q, k, v, ld = random_inputs(1, 2, 65536, 4, 4, [0.01, 1 - 2 ** -12], device=device)
    q, k = q * 0.5, k * 0.5
    ref, ref_state = chunkwise_retention(q, k, v, ld, 256)
    args32 = [x.float() for x in (q, k, v, ld)]
    if form == "recurrent":
        o, s = recurrent_retention(*args32)
    else:
        o, s = chunkwise_retention(*args32, 256)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    for h in range(2):  # per head: the heads' scales differ by orders of magnitude
        assert rel_err(o[:, h].double(), ref[:, h]) < 1e-4
        assert rel_err(s[:, h].double(), ref_state[:, h]) < 1e-4


@pytest.mark.parametrize("form", ["parallel", "recurrent", "chunkwise"])
def test_gradcheck(form, device):
    q, k, v, ld = random_inputs(1, 2, 5, 3, 2, [0.7, 1.0], device=device)
    S0 = torch.randn(1, 2, 3, 2, dtype=torch.float64, device=device)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    if form == "parallel":
        fn = lambda q, k, v: parallel_retention(q, k, v, ld)
    elif form == "recurrent":
        inputs.append(S0.clone().requires_grad_())
        fn = lambda q, k, v, s: recurrent_retention(q, k, v, ld, s)
    else:
        inputs.append(S0.clone().requires_grad_())
        fn = lambda q, k, v, s: chunkwise_retention(q, k, v, ld, 2, s)
    assert torch.autograd.gradcheck(fn, inputs)


def test_gradients_agree_float32(device):
    q, k, v, ld = random_inputs(2, 3, 50, 8, 6, [0.5, 0.95, 1.0], dtype=torch.float32, device=device)
    target = torch.randn(2, 3, 50, 6, device=device)
    grads = {}
    for name in ("parallel", "recurrent", "chunkwise"):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        if name == "parallel":
            o = parallel_retention(*leaves, ld)
        elif name == "recurrent":
            o, _ = recurrent_retention(*leaves, ld)
        else:
            o, _ = chunkwise_retention(*leaves, ld, 16)
        (o * target).sum().backward()
        grads[name] = [x.grad for x in leaves]
    for name in ("recurrent", "chunkwise"):
        for g, g_ref in zip(grads[name], grads["parallel"]):
            assert rel_err(g, g_ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_dtype_and_device_kept(dtype, device):
    q, k, v, ld = random_inputs(1, 2, 33, 4, 6, [0.5, 0.99], dtype=dtype, device=device)
    ref = parallel_retention(*(x.double() for x in (q, k, v)), ld.double())
    (o_r, s_r), (o_c, s_c) = recurrent_retention(q, k, v, ld), chunkwise_retention(q, k, v, ld, 8)
    outputs = [parallel_retention(q, k, v, ld), o_r, o_c]
    for o in outputs:
        assert o.dtype == dtype and o.device == q.device and torch.isfinite(o).all()
    for s in (s_r, s_c):   # the state is kept in float32 for half inputs
        assert s.dtype == state_dtype(dtype) and s.device == q.device and torch.isfinite(s).all()
    assert state_dtype(dtype) == (torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2, torch.float16: 3e-3}[dtype]
    assert rel_err(outputs[0].double(), ref) < tol


def test_float16_overflow_raises_instead_of_inf(device):
    q, k, v, ld = random_inputs(1, 1, 64, 4, 4, [1.0], dtype=torch.float16, device=device)
    with pytest.raises(OverflowError, match="float16"):
        parallel_retention(q * 100, k * 100, v * 100, ld)


BAD_INPUTS = [
    (dict(q=torch.zeros(2, 3, 4)), ValueError, "q must have 4 dims"),
    (dict(k=torch.zeros(1, 2, 5, 3)), ValueError, "q and k must have the same shape"),
    (dict(v=torch.zeros(1, 2, 6, 5)), ValueError, "v must have shape"),
    (dict(log_decay=torch.zeros(3)), ValueError, r"log_decay must have shape \(2,\)"),
    (dict(log_decay=torch.tensor([-0.1, 0.2])), ValueError, "log_decay must be <= 0"),
    (dict(log_decay=torch.tensor([-0.1, float("nan")])), ValueError, "finite"),
    (dict(k=torch.zeros(1, 2, 5, 4, dtype=torch.float64)), TypeError, "k has dtype"),
    (dict(q=torch.zeros(1, 2, 5, 4, dtype=torch.int64)), TypeError, "floating-point"),
    (dict(state=torch.zeros(1, 2, 4, 4)), ValueError, r"state must have shape \(B, H, d_k, d_v\)"),
    (dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
]


@pytest.mark.parametrize("bad, error, message", BAD_INPUTS)
def test_bad_inputs_are_named(bad, error, message):
    args = dict(q=torch.zeros(1, 2, 5, 4), k=torch.zeros(1, 2, 5, 4), v=torch.zeros(1, 2, 5, 3),
                log_decay=torch.tensor([-0.1, 0.0]), state=None)
    args.update(bad)
    calls = [lambda a: recurrent_retention(**a), lambda a: chunkwise_retention(chunk_size=2, **a)]
    if args["state"] is None:
        calls.append(lambda a: parallel_retention(a["q"], a["k"], a["v"], a["log_decay"]))
    for call in calls:
        with pytest.raises(error, match=message):
            call(args)


def test_a_checked_decay_is_checked_again_after_it_changes():
    # A fixed decay passes its value checks once and is then trusted, but only until it is modified in
    # place; a new tensor is always checked, even if it reuses the id of a freed one.
    q = torch.zeros(1, 2, 3, 4)
    log_decay = torch.tensor([-0.1, -0.2])
    for _ in range(2):
        recurrent_retention(q, q, q, log_decay)
    log_decay[1] = 0.5
    with pytest.raises(ValueError, match="log_decay must be <= 0"):
        recurrent_retention(q, q, q, log_decay)
    log_decay[1] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        chunkwise_retention(q, q, q, log_decay, 2)
    for _ in range(20):   # freed tensors' ids get reused: every new bad tensor must still be refused
        with pytest.raises(ValueError, match="log_decay must be <= 0"):
            parallel_retention(q, q, q, torch.tensor([0.5, -0.1]))
        parallel_retention(q, q, q, torch.tensor([-0.5, -0.1]))

@pytest.mark.parametrize("chunk", [0, -3, 2.5, None])
def test_bad_chunk_size(chunk):
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match="chunk_size"):
        chunkwise_retention(q, q, q, torch.zeros(1), chunk)


def test_empty_sequence():
    q = torch.zeros(1, 2, 0, 3)
    v = torch.zeros(1, 2, 0, 5)
    o, s = chunkwise_retention(q, q, v, torch.zeros(2), 4)
    assert o.shape == (1, 2, 0, 5) and s.shape == (1, 2, 3, 5) and not s.any()
    assert parallel_retention(q, q, v, torch.zeros(2)).shape == (1, 2, 0, 5)
    state = torch.randn(1, 2, 3, 5)
    o, s = recurrent_retention(q, q, v, torch.zeros(2), state)     # an empty step leaves the state as it was
    assert o.shape == (1, 2, 0, 5) and torch.equal(s, state)


def test_mixed_devices_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError, match="device"):
        parallel_retention(q, q.cuda(), q, torch.zeros(1))


# ---------------------------------------------------------------------------------------------
# A decay per position, log_decay of shape (B, H, T): S_t = gamma_t S_{t-1} + k_t^T v_t.
# ---------------------------------------------------------------------------------------------
def naive_positionwise(q, k, v, gammas, state=None):
    """o_n = sum_{m<=n} (gamma_{m+1} ... gamma_n) (q_n . k_m) v_m + (gamma_0 ... gamma_n) q_n S0, and the
    final state, one term at a time. gammas: (B, H, T) float64."""
    B, H, T, _ = q.shape
    o = torch.zeros(B, H, T, v.shape[-1], dtype=q.dtype)
    S = torch.zeros(B, H, k.shape[-1], v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            g = gammas[b, h]
            for n in range(T):
                for m in range(n + 1):
                    o[b, h, n] += torch.prod(g[m + 1:n + 1]) * torch.dot(q[b, h, n], k[b, h, m]) * v[b, h, m]
                if state is not None:
                    o[b, h, n] += torch.prod(g[:n + 1]) * (q[b, h, n] @ state[b, h])
            for m in range(T):
                S[b, h] += torch.prod(g[m + 1:]) * torch.outer(k[b, h, m], v[b, h, m])
            if state is not None:
                S[b, h] += torch.prod(g) * state[b, h]
    return o, S


@settings(max_examples=30, deadline=None)
@given(shape=shapes, data=st.data())
def test_positionwise_decay_forms_match_naive_loop(shape, data):
    B, H, T, d_k, d_v = shape
    q, k, v, _ = random_inputs(B, H, T, d_k, d_v, [0.5] * H, seed=data.draw(st.integers(0, 99)))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    gammas = torch.rand(B, H, T, generator=g, dtype=torch.float64).clamp(min=0.01)
    gammas[..., ::3] = 1.0                                   # gamma = 1 (no decay) at some positions
    ld = gammas.log()
    S0 = torch.randn(B, H, d_k, d_v, dtype=torch.float64) if data.draw(st.booleans()) else None
    want, want_state = naive_positionwise(q, k, v, gammas, S0)
    chunk = data.draw(st.integers(1, T + 3))
    o_r, s_r = recurrent_retention(q, k, v, ld, S0)
    o_c, s_c = chunkwise_retention(q, k, v, ld, chunk, S0)
    o_p = parallel_retention(q, k, v, ld) + (read_state(q, S0, ld) if S0 is not None else 0)
    for o in (o_r, o_c, o_p):
        assert rel_err(o, want) < 1e-12
    for s in (s_r, s_c, update_state(S0, k, v, ld)):
        assert rel_err(s, want_state) < 1e-12


def test_positionwise_constant_decay_equals_fixed_decay():
    q, k, v, ld = random_inputs(2, 3, 70, 4, 5, [0.3, 0.9, 1.0])
    per_position = ld[None, :, None].expand(2, 3, 70).contiguous()
    for fixed, general in [(parallel_retention(q, k, v, ld), parallel_retention(q, k, v, per_position)),
                           (chunkwise_retention(q, k, v, ld, 16)[0], chunkwise_retention(q, k, v, per_position, 16)[0])]:
        assert rel_err(general, fixed) < 1e-12
    D = decay_matrix(per_position, 70)
    assert D.shape == (2, 3, 70, 70) and rel_err(D[1], decay_matrix(ld, 70)) < 1e-12


def test_positionwise_split_and_gradcheck():
    q, k, v, _ = random_inputs(1, 2, 11, 3, 2, [0.5, 0.5])
    ld = torch.rand(1, 2, 11, dtype=torch.float64).clamp(min=0.05).log()
    o, s = chunkwise_retention(q, k, v, ld, 4)
    o1, s1 = chunkwise_retention(q[:, :, :5], k[:, :, :5], v[:, :, :5], ld[:, :, :5], 3)
    o2, s2 = recurrent_retention(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], ld[:, :, 5:], s1)
    assert rel_err(torch.cat([o1, o2], 2), o) < 1e-12 and rel_err(s2, s) < 1e-12
    # the decay itself gets gradients too (a gated layer learns it)
    leaves = [x.clone().requires_grad_() for x in (q, k, v, ld)]
    assert torch.autograd.gradcheck(lambda q, k, v, a: chunkwise_retention(q, k, v, a, 4)[0], leaves)
    assert torch.autograd.gradcheck(lambda q, k, v, a: parallel_retention(q, k, v, a), leaves)


def test_positionwise_long_sequence_no_overflow():
    """Strong decays far into a long sequence: exponents are summed per segment, never as a difference
    of huge prefix sums, so float32 stays finite and tracks float64."""
    q, k, v, _ = random_inputs(1, 2, 8192, 4, 4, [0.5, 0.5])
    g = torch.Generator().manual_seed(3)
    ld = torch.where(torch.rand(1, 2, 8192, generator=g, dtype=torch.float64) < 0.5, math.log(0.01), -1e-4)
    ref, _ = chunkwise_retention(q, k, v, ld, 128)
    o32, s32 = chunkwise_retention(*(x.float() for x in (q, k, v, ld)), 128)
    assert torch.isfinite(o32).all() and rel_err(o32.double(), ref) < 1e-4
    p32 = parallel_retention(*(x.float() for x in (q[:, :, :2048], k[:, :, :2048], v[:, :, :2048], ld[:, :, :2048])))
    assert torch.isfinite(p32).all() and rel_err(p32.double(), ref[:, :, :2048]) < 1e-4


def test_positionwise_bad_shapes():
    q = torch.zeros(2, 3, 5, 4)
    with pytest.raises(ValueError, match=r"\(2, 3, 5\) \(one per position\)"):
        chunkwise_retention(q, q, q, torch.zeros(2, 3, 6), 2)
    with pytest.raises(ValueError, match="log_decay must be <= 0"):
        recurrent_retention(q, q, q, torch.full((2, 3, 5), 0.1))


def test_inplace_recurrent_equals_functional():
    q, k, v, ld = random_inputs(2, 3, 9, 4, 5, [0.3, 0.9, 1.0])
    S0 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    want_o, want_s = recurrent_retention(q, k, v, ld, S0)
    S = S0.clone()
    with torch.no_grad():
        o, s = recurrent_retention(q, k, v, ld, S, inplace=True)
    assert s.data_ptr() == S.data_ptr() and rel_err(o, want_o) < 1e-14 and rel_err(S, want_s) < 1e-14
    with pytest.raises(ValueError, match="inplace=True needs"):
        recurrent_retention(q, k, v, ld, None, inplace=True)
