"""Shared by the tests/test_exercises_*.py files: a chapter's solution cells, and a checker's rejection."""
import contextlib
import io
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import nbformat
import pytest

from retnet_mini.exercises import ExerciseError

BOOK = Path(__file__).resolve().parent.parent / "book"


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
