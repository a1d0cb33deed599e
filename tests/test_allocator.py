"""Importing retnet_mini keeps large freed buffers for reuse (glibc): a recurrent step that returns a new
state does not page-fault on fresh memory every call. Counted in page faults, not timed."""
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from retnet_mini import _allocator

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc")

FAULTS_PER_STEP = textwrap.dedent("""
    import resource, torch
    from retnet_mini import RetNetConfig, RetNetLM, _allocator
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = RetNetLM(RetNetConfig.paper(vocab_size=16, d_model=256, n_heads=1, n_layers=2)).eval()
    tokens = torch.zeros(8, 1, dtype=torch.long)
    with torch.no_grad():
        _, state = model(tokens, mode="recurrent")
        for _ in range(3):       # warm up: the first calls map the memory once
            _, state = model(tokens, mode="recurrent", state=state)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(20):      # the public, functional path: a new state per call
            _, state = model(tokens, mode="recurrent", state=state)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(_allocator.kept(), faults / 20, state.nbytes() / resource.getpagesize())
""")


def faults_per_step(opt_out: bool) -> tuple[bool, float, float]:
    env = {k: v for k, v in os.environ.items() if k != _allocator.OPT_OUT}
    if opt_out:
        env[_allocator.OPT_OUT] = "0"
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    return out[0] == "True", float(out[1]), float(out[2])


@glibc
def test_recurrent_steps_reuse_their_memory_instead_of_faulting_it_in():
    kept, faults, state_pages = faults_per_step(opt_out=False)
    assert kept
    # 4 MiB of new state per call (1024 pages per layer): without reuse each page faults once per call
    assert faults < 0.1 * state_pages, (faults, state_pages)
    refused, faults_without, _ = faults_per_step(opt_out=True)
    assert not refused
    assert faults_without > 5 * max(faults, 1.0), (faults, faults_without)   # what the setting saves


def test_keep_freed_memory_checks_its_arguments():
    for bad in (0, -1, 2**31, 1.5, True, "1"):
        with pytest.raises(ValueError, match="mmap_threshold must be an int of bytes"):
            _allocator.keep_freed_memory(mmap_threshold=bad)
    with pytest.raises(ValueError, match="trim_threshold must be an int of bytes"):
        _allocator.keep_freed_memory(trim_threshold=0)


@glibc
def test_keep_freed_memory_is_idempotent():
    assert _allocator.keep_freed_memory() and _allocator.keep_freed_memory() and _allocator.kept()
