"""Every notebook in notebooks/ stays thin and alike: committed without outputs, one `parameters`
cell of plain values, imports only from clinic_lib and display libraries, and its default day from
the one place that decides it (clinic_lib/core/clinic_days.py). The notebooks are executed by the
tests of their jobs (test_e2e, test_runner, test_predict, test_priorities, test_reminders, ...)."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from clinic_lib.pipeline.runner import STEPS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DISPLAY_LIBRARIES = ("pandas", "IPython", "plotly", "ipywidgets", "matplotlib")
# A notebook never works out a default day itself: these are the ways it was done by hand.
OWN_DEFAULT_DAY = ("today_local", "next_clinic_day", "default_day", "date.today", "datetime.now", "clinic_today")
EVENING_STEPS = {"validate.ipynb", "refresh.ipynb", "train.ipynb"}  # their day is the evening's: D
AHEAD_STEPS = {"score.ipynb", "priorities.ipynb", "reminders.ipynb"}  # their day is the next clinic day


def code_cells(path: Path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def parameters_cell(path: Path):
    return [c for c in code_cells(path) if "parameters" in c.metadata.get("tags", [])]


def test_the_notebooks_are_all_here():
    names = {p.name for p in NOTEBOOKS}
    assert {s.notebook for s in STEPS if s.notebook} <= names
    assert {"backfill.ipynb", "call_effect.ipynb", "kpi_dashboard.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nbformat.validate(nbformat.read(path, as_version=4))
    for cell in code_cells(path):
        assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: a cell keeps its output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_plain_values_first(path):
    cells = parameters_cell(path)
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    assert "parameters" in code_cells(path)[0].metadata.get("tags", []), f"{path.name}: the parameters cell is not the first code cell"
    for statement in ast.parse(cells[0].source).body:
        assert isinstance(statement, ast.Assign) and len(statement.targets) == 1, \
            f"{path.name}: the parameters cell holds more than assignments: {ast.unparse(statement)}"
        value = statement.value
        if isinstance(value, ast.UnaryOp):  # -1
            value = value.operand
        assert isinstance(value, ast.Constant), \
            f"{path.name}: {ast.unparse(statement)} is not a plain value papermill can replace"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_imports_only_the_library_and_display_libraries(path):
    for cell in code_cells(path):
        for node in ast.walk(ast.parse(cell.source)):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name == "clinic_lib" or name.startswith("clinic_lib.") or \
                    name.split(".")[0] in DISPLAY_LIBRARIES, f"{path.name} imports {name}: logic belongs in clinic_lib"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_default_day_comes_from_one_place(path):
    code = "\n".join(c.source for c in code_cells(path))
    for pattern in OWN_DEFAULT_DAY:
        assert pattern not in code, f"{path.name} works out its default day itself ({pattern})"
    if path.name in EVENING_STEPS:
        assert "evening_day(" in code, f"{path.name}: the evening's day comes from clinic_days.evening_day"
    if path.name in AHEAD_STEPS:
        assert "day_ahead(" in code, f"{path.name}: the day ahead comes from clinic_days.day_ahead"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_flags_are_booleans_not_text(path):
    """papermill hands True/False over as booleans (its command line turns "True" into True): a
    flag parameter is a boolean, and no notebook turns text back into one by hand."""
    flags = [s for s in ast.parse(parameters_cell(path)[0].source).body
             if isinstance(s.value, ast.Constant) and isinstance(s.value.value, bool)]
    code = "\n".join(c.source for c in code_cells(path)[1:])
    for statement in flags:
        name = statement.targets[0].id
        assert f"isinstance({name}, str)" not in code, f"{path.name} turns the text of {name} into a boolean"
    for text in ('"true"', "'true'", '"True"', "'True'"):
        assert text not in code, f"{path.name} compares with the text {text}"
