"""Every chapter's exercises as its notebook holds them: for each exercise, a stub (the learner's function,
its checker call commented out) and then a hidden solution that defines the worked answer under its own
name and passes that checker, printing the line the notebook stores. What each checker refuses, and with
which message, is tested in tests/test_exercises_<chapter>.py."""
import functools
import pkgutil

import nbformat
import pytest

from retnet_mini import exercises
from retnet_mini.exercises import attention, block, decay, derivation, forms, inference, intro, limits, training

from exercise_notebooks import BOOK, STUB_MARKER, run_solution, solution_name, stub_functions

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors: see conftest.py

# notebook -> (the module of its checkers, the function each stub defines, in order); each stub is checked
# by check_<its name without my_>
CHAPTERS = {
    "intro.ipynb": (intro, ["kv_cache_bytes", "state_bytes", "max_batch"]),
    "attention_to_recurrence.ipynb": (attention, ["my_causal_mask", "my_kv_decode_step", "my_linear_attention_step",
                                                  "my_linear_attention_cumsum"]),
    "recurrence_to_retention.ipynb": (derivation, ["my_ssm_kernel", "my_rotate", "my_decay_matrix", "my_retention"]),
    "decay.ipynb": (decay, ["my_memory", "my_half_life_schedule", "my_normalized_decay"]),
    "three_forms.ipynb": (forms, ["my_recurrent_step", "my_chunkwise", "my_padded_decay"]),
    "block.ipynb": (block, ["my_gated_output", "my_head_rmsnorm", "my_param_count"]),
    "training.ipynb": (training, ["my_next_char_loss", "my_lr_at", "my_unigram_entropy", "my_loss_units"]),
    "inference.ipynb": (inference, ["my_flop_crossover", "my_greedy_decode", "my_decode_throughput"]),
    "limits.ipynb": (limits, ["my_mqar_example", "my_state_numbers", "my_gate_log_decay", "my_masked_accuracy"]),
}
EXERCISES = [pytest.param(notebook, index, id=f"{notebook.removesuffix('.ipynb')}-{stub}")
             for notebook, (_, stubs) in CHAPTERS.items() for index, stub in enumerate(stubs)]


def checker_of(stub: str) -> str:
    return "check_" + stub.removeprefix("my_")


@functools.lru_cache(maxsize=None)
def code_cells(notebook: str) -> tuple:
    return tuple(c for c in nbformat.read(BOOK / notebook, as_version=4).cells if c.cell_type == "code")


def solution_cells(notebook: str) -> list:
    return [c for c in code_cells(notebook) if "solution" in c.metadata.get("tags", [])]


def test_every_chapter_with_exercises_and_every_checker_module_is_listed():
    assert {p.name for p in BOOK.glob("*.ipynb") if stub_functions(p)} == set(CHAPTERS)
    modules = {f"retnet_mini.exercises.{m.name}" for m in pkgutil.iter_modules(exercises.__path__)}
    assert {module.__name__ for module, _ in CHAPTERS.values()} == modules


@pytest.mark.parametrize("notebook", CHAPTERS)
def test_each_exercise_has_a_stub_then_a_hidden_solution_under_its_own_name(notebook):
    module, stubs = CHAPTERS[notebook]
    assert len(stubs) >= 3, "at least 3 exercises per chapter (README, 'Adding a chapter')"
    assert stub_functions(BOOK / notebook) == stubs
    # the chapter's checkers are those its exercises call, in the same order
    assert [n for n in module.__all__ if n.startswith("check_")] == [checker_of(s) for s in stubs]
    cells = code_cells(notebook)
    stub_cells = [c for c in cells if STUB_MARKER in c.source]
    solutions = solution_cells(notebook)
    assert len(solutions) == len(stub_cells) == len(stubs)
    for stub, stub_cell, solution in zip(stubs, stub_cells, solutions):
        checker, own = checker_of(stub), solution_name(stub)
        # the stub: its checker call commented out, in no other cell; it runs on its own without failing
        assert f"\n# {checker}({stub})" in stub_cell.source, stub
        assert sum(f"# {checker}(" in c.source for c in cells) == 1, stub
        exec(compile(stub_cell.source, f"{notebook}[stub {stub}]", "exec"), {})
        # the solution: hidden, and under its own name, so that running every cell keeps the learner's function
        assert "hide-input" in solution.metadata["tags"], stub
        assert f"def {own}(" in solution.source and f"def {stub}(" not in solution.source, stub
        assert f"{checker}({own})" in solution.source, stub


@pytest.mark.parametrize("notebook, index", EXERCISES)
def test_the_solution_passes_its_checker_with_the_stored_line(notebook, index):
    """Its first line is the checker's success line, as the notebook stores it (nbval compares the two)."""
    stub = CHAPTERS[notebook][1][index]
    out, namespace = run_solution(BOOK / notebook, index)
    stored = "".join(o.text for o in solution_cells(notebook)[index].outputs if o.get("name") == "stdout")
    line = out.split("\n")[0]
    assert line.startswith(f"{checker_of(stub)}: correct on all ") and " random cases" in line, out
    assert line == stored.split("\n")[0]
    assert callable(namespace[solution_name(stub)]) and stub not in namespace
