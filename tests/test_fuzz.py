"""Hostile input for every reader (Hypothesis): a valid result or a one-line FerkitError, never a traceback,
a hang or a file written outside its folder. The targets (seed inputs, mutations, invariants) are those of
bench/fuzz.py, which runs 10,000+ inputs per reader; here a few dozen each, derandomized (the same inputs on
every run), plus the inputs that once failed as explicit examples."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("ferkit_bench_fuzz", ROOT / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fuzz  # dataclasses look their module up there
_spec.loader.exec_module(fuzz)
fuzz.BOMB_MIB = (1, 16)  # gzip bombs: small ones here; bench/fuzz.py also unpacks past the 1 GiB cap
Case, SeedFile = fuzz.Case, fuzz.SeedFile

EXAMPLES = 40
SUITE = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,  # fuzz.attempt's own limits stand in for it (10 s of CPU, 60 s of wall time)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
_SEEDS: dict[str, object] = {}  # target name -> its seed inputs; "": the module's working folder

# What the explicit examples (inputs that once failed) are made of.
FACE_PNG = fuzz.encode_image("PNG", "L", 48, 48, 0)
_GIF = fuzz.encode_image("GIF", "P", 20, 20, 3)
BOMB_GIF = _GIF[:6] + b"\xff" * 4 + _GIF[10:]  # a 65535 x 65535 screen: Pillow's DecompressionBombError
EMPTY_IHDR_PNG = FACE_PNG[:8] + b"\x00" * 4 + FACE_PNG[12:]  # Pillow's ValueError: Truncated IHDR chunk
TINY = torch.load(ROOT / "tests" / "fixtures" / "tiny_cnn.pth", weights_only=True)
ENSEMBLE = "ferkit-ensemble"
CARD = json.loads((ROOT / "src" / "ferkit" / "weights" / "ferkit-fer2013-fast.json").read_text())


def checkpoint(**changes) -> Case:
    """The fixture checkpoint with some entries replaced (None: removed)."""
    ckpt = {k: v for k, v in {**TINY, **changes}.items() if v is not None}
    return Case({"model.pth": fuzz.torch_bytes(ckpt)}, {"model": "model.pth"})


def ferplus_votes(votes: str) -> Case:
    """A FER+ file whose first row has these votes, beside the seed CSV."""
    text = f"{fuzz.FERPLUS_HEADER}\nTraining,fer0000000.png,{votes}\n"
    return Case(
        {"fer2013.csv": SeedFile("fer2013.csv"), "fer2013new.csv": text.encode()}, {"labels": "ferplus"}
    )


def ensemble(spec: object) -> Case:
    """An ensemble spec beside the fixture checkpoint."""
    spec_bytes = spec if isinstance(spec, bytes) else json.dumps(spec).encode()
    return Case({"ens.json": spec_bytes, "tiny_cnn.pth": SeedFile("tiny_cnn.pth")}, {"model": "ens.json"})


@pytest.fixture(scope="module", autouse=True)
def _workspace(tmp_path_factory: pytest.TempPathFactory):
    """One folder for the module's seeds and sandboxes: Hypothesis draws need the seeds, and a draw cannot
    take a function-scoped fixture."""
    _SEEDS[""] = tmp_path_factory.mktemp("fuzz")
    yield
    _SEEDS.clear()


def sandbox(name: str) -> Path:
    return _SEEDS[""] / name / "sandbox"


def seeds(name: str):
    """The target's seed inputs, built once."""
    if name not in _SEEDS:
        _SEEDS[name] = fuzz.build_seeds(fuzz.TARGETS[name], _SEEDS[""] / name / "seeds")
    return _SEEDS[name]


def cases(name: str) -> st.SearchStrategy:
    return st.deferred(lambda: fuzz.TARGETS[name].cases(seeds(name)))


def check(name: str, case) -> str:
    """The outcome ("valid" or "error"); any other is a test failure with the reader's traceback."""
    try:
        return fuzz.attempt(fuzz.TARGETS[name], case, seeds(name), sandbox(name))[0]
    except fuzz.Failure as f:
        pytest.fail(f"{name}: {f}\n{f.detail}", pytrace=False)
    except fuzz.Timeout as t:
        pytest.fail(f"{name}: hang: {t}", pytrace=False)


@SUITE
@given(case=cases("csv"))
def test_csv(case) -> None:
    check("csv", case)


@SUITE
@given(case=cases("gzip"))
def test_gzip(case) -> None:
    check("gzip", case)


