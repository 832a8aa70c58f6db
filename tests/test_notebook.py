"""notebooks/explore.ipynb runs top to bottom on the real data (quick mode) in the venv's own kernel."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="notebook tests need the dev extras (nbformat)")
nbclient = pytest.importorskip("nbclient", reason="notebook tests need the dev extras (nbclient)")
pytest.importorskip("ipykernel", reason="notebook tests need the dev extras (ipykernel)")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the pictures the tour shows, in order; the last two come from the evaluation report folder
SHOWN = ("class_balance.png", "faces.png", "conflicting_duplicates.png", "curves.png")
REPORT = ("confusion_matrix.png", "per_class.png", "reliability.png", "mistakes.png", "summary.md")


def displayed_pngs(nb) -> list[bytes]:
    """Every image/png output of the executed notebook, decoded, in cell order."""
    return [
        base64.b64decode(out["data"]["image/png"])
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]


def stream_text(cell) -> str:
    return "".join(out.get("text", "") for out in cell.get("outputs", []) if out["output_type"] == "stream")


def test_committed_notebook_has_no_outputs_and_the_python3_kernel() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_notebook_runs_top_to_bottom(
    real_data_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel inherits this environment (the session's FERKIT_CACHE_DIR included).
    monkeypatch.setenv("FERKIT_DATA", str(real_data_path))
    monkeypatch.setenv("FERKIT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's WORK folder lands here
    monkeypatch.setenv("JUPYTER_PREFER_ENV_PATH", "1")  # this venv's python3 kernel spec before a user's
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    n_cells = len(nb.cells)
    probe = "import json, sys\nprint(json.dumps({'executable': sys.executable, 'prefix': sys.prefix}))"
    nb.cells.append(nbformat.v4.new_code_cell(probe))

    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        startup_timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error

    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out["output_type"] == "error"
    ]
    assert not errors

    # the kernel was this interpreter's environment (the venv), not another Python
    kernel = json.loads(stream_text(nb.cells[n_cells]).strip().splitlines()[-1])
    assert kernel == {"executable": sys.executable, "prefix": sys.prefix}

    # every picture was written and shown inline, byte for byte
    (work,) = tmp_path.glob("ferkit-tour-*")
    for name in SHOWN:
        assert (work / name).read_bytes().startswith(PNG_MAGIC), name
    for name in REPORT:
        assert (work / "report" / name).stat().st_size > 0, name
    shown = displayed_pngs(nb)
    assert all(png.startswith(PNG_MAGIC) for png in shown)
    expected = [work / n for n in SHOWN] + [
        work / "report" / n for n in ("confusion_matrix.png", "mistakes.png")
    ]
    assert shown == [p.read_bytes() for p in expected]

    # a real (short) run: checkpoints and one metrics row per epoch; numbers printed, not claimed
    assert (work / "run" / "best.pth").is_file()
    assert len((work / "run" / "metrics.csv").read_text().strip().splitlines()) == 1 + 2
    printed = "".join(stream_text(c) for c in nb.cells if c.cell_type == "code")
    assert "macro-F1" in printed and "on 140 PublicTest faces" in printed
