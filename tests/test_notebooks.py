"""Guards on the committed notebooks (cheap, no kernel; nbval re-runs them, see `make nbval`).

nbval only compares cells that have a stored execution count, so an unexecuted notebook would pass it
silently: these tests make sure every notebook in book/ is fully executed, in order, without errors, with
its hidden Colab install cell first, normalized as scripts/regen_notebooks.py writes it, and listed in
_toc.yml (and that every _toc.yml entry exists); and that exercise solutions are hidden (website, Jupyter,
Colab) and leave the learner's own answer in place when every cell is run.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from exercise_notebooks import STUB_MARKER, solution_name
from project_scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))
PAGES = sorted(p for p in BOOK.glob("*.md"))


regen = load_script("regen_notebooks")


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
    expected = regen.colab_cell_source(regen.repository())
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


# ------------------------------------------------------------------ exercises: solutions hidden, answers kept
# An exercise is a stub cell (a function to fill in, `# your code here`, the checker call commented out),
# then a solution cell tagged `solution`. The solution is hidden wherever the notebook is read, and it
# defines its own names (`my_memory` -> `solution_memory`), so "Run all" never replaces the learner's
# function. scripts/regen_notebooks.py (hide_solutions) sets the hiding; these tests guard both.
def _python(source: str) -> ast.Module:
    """A cell's source as Python (IPython magics turned into calls first)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return ast.parse(TransformerManager().transform_cell(source))


def _bindings(tree: ast.Module) -> dict:
    """The module-level names a cell binds, each with how: an import's origin, "def", "assign" or "global".

    Statements at the top level (inside if/for/with/try too) bind; function, class, lambda and
    comprehension bodies do not, except through a `global` statement.
    """
    out: dict = {}

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = "def"
            return
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = ("import", a.name, a.asname)
            return
        if isinstance(node, ast.ImportFrom):
            for a in node.names:
                out[a.asname or a.name] = ("from", node.module, node.level, a.name)
            return
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            out[node.id] = "assign"
        if isinstance(node, ast.ExceptHandler) and node.name:
            out[node.name] = "assign"
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            out.update({n: "global" for n in node.names})
    return out


def _free_names(tree: ast.Module) -> set:
    """Names a cell reads that it does not bind anywhere itself (a conservative set of its inputs)."""
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    local = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    local |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    local |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return loaded - local - set(_bindings(tree))


