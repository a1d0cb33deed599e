"""The benchmark helpers measure what they say (the benchmarks themselves run from the command line)."""
import torch

from retnet_mini.bench import (
    BENCHMARKS,
    chunkwise_flops,
    interleaved_medians,
    main,
    mixing_inputs,
    peak_call_bytes,
)


def test_chunkwise_flops_counts_the_four_products():
    B, H, T, dk, dv, C = 1, 2, 8, 3, 5, 4
    # per position: a C-wide row of q k^T (C*dk), its product with v (C*dv), q S (dk*dv), k^T v (dk*dv)
    assert chunkwise_flops(B, H, T, dk, dv, C) == 2 * B * H * T * (C * dk + C * dv + 2 * dk * dv)


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
