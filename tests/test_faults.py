"""Faults and hostile files: a process killed mid-write leaves every file old-and-complete or
new-and-complete; a full disk is a one-line error that keeps the earlier file; a damaged cache entry is
rebuilt; a checkpoint, ensemble spec, YAML config or ONNX file cannot run code on the machine that opens it.

The fast tests run each fault once in-process (or in a small Python without torch); the slow one runs
bench/faults.py (the real commands SIGKILLed at random moments, the full-disk runs), whose long form fills
the tables in docs/reliability.md. docs/security.md names the tests behind each of its claims.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.config import load_yaml
from ferkit.data import load_dataset
from ferkit.data.cache import cache_dir
from ferkit.errors import FerkitError
from ferkit.runtime.checkpoint import FORMAT, atomic_save, load_checkpoint
from ferkit.runtime.loading import load_predictor
from ferkit.utils.io import NoRoomError, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ferkit_bench_faults", ROOT / "bench" / "faults.py")
faults = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = faults  # dataclasses look their module up there
_spec.loader.exec_module(faults)

# A small Python (no torch) that rewrites one JSON file atomically, forever, alternating two versions.
WRITER = textwrap.dedent(
    """
    import sys
    from ferkit.utils.io import atomic_write_json
    versions = [{"version": v, "rows": [[v] * 100] * 2000} for v in ("old", "new")]
    atomic_write_json(sys.argv[1], versions[0])
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        atomic_write_json(sys.argv[1], versions[i % 2])
    """
)


def test_a_write_killed_at_random_moments_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    """SIGKILL in the middle of `atomic_write`, ten times: the file is always one complete version."""
    target = tmp_path / "state.json"
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    seen = set()
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        state = json.loads(target.read_text())  # parses: never half a file
        assert state["version"] in ("old", "new") and len(state["rows"]) == 2000
        seen.add(state["version"])
    # temporaries a kill leaves are named .state.json.*.tmp: never read as the file itself
    assert all(faults.is_temporary(p) for p in tmp_path.iterdir() if p != target)
    assert faults.check_files(tmp_path).damaged == []


@pytest.fixture
def no_room(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 512 KiB tmpfs (root may mount one); else skip: `test_no_room_under_a_file_size_limit`
    covers machines without mount."""
    folder = tmp_path / "small"
    if not faults.try_tmpfs(folder, "512k"):
        pytest.skip("cannot mount a tmpfs here (not root, or no mount)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_a_one_line_error_and_keeps_the_earlier_file(no_room: Path) -> None:
    """JSON (cards, metrics) and torch.save (checkpoints: torch wraps the OSError) on a full disk."""
    ckpt, card = no_room / "last.pth", no_room / "card.json"
    atomic_save({"format": FORMAT, "epoch": 1, "w": torch.zeros(1000)}, ckpt)
    atomic_write_json(card, {"accuracy": 0.5})
    for path, write in (
        (ckpt, lambda: atomic_save({"format": FORMAT, "epoch": 2, "w": torch.zeros(1 << 20)}, ckpt)),
        (card, lambda: atomic_write_json(card, {"accuracy": list(range(200_000))})),
    ):
        with pytest.raises(NoRoomError) as info:
            write()
        assert isinstance(info.value, FerkitError) and isinstance(info.value, OSError)
        message = str(info.value)
        assert message.startswith(f"{path}: cannot write it: No space left on device") and "\n" not in message
    assert load_checkpoint(ckpt)["epoch"] == 1
    assert json.loads(card.read_text()) == {"accuracy": 0.5}
    assert sorted(p.name for p in no_room.iterdir()) == ["card.json", "last.pth"]  # no temporaries


def test_no_room_under_a_file_size_limit(tmp_path: Path) -> None:
    """Where no tmpfs can be mounted (CI): RLIMIT_FSIZE makes writes fail with EFBIG; the same error."""
    card = tmp_path / "card.json"
    card.write_text('{"accuracy": 0.5}\n')
    code = "import sys; from ferkit.utils.io import atomic_write_json as w; w(sys.argv[1], [0] * 10**6)"
    proc = faults.run([sys.executable, "-c", code, str(card)], dict(os.environ), limit=64 << 10, timeout=60)
    assert proc.returncode == 1 and "NoRoomError" in proc.stderr
    assert f"{card}: cannot write it: File too large" in proc.stderr
    assert json.loads(card.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["card.json"]


def test_a_damaged_cache_entry_is_rebuilt(make_fer_csv, tmp_path: Path, monkeypatch) -> None:
    """A truncated .npz under $FERKIT_CACHE_DIR: the next load parses the CSV again and rewrites it whole."""
    monkeypatch.setenv("FERKIT_CACHE_DIR", str(tmp_path / "cache"))
    rows = make_fer_csv(tmp_path / "fer.csv")
    load_dataset(rows.path)
    (entry,) = cache_dir().glob("*.npz")
    whole = entry.read_bytes()
    for damage in (whole[: len(whole) // 2], b"", b"PK\x03\x04 not a zip"):
        entry.write_bytes(damage)
        ds = load_dataset(rows.path)
        np.testing.assert_array_equal(ds.images, rows.images)
        np.testing.assert_array_equal(ds.labels, rows.labels)
        assert faults.check_files(cache_dir()).damaged == [] and entry.stat().st_size == len(whole)


@pytest.mark.slow
def test_bench_faults_kills_every_command_and_fills_the_disk(tmp_path: Path) -> None:
    """bench/faults.py, 2 kills per command and the full-disk runs: nothing damaged, every completion ok."""
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "faults.py"),
            "--kills",
            "2",
            "--full-disk",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.strip("|").split("|") for line in proc.stdout.splitlines() if line.startswith("| ")]
    kills = {
        r[0].strip(): [c.strip() for c in r[1:]]
        for r in rows
        if r[0].strip() in ("train", "ship", "export", "cache") and len(r) == 8
    }
    assert set(kills) == {"train", "ship", "export", "cache"}
    assert all(r[1] == "2" and r[5] == "0" and r[6] == "0" for r in kills.values()), proc.stdout
    disks = [r for r in rows if len(r) == 4 and r[0].strip() in ("train", "ship", "cache")]
    assert len(disks) == 3 and all(r[2].strip() == "ok" for r in disks), proc.stdout


# ----------------------------------------------------------------------------- what a file can do


class RunsCode:
    """Pickled, this object calls os.system on load: what a hostile .pth would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker, zipped, legacy = tmp_path / "pwned", tmp_path / "evil.pth", tmp_path / "legacy.pth"
    torch.save({"format": FORMAT, "payload": RunsCode(marker)}, zipped)  # torch's zip format
    legacy.write_bytes(pickle.dumps({"format": FORMAT, "payload": RunsCode(marker)}))  # a bare pickle
    for path in (zipped, legacy):
        with pytest.raises(FerkitError, match="refused: it holds Python objects") as info:
            load_predictor(path, "cpu")
        assert str(path) in str(info.value) and not marker.exists()
    torch.load(zipped, weights_only=False)  # the same file with pickle's full power: the code runs
    assert marker.exists()


def test_an_ensemble_member_outside_its_folder_is_only_read_as_a_checkpoint(tmp_path: Path) -> None:
    """A spec naming ../../../etc/passwd (or any absolute path): the file is opened as a checkpoint, and as it
    is not one, refused; nothing else is done with it."""
    spec = tmp_path / "ens.json"
    for member in ("../" * 12 + "etc/passwd", "/etc/passwd"):
        spec.write_text(
            json.dumps({"format": "ferkit-ensemble", "members": [{"path": member, "weight": 1.0}]})
        )
        with pytest.raises(FerkitError, match="not a PyTorch checkpoint") as info:
            load_predictor(spec, "cpu")
        assert "passwd" in str(info.value) and "\n" not in str(info.value)


def test_a_model_card_cannot_name_weights_elsewhere_nor_pass_off_tampered_ones(tmp_path: Path) -> None:
    shipped = ROOT / "src" / "ferkit" / "weights" / "ferkit-fer2013-fast.json"
    card = json.loads(shipped.read_text())
    weights = tmp_path / card["weights"]
    weights.write_bytes(shipped.with_suffix(".safetensors").read_bytes())
    path = tmp_path / "card.json"
    for name in ("../" * 12 + "etc/passwd", "/etc/passwd", ".."):
        path.write_text(json.dumps(card | {"weights": name}))
        with pytest.raises(FerkitError, match="is not a file name beside the card"):
            load_predictor(path, "cpu")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    path.write_text(json.dumps(card))
    with pytest.raises(FerkitError, match="checksum differs"):
        load_predictor(path, "cpu")


def test_a_yaml_config_cannot_build_python_objects(tmp_path: Path) -> None:
    marker, config = tmp_path / "pwned", tmp_path / "config.yaml"
    for tag in ("!!python/object/apply:os.system", "!!python/object/new:os.system"):
        config.write_text(f'epochs: {tag} ["touch {marker}"]\n')
        with pytest.raises(FerkitError, match="not valid YAML"):
            load_yaml(config)
        assert not marker.exists()


def test_an_onnx_file_with_a_custom_operator_is_refused(tmp_path: Path) -> None:
    """A graph naming an operator from a custom domain: ONNX Runtime loads no library for it, the session
    fails, one line."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from ferkit.runtime.onnx import OnnxPredictor

    x = helper.make_tensor_value_info("faces", TensorProto.FLOAT, [None, 1, 48, 48])
    y = helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 7])
    node = helper.make_node("RunShell", ["faces"], ["probs"], domain="com.evil")
    graph = helper.make_graph([node], "evil", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)]
    )
    path = tmp_path / "evil.onnx"
    onnx.save(model, path)
    with pytest.raises(FerkitError) as info:
        OnnxPredictor(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
