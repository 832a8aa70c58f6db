"""Model cards: `ferkit ship` writes safetensors + a JSON card whose accuracy `ferkit evaluate` reproduces,
and the model shipped inside ferkit is what every command uses when --model_path is left out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, write_fer_csv
from PIL import Image

from ferkit.data import load_dataset
from ferkit.errors import FerkitError
from ferkit.runtime.loading import load_predictor, save_ensemble_spec
from ferkit.runtime.model_card import SHIPPED_CARD, SHIPPED_DIR, shipped_models, to_storage

SHIPPED_MAX_BYTES = 20 * 1024 * 1024


def ship(run_ferkit, model: Path, card: Path, data: Path, *extra: str):
    return run_ferkit(
        "ship",
        "--model_path",
        model,
        "--output",
        card,
        "--command",
        "ferkit train (test)",
        "--data",
        data,
        *extra,
    )


def evaluate_json(run_ferkit, data: Path, split: str, *model_args: str) -> dict:
    # the shipped ensemble takes about a minute on PrivateTest on 2 idle cores: room for a busy machine
    proc = run_ferkit(
        "evaluate", *model_args, "--data", data, "--split", split, "--format", "json", "--wandb", "disabled",
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_ship_writes_safetensors_and_a_card_that_evaluate_agrees_with(
    tmp_path, tiny_checkpoint, tiny_real_csv, run_ferkit
) -> None:
    card_path = tmp_path / "out" / "model.json"
    proc = ship(run_ferkit, tiny_checkpoint, card_path, tiny_real_csv)
    assert proc.returncode == 0, proc.stderr
    card = json.loads(card_path.read_text())
    weights = card_path.with_suffix(".safetensors")
    assert card["format"] == "ferkit-model-card" and card["weights"] == weights.name
    assert card["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert card["members"][0]["arch"] == "cnn" and card["members"][0]["mean"]
    assert card["tta"] == "flip" and card["training_command"] == "ferkit train (test)"
    data = Path(tiny_real_csv)  # named by content, not by a path that means nothing elsewhere
    assert card["data"] == {"file": data.name, "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    assert set(card["accuracy"]) == {"PublicTest", "PrivateTest"}
    assert set(card["accuracy"]["PrivateTest"]) == {"none", "flip"}
    # `ferkit evaluate` on the card (its default TTA) prints the card's number
    report = evaluate_json(run_ferkit, tiny_real_csv, "PrivateTest", "--model_path", str(card_path))
    assert report["tta"] == "flip"
    assert report["accuracy"] == pytest.approx(card["accuracy"]["PrivateTest"]["flip"], abs=1e-6)
    # float16 storage keeps the checkpoint's predictions
    faces = load_dataset(tiny_real_csv).images[:64]
    original, _ = load_predictor(tiny_checkpoint, "cpu")
    shipped, tta = load_predictor(card_path, "cpu")
    assert tta == "flip"
    assert np.abs(original.predict(faces) - shipped.predict(faces)).max() < 5e-3


def test_a_ship_that_cannot_measure_leaves_the_earlier_card_intact(
    tmp_path, tiny_checkpoint, tiny_real_csv, real_dataset, run_ferkit
) -> None:
    card_path = tmp_path / "out" / "model.json"
    assert ship(run_ferkit, tiny_checkpoint, card_path, tiny_real_csv).returncode == 0
    before = {p.name: p.read_bytes() for p in card_path.parent.iterdir()}
    rows = np.flatnonzero(real_dataset.splits == "PublicTest")[:200]  # measured on PublicTest, then fails
    data = write_fer_csv(
        tmp_path / "no_private.csv",
        real_dataset.images[rows],
        real_dataset.labels[rows],
        real_dataset.splits[rows],
    )
    proc = ship(run_ferkit, tiny_checkpoint, card_path, data, "--weights_dtype", "int8")
    assert_one_line_error(proc, "PrivateTest")
    assert {p.name: p.read_bytes() for p in card_path.parent.iterdir()} == before


def test_int8_storage_is_smaller_and_keeps_the_predictions(
    tmp_path, tiny_checkpoint, tiny_real_csv, run_ferkit
) -> None:
    half, int8 = tmp_path / "half.json", tmp_path / "int8.json"
    assert ship(run_ferkit, tiny_checkpoint, half, tiny_real_csv).returncode == 0
    proc = ship(run_ferkit, tiny_checkpoint, int8, tiny_real_csv, "--weights_dtype", "int8")
    assert proc.returncode == 0, proc.stderr
    card = json.loads(int8.read_text())
    assert card["weights_dtype"] == "int8"
    assert card["parameters"] == json.loads(half.read_text())["parameters"]
    size = {p: p.with_suffix(".safetensors").stat().st_size for p in (half, int8)}
    assert size[int8] < 0.65 * size[half]
    faces = load_dataset(tiny_real_csv).images[:64]
    original = load_predictor(tiny_checkpoint, "cpu")[0].predict(faces)
    stored = load_predictor(int8, "cpu")[0].predict(faces)
    assert np.abs(original - stored).max() < 2e-2
    assert (original.argmax(1) == stored.argmax(1)).mean() >= 0.95
    report = evaluate_json(run_ferkit, tiny_real_csv, "PrivateTest", "--model_path", str(int8))
    assert report["accuracy"] == pytest.approx(card["accuracy"]["PrivateTest"]["flip"], abs=1e-6)
    with pytest.raises(FerkitError, match="weights_dtype 'int4'"):
        to_storage("w", torch.ones(2, 2), "int4")


def test_an_ensemble_ships_as_one_file_with_its_weights(tmp_path, tiny_checkpoint, tiny_real_csv, run_ferkit):
    spec = tmp_path / "ens.json"
    save_ensemble_spec(spec, [str(tiny_checkpoint)] * 2, np.array([1.0, 3.0]), "none", "test")
    card_path = tmp_path / "ens_card.json"
    proc = ship(run_ferkit, spec, card_path, tiny_real_csv, "--tta", "none")
    assert proc.returncode == 0, proc.stderr
    card = json.loads(card_path.read_text())
    assert [m["weight"] for m in card["members"]] == [0.25, 0.75]
    faces = load_dataset(tiny_real_csv).images[:32]
    ensemble, _ = load_predictor(spec, "cpu")
    shipped, tta = load_predictor(card_path, "cpu")
    assert tta == "none" and len(shipped.members) == 2
    assert np.abs(ensemble.predict(faces) - shipped.predict(faces)).max() < 5e-3


def test_model_hash_n_is_one_network_of_an_ensemble(tmp_path, tiny_real_csv, run_ferkit) -> None:
    """`ferkit-fer2013#N` is the shipped ensemble's network N alone, and ensembles can be built of such
    networks (so a new ensemble can keep some of the shipped one's members)."""
    faces = load_dataset(tiny_real_csv).images[:16]
    shipped, _ = load_predictor("ferkit-fer2013", "cpu")
    n = len(shipped.members)
    last, tta = load_predictor(f"ferkit-fer2013#{n - 1}", "cpu")
    assert tta == "none" and last.arch == shipped.members[-1].arch
    assert np.array_equal(last.predict(faces), shipped.members[-1].predict(faces))
    names = ["ferkit-fer2013#0", f"ferkit-fer2013#{n - 1}"]
    spec = tmp_path / "pair.json"
    save_ensemble_spec(spec, names, np.array([1.0, 1.0]), "none", "test")
    assert [m["path"] for m in json.loads(spec.read_text())["members"]] == names
    pair, _ = load_predictor(spec, "cpu")
    expected = (shipped.members[0].predict(faces) + shipped.members[-1].predict(faces)) / 2
    assert np.abs(pair.predict(faces) - expected).max() < 1e-6
    wrong = f"ferkit-fer2013#{n}"
    proc = run_ferkit("evaluate", "--model_path", wrong, "--data", tiny_real_csv, "--wandb", "disabled")
    assert_one_line_error(proc, "ferkit-fer2013", f"holds {n} network(s)", f"not #{n}")


def test_damaged_or_missing_weights_and_foreign_cards_are_one_line_errors(
    tmp_path, tiny_checkpoint, tiny_real_csv, run_ferkit
) -> None:
    card_path = tmp_path / "model.json"
    assert ship(run_ferkit, tiny_checkpoint, card_path, tiny_real_csv).returncode == 0
    weights = card_path.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"format": "something-else"}')
    incomplete = tmp_path / "incomplete.json"
    incomplete.write_text('{"format": "ferkit-model-card", "members": [{"arch": "cnn"}]}')
    cases = {
        card_path: "checksum differs",
        foreign: "neither a ferkit ensemble spec nor a model card",
        incomplete: "incomplete model card (missing: weights, class_names, members[0].model_args",
    }
    for path, message in cases.items():
        proc = run_ferkit("evaluate", "--model_path", path, "--data", tiny_real_csv, "--wandb", "disabled")
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and str(path.name) in proc.stderr
    weights.unlink()
    face = tmp_path / "face.png"
    Image.fromarray(load_dataset(tiny_real_csv).images[0]).save(face)
    proc = run_ferkit("predict", "--model_path", card_path, "--no-detect", face)
    assert proc.returncode == 1 and "is missing" in proc.stderr
    proc = run_ferkit("predict", "--model_path", "ferkit-nope", "--no-detect", face)
    assert proc.returncode == 1 and "ferkit-nope: neither a model file nor a shipped model" in proc.stderr
    proc = ship(run_ferkit, tiny_checkpoint, tmp_path / "card.txt", tiny_real_csv)
    assert proc.returncode == 1 and "--output" in proc.stderr


def test_the_shipped_models_fit_in_20_mb_and_the_default_is_one_of_them() -> None:
    shipped = shipped_models()
    assert shipped["ferkit-fer2013"] == SHIPPED_CARD
    cards = [json.loads(p.read_text()) for p in shipped.values()]
    assert sum((SHIPPED_DIR / c["weights"]).stat().st_size for c in cards) <= SHIPPED_MAX_BYTES


@pytest.mark.parametrize("name", sorted(shipped_models()))
def test_a_shipped_models_card_matches_evaluate(name, real_data_path, run_ferkit) -> None:
    card_path = shipped_models()[name]
    card = json.loads(card_path.read_text())
    assert card["training_command"] and card["commit"] and card["date"]
    # the default model takes no --model_path; the others are picked by name
    by_name = () if card_path == SHIPPED_CARD else ("--model_path", name)
    report = evaluate_json(run_ferkit, real_data_path, "PrivateTest", *by_name)
    assert report["model_path"] == str(card_path) and report["tta"] == card["tta"]
    assert report["num_images"] == 3589
    assert report["accuracy"] == pytest.approx(card["accuracy"]["PrivateTest"][card["tta"]], abs=1e-6)
