"""Guards on the committed notebooks (cheap, no kernel; nbval re-runs them, see `make nbval`).

nbval only compares cells that have a stored execution count, so an unexecuted notebook would pass it
silently: these tests make sure every notebook in book/ is fully executed, in order, without errors, with
its hidden Colab install cell first, normalized as scripts/regen_notebooks.py writes it, and listed in
_toc.yml (and that every _toc.yml entry exists).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PAGES = sorted(p for p in BOOK.glob("*.md"))


def _load_regen():
    spec = importlib.util.spec_from_file_location("regen_notebooks", ROOT / "scripts" / "regen_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regen = _load_regen()


def toc_files(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Every `file:` (and the root) in _toc.yml, in order, without suffix."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)

    walk(toc)
    return [str(Path(f).with_suffix("")) if Path(f).suffix in (".ipynb", ".md") else f for f in files]


def _id(path: Path) -> str:
    return path.name


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in book/"


def test_toc_root_is_the_intro():
    assert toc_files()[0] == "book/intro"


def test_every_notebook_and_page_is_in_the_toc():
    listed = set(toc_files())
    missing = [str(p.relative_to(ROOT)) for p in NOTEBOOKS + PAGES if str(p.relative_to(ROOT).with_suffix("")) not in listed]
    assert not missing, f"in book/ but not in _toc.yml: {missing}"


def test_every_toc_entry_exists_once():
    entries = toc_files()
    assert len(entries) == len(set(entries)), f"listed twice in _toc.yml: {entries}"
    for entry in entries:
        candidates = [ROOT / f"{entry}.ipynb", ROOT / f"{entry}.md"]
        assert sum(c.is_file() for c in candidates) == 1, f"_toc.yml lists {entry}: expected exactly one of {candidates}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_code_cells_executed_in_order_without_errors(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name}: no code cells"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts}; run scripts/regen_notebooks.py {path.relative_to(ROOT)}")
    for i, cell in enumerate(code, start=1):
        assert cell.source.strip(), f"{path.name}: code cell {i} is empty"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" not in cell.metadata.get("tags", []):
            assert not errors, f"{path.name}: code cell {i} has an error output: {errors[0].get('ename')}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_first_cell_installs_the_package_in_colab_only(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    expected = regen.colab_cell_source(regen.repository_url())
    assert first.cell_type == "code" and first.source == expected, (
        f"{path.name}: the first cell must be the Colab install cell (scripts/regen_notebooks.py writes it)")
    assert "remove-cell" in first.metadata.get("tags", []), f"{path.name}: the Colab cell must be tagged remove-cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebook_is_stored_as_the_regeneration_script_writes_it(path):
    """Normalized (merged streams, stable widget ids, no volatile metadata): saved by the script, not an editor."""
    text = path.read_text(encoding="utf-8")
    nb = nbformat.reads(text, as_version=4)
    renormalized = regen.normalize(nbformat.reads(text, as_version=4), path.stem)
    assert json.loads(nbformat.writes(renormalized)) == json.loads(nbformat.writes(nb)), (
        f"{path.name} is not normalized: run scripts/regen_notebooks.py {path.relative_to(ROOT)}")
    for cell in nb.cells:
        assert "execution" not in cell.metadata, f"{path.name}: cell timings stored"
    assert "version" not in nb.metadata.get("language_info", {}), f"{path.name}: Python version stored"


# ------------------------------------------------------------------ exact facts and results of a run
# Outputs of two kinds (retnet_mini/claims.py): exact facts, compared digit by digit by nbval, and results
# of a run (training, sampling, timing), in cells tagged `run-result` that nbval does not compare and that
# check the text's statements about them with claims. These guards keep the two apart.
RUN_CALL = re.compile(r"\b(train|train_on_task|train_variant|seconds_per_call|median_times|interleaved_medians)\(")
CLAIM_CALL = re.compile(r"\bclaim(_true)?\(")


def _code_cells(path):
    nb = nbformat.read(path, as_version=4)
    return [(i, c, c.metadata.get("tags", [])) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_only_run_results_and_removed_outputs_escape_comparison(path):
    for i, cell, tags in _code_cells(path):
        if "nbval-ignore-output" in tags:
            assert "run-result" in tags or "remove-output" in tags, (
                f"{path.name} cell {i}: nbval-ignore-output needs a reason tag, run-result (training, sampling, "
                f"timing) or remove-output (not shown): exact facts must stay compared")
        if "run-result" in tags:
            assert "nbval-ignore-output" in tags, f"{path.name} cell {i}: a run-result cell must be nbval-ignore-output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_cells_that_train_or_time_are_run_results_and_claims_live_only_there(path):
    for i, cell, tags in _code_cells(path):
        calls = [m.group(0) for m in RUN_CALL.finditer(cell.source) if not cell.source[:m.start()].endswith("def ")]
        if calls:
            assert "run-result" in tags, f"{path.name} cell {i} runs {calls[0]}...): tag it run-result"
        if CLAIM_CALL.search(cell.source):
            assert "run-result" in tags, (
                f"{path.name} cell {i}: claims are for results of a run; an exact fact is compared by nbval instead")
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", ""))
            assert "claim FAILS" not in text, f"{path.name} cell {i}: stored with a broken claim"


TRAIN_CALL = re.compile(r"\b(train|train_on_task|train_variant)\(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_notebooks_that_train_have_a_seed_parameter(path):
    """scripts/claim_spread.py re-runs them with other seeds through the `parameters` cell (a notebook whose
    run results are timings only has no seed to vary: `claim_spread.py --timings`)."""
    cells = _code_cells(path)
    if not any(TRAIN_CALL.search(c.source) for _, c, _ in cells):
        return
    params = [(i, c) for i, c, tags in cells if "parameters" in tags]
    assert len(params) == 1, f"{path.name}: claims about runs need one cell tagged parameters"
    # Only the seed: a value derived from SEED in this cell would escape the override that
    # scripts/claim_spread.py injects right after it.
    statements = [l for l in params[0][1].source.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    assert len(statements) == 1 and re.match(r"SEED = 0\s*(#.*)?$", statements[0]), (
        f"{path.name}: the parameters cell must hold only `SEED = 0`, got {statements}")
    assert params[0][0] < min(i for i, _, t in cells if "run-result" in t), f"{path.name}: SEED is set too late"
