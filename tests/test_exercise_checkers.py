"""Every exercise checker, fed the same edge cases: a right answer in float32 and as numpy (accepted), and
answers that return None, raise, return the wrong shape, change their inputs in place, change what the
reference reads, or are off by a little in float32 (rejected, with a message that says why); and the
shared comparison helpers of retnet_mini.exercises, property-tested with hypothesis."""
import contextlib
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import Tensor

from retnet_mini import decay_matrix
from retnet_mini.exercises import (ExerciseError, as_number, compare, compare_numbers, to_tensor, tolerances)
from retnet_mini.exercises import attention, block, decay, derivation, forms, inference, intro, limits, training
from retnet_mini.costs import max_batch_size
from retnet_mini.rotation import rotate
from retnet_mini.tasks import masked_accuracy
from retnet_mini.decay import effective_span, half_life, normalized_decay_matrix

from exercise_notebooks import rejected

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py

FEW = 3           # cases for the answers that fail at once (each then also runs the hints on every case)


def passes(check: Callable, answer: Callable, **kwargs) -> str:
    """What ``check`` prints when it accepts ``answer`` (the test fails with its message otherwise)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        check(answer, **kwargs)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# Right answers, and the same answers in other forms
# ---------------------------------------------------------------------------------------------
def _each_tensor(out: Any, fn: Callable[[Tensor], Any], first_only: bool = False) -> Any:
    """``out`` (a tensor or a tuple of them) with ``fn`` applied to its tensors (or to the first one only)."""
    if isinstance(out, tuple):
        return tuple(_each_tensor(o, fn) if (i == 0 or not first_only) else o for i, o in enumerate(out))
    return fn(out) if isinstance(out, Tensor) else out


def in_float32(right: Callable) -> Callable:
    """``right`` computed in float32: its float64 inputs cast, its float outputs cast."""
    def answer(**case):
        args = {k: v.float() if isinstance(v, Tensor) and v.dtype == torch.float64 else v for k, v in case.items()}
        return _each_tensor(right(**args), lambda t: t.float() if t.is_floating_point() else t)
    return answer


def _greedy(model, prompt, max_new_tokens):
    with torch.no_grad():
        logits, state = model(prompt, mode="chunkwise")
        out = [prompt]
        for i in range(max_new_tokens):
            out.append(logits[:, -1].argmax(-1, keepdim=True))
            if i + 1 < max_new_tokens:
                logits, state = model(out[-1], mode="recurrent", state=state)
    return torch.cat(out, dim=1)


def _mqar(keys, values, queried, slots, seq_len):
    x, y, mask = limits._mqar_reference(keys, values, queried, slots, seq_len)
    return x, y, mask.bool()


def _entropy32(ids):
    """The entropy with float32 probabilities (int64 counts / an int is float32), as a Python float."""
    _, counts = torch.unique(ids, return_counts=True)
    p = counts / len(ids)
    return float(-(p * p.log()).sum())


def _patching(module: Any, attribute: str, fake: Any, returns: Callable) -> Callable:
    """A cheat that changes what the reference reads: it replaces ``module.attribute`` by ``fake``, then
    returns ``returns(**case)``, what the reference would give if it were computed after the answer."""
    def make(monkeypatch):
        def answer(**case):
            monkeypatch.setattr(module, attribute, fake)
            return returns(**case)
        return answer
    return make


@dataclass
class Checker:
    check: Callable
    right: Callable                         # a right answer (float64, or exact ints/bools)
    kind: str                               # "tensor": float tensors; "exact": ids, masks, counts; "number": a float
    float32: Optional[Callable] = None      # a right answer computed in float32 (default: in_float32(right))
    cheat: Optional[Callable] = None        # makes (given monkeypatch) an answer that changes what the reference reads

    @property
    def id(self) -> str:
        return self.check.__name__

    def answer(self, fn: Callable) -> Callable:
        """``fn`` (which takes the case's keywords) called the way this checker calls the learner's function."""
        if self.check is inference.check_greedy_decode:         # positional, as the stub's signature
            return lambda model, prompt, max_new_tokens: fn(model=model, prompt=prompt, max_new_tokens=max_new_tokens)
        return fn

    def passes(self, fn: Callable, **kwargs) -> str:
        return passes(self.check, self.answer(fn), **kwargs)

    def rejects(self, fn: Callable, n_cases: int = FEW) -> str:
        return rejected(lambda a: self.check(a, n_cases=n_cases), self.answer(fn))


CHECKERS = [
    Checker(attention.check_causal_mask, attention.reference_causal_mask, "exact"),
    Checker(attention.check_kv_decode_step, attention.reference_kv_decode_step, "tensor"),
    Checker(attention.check_linear_attention_step, attention.reference_linear_attention_step, "tensor"),
    Checker(attention.check_linear_attention_cumsum, attention.reference_linear_attention, "tensor"),
    Checker(block.check_gated_output, block._gate_reference, "tensor"),
    Checker(block.check_head_rmsnorm, block._norm_reference, "tensor"),
    Checker(block.check_param_count, block.block_linear_weights, "exact",
            cheat=_patching(block, "block_linear_weights", lambda **c: 0, lambda **c: 0)),
    Checker(decay.check_memory, decay._memory_reference, "tensor",
            # the span is a whole number, checked exactly: a float32 answer keeps it in float64
            float32=lambda log_decay, tol: (half_life(log_decay.float()).float(), effective_span(log_decay, tol))),
    Checker(decay.check_half_life_schedule, decay.half_life_schedule_reference, "tensor",
            cheat=_patching(torch, "linspace", lambda start, end, steps, **kw: torch.zeros(steps, dtype=torch.float64),
                            lambda n_heads, **c: torch.full((n_heads,), math.log(0.5), dtype=torch.float64))),
    Checker(decay.check_normalized_decay, normalized_decay_matrix, "tensor"),
    Checker(derivation.check_ssm_kernel, derivation.reference_ssm_kernel, "tensor"),
    Checker(derivation.check_rotate, rotate, "tensor"),
    Checker(derivation.check_decay_matrix, decay_matrix, "tensor"),
    Checker(derivation.check_retention, derivation.reference_retention, "tensor"),
    Checker(forms.check_recurrent_step, forms._step_reference, "tensor"),
    Checker(forms.check_chunkwise, forms._chunk_reference, "tensor"),
    Checker(forms.check_padded_decay, forms.padded_decay_reference, "tensor"),
    Checker(inference.check_flop_crossover, inference._flop_reference, "exact"),
    Checker(inference.check_greedy_decode, _greedy, "exact"),
    Checker(inference.check_decode_throughput, inference._throughput_reference, "number",
            float32=lambda **c: np.float32(inference._throughput_reference(**c)),
            cheat=_patching(inference, "_step_total", lambda *a, **k: math.inf, lambda **c: 0.0)),
    Checker(intro.check_kv_cache_bytes, intro._cache_reference, "exact",
            cheat=_patching(intro, "kv_cache_numbers", lambda *a: 0, lambda **c: 0)),
    Checker(intro.check_state_bytes, intro._state_reference, "exact",
            cheat=_patching(intro, "retnet_state_numbers", lambda *a: 0, lambda **c: 0)),
    Checker(intro.check_max_batch, max_batch_size, "exact"),
    Checker(limits.check_mqar_example, _mqar, "exact"),
    Checker(limits.check_state_numbers, limits.state_numbers_reference, "exact"),
    Checker(limits.check_gate_log_decay, limits._gate_reference, "tensor"),
    Checker(limits.check_masked_accuracy, masked_accuracy, "number",
            float32=lambda logits, targets, loss_mask: (logits.argmax(-1) == targets)[loss_mask].float().mean()),
    Checker(training.check_next_char_loss, training.reference_next_char_loss, "number"),
    Checker(training.check_lr_at, training.reference_lr_at, "number",
            float32=lambda **c: np.float32(training.reference_lr_at(**c)),
            cheat=_patching(training, "lr_at", lambda *a, **k: 0.0, lambda **c: 0.0)),
    Checker(training.check_unigram_entropy, training.reference_unigram_entropy, "number", float32=_entropy32,
            cheat=_patching(training, "unigram_entropy", lambda ids: 0.0, lambda **c: 0.0)),
    Checker(training.check_loss_units, training.reference_loss_units, "tensor",
            # a module-level constant the reference reads: bits = loss / LN2 = 0 once it is inf
            cheat=_patching(training, "LN2", math.inf, lambda loss: (loss * 0, loss.exp()))),
]
BY_KIND = {kind: [c for c in CHECKERS if c.kind == kind] for kind in ("tensor", "exact", "number")}


def by_kind(*kinds: str):
    return pytest.mark.parametrize("c", [c for k in kinds for c in BY_KIND[k]], ids=lambda c: c.id)


every_checker = pytest.mark.parametrize("c", CHECKERS, ids=lambda c: c.id)


def test_the_registry_covers_every_checker():
    """A checker added to a chapter module must be added to CHECKERS too."""
    modules = (attention, block, decay, derivation, forms, inference, intro, limits, training)
    names = {n for m in modules for n in m.__all__ if n.startswith("check_")}
    assert names == {c.id for c in CHECKERS}


# ------------------------------------------------------------------ 1. precision and numpy
@by_kind("tensor", "number")
def test_a_right_answer_computed_in_float32_passes(c):
    """On the full 25 cases: the float32 tolerance must hold wherever a learner's answer will be checked."""
    right32 = c.float32 or in_float32(c.right)
    outputs = []
    assert c.passes(lambda **case: outputs.append(right32(**case)) or outputs[-1]) == success_line(c, 25)
    # and the answer tested is float32 indeed (a tensor, a numpy number, or a Python float from .item())
    out = outputs[0][0] if isinstance(outputs[0], tuple) else outputs[0]
    assert (getattr(out, "dtype", None) in (torch.float32, np.float32)
            or (isinstance(out, float) and float(np.float32(out)) == out)), type(out)


@by_kind("tensor", "number")
def test_a_float32_answer_off_by_one_part_in_a_thousand_fails(c):
    """The looser float32 tolerance (1e-4) does not let through an answer 10 times further off."""
    right32 = c.float32 or in_float32(c.right)

    def off(**case):
        out = right32(**case)
        if isinstance(out, (Tensor, tuple)):
            return _each_tensor(out, lambda t: (t.double() * (1 + 1e-3)).float(), first_only=True)
        return np.float32(float(out) * (1 + 1e-3))

    msg = c.rejects(off)
    assert "wrong value" in msg or "got" in msg, msg


def _numpy(out: Any) -> Any:
    if isinstance(out, tuple):
        return tuple(_numpy(o) for o in out)
    if isinstance(out, Tensor):
        return out.numpy()
    return np.int64(out) if isinstance(out, int) else np.float64(out)


def success_line(c: Checker, n_cases: int) -> str:
    """The line the checker prints on success, as the notebooks store it (for the solutions, n_cases = 25)."""
    if c.id == "check_decay_matrix":
        return f"{c.id}: correct on all {n_cases + 3} random cases (3 of them long enough to overflow gamma^-m).\n"
    return f"{c.id}: correct on all {n_cases} random cases.\n"


@every_checker
def test_a_right_answer_as_numpy_passes_with_the_unchanged_success_line(c):
    """Any right answer prints exactly the line stored in the notebooks' outputs (nbval compares them)."""
    assert c.passes(lambda **case: _numpy(c.right(**case)), n_cases=FEW) == success_line(c, FEW)


@by_kind("exact")
def test_an_exact_answer_off_by_one_fails(c):
    def off(**case):
        out = c.right(**case)
        if isinstance(out, tuple) and not isinstance(out[0], Tensor):
            return (out[0] + 1,) + out[1:]                      # state_numbers: (retnet, kv_cache)
        if isinstance(out, (Tensor, tuple)):
            return _each_tensor(out, lambda t: ~t if t.dtype == torch.bool else t + 1, first_only=True)
        return out + 1
    msg = c.rejects(off)
    assert "got" in msg or "wrong value" in msg or "columns must be the prompt" in msg, msg


def test_counts_are_exact_however_large():
    """A count in the trillions, one off, is wrong; the right one as a float (exact below 2^53) passes."""
    msg = rejected(intro.check_kv_cache_bytes, lambda **c: intro._cache_reference(**c) + 1)
    assert "got" in msg and "expected" in msg
    assert "correct on all" in passes(intro.check_kv_cache_bytes, lambda **c: float(intro._cache_reference(**c)))


def test_a_count_in_float32_is_told_why_it_is_off():
    msg = rejected(intro.check_kv_cache_bytes,
                   lambda **c: torch.tensor(intro._cache_reference(**c), dtype=torch.float32))
    assert "float32" in msg and "significant digits" in msg


def test_a_whole_number_output_checked_exactly_stays_exact_in_float32():
    """The span of check_memory is checked exactly: in float32, a slow head's span is off by one (float32
    cannot resolve millions of tokens), and the message says the precision is the reason."""
    msg = rejected(decay.check_memory, in_float32(decay._memory_reference))
    assert "wrong value in span" in msg and "float32" in msg and "float64" in msg


# ------------------------------------------------------------------ 2. wrong types, crashes, shapes
@every_checker
def test_a_function_that_returns_none_is_told_to_return(c):
    msg = c.rejects(lambda **case: None)
    assert "returned None" in msg and "did you forget `return`" in msg, msg


@every_checker
def test_a_function_that_raises_is_reported_with_its_input(c):
    def crashes(**case):
        raise ValueError("boom")
    msg = c.rejects(crashes)
    assert "raised ValueError: boom" in msg and "on " in msg, msg


@every_checker
def test_an_output_of_the_wrong_shape_is_reported(c):
    def wrong_shape(**case):
        out = c.right(**case)
        if isinstance(out, tuple) and not isinstance(out[0], Tensor):
            return (np.array([out[0], out[0]]),) + out[1:]
        if isinstance(out, (Tensor, tuple)):
            return _each_tensor(out, lambda t: t[None], first_only=True)
        return np.array([out, out])
    msg = c.rejects(wrong_shape)
    assert "shape" in msg, msg


@every_checker
def test_a_string_or_a_list_is_reported_as_such(c):
    assert "a string ('0.5')" in c.rejects(lambda **case: "0.5")
    msg = c.rejects(lambda **case: [1.0, 2.0, 3.0, 4.0])     # no checker asks for 4 outputs
    assert "a list of 4 values" in msg, msg
    msg = c.rejects(lambda **case: 1 + 2j)
    assert "complex" in msg, msg


@by_kind("tensor")
def test_complex_and_bool_outputs_are_reported(c):
    msg = c.rejects(lambda **case: _each_tensor(c.right(**case), lambda t: t.to(torch.complex128), first_only=True))
    assert "complex" in msg, msg
    msg = c.rejects(lambda **case: _each_tensor(c.right(**case), lambda t: t > 0, first_only=True))
    assert "torch.bool" in msg, msg


def test_a_tuple_of_the_wrong_length_is_reported():
    msg = rejected(forms.check_chunkwise, lambda **c: forms._chunk_reference(**c) + (None,))
    assert "expected a tuple of 2 tensors, got a tuple of 3 values" in msg
    msg = rejected(derivation.check_rotate, lambda **c: (rotate(**c), 0))
    assert "got a tuple of 2 values" in msg and "return just the one value" in msg


@every_checker
def test_passing_the_result_instead_of_the_function_is_reported(c):
    assert "pass your function itself" in rejected(c.check, torch.zeros(3))


# ------------------------------------------------------------------ 3. the reference comes first
def _zero_inputs_then_right(c: Checker) -> Callable:
    """Zeroes its tensor inputs in place (the float ones, or all if none is a float; a model's weights),
    then returns the right answer for the zeroed inputs: it passes only if the reference saw them too."""
    def answer(**case):
        tensors = [v for v in case.values() if isinstance(v, Tensor)]
        floats = [t for t in tensors if t.is_floating_point()]
        with torch.no_grad():
            for t in floats or tensors:
                t.zero_()
            for v in case.values():
                if isinstance(v, torch.nn.Module):
                    for p in v.parameters():
                        p.zero_()
        return c.right(**case)
    return answer


CHANGES_INPUTS = [c for c in CHECKERS if c.id not in {
    # these take only numbers: nothing to change in place (see the cheats below)
    "check_causal_mask", "check_param_count", "check_half_life_schedule", "check_flop_crossover",
    "check_decode_throughput", "check_kv_cache_bytes", "check_state_bytes", "check_max_batch",
    "check_state_numbers", "check_lr_at"}]


@pytest.mark.parametrize("c", CHANGES_INPUTS, ids=lambda c: c.id)
def test_an_answer_that_zeroes_its_inputs_in_place_fails_and_is_told(c):
    msg = c.rejects(_zero_inputs_then_right(c))
    assert "changed its input" in msg and "in place" in msg, msg


CHEATS = [c for c in CHECKERS if c.cheat] + [
    Checker(attention.check_linear_attention_cumsum, None, "tensor",
            cheat=_patching(attention, "parallel_retention", lambda q, k, v, log_decay: torch.zeros_like(v),
                            lambda q, k, v: torch.zeros_like(v))),
    Checker(derivation.check_retention, None, "tensor",
            cheat=_patching(derivation, "parallel_retention", lambda q, k, v, log_decay: torch.zeros_like(v),
                            lambda x, w_v, **c: torch.zeros(*x.shape[:2], w_v.shape[1], dtype=x.dtype))),
    Checker(limits.check_gate_log_decay, None, "tensor",
            cheat=_patching(limits, "gated_log_decay", lambda z, tau: torch.zeros_like(z),
                            lambda x, w, **c: torch.zeros(x.shape[0], w.shape[1], x.shape[1], dtype=x.dtype))),
    Checker(decay.check_memory, None, "tensor",
            cheat=_patching(decay, "half_life", lambda ld: torch.zeros_like(ld),
                            lambda log_decay, tol: (torch.zeros_like(log_decay), effective_span(log_decay, tol)))),
]


@pytest.mark.parametrize("c", CHEATS, ids=lambda c: c.id)
def test_an_answer_that_changes_what_the_reference_reads_fails(c, monkeypatch):
    """The cheat would pass if the reference were computed after the answer: it is computed first."""
    msg = c.rejects(c.cheat(monkeypatch))
    assert "got" in msg and "expected" in msg, msg


def test_an_answer_that_changes_the_models_weights_fails_and_is_told():
    def zero_weights_then_decode(model, prompt, max_new_tokens):
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return _greedy(model, prompt, max_new_tokens)
    msg = rejected(lambda a: inference.check_greedy_decode(a, n_cases=FEW), zero_weights_then_decode)
    assert "new token" in msg and "changed its input `model` in place" in msg


def test_an_in_place_state_update_with_the_right_result_passes():
    """Changing an input in place is only reported when the answer fails: an in-place update of the state
    (as recurrent_retention(..., inplace=True) does) returns the right values and passes."""
    def in_place(q, k, v, state):
        state += k[..., :, None] * v[..., None, :]
        return (q[..., None, :] @ state)[..., 0, :], state
    assert "correct on all" in passes(attention.check_linear_attention_step, in_place, n_cases=FEW)


# ------------------------------------------------------------------ the shared helpers, property-tested
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


def _check_tensor(answer: Any, want: Tensor, **options) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        compare(lambda: answer, lambda: want, [{}], "check", **options)


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-3, 1.0, 1e3]),
       elementwise=st.booleans())