@SUITE
@given(case=cases("ferplus"))
@example(
    case=Case({"fer2013.csv": SeedFile("fer2013.csv"), "fer2013new.csv": b"a\rb,c\n"}, {"labels": "votes"})
)
@example(case=ferplus_votes("99999999999999999999,0,0,0,0,0,0,0,0,0"))  # OverflowError
@example(
    case=ferplus_votes(f"{2**62 - 1},{2**62 - 1},{2**62 - 1},{2**62 - 1},5,0,0,0,0,0")
)  # a sum overflowed
def test_ferplus(case) -> None:
    check("ferplus", case)


@SUITE
@given(case=cases("folders"))
@example(case=Case({"root/hap\npy/a.png": FACE_PNG}, {"skip_bad_rows": False}))  # a line break in a message
@example(case=Case({"root/happy/a.gif": BOMB_GIF}, {"skip_bad_rows": True}))  # DecompressionBombError
@example(case=Case({"root/happy/a.png": EMPTY_IHDR_PNG}, {"skip_bad_rows": False}))  # ValueError
def test_image_folders(case) -> None:
    check("folders", case)


@SUITE
@given(case=cases("archive"))
@example(case=Case({"data.zip": fuzz.build_archive("zip", [("train/hap\npy/a.png", "file", FACE_PNG)])},
                   {"skip_bad_rows": False}))  # fmt: skip
def test_archives(case) -> None:
    check("archive", case)


@SUITE
@given(case=cases("config"))
@example(case=Case({"config.yaml": b"lr: .nan\n"}))  # accepted
@example(case=Case({"config.yaml": b"epochs: true\n"}))  # read as 1
@example(case=Case({"config.yaml": b"model: [cnn]\n"}))  # read as "['cnn']"
@example(case=Case({"config.yaml": fuzz.laughs("tags", 3).encode()}))  # 9 levels: hours and gigabytes
@example(case=Case({"config.yaml": b"[" * 5000 + b"]" * 5000}))  # RecursionError
@example(case=Case({"config.yaml": b"lr: 1" + b"0" * 400}))  # OverflowError
@example(case=Case({"config.yaml": b"seed: " + b"9" * 5000}))  # ValueError (int digits limit)
@example(case=Case({"config.yaml": b"base: " + b"a" * 5000}))  # OSError (name too long)
@example(case=Case({"config.yaml": b"base: config.yaml\n"}))  # a loop
def test_yaml_config(case) -> None:
    check("config", case)


@SUITE
@given(case=cases("checkpoint"))
@example(case=checkpoint(input_size=["48", "48"]))  # TypeError in resize
@example(case=checkpoint(model_args={"width": "4"}))  # TypeError in the builder
@example(case=checkpoint(model_args={"num_classes": "7"}))  # TypeError in create_model
@example(case=checkpoint(model_args={"width": 4, "pretrained": "imagenet"}))  # weights from elsewhere
@example(case=checkpoint(arch=None))  # KeyError
@example(case=checkpoint(mean=[float("nan")]))  # NaN probabilities
@example(case=checkpoint(std=[0.0]))  # NaN probabilities
@example(case=checkpoint(input_size=[1, 4, 4]))  # RuntimeError: too small for four poolings
@example(case=checkpoint(model={**TINY["model"], "classifier.6.bias": torch.full((7,), float("nan"))}))
@example(case=checkpoint(model={**TINY["model"], "features.3.4.bias": torch.full((32,), 3e38)}))  # overflows
def test_checkpoint(case) -> None:
    check("checkpoint", case)


@SUITE
@given(case=cases("card"))
@example(case=Case({"card.json": b"[" * 100_000 + b"]" * 100_000}, {"model": "card.json"}))  # RecursionError
@example(case=Case({"card.json": fuzz.json_bytes({**CARD, "members": {"a": 1}})}, {"model": "card.json"}))
@example(case=Case({"card.json": fuzz.json_bytes({**CARD, "class_names": 7})}, {"model": "card.json"}))
@example(case=Case({"card.json": fuzz.json_bytes({**CARD, "weights": 5})}, {"model": "card.json"}))
@example(case=Case({"card.json": fuzz.json_bytes({**CARD, "weights": "a\x00"})}, {"model": "card.json"}))
@example(case=Case({"card.json": fuzz.json_bytes({**CARD, "weights": "a" * 300})}, {"model": "card.json"}))
def test_model_card(case) -> None:
    check("card", case)


