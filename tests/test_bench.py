"""The benchmark helpers measure what they say (the benchmarks themselves run from the command line)."""
import torch

from retnet_mini import costs
from retnet_mini.bench import (
    BENCHMARKS,
    MIXING_SHAPE,
    interleaved_medians,
    main,
    mixing_counts,
    mixing_inputs,
    peak_call_bytes,
)


def test_mixing_counts_are_the_cost_models():
    B, H, dk, dv = (MIXING_SHAPE[k] for k in ("B", "H", "d_k", "d_v"))
    c = mixing_counts("chunkwise C=64", 1000)
    assert c["flops"] == B * H * costs.chunkwise_flops(1000, dk, dv, 64)
    assert c["held_bytes"] == 4 * B * H * costs.memory_numbers("chunkwise, batched", 1000, dk, dv, 64)
    assert mixing_counts("parallel", 100) == {"flops": B * H * costs.parallel_flops(100, dk, dv),
                                              "held_bytes": 4 * B * H * 2 * 100 * 100}
    assert mixing_counts("recurrent", 100)["flops"] == B * H * costs.recurrent_flops(100, dk, dv)
    assert mixing_counts("sdpa attention", 100) is None


def test_interleaved_medians_calls_each_in_turn():
    calls = []
    med = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3,
                              torch.device("cpu"), warmup=1)
    assert calls == ["a", "b"] * 4 and set(med) == {"a", "b"} and all(t >= 0 for t in med.values())


def test_peak_call_bytes_sees_an_allocation():
    peak = peak_call_bytes("pass", "torch.ones(64, 2**20).sum()", torch.device("cpu"))   # a 256 MiB temporary
    assert 250 * 2**20 < peak < 512 * 2**20


def test_mixing_inputs_are_seeded():
    a, b = mixing_inputs(16, torch.device("cpu")), mixing_inputs(16, torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (1, 2, 16, 256) and a[2].shape == (1, 2, 16, 512)


def test_cli_lists_every_benchmark(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in BENCHMARKS)


def test_layer_benchmark_reports_its_parts(tmp_path, capsys):
    out = tmp_path / "layer.json"
    results = main(["layer", "--quick", "--json", str(out)])["layer"]
    ms = results["ms"]
    assert set(ms) == {"msr chunkwise", "attention (sdpa)", "msr projections alone", "chunkwise_retention alone"}
    assert all(t > 0 for t in ms.values())
    assert [t["name"] for t in results["targets"]] == ["msr time / attention time"]
    assert "projections + chunkwise alone" in capsys.readouterr().out and out.exists()