def test_compare_accepts_float32_and_numpy_and_rejects_1e3_off(shape, seed, scale, elementwise):
    want = scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for answer in (want.float(), want.numpy(), want.float().numpy()):
        _check_tensor(answer, want, elementwise=elementwise)
    if scale == 1.0 and not elementwise:                 # (entry by entry, half's subnormals lose digits)
        _check_tensor(want.half(), want)
    if not shape:                                        # a 0-dim output: Python numbers too
        _check_tensor(want.item(), want)
        _check_tensor(want.float().item(), want)         # .item() of a float32: a float32 number
    off = want.clone().reshape(-1)
    off[int(off.abs().argmax())] *= 1 + 1e-3             # the largest entry, 10x the float32 tolerance
    with pytest.raises(ExerciseError, match="wrong value"):
        _check_tensor(off.reshape(shape).float(), want, elementwise=elementwise)
    with pytest.raises(ExerciseError, match="has shape"):
        _check_tensor(want.float().numpy()[None], want)


@SETTINGS
@given(x=st.floats(-1e30, 1e30, allow_nan=False).filter(lambda x: abs(x) > 1e-2))   # atol 1e-9 below
def test_a_float64_answer_keeps_the_tight_tolerance(x):
    want = torch.tensor(x, dtype=torch.float64)
    with pytest.raises(ExerciseError):
        _check_tensor(torch.tensor(x * (1 + 1e-6), dtype=torch.float64), want)
    _check_tensor(torch.tensor(x * (1 + 1e-9), dtype=torch.float64), want)


