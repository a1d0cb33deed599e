"""Shared by the tests/test_exercises_*.py files: a chapter's solution cells, and a checker's rejection.

Naming rule (README, "Adding a chapter"): a stub defines the learner's function (``my_memory``); its solution cell
defines the worked answer under its own name, :func:`solution_name` (``solution_memory``), and calls the
checker on that, so running every cell never replaces the learner's function.
"""
import ast
import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import nbformat
import pytest

from retnet_mini.exercises import ExerciseError

BOOK = Path(__file__).resolve().parent.parent / "book"
STUB_MARKER = "# your code here"
SOLUTION_PREFIX = "solution_"


def solution_name(stub_name: str) -> str:
    """The name of the solution's answer to the stub's ``stub_name``: ``my_memory`` -> ``solution_memory``,
    ``kv_cache_bytes`` -> ``solution_kv_cache_bytes``."""
    return SOLUTION_PREFIX + stub_name.removeprefix("my_")


def stub_functions(notebook: Path) -> List[str]:
    """The function each exercise stub (a code cell with ``# your code here``) defines, in order."""
    nb = nbformat.read(notebook, as_version=4)
    names = []
    for cell in nb.cells:
        if cell.cell_type == "code" and STUB_MARKER in cell.source:
            defs = [n.name for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef)]
            assert len(defs) == 1, f"{notebook.name}: a stub should define one function, got {defs}"
            names.append(defs[0])
    return names


def notebook_solution_cells(notebook: Path) -> List[str]:
    """The source of every code cell tagged ``solution`` in ``notebook``, in order."""
    nb = nbformat.read(notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]


def run_solution(notebook: Path, index: int) -> Tuple[str, Dict[str, Any]]:
    """Run solution cell ``index`` of ``notebook`` in a fresh namespace: what it printed, and the namespace."""
    out, namespace = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(notebook_solution_cells(notebook)[index], f"{notebook.name}[solution {index}]", "exec"), namespace)
    return out.getvalue(), namespace


def rejected(check: Callable, answer: Callable) -> str:
    """The message with which ``check`` rejects ``answer`` (the test fails if it accepts it)."""
    with pytest.raises(ExerciseError) as info, contextlib.redirect_stdout(io.StringIO()):
        check(answer)
    return str(info.value)