def _exercise_cells(path):
    """(index, cell, tree, is_stub, is_solution) for every code cell of the notebook."""
    nb = nbformat.read(path, as_version=4)
    return [(i, c, _python(c.source), STUB_MARKER in c.source, "solution" in c.metadata.get("tags", []))
            for i, c in enumerate(nb.cells) if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_solutions_are_hidden_on_the_website_in_jupyter_and_in_colab(path):
    nb = nbformat.read(path, as_version=4)
    solutions = [(i, c) for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", [])]
    assert solutions, f"{path.name}: no exercise solutions (cells tagged solution)"
    fix = f"run scripts/regen_notebooks.py book/{path.name} (hide_solutions sets it)"
    for i, cell in solutions:
        assert cell.cell_type == "code", f"{path.name} cell {i}: a solution must be a code cell"
        assert "hide-input" in cell.metadata["tags"], f"{path.name} cell {i}: not collapsed on the website; {fix}"
        assert cell.metadata.get("jupyter", {}).get("source_hidden") is True, (
            f"{path.name} cell {i}: not collapsed in JupyterLab / Notebook 7 (jupyter.source_hidden); {fix}")
        assert cell.metadata.get("cellView") == "form", f"{path.name} cell {i}: not hidden in Colab (cellView); {fix}"
        assert cell.source.split("\n")[0] == regen.SOLUTION_TITLE, (
            f"{path.name} cell {i}: first line must be the Colab form title {regen.SOLUTION_TITLE!r}; {fix}")


def test_regeneration_hides_solutions_and_stays_deterministic():
    """hide_solutions (via normalize) restores the hiding on a solution stripped of it, touches no other
    cell, and a second pass changes nothing, byte for byte."""
    nb = nbformat.v4.new_notebook()
    stub = nbformat.v4.new_code_cell("def my_f(x):\n    ...  # your code here",
                                     metadata={"jupyter": {"source_hidden": True}})
    solution = nbformat.v4.new_code_cell("def solution_f(x):\n    return x",
                                         metadata={"tags": ["solution"], "colab": {}})
    titled = nbformat.v4.new_code_cell("#@title old title\nx = 1", metadata={"tags": ["solution", "hide-input"]})
    nb.cells = [stub, solution, titled]
    once = nbformat.writes(regen.normalize(nb, "t"))
    twice = nbformat.writes(regen.normalize(nbformat.reads(once, as_version=4), "t"))
    assert once == twice
    cells = nbformat.reads(once, as_version=4).cells
    assert cells[0].metadata == {} and cells[0].source == stub.source  # "jupyter" is dropped elsewhere
    assert cells[1].metadata == {"tags": ["hide-input", "solution"], "jupyter": {"source_hidden": True},
                                 "cellView": "form"}
    assert cells[1].source == regen.SOLUTION_TITLE + "\ndef solution_f(x):\n    return x"
    assert cells[2].metadata["tags"] == ["solution", "hide-input"]
    assert cells[2].source == regen.SOLUTION_TITLE + "\nx = 1"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_each_solution_answers_the_stub_before_it_under_its_own_name(path):
    cells = _exercise_cells(path)
    stub = None
    for i, cell, tree, is_stub, is_solution in cells:
        if is_stub:
            assert not is_solution, f"{path.name} cell {i}: a stub is not a solution"
            defs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
            assert len(defs) == 1, f"{path.name} cell {i}: a stub defines one function, got {defs}"
            calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                     and n.func.id.startswith("check_")]
            assert not calls and "# check_" in cell.source, (
                f"{path.name} cell {i}: the stub's checker call must stay commented out")
            stub = (i, defs[0])
        elif is_solution:
            assert stub is not None, f"{path.name} cell {i}: a solution without a stub cell before it"
            bound = _bindings(tree)
            own = solution_name(stub[1])
            assert bound.get(own) == "def", f"{path.name} cell {i}: the solution must define {own}()"
            calls = {n.args[0].id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                     and n.func.id.startswith("check_") and n.args and isinstance(n.args[0], ast.Name)}
            assert calls == {own}, f"{path.name} cell {i}: the solution must check {own}, checks {calls}"
            stub = None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_later_cell_rebinds_a_name_a_stub_binds(path):
    """What the learner writes in a stub survives "Run all": no later cell binds the same names (only an
    identical import, which binds the same object, may repeat)."""
    cells = _exercise_cells(path)
    stubs = [(i, _bindings(tree)) for i, _, tree, is_stub, _ in cells if is_stub]
    assert stubs, f"{path.name}: no exercise stubs (cells with {STUB_MARKER!r})"
    for i, stub_names in stubs:
        for j, _, tree, _, _ in cells:
            if j <= i:
                continue
            later = _bindings(tree)
            assert "*" not in later, f"{path.name} cell {j}: a star import after the stub in cell {i}"
            for name, how in stub_names.items():
                if name in later:
                    assert isinstance(how, tuple) and later[name] == how, (
                        f"{path.name}: cell {j} rebinds {name!r}, which the stub in cell {i} defines "
                        f"(solutions define names of their own: README, 'Adding a chapter')")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_later_cells_do_not_depend_on_what_only_a_solution_defines(path):
    """A reader who skips or breaks a solution still gets the rest of the chapter: no other cell reads a
    name whose latest binding, in cell order, is a solution cell's."""
    binder: dict = {}  # name -> (cell index, bound by a solution, how)
    for i, _, tree, _, is_solution in _exercise_cells(path):
        if not is_solution:
            from_solution = {n: binder[n][0] for n in _free_names(tree) if n in binder and binder[n][1]}
            assert not from_solution, f"{path.name} cell {i} reads names only a solution cell binds: {from_solution}"
        for name, how in _bindings(tree).items():
            if name in binder and binder[name][2] == how and is_solution:
                continue  # the same import again: the earlier cell still provides it
            binder[name] = (i, is_solution, how)


# Cheap notebooks (their checkers take well under a second): exec the exercise section the way "Run all" does.
RUN_ALL_NOTEBOOKS = [BOOK / "intro.ipynb", BOOK / "attention_to_recurrence.ipynb", BOOK / "decay.ipynb"]


@pytest.mark.parametrize("path", RUN_ALL_NOTEBOOKS, ids=_id)
def test_running_every_cell_keeps_the_learners_answer(path):
    """Exec every code cell from the first stub to the end in one namespace, each stub's function replaced
    by the learner's answer (a sentinel): afterwards the sentinels are still there, and each solution
    ran its checker on its own function (a solution checking the sentinel would fail its checker)."""
    cells = _exercise_cells(path)
    first = min(k for k, (_, _, _, is_stub, _) in enumerate(cells) if is_stub)
    namespace: dict = {}
    answers = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, cell, tree, is_stub, _ in cells[first:]:
            exec(compile(tree, f"{path.name}[cell {i}]", "exec"), namespace)
            if is_stub:
                (name,) = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]

                def learners_answer(*args, **kwargs):
                    return "the learner's answer"

                namespace[name] = answers[name] = learners_answer
    assert answers
    for name, answer in answers.items():
        assert namespace[name] is answer, f"{path.name}: running the cells after the stub replaced {name}"
        assert callable(namespace[solution_name(name)]) and namespace[solution_name(name)] is not answer
    assert out.getvalue().count("correct on all") == len(answers), out.getvalue()