@SETTINGS
@given(x=st.floats(-1e30, 1e30, allow_nan=False), integer=st.integers(-2**62, 2**62))
def test_numbers_keep_their_precision(x, integer):
    value, dtype = as_number(float(np.float32(x)), "check")
    assert value == float(np.float32(x))
    assert dtype == (torch.float64 if float(np.float32(x)).is_integer() else torch.float32)
    assert as_number(np.float32(x), "check") == (float(np.float32(x)), torch.float32)
    assert as_number(np.float64(x), "check") == (x, torch.float64)
    assert as_number(torch.tensor(x, dtype=torch.float64), "check") == (x, torch.float64)
    assert as_number(integer, "check") == (integer, torch.int64)
    assert as_number(np.int64(integer), "check") == (integer, torch.int64)


@pytest.mark.parametrize("got, kind", [(None, "returned None"), ("3", "a string ('3')"), ([3], "a list of 1 value"),
                                       ((3, 4), "a tuple of 2 values"), (True, "bool (True)"),
                                       (1 + 2j, "a complex number"), (torch.ones(2), "tensor of shape (2,)"),
                                       (torch.tensor(True), "dtype torch.bool"), (np.array(["a"]), "numpy array")])
def test_as_number_names_what_it_got(got, kind):
    with pytest.raises(ExerciseError, match="check: ") as info:
        as_number(got, "check")
    assert kind in str(info.value)


