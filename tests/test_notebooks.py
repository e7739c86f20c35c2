"""Every notebook runs top to bottom in a real kernel (nbclient), and none is stored with outputs.

The kernel's working directory is notebooks/, its cache a temporary folder; the worker notebook
gets a test redis-server through REDIS_URL, so the embedded one is never started by a test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT

NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
EXPECTED = {"01_prompt_lab.ipynb", "02_evaluate_and_compare.ipynb", "03_batch_to_workers.ipynb"}


def test_the_notebooks_are_there():
    assert EXPECTED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path: Path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{path.name} cell {i} has outputs: clear them before committing"
            assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown"
    text = "".join(first["source"])
    for needed in ("samples-1680.jsonl.gz", "OPENAI_BASE_URL", "OPENAI_API_KEY", "HARNESS_MODEL"):
        assert needed in text, f"{path.name}: the first cell should say how to use {needed}"


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _text(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
        parts.append(o.get("data", {}).get("text/html", ""))
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path: Path, request, monkeypatch, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    redis_url = None
    if "workers" in path.name:
        redis_url = request.getfixturevalue("redis_proc").url
        monkeypatch.setenv("REDIS_URL", redis_url)  # the kernel (and the worker it starts) inherit it
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NB_DIR)}})
    client.execute()  # raises CellExecutionError with the failing cell and its traceback
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = _text(outputs)
    if path.name.startswith("01"):
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
        assert "agrees with gold" in text or "disagrees with gold" in text
        assert "away_from_gold" in text or "toward_gold" in text
    elif path.name.startswith("02"):
        assert any("image/svg+xml" in o.get("data", {}) for o in outputs)
        assert "f1_lo" in text and "prediction(s) flipped" in text
    elif path.name.startswith("03"):
        assert f"Redis: {redis_url}" in text
        assert "90 jobs enqueued" in text
        assert re.search(r"worker \d+ exited with (0|-15)\b", text), "the worker should be stopped"
        assert "Commentary:" in text
    assert not list(NB_DIR.glob("prompts/*.toml")), "a notebook run must not save prompts into the repository"
