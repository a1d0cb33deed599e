"""Benchmarks: decoding, token mixing, achieved FLOP/s, training throughput.

    python -m retnet_mini.bench decode [--quick] [--json out.json] [--device cuda]
    python -m retnet_mini.bench mixing | flops | layer | train | all

Each prints a table and the ratios the project's speed targets are stated in, and can write JSON. Bad
command-line values (an unknown device, CUDA where there is none, a --json path whose folder is missing)
are refused at once, as argparse refuses them, before any benchmark runs. Variants
that are compared are *interleaved* (one call of each in turn, repeated) and summarized by the median, so
a busy, shared machine slows all of them alike and the ratios hold. The model is the paper's design with
vocab 256, d_model 512, 2 heads (key dim 256, value dim 512), 4 layers, against a same-size
``TransformerLM`` (same parameter count within 5%).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _allocator, costs
from ._checks import ArgumentTypeError, check_bool, check_callable, check_int, check_str
from .decay import paper_log_decay
from .layers import MultiScaleRetention
from .model import RetNetConfig, RetNetLM, RetNetState
from .retention import (
    chunkwise_retention,
    parallel_retention,
    recurrent_retention,
    state_dtype,
)
from .transformer import CausalSelfAttention, KVCache, TransformerConfig, TransformerLM

BENCH_CONFIG = dict(vocab_size=256, d_model=512, n_heads=2, n_layers=4)


# ---------------------------------------------------------------------------------------------
# Argument checks: a benchmark takes seconds to minutes, so a bad argument must fail before it starts.
# ---------------------------------------------------------------------------------------------
def check_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` (a string such as ``"cpu"`` or ``"cuda:0"`` is converted) that this
    machine has; a ValueError names it otherwise."""
    if not isinstance(device, (str, torch.device)):
        raise ArgumentTypeError(f"{name} must be a torch.device or a string such as 'cpu' or 'cuda', "
                                f"got {device!r} ({type(device).__name__})")
    try:
        device = torch.device(device)
    except RuntimeError as err:   # torch: "Expected one of cpu, cuda, ... device type at start of ..."
        raise ValueError(f"{name} {device!r} is not a device: {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r}: CUDA is not available on this machine (use 'cpu')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
    elif device.type != "cpu":
        raise ValueError(f"{name} must be a 'cpu' or 'cuda' device for the benchmarks, got {str(device)!r}")
    return device


def _check_run(device: str | torch.device, quick: bool) -> torch.device:
    check_bool("quick", quick)
    return check_device(device)


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                        warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn ``repeats`` times.

    ``fns`` is a non-empty mapping of names to functions of no argument; ``repeats`` an int >= 1,
    ``warmup`` (untimed rounds first) an int >= 0; ``device`` a torch.device or its name.
    """
    if not isinstance(fns, Mapping):
        raise ArgumentTypeError(f"fns must be a dict of name -> function, got {type(fns).__name__}")
    if not fns:
        raise ValueError("fns must hold at least one function to time")
    for name, fn in fns.items():
        check_callable(f"fns[{name!r}]", fn)
    check_int("repeats", repeats, 1)
    check_int("warmup", warmup, 0)
    device = check_device(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def machine_name() -> str:
    """The CPU's model name (``lscpu``'s "Model name", else /proc/cpuinfo's), and the GPU's when one is used
    by default: ratios move between CPU kinds, so every report says which one it measured."""
    name = None
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    if name is None and os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    name = name or "unknown CPU"
    if torch.cuda.is_available():
        name += f"; GPU {torch.cuda.get_device_name()}"
    return name


def _table(title: str, header: list[str], rows: list[list[object]]) -> str:
    cells = [header] + [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _target(name: str, value: float, bound: float, better: str) -> dict:
    ok = value <= bound if better == "lower" else value >= bound
    sign = "<=" if better == "lower" else ">="
    print(f"  target {name}: measured {value:.3f}, wanted {sign} {bound}  -> {'MET' if ok else 'MISSED'}")
    return {"name": name, "measured": value, "bound": bound, "better": better, "met": ok}


def bench_models(device: torch.device, dtype=torch.float32):
    """The paper-design RetNetLM of the benchmarks and the TransformerLM of the same size."""
    device = check_device(device)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentTypeError(f"dtype must be a floating-point torch.dtype such as torch.float32, got {dtype!r}")
    torch.manual_seed(0)
    with torch.inference_mode(False):   # ordinary parameters, as a user's model has (also from bench_decode)
        retnet = RetNetLM(RetNetConfig.paper(**BENCH_CONFIG)).to(device, dtype).eval()
        transformer = TransformerLM.matching(retnet.config).to(device, dtype).eval()
    return retnet, transformer


# ---------------------------------------------------------------------------------------------
# decode: per-token latency against context length.
# ---------------------------------------------------------------------------------------------
def retnet_state_at(model: RetNetLM, batch: int, context: int) -> RetNetState:
    """A state of ``model`` as after ``context`` tokens, for timing a decoding step there (random values: the
    step's cost does not depend on them; a RetNet state has the same size at every context)."""
    if not isinstance(model, RetNetLM):
        raise ArgumentTypeError(f"model must be a RetNetLM, got {type(model).__name__}")
    check_int("batch", batch, 1)
    check_int("context", context, 0)
    g = torch.Generator(device=model.embed.weight.device).manual_seed(0)
    shape = model.blocks[0].retention.state_shape(batch)
    p = model.embed.weight
    return RetNetState([torch.randn(shape, generator=g, device=p.device, dtype=state_dtype(p.dtype)) * 0.01
                        for _ in model.blocks], context)


def kv_cache_at(model: TransformerLM, batch: int, context: int, room: int) -> KVCache:
    """A KV cache of ``model`` as after ``context`` tokens, with room for ``room`` more decoding steps
    (random values), for timing a decoding step there."""
    if not isinstance(model, TransformerLM):
        raise ArgumentTypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    check_int("batch", batch, 1)
    check_int("context", context, 0)
    check_int("room", room, 0)
    cache = model.init_cache(batch, capacity=context + room)
    for buf in (*cache.k, *cache.v):
        buf[:, :, :context].normal_()
    cache.offset = context
    return cache


def decode_floor(model: RetNetLM, device: torch.device, state: RetNetState | None = None) -> Callable[[], None]:
    """A function that multiplies one batch-1 vector through every weight matrix of the model once: no
    decoder that reads all its weights per token can be faster. With ``state`` (one of ``model``'s), each
    layer's state is also decayed in place after its layer's weights (read and written once, as a
    recurrent step must): the floor of a RetNet step, weights and state."""
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    device = check_device(device)
    linears = lambda module: [m.weight.detach() for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if state is None:
        groups = [(linears(model), None)]
    else:
        if not isinstance(model, RetNetLM) or not isinstance(state, RetNetState):
            raise ArgumentTypeError("state needs a RetNetLM model and one of its RetNetState states")
        gammas = [torch.exp(b.retention.fixed_log_decay(s.dtype)).view(-1, 1, 1) if b.retention.decay_proj is None
                  else torch.full((), 0.99, dtype=s.dtype, device=s.device) for b, s in zip(model.blocks, state.layers)]
        groups = [(linears(b), (s, g)) for b, s, g in zip(model.blocks, state.layers, gammas)]
        groups.append(([model.lm_head.weight.detach()], None))
    work = [([(torch.randn(1, w.shape[1], device=device, dtype=w.dtype), w) for w in mats], decay)
            for mats, decay in groups]

    def floor():
        for products, decay in work:
            for x, w in products:
                F.linear(x, w)
            if decay is not None:
                decay[0].mul_(decay[1])
    return floor


@torch.inference_mode()   # as generate() decodes; the floor below is timed in the same mode
def bench_decode(device: torch.device, quick: bool = False) -> dict:
    device = _check_run(device, quick)
    retnet, transformer = bench_models(device)
    contexts = [128, 1024, 4096] if quick else [128, 512, 2048, 8192, 16384]
    steps, repeats = (4, 3) if quick else (8, 7)
    results = {"contexts": contexts, "rows": [], "targets": []}
    print(f"decode on {device}: RetNetLM {retnet.num_parameters():,} params (recurrent form), "
          f"TransformerLM {transformer.num_parameters():,} params (KV cache); {steps} tokens per timing")
    rows, public_ms, hi = [], {}, contexts[-1]
    at = 8192 if 8192 in contexts else hi   # the context of the public path's target
    for batch in (1, 8):
        # Every context of both models is timed in one round-robin, so a slow spell of the machine hits all
        # of them alike: the ratios between contexts (flatness) hold as well as those between the models.
        token = torch.zeros(batch, 1, dtype=torch.long, device=device)
        states = {ctx: retnet_state_at(retnet, batch, ctx) for ctx in contexts}
        caches = {ctx: kv_cache_at(transformer, batch, ctx, steps) for ctx in contexts}

        def retnet_steps(ctx):           # as generate() decodes: the public step, the state moved on in place
            for _ in range(steps):
                retnet.step(token, states[ctx], check=False)

        def transformer_steps(ctx):
            caches[ctx].offset = ctx         # rewind: every timing decodes at the same context
            for _ in range(steps):
                transformer.step(token, caches[ctx], check=False)
        public = {"state": retnet_state_at(retnet, batch, at)}

        def public_steps():   # the functional public path without autograd (as bench_decode runs, or under
            # torch.no_grad()): a new state per call, the arguments checked. (With autograd on, each new
            # state keeps the graph of the earlier calls, and with it their states: that is what a backward
            # pass through the decoding needs, 32 MiB more per token at batch 8 here.)
            for _ in range(steps):
                _, public["state"] = retnet(token, mode="recurrent", state=public["state"])
        fns = {}
        for ctx in contexts:
            fns[f"retnet {ctx}"] = lambda ctx=ctx: retnet_steps(ctx)
            fns[f"transformer {ctx}"] = lambda ctx=ctx: transformer_steps(ctx)
        fns[f"retnet public {at}"] = public_steps
        med = interleaved_medians(fns, repeats, device)
        public_ms[batch] = med[f"retnet public {at}"] / steps * 1e3
        public.clear()
        for ctx in contexts:
            r_ms, t_ms = med[f"retnet {ctx}"] / steps * 1e3, med[f"transformer {ctx}"] / steps * 1e3
            caches[ctx].offset = ctx
            row = dict(batch=batch, context=ctx, retnet_ms=r_ms, transformer_ms=t_ms, speedup=t_ms / r_ms,
                       retnet_tok_s=batch * 1e3 / r_ms, transformer_tok_s=batch * 1e3 / t_ms,
                       retnet_state_bytes=states[ctx].nbytes(), transformer_cache_bytes=caches[ctx].nbytes())
            results["rows"].append(row)
            rows.append([batch, ctx, r_ms, t_ms, row["speedup"], row["retnet_tok_s"], row["transformer_tok_s"],
                         f"{row['retnet_state_bytes'] / 2**20:.1f}", f"{row['transformer_cache_bytes'] / 2**20:.1f}"])
        states.clear()                     # free this batch's states and caches before the next
        caches.clear()
    # The floor and the step at the shortest context, interleaved: both then read the weights under the
    # same cache conditions (in the table above the step alternates with the Transformer's).
    lo = contexts[0]
    state, token = retnet_state_at(retnet, 1, lo), torch.zeros(1, 1, dtype=torch.long, device=device)

    def retnet_step():
        retnet.step(token, state, check=False)
    floors = {"floor": decode_floor(retnet, device),
              "floor with state": decode_floor(retnet, device, retnet_state_at(retnet, 1, lo))}
    med = interleaved_medians({"step": retnet_step, **floors}, 31, device)
    floor_ms, step_ms, state_floor_ms = med["floor"] * 1e3, med["step"] * 1e3, med["floor with state"] * 1e3
    print(_table("", ["batch", "context", "retnet ms/tok", "transf ms/tok", "speedup", "retnet tok/s",
                      "transf tok/s", "state MiB", "cache MiB"], rows))
    results["floor_ms"], results["floor_step_ms"], results["state_floor_ms"] = floor_ms, step_ms, state_floor_ms
    by = {(r["batch"], r["context"]): r for r in results["rows"]}
    results["public_ms"] = public_ms
    for batch, ms in public_ms.items():
        print(f"  batch {batch}, context {at}: model(token, mode='recurrent', state=state), a new state per call: "
              f"{ms:.3f} ms/token = {ms / by[(batch, at)]['retnet_ms']:.3f} of step's in place (which writes "
              f"the state where it is read; a new state is written to other memory); "
              f"{by[(batch, at)]['transformer_ms'] / ms:.2f}x the Transformer's tokens/s")
    print(f"  weight floor (one batch-1 vector through every weight matrix): {floor_ms:.3f} ms; with each layer's "
          f"state read and written once: {state_floor_ms:.3f} ms; interleaved with them, a RetNet step at "
          f"context {lo}: {step_ms:.3f} ms ({step_ms / state_floor_ms:.3f} of the floor with state)")
    ctx_t = by[(1, at)]["transformer_ms"]
    print(f"  batch 1, context {at}: the Transformer's step takes {ctx_t:.3f} ms, so a RetNet step at the floor "
          f"with state would be {ctx_t / state_floor_ms:.2f}x faster; the step is {ctx_t / step_ms:.2f}x")
    t = results["targets"]
    t.append(_target(f"retnet latency ctx {hi} / ctx {lo} (batch 1)",
                     by[(1, hi)]["retnet_ms"] / by[(1, lo)]["retnet_ms"], 1.15, "lower"))
    if not quick:
        t.append(_target("speedup vs KV cache, batch 1, ctx 8192", by[(1, 8192)]["speedup"], 2.5, "higher"))
        t.append(_target("speedup vs KV cache, batch 1, ctx 16384", by[(1, 16384)]["speedup"], 3.0, "higher"))
        t.append(_target("tokens/s ratio, batch 8, ctx 8192 (step)", by[(8, 8192)]["speedup"], 5.0, "higher"))
        t.append(_target("tokens/s ratio, batch 8, ctx 8192 (public model(..., state=s))",
                         by[(8, 8192)]["transformer_ms"] / public_ms[8], 5.0, "higher"))
    t.append(_target(f"retnet step / weight floor (batch 1, ctx {lo})", step_ms / floor_ms, 1.5, "lower"))
    return results


# ---------------------------------------------------------------------------------------------
# mixing: the token-mixing functions alone, time and peak memory against T.
# ---------------------------------------------------------------------------------------------
MIXING_SHAPE = dict(B=1, H=2, d_k=256, d_v=512)


def mixing_inputs(T: int, device: torch.device):
    """Seeded ``q, k, v, log_decay`` of the mixing benchmarks' shape at length ``T`` (an int >= 1)."""
    check_int("T", T, 1)
    device = check_device(device)
    s = MIXING_SHAPE
    g = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(s["B"], s["H"], T, s["d_k"], generator=g, device=device) * s["d_k"] ** -0.25 for _ in range(2))
    v = torch.randn(s["B"], s["H"], T, s["d_v"], generator=g, device=device)
    return q, k, v, paper_log_decay(s["H"], torch.float32).to(device)


def _mixing_fns(T: int, device: torch.device, chunk_sizes) -> dict[str, Callable[[], object]]:
    q, k, v, ld = mixing_inputs(T, device)
    fns = {f"chunkwise C={c}": (lambda c=c: chunkwise_retention(q, k, v, ld, c)) for c in chunk_sizes}
    if T <= 8192:
        fns["parallel"] = lambda: parallel_retention(q, k, v, ld)
    fns["sdpa attention"] = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if T <= 4096 or device.type == "cuda":
        fns["recurrent"] = lambda: recurrent_retention(q, k, v, ld)
    return fns


def mixing_counts(form: str, T: int) -> dict[str, int] | None:
    """What :mod:`retnet_mini.costs` counts for a retention form of the mixing benchmark at length ``T``, all
    heads of the batch: ``{"flops", "held_bytes"}`` (the numbers held besides q, k, v and the output, in
    float32; ``"chunkwise C=<c>"`` is ``chunkwise_retention`` as written, all whole chunks at once). None for
    a form that is not retention (SDPA attention)."""
    check_str("form", form)
    check_int("T", T, 1)
    s = MIXING_SHAPE
    if form.startswith("chunkwise C="):
        c = int(form[len("chunkwise C="):])
        flops, held = costs.chunkwise_flops(T, s["d_k"], s["d_v"], c), \
            costs.memory_numbers("chunkwise, batched", T, s["d_k"], s["d_v"], c)
    elif form in ("parallel", "recurrent"):
        flops = costs.form_costs(T, 1, s["d_k"], s["d_v"])[form]["flops"]
        held = costs.memory_numbers(form, T, s["d_k"], s["d_v"])
    else:
        return None
    n = s["B"] * s["H"]
    return {"flops": n * flops, "held_bytes": n * costs.numbers_to_bytes(held, "float32")}


def peak_call_bytes(setup: str, call: str, device: torch.device) -> int:
    """Peak memory that ``call`` allocates beyond what ``setup`` left allocated (both Python source run
    with ``torch``, ``F`` and this module's names in scope).

    CUDA: the allocator's peak statistics. CPU (Linux): in a fresh interpreter that runs the call twice,
    the peak resident size of the second call (``VmHWM``, reset just before it through
    ``/proc/self/clear_refs``) minus the resident size before it; the first call loads the kernels'
    code, which then stays resident.
    """
    check_str("setup", setup, empty=True)
    check_str("call", call)
    device = check_device(device)
    if device.type == "cuda":
        scope = dict(globals(), device=device)
        exec(setup, scope)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        exec(call, scope)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    script = ("import torch\n"
              "import torch.nn.functional as F\n"
              "from retnet_mini.bench import *\n"
              "device = torch.device('cpu')\n"
              f"{setup}\n"
              f"{call}\n"        # once to load the kernels' code and warm caches; its memory is then freed
              "status = lambda key: int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith(key)))\n"
              "open('/proc/self/clear_refs', 'w').write('5')\n"   # reset the peak (VmHWM) to the current size
              "resident = status('VmRSS:')\n"
              f"{call}\n"
              "print((status('VmHWM:') - resident) * 1024)")     # kB
    # A fixed, low mmap threshold makes glibc return every large freed block at once, so the resident size
    # follows the live tensors; the package's own setting (keep freed memory for reuse) is refused there.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", **{_allocator.OPT_OUT: "0"})
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


@torch.no_grad()
def bench_mixing(device: torch.device, quick: bool = False) -> dict:
    device = _check_run(device, quick)
    lengths = [512, 2048, 4096] if quick else [512, 2048, 8192, 16384]
    chunk_sizes = [64, 256] if quick else [64, 128, 256, 512]
    print(f"mixing on {device}: B, H, d_k, d_v = {tuple(MIXING_SHAPE.values())}; median ms per call")
    results = {"rows": []}
    names = None
    for T in lengths:
        fns = _mixing_fns(T, device, chunk_sizes)
        med = interleaved_medians(fns, 3 if T >= 8192 else 5, device)
        names = names or list(fns)
        for name, sec in med.items():
            results["rows"].append(dict(T=T, form=name, ms=sec * 1e3))
    memory_forms = {"chunkwise C=256": "chunkwise_retention(q, k, v, ld, 256)",
                    "parallel": "parallel_retention(q, k, v, ld)",
                    "sdpa attention": "F.scaled_dot_product_attention(q, k, v, is_causal=True)",
                    "recurrent": "recurrent_retention(q, k, v, ld)"}
    for r in results["rows"]:
        if r["form"] in memory_forms:
            setup = f"q, k, v, ld = mixing_inputs({r['T']}, device)"
            r["peak_mib"] = peak_call_bytes(setup, f"with torch.no_grad(): {memory_forms[r['form']]}", device) / 2**20
    for r in results["rows"]:      # the cost model next to the measurements: achieved rate, memory counted
        counted = mixing_counts(r["form"], r["T"])
        if counted is not None:
            r["gflops"] = counted["flops"] / (r["ms"] / 1e3) / 1e9
            r["counted_mib"] = counted["held_bytes"] / 2**20
    rows = [[r["T"], r["form"], r["ms"], f"{r['gflops']:.1f}" if "gflops" in r else "-",
             f"{r['peak_mib']:.1f}" if "peak_mib" in r else "-",
             f"{r['counted_mib']:.1f}" if "counted_mib" in r else "-"] for r in results["rows"]]
    print(_table("", ["T", "form", "ms", "GFLOP/s", "peak MiB", "counted MiB"], rows))
    print("  GFLOP/s and counted MiB (held besides q, k, v and the output) from retnet_mini.costs")
    return results


# ---------------------------------------------------------------------------------------------
# flops: achieved GFLOP/s of chunkwise retention against torch.mm. The FLOPs are retnet_mini.costs's count
# (per head and sequence, times B * H), the one the chapters print; torch.mm's are 2 n^3, the same convention.
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def bench_flops(device: torch.device, quick: bool = False) -> dict:
    device = _check_run(device, quick)
    s = MIXING_SHAPE
    T = 4096 if quick else 8192
    chunk_sizes = [64, 128, 256, 512, 1024]
    g = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(s["B"], s["H"], T, s["d_k"], generator=g, device=device) for _ in range(2))
    v = torch.randn(s["B"], s["H"], T, s["d_v"], generator=g, device=device)
    ld = paper_log_decay(s["H"], torch.float32).to(device)
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    fns = {"mm": lambda: torch.mm(a, b)}
    fns.update({f"C={c}": (lambda c=c: chunkwise_retention(q, k, v, ld, c)) for c in chunk_sizes})
    med = interleaved_medians(fns, 3 if quick else 7, device)
    mm_gflops = 2 * n ** 3 / med["mm"] / 1e9
    rows, results = [], {"mm_gflops": mm_gflops, "T": T, "rows": []}
    for c in chunk_sizes:
        gf = s["B"] * s["H"] * costs.chunkwise_flops(T, s["d_k"], s["d_v"], c) / med[f"C={c}"] / 1e9
        results["rows"].append(dict(chunk=c, ms=med[f"C={c}"] * 1e3, gflops=gf, fraction_of_mm=gf / mm_gflops))
        rows.append([c, med[f"C={c}"] * 1e3, gf, gf / mm_gflops])
    print(f"flops on {device}: chunkwise_retention at T={T}, B, H, d_k, d_v = {tuple(s.values())}; "
          f"torch.mm {n}x{n}: {mm_gflops:.1f} GFLOP/s")
    print(_table("", ["chunk", "ms", "GFLOP/s", "of mm"], rows))
    best = max(results["rows"], key=lambda r: r["fraction_of_mm"])
    default = costs.default_chunk_size(T, s["d_k"], s["d_v"])
    at_default = next(r for r in results["rows"] if r["chunk"] == default)
    print(f"  the default chunk for these heads (retnet_mini.costs.default_chunk_size): {default}, "
          f"{at_default['fraction_of_mm']:.3f} of mm")
    results["targets"] = [_target(f"chunkwise GFLOP/s / mm GFLOP/s (best chunk {best['chunk']})",
                                  best["fraction_of_mm"], 0.8, "higher")]
    return results


# ---------------------------------------------------------------------------------------------
# layer: a multi-scale retention layer (chunkwise) against a same-size SDPA attention layer.
# ---------------------------------------------------------------------------------------------
def bench_layers(device: torch.device):
    """The multi-scale retention layer and the same-size SDPA attention layer of the layer benchmark."""
    device = check_device(device)
    torch.manual_seed(0)
    msr = MultiScaleRetention(RetNetConfig.paper(**BENCH_CONFIG)).to(device).eval()
    attn = CausalSelfAttention(TransformerConfig(vocab_size=256, d_model=512, n_heads=2)).to(device).eval()
    return msr, attn


@torch.no_grad()
def bench_layer(device: torch.device, quick: bool = False) -> dict:
    device = _check_run(device, quick)
    T = 2048 if quick else 8192
    msr, attn = bench_layers(device)
    x = torch.randn(1, T, 512, device=device)
    chunk = msr.chunk_size_for(T)      # what the layer uses when no chunk size is given
    # Two parts of the retention layer timed alone as well: its five projections, and the chunkwise
    # function on inputs of the layer's shapes. Their sum is what the layer costs with zero overhead.
    g = torch.Generator(device=device).manual_seed(0)
    q, k = (torch.randn(1, msr.n_heads, T, msr.key_dim, generator=g, device=device) for _ in range(2))
    v = torch.randn(1, msr.n_heads, T, msr.value_dim, generator=g, device=device)
    gated = torch.randn(1, T, msr.n_heads * msr.value_dim, generator=g, device=device)

    def projections():
        for proj in (msr.q_proj, msr.k_proj, msr.v_proj, msr.g_proj):
            proj(x)
        msr.out_proj(gated)
    fns = {"msr chunkwise": lambda: msr(x, mode="chunkwise"),
           "attention (sdpa)": lambda: attn(x, attn_theta(attn, device), None, None, 0),
           "msr projections alone": projections,
           "chunkwise_retention alone": lambda: chunkwise_retention(q, k, v, msr.log_decay, chunk)}
    med = interleaved_medians(fns, 3 if quick else 5, device)
    print(f"layer on {device}: d_model 512, 2 heads, T={T}, chunk {chunk} (the default)")
    print(_table("", ["layer", "ms"], [[n, s * 1e3] for n, s in med.items()]))
    results = {"T": T, "ms": {n: s * 1e3 for n, s in med.items()}, "targets": []}
    products = med["msr projections alone"] + med["chunkwise_retention alone"]
    print(f"  projections + chunkwise alone: {products * 1e3:.1f} ms = {products / med['attention (sdpa)']:.3f} of the "
          f"attention layer (the layer's other work: {(med['msr chunkwise'] - products) * 1e3:.1f} ms)")
    results["targets"].append(_target("msr time / attention time", med["msr chunkwise"] / med["attention (sdpa)"],
                                      0.5, "lower"))
    if not quick:
        peaks = {T_: peak_call_bytes(f"msr, _ = bench_layers(device); x = torch.randn(1, {T_}, 512, device=device)",
                                     "with torch.no_grad(): msr(x, mode='chunkwise')", device)
                 for T_ in (8192, 16384)}
        results["peak_bytes"] = peaks
        print(f"  msr peak memory: T=8192 {peaks[8192] / 2**20:.1f} MiB, T=16384 {peaks[16384] / 2**20:.1f} MiB")
        results["targets"].append(_target("msr peak memory T=16384 / T=8192", peaks[16384] / peaks[8192], 2.2, "lower"))
    return results


def attn_theta(attn: CausalSelfAttention, device: torch.device):
    if not isinstance(attn, CausalSelfAttention):
        raise ArgumentTypeError(f"attn must be a CausalSelfAttention, got {type(attn).__name__}")
    from .rotation import rope_theta
    return rope_theta(attn.head_dim).to(device)


# ---------------------------------------------------------------------------------------------
# train: tokens per second of a training step.
# ---------------------------------------------------------------------------------------------
def bench_train(device: torch.device, quick: bool = False) -> dict:
    """Training tokens/s with AdamW, RetNet (chunkwise) over the same-size Transformer (SDPA).

    ``mode="chunkwise"`` with no chunk size (the default rule, :func:`retnet_mini.costs.default_chunk_size`)
    is the number a user gets; the chunk sizes next to it (half and double, up to T) and, at short T, the
    parallel form are timed in the same round-robin, so the best setting is printed next to the default."""
    device = _check_run(device, quick)
    retnet, transformer = bench_models(device)
    retnet.train(), transformer.train()
    opt_r = torch.optim.AdamW(retnet.parameters(), lr=1e-4)
    opt_t = torch.optim.AdamW(transformer.parameters(), lr=1e-4)
    results = {"rows": [], "targets": []}
    rows = []
    shapes = [(512, 2)] if quick else [(2048, 1), (2048, 2), (2048, 4), (512, 8)]
    for T, batch in shapes:
        x = torch.randint(0, 256, (batch, T + 1), device=device)

        def step(model, opt, **kw):
            def run():
                logits, _ = model(x[:, :-1], **kw)
                loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return run
        default = retnet.chunk_size_for(T)
        fns = {"transformer (sdpa)": step(transformer, opt_t),
               f"retnet chunkwise, default (C={default})": step(retnet, opt_r, mode="chunkwise")}
        if T <= 512:         # (at T = 2048 the parallel form's T x T scores make it the slowest by far)
            fns["retnet parallel"] = step(retnet, opt_r, mode="parallel")
        fns.update({f"retnet chunkwise C={c}": step(retnet, opt_r, mode="chunkwise", chunk_size=c)
                    for c in (default // 2, default * 2) if 16 <= c <= T})
        med = interleaved_medians(fns, 2 if quick else 3, device)
        base = med["transformer (sdpa)"]
        for name, sec in med.items():
            ratio = base / sec
            results["rows"].append(dict(T=T, batch=batch, model=name, tokens_per_s=batch * T / sec,
                                        vs_transformer=ratio))
            rows.append([T, batch, name, batch * T / sec, ratio])
        retnets = {n: base / sec for n, sec in med.items() if n.startswith("retnet chunkwise")}
        best = max(retnets, key=retnets.get)
        wanted = 1.0 if T >= 2048 else 0.9   # at T = 512 attention's T^2 is small: within 10%
        results["targets"].append(_target(
            f"train tokens/s, chunkwise default C={default} / transformer, T={T}, batch {batch} "
            f"(best: {best.split(', ')[-1].replace('retnet chunkwise ', '')} at {retnets[best]:.3f})",
            retnets[f"retnet chunkwise, default (C={default})"], wanted, "higher"))
    print(f"train on {device}: AdamW step, {retnet.num_parameters():,} vs {transformer.num_parameters():,} params")
    print(_table("", ["T", "batch", "model", "tokens/s", "/ transformer"], rows))
    return results


BENCHMARKS = {"decode": bench_decode, "mixing": bench_mixing, "flops": bench_flops, "layer": bench_layer,
              "train": bench_train}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m retnet_mini.bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (seconds, for tests and the book)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    try:
        device = check_device(args.device, "--device")
    except ValueError as err:
        parser.error(str(err))
    if args.json:      # checked now: a typo in the folder must not cost the whole run
        folder = Path(args.json).resolve().parent
        if Path(args.json).is_dir():
            parser.error(f"--json {args.json!r} is a folder; give a file name")
        if not folder.is_dir():
            parser.error(f"--json {args.json!r}: the folder {str(folder)!r} does not exist")
        if not os.access(folder, os.W_OK):
            parser.error(f"--json {args.json!r}: the folder {str(folder)!r} is not writable")
    names = list(BENCHMARKS) if args.name == "all" else [args.name]
    results = {"device": str(device), "machine": machine_name(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "allocator_kept": _allocator.kept()}
    print(f"retnet_mini.bench on {results['machine']}, {device}, torch {torch.__version__}, "
          f"{results['threads']} threads; large freed buffers kept for reuse: {results['allocator_kept']}\n")
    for name in names:
        t0 = time.perf_counter()
        results[name] = BENCHMARKS[name](device, quick=args.quick)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