@SETTINGS
@given(rtol=st.sampled_from([0.0, 1e-12, 1e-7, 1e-3]), atol=st.sampled_from([0.0, 1e-15, 1e-9]),
       scale=st.floats(0, 1e6))
def test_tolerances_follow_the_dtype(rtol, atol, scale):
    assert tolerances(torch.float64, rtol, atol, scale) == (rtol, atol)
    r, a = tolerances(torch.float32, rtol, atol, scale)
    if rtol == atol == 0:
        assert (r, a) == (0, 0)                          # exact stays exact
    else:
        assert r == max(rtol, 1e-4) and a == max(atol, 1e-4 * scale)
        assert tolerances(torch.float16, rtol, atol, scale)[0] >= r


@SETTINGS
@given(want=st.integers(0, 2**60), off=st.integers(1, 1000))
def test_compare_numbers_is_exact_for_counts(want, off):
    def run(answer):
        with contextlib.redirect_stdout(io.StringIO()):
            compare_numbers(lambda: answer, lambda: want, [{}], "check", integer=True)
    run(want)
    run(np.int64(want))
    with pytest.raises(ExerciseError, match="got"):
        run(want + off)
    if want < 2**53:
        run(float(want))


def test_to_tensor_converts_numbers_and_refuses_the_rest():
    assert to_tensor(3).dtype == torch.int64 and to_tensor(0.1).dtype == torch.float64
    assert to_tensor(float(np.float32(0.1))).dtype == torch.float32
    assert to_tensor(np.arange(3, dtype=np.float32)).dtype == torch.float32
    assert all(to_tensor(x) is None for x in (None, "1", [1.0], (1.0,), True, {}, np.array([None])))
