"""Shared by the tests/test_exercises_*.py files: a chapter's solution cells, and a checker's rejection."""
import contextlib
import io
from pathlib import Path
from typing import Callable, List

import nbformat
import pytest

from retnet_mini.exercises import ExerciseError

BOOK = Path(__file__).resolve().parent.parent / "book"


def notebook_solution_cells(notebook: Path) -> List[str]:
    """The source of every code cell tagged ``solution`` in ``notebook``, in order."""
    nb = nbformat.read(notebook, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]


def rejected(check: Callable, answer: Callable) -> str:
    """The message with which ``check`` rejects ``answer`` (the test fails if it accepts it)."""
    with pytest.raises(ExerciseError) as info, contextlib.redirect_stdout(io.StringIO()):
        check(answer)
    return str(info.value)