@SUITE
@given(case=cases("ensemble"))
@example(case=ensemble(b"[" * 100_000 + b"]" * 100_000))  # RecursionError
@example(case=ensemble({"format": ENSEMBLE, "members": ["tiny_cnn.pth"]}))  # TypeError
@example(case=ensemble({"format": ENSEMBLE, "members": [{"weight": 1}]}))  # KeyError
@example(case=ensemble({"format": ENSEMBLE, "members": [{"path": None}]}))  # TypeError
@example(
    case=ensemble({"format": ENSEMBLE, "members": [{"path": "tiny_cnn.pth", "weight": "x"}]})
)  # ValueError
@example(case=ensemble({"format": ENSEMBLE, "members": [{"path": "tiny_cnn.pth", "weight": 0}]}))  # NaN votes
@example(
    case=ensemble(
        {"format": ENSEMBLE, "members": [{"path": "tiny_cnn.pth", "weight": -1}, {"path": "tiny_cnn.pth"}]}
    )
)
@example(case=ensemble({"format": ENSEMBLE, "members": [{"path": "tiny_cnn.pth\x00"}]}))  # ValueError
@example(case=ensemble({"format": ENSEMBLE, "members": [{"path": "a" * 300}]}))  # OSError: name too long
@example(case=ensemble({"format": ENSEMBLE, "members": [{"path": "a" * 300 + ".pth"}]}))
def test_ensemble_spec(case) -> None:
    check("ensemble", case)


@SUITE
@given(case=cases("onnx"))
def test_onnx(case) -> None:
    pytest.importorskip("onnxruntime")
    check("onnx", case)


@SUITE
@given(case=cases("image"))
@example(case=Case({"image.gif": BOMB_GIF}))
def test_image(case) -> None:
    check("image", case)


@SUITE
@given(case=cases("video"))
def test_video(case) -> None:
    check("video", case)


@pytest.mark.parametrize(
    "edits",
    [[("input_dim", 0, "")], [("class_names", 0, "[1, 2")]],
    ids=["fixed-batch", "bad-class-json"],
)
def test_onnx_inputs_that_once_failed(edits) -> None:
    """A fixed batch size (a traceback from ONNX Runtime at predict time); class names that are not JSON."""
    pytest.importorskip("onnxruntime")
    data = fuzz.apply_onnx_edits(seeds("onnx").bytes("model.onnx"), edits)
    assert check("onnx", Case({"model.onnx": data})) == "error"


def test_a_gzip_bomb_is_refused_at_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a .gz unpacks to is capped (1 GiB; 1 MiB here): a bomb costs no more memory than the cap."""
    monkeypatch.setattr("ferkit.data.csv_reader.MAX_BYTES", 1 << 20)
    bomb = Case({"fer2013.csv.gz": fuzz.gzip_bomb(2)}, {"skip_bad_rows": False, "same": False})
    target = fuzz.TARGETS["gzip"]
    kind, message = fuzz.attempt(target, bomb, seeds("gzip"), sandbox("gzip"))
    assert kind == "error" and "unpacks to more than 1 MiB" in message


def test_the_seed_inputs_are_read_as_valid() -> None:
    """The mutations start from inputs each reader accepts (else every input would only test errors)."""
    valid = {
        "csv": Case({"fer2013.csv": SeedFile("fer2013.csv")}, {"skip_bad_rows": False, "same": True}),
        "config": Case({"config.yaml": SeedFile("cnn.yaml")}),
        "checkpoint": Case({"model.pth": SeedFile("model.pth")}, {"model": "model.pth"}),
        "ensemble": Case(
            {"ens.json": SeedFile("tiny_ensemble.json"), "tiny_cnn.pth": SeedFile("tiny_cnn.pth")},
            {"model": "ens.json"},
        ),
        "image": Case({"image.jpg": SeedFile("photo.jpg")}),
        "video": Case({"clip.mp4": SeedFile("clip.mp4")}, {"every": 1.0}),
    }
    for name, case in valid.items():
        assert check(name, case) == "valid", name


@pytest.mark.slow  # starts bench/fuzz.py in a subprocess
def test_bench_fuzz_reports_a_table(tmp_path: Path) -> None:
    """`bench/fuzz.py` runs end to end: a reader in its own process, its counts in a table."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--examples", "3", "--readers", "csv"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| csv |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and int(cells[2]) + int(cells[3]) == 3 and cells[4] == "0", row
