"""retnet_mini.claims (the checked statements about run results) and scripts/claim_spread.py."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import nbformat
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retnet_mini import claims
from retnet_mini.claims import ClaimError, claim, claim_true

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def fresh_claims():
    claims.reset()
    yield
    claims.reset()


def _load_spread():
    spec = importlib.util.spec_from_file_location("claim_spread", ROOT / "scripts" / "claim_spread.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_claim_that_holds_prints_value_and_bound_and_returns_the_value(capsys):
    assert claim("loss below the bar", 1.58853, at_most=2.6341) == 1.58853
    assert capsys.readouterr().out == "claim holds: loss below the bar: 1.5885 (bound: <= 2.6341)\n"
    claim("accuracy in range", 0.5, at_least=0.25, at_most=0.75)
    assert "(bound: between 0.2500 and 0.7500)" in capsys.readouterr().out


def test_tiny_values_and_bounds_are_shown_in_scientific_notation(capsys):
    claim("round-off", 5.7e-06, at_most=1e-4)
    assert capsys.readouterr().out == "claim holds: round-off: 5.70e-06 (bound: <= 1.00e-04)\n"


def test_a_broken_claim_raises_with_statement_value_and_bound(capsys):
    with pytest.raises(ClaimError, match=r"claim broken: the model learns: measured 3\.1000, expected >= 4\.0000"):
        claim("the model learns", 3.1, at_least=4.0)
    assert capsys.readouterr().out == "claim FAILS: the model learns: 3.1000 (bound: >= 4.0000)\n"


def test_claim_error_is_an_assertion_error():
    assert issubclass(ClaimError, AssertionError)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_finite_breaks_every_bound(value):
    with pytest.raises(ClaimError):
        claim("finite", value, at_least=-1e300, at_most=1e300)
    with pytest.raises(ClaimError):
        claim("finite", value, at_most=1e300)


def test_record_only_records_failures_without_raising_and_reset_restores_raising():
    claims.record_only()
    claim("holds", 1.0, at_least=0.0)
    claim("fails", -1.0, at_least=0.0)
    assert not claim_true("also fails", False)
    assert [(c["statement"], c["holds"]) for c in claims.recorded()] == [
        ("holds", True), ("fails", False), ("also fails", False)]
    assert json.loads(json.dumps(claims.recorded()))[1]["value"] == -1.0   # plain JSON for the script
    claims.reset()
    assert claims.recorded() == []
    with pytest.raises(ClaimError):
        claim("fails", -1.0, at_least=0.0)


def test_claim_true(capsys):
    assert claim_true("same tokens", True) is True
    assert capsys.readouterr().out == "claim holds: same tokens: yes\n"
    with pytest.raises(ClaimError, match="same tokens: measured no, expected yes"):
        claim_true("same tokens", False)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(statement="x", value=1.0), ValueError, "give at_least, at_most or both"),
    (dict(statement="x", value=1.0, at_least=2.0, at_most=1.0), ValueError, r"at_least \(2.0\) is above at_most"),
    (dict(statement="x", value=1.0, at_most=math.nan), ValueError, "at_most must be finite"),
    (dict(statement="", value=1.0, at_most=2.0), ValueError, "non-empty string"),
    (dict(statement="x", value="1.0", at_most=2.0), TypeError, "value must be a real number, got str"),
    (dict(statement="x", value=True, at_most=2.0), TypeError, "value must be a real number, got bool"),
    (dict(statement="x", value=torch.tensor([1.0, 2.0]), at_most=2.0), TypeError, "got Tensor"),
    (dict(statement="x", value=1.0, at_least="0"), TypeError, "at_least must be a real number"),
])
def test_malformed_claims_are_refused_clearly(kwargs, error, message):
    with pytest.raises(error, match=message):
        claim(kwargs.pop("statement"), kwargs.pop("value"), **kwargs)
    assert claims.recorded() == []


def test_claim_true_wants_a_bool():
    with pytest.raises(TypeError, match="condition must be a bool, got Tensor"):
        claim_true("equal", torch.tensor([True, False]))


def test_numpy_and_torch_scalars_are_accepted():
    import numpy as np

    assert claim("numpy", np.float32(0.5), at_most=1) == 0.5
    assert claim("python int", 3, at_least=3) == 3.0


finite = st.floats(-1e6, 1e6, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(value=finite, lo=st.one_of(st.none(), finite), hi=st.one_of(st.none(), finite))
def test_holds_exactly_when_the_value_is_within_the_bounds(value, lo, hi):
    if lo is None and hi is None or lo is not None and hi is not None and lo > hi:
        return
    inside = (lo is None or value >= lo) and (hi is None or value <= hi)
    claims.record_only()
    claim("in bounds", value, at_least=lo, at_most=hi)
    assert claims.recorded()[-1]["holds"] is inside


# ------------------------------------------------------------------ scripts/claim_spread.py

def test_spread_table_reports_range_margin_and_held_count():
    spread = _load_spread()
    c = lambda v, holds: {"statement": "loss", "value": v, "at_least": None, "at_most": 2.0, "holds": holds}
    runs = [{"seed": 0, "seconds": 10.0, "claims": [c(1.5, True)]},
            {"seed": 1, "seconds": 12.0, "claims": [c(2.5, False), c(1.0, True)]}]
    text = spread.table(runs, "x.ipynb")
    assert "seeds 0, 1; 10-12 s per run" in text
    assert "| loss | <= 2.0000 | 1.5000 | 2.5000 | -0.5000 | 1/2 |" in text
    assert "| loss #2 | <= 2.0000 | 1.0000 | 1.0000 | 1.0000 | 1/1 (not in every run) |" in text


def test_spread_table_escapes_pipes_in_statements():
    spread = _load_spread()
    runs = [{"seed": 0, "seconds": 1.0, "claims": [
        {"statement": "|a - b|", "value": 0.01, "at_least": None, "at_most": 0.1, "holds": True}]}]
    row = spread.table(runs, "x").splitlines()[-1]
    assert row.startswith("| \\|a - b\\| | <= 0.1000 |") and row.count(" | ") == 5


def test_spread_script_reruns_a_notebook_with_each_seed(tmp_path, capsys):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("SEED = 0")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from retnet_mini.claims import claim\nclaim('the seed is at most 1', SEED, at_most=1)")]
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    spread = _load_spread()
    status = spread.main([str(path), "--seeds", "0", "3", "--jobs", "2", "--out", str(tmp_path / "t.md"),
                          "--json", str(tmp_path / "t.json")])
    assert status == 1                                     # seed 3 breaks the claim: reported, not hidden
    table = (tmp_path / "t.md").read_text()
    assert "| the seed is at most 1 | <= 1.0000 | 0.0000 | 3.0000 | -2.0000 | 1/2 |" in table
    runs = json.loads((tmp_path / "t.json").read_text())["runs"]
    assert [r["claims"][0]["value"] for r in runs] == [0.0, 3.0]
    assert path.read_text() == before                      # the notebook itself is never written


def test_spread_script_needs_one_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("SEED = 0")]
    nbformat.write(nb, tmp_path / "x.ipynb")
    with pytest.raises(SystemExit, match="exactly one code cell tagged 'parameters'"):
        _load_spread().main([str(tmp_path / "x.ipynb")])
