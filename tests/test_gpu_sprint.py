"""bench/gpu_sprint.py end to end on the CPU: two tiny members trained side by side on a generated FER2013
CSV, their results rows and int8 cards, the PublicTest-weighted ensemble and its card, the pack that
comes back from a GPU machine, and a rerun that skips what is done and resumes what is not."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPLIT_ORDER, write_fer_csv

import ferkit
from ferkit.utils.device import cpu_name

ROOT = Path(__file__).resolve().parents[1]
MEMBERS = {  # spec -> (folder name, epochs)
    "cnn:width=8:epochs=2:batch_size=14": ("cnn-width8-epochs2-batch_size14", 2),
    "cnn_sgd:width=8:epochs=1:batch_size=14": ("cnn_sgd-width8-epochs1-batch_size14", 1),
}
ACCURACY_COLUMNS = [f"{s}_{t}" for s in ("public", "private") for t in ("none", "flip", "tencrop")]


def sprint(out: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python bench/gpu_sprint.py` on the CPU with a budget of a few minutes (the members end sooner)."""
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_sprint.py"), "--out", str(out), "--device", "cpu"]
    cmd += ["--data", str(data), "--minutes", "6", "--reserve", "4", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A FER2013 CSV of random faces: 28 Training, 14 PublicTest, 14 PrivateTest, every class in each."""
    rng = np.random.default_rng(0)
    sizes = (28, 14, 14)
    images = rng.integers(0, 256, (sum(sizes), 48, 48), dtype=np.uint8)
    labels = np.concatenate([np.arange(n) % 7 for n in sizes])
    splits = np.repeat(np.array(SPLIT_ORDER), sizes)
    return write_fer_csv(tmp_path_factory.mktemp("sprint-data") / "fer2013.csv", images, labels, splits)


def check_results(out: Path) -> list[dict[str, str]]:
    """results.csv: bench/results.csv's columns, a row per member and one for their ensemble."""
    with (ROOT / "bench" / "results.csv").open() as fh:
        assert next(csv.reader(fh)) == next(csv.reader((out / "results.csv").open()))
    rows = list(csv.DictReader((out / "results.csv").open()))
    names = [name for name, _ in MEMBERS.values()]
    assert [r["recipe"] for r in rows] == [*names, f"ensemble({', '.join(names)})"]
    for row, (_, epochs) in zip(rows, MEMBERS.values(), strict=False):
        assert int(row["epochs"]) == epochs and "ferkit train --config configs/" in row["command"]
    for row in rows:
        assert all(0.0 <= float(row[c]) <= 1.0 for c in [*ACCURACY_COLUMNS, "private_macro_f1"]), row
        assert torch.cuda.is_available() or cpu_name() in row["machine"], row["machine"]  # rows name the CPU
    return rows


def check_models(out: Path, faces: np.ndarray) -> None:
    """Each member's checkpoint and int8 card, the spec over the cards (weights fitted on PublicTest) and
    its int8 card, which votes exactly as the spec does."""
    for name, _ in MEMBERS.values():
        probs = ferkit.load(out / "members" / name / "best.pth", device="cpu").classify(faces)
        assert probs.shape == (len(faces), 7)
        card = json.loads((out / "cards" / f"{name}.json").read_text())
        assert card["weights_dtype"] == "int8" and set(card["accuracy"]) == {"PublicTest", "PrivateTest"}
    spec = json.loads((out / "ensemble.json").read_text())
    assert spec["weights_fitted_on"] == "PublicTest" and spec["tta"] == "flip"
    assert [m["path"] for m in spec["members"]] == [f"cards/{n}.json" for n, _ in MEMBERS.values()]
    assert json.loads((out / "sprint.json").read_text())["weights_dtype"] == "int8"
    voted = ferkit.load(out / "ensemble.json", device="cpu").classify(faces)
    shipped = ferkit.load(out / "sprint.json", device="cpu").classify(faces)
    np.testing.assert_allclose(shipped, voted, atol=1e-6)
    np.testing.assert_allclose(shipped.sum(1), 1.0, atol=1e-5)


def check_pack(out: Path, pack: Path) -> None:
    """The pack: parts under 16 MiB holding the folder's results, logs and cards, and no checkpoint."""
    parts = sorted(pack.glob("sprint.tar.*"))
    assert parts and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
        names = set(tar.getnames())
    assert not [n for n in names if n.endswith(".pth")]
    for kept in ("results.csv", "SUMMARY.md", "sprint.log", "ensemble.json", "sprint.safetensors"):
        assert f"{out.name}/{kept}" in names
    for name, _ in MEMBERS.values():
        assert {f"{out.name}/cards/{name}.safetensors", f"{out.name}/members/{name}/metrics.csv"} <= names


def test_sprint_trains_evaluates_ships_and_reruns(tmp_path: Path, tiny_csv: Path) -> None:
    out, pack = tmp_path / "sprint", tmp_path / "pack"
    proc = sprint(out, tiny_csv, "--members", *MEMBERS, "--pack", str(pack))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = check_results(out)
    faces = ferkit.load_data(tiny_csv).images[:10]
    check_models(out, faces)
    check_pack(out, pack)
    summary = (out / "SUMMARY.md").read_text()
    assert all(name in summary for name, _ in MEMBERS.values())

    # A rerun: the first member, finished, is skipped; the second, as if killed after its last epoch's
    # checkpoint (before its summary), resumes; rows, cards and the spec already there are kept.
    (first, _), (second, _) = MEMBERS.values()
    (out / "members" / second / "summary.json").unlink()
    before = {p: p.read_bytes() for p in (out / "results.csv", out / "sprint.json", out / "ensemble.json")}
    metrics = (out / "members" / first / "metrics.csv").read_bytes()
    proc = sprint(out, tiny_csv, "--members", *MEMBERS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{first}: finished earlier, skipped" in proc.stdout
    assert f"{second}: resumes: ferkit train" in proc.stdout and "--resume" in proc.stdout
    assert (out / "members" / second / "summary.json").exists()
    assert (out / "members" / first / "metrics.csv").read_bytes() == metrics
    assert {p: p.read_bytes() for p in before} == before
    assert check_results(out) == rows


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        (["nosuchrecipe"], "no recipe configs/nosuchrecipe.yaml"),
        (["resnet18", "cnn:lr=fast"], "'lr'"),
    ],
)
def test_sprint_bad_member_is_one_line(
    tmp_path: Path, tiny_csv: Path, members: list[str], needle: str
) -> None:
    """A member the sprint cannot train ends it with one line before anything runs or is written."""
    proc = sprint(tmp_path / "sprint", tiny_csv, "--members", *members)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("gpu_sprint: error:") and needle in line, line
    assert not (tmp_path / "sprint").exists()


def test_sprint_stops_members_at_its_deadline(tmp_path: Path, tiny_csv: Path) -> None:
    """A member still running when the budget less half the reserve is spent is stopped (1.2 s after the
    sprint starts: no Python imports torch, trains and evaluates by then), and the sprint says so and ends
    with 1: a rerun resumes it."""
    out = tmp_path / "sprint"
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_sprint.py"), "--out", str(out), "--device", "cpu"]
    cmd += ["--data", str(tiny_csv), "--minutes", "0.03", "--reserve", "0.02", "--members", "cnn:width=8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cnn-width8: stopped at the deadline (resumes on the next run)" in proc.stdout
    assert not (out / "members" / "cnn-width8" / "summary.json").exists()
    assert "| cnn-width8 | stopped at the deadline" in (out / "SUMMARY.md").read_text()
