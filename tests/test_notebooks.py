"""The notebooks: committed without outputs, and each runs top to bottom on the session's quick worlds.

The executed notebooks run in a Jupyter kernel of this interpreter (nbclient), with the test session's
environment (ADPA_HOME points at the quick toy world of the `toy_home` fixture and, for the notebooks that
use SmolLM2, the quick real-model world of the `real_home` fixture) and a temporary working directory, so
their runs (RUNS_DIR is relative) never land in the repository. Each notebook's wall time is
written to test-artifacts/notebook-times.json.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "01_toy_world.ipynb",
    "02_token_advantages.ipynb",
    "03_dckd.ipynb",
    "04_adpa.ipynb",
    "05_evaluate_and_compare.ipynb",
    "06_real_models.ipynb",
]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
CELL_TIMEOUT = 1800  # seconds per cell (a safety net): the toy notebooks take under a minute each on 2 cores
REAL_WORLD = ("02_token_advantages.ipynb", "06_real_models.ipynb")  # these also use the real-model world
TIMES = ROOT / "test-artifacts" / "notebook-times.json"


def _strip_module():
    spec = importlib.util.spec_from_file_location("strip_notebooks", ROOT / "scripts" / "strip_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_the_six_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs or execution counts; run `make strip`"
    assert path.read_text(encoding="utf-8") == _strip_module().stripped_text(path), (
        f"{path.name} holds run metadata; run `make strip`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_starts_with_a_parameters_cell(path):
    first = _code_cells(nbformat.read(path, as_version=4))[0]
    tags = first.metadata.get("tags", [])
    assert "parameters" in tags, f"{path.name}: tag the first code cell `parameters`"
    assert "QUICK" in first.source and "HOME" in first.source


def _outputs(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [o for c in _code_cells(nb) for o in c.get("outputs", [])]


def _record_time(name: str, seconds: float) -> None:
    TIMES.parent.mkdir(exist_ok=True)
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    times[name] = round(seconds, 1)
    times["total (last run of each)"] = round(sum(v for k, v in times.items() if k.endswith(".ipynb")), 1)
    TIMES.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.real) if p.name in REAL_WORLD else p for p in NOTEBOOKS],
    ids=lambda p: p.stem,
)
def test_notebook_runs(path, toy_home, tmp_path, request):
    from nbclient import NotebookClient

    if path.name in REAL_WORLD:
        request.getfixturevalue("real_home")
    nb = nbformat.read(path, as_version=4)
    before = sorted(p.name for p in (ROOT / "notebooks").iterdir())
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on the first error
    seconds = time.perf_counter() - start
    _record_time(path.name, seconds)
    print(f"{path.name}: {seconds:.1f} s")

    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    figures = [o for o in outputs if PLOTLY_MIME in o.get("data", {})]
    assert figures, f"{path.name} promises plotly figures but rendered none"
    after = sorted(p.name for p in (ROOT / "notebooks").iterdir())
    assert after == before, "the notebook wrote files into notebooks/"
