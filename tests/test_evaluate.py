"""`ferkit evaluate` / `ferkit ensemble` end to end on a real tiny checkpoint: exact, recomputable, honest."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from ferkit.classes import CLASS_NAMES
from ferkit.data import load_dataset
from ferkit.data.transforms import tta_views
from ferkit.evaluation.evaluate import evaluate_ensemble
from ferkit.metrics import classification_report
from ferkit.runtime.checkpoint import load_checkpoint
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import CheckpointModel
from ferkit.utils.device import BF16_EMULATED_WARNING, cpu_has_bf16

QUIET = ["--wandb", "disabled"]


def test_predictions_file_recomputes_every_reported_number(
    run_ferkit, tiny_real_csv, tiny_checkpoint, tmp_path
):
    pred = tmp_path / "pred.csv"
    proc = run_ferkit(
        "evaluate",
        "--model_path",
        tiny_checkpoint,
        "--data",
        tiny_real_csv,
        "--split",
        "PrivateTest",
        "--predictions",
        pred,
        "--format",
        "json",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    with open(pred, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["index", "true", "pred", *CLASS_NAMES]
    ds = load_dataset(tiny_real_csv).split("PrivateTest")
    assert [int(r["index"]) for r in rows] == sorted(ds.indices.tolist())  # source order, source rows
    y = np.array([CLASS_NAMES.index(r["true"]) for r in rows])
    assert y.tolist() == ds.labels[np.argsort(ds.indices)].tolist()
    probs = np.array([[float(r[c]) for c in CLASS_NAMES] for r in rows])
    assert [CLASS_NAMES[i] for i in probs.argmax(1)] == [r["pred"] for r in rows]
    again = classification_report(y, probs, CLASS_NAMES)
    assert again["confusion_matrix"] == report["confusion_matrix"]
    assert again["per_class"] == report["per_class"]
    for key in ("accuracy", "macro_f1", "ece", "num_images"):
        assert again[key] == pytest.approx(report[key], abs=1e-7), key
    assert report["num_images"] == 140 and set(report) >= {
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
    }


def test_tta_views_and_averaging(tiny_real_csv, tiny_checkpoint) -> None:
    x = torch.rand(3, 1, 48, 48)
    assert len(tta_views(x, "none")) == 1
    flip = tta_views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[1], x.flip(-1))
    ten = tta_views(x, "tencrop")
    assert len(ten) == 10 and all(v.shape == x.shape for v in ten)
    assert torch.equal(ten[4], x) and torch.equal(ten[9], x.flip(-1))  # the centre crop of the padded face
    model = CheckpointModel.load(tiny_checkpoint, torch.device("cpu"))
    faces = load_dataset(tiny_real_csv).images[:16]
    single = model.predict(faces)
    mirrored = model.predict(faces[:, :, ::-1].copy())
    assert np.allclose(model.predict(faces, "flip"), (single + mirrored) / 2, atol=1e-6)
    assert np.allclose(model.predict(faces, "tencrop").sum(1), 1.0)


def test_ensemble_weights_never_read_privatetest(tiny_real_csv, tiny_checkpoint, tmp_path) -> None:
    ds = load_dataset(tiny_real_csv)
    scrambled = ds.select(np.arange(len(ds)))
    private = scrambled.splits == "PrivateTest"
    scrambled.labels[private] = np.random.default_rng(0).permutation(scrambled.labels[private])
    scrambled.images[private] = 255 - scrambled.images[private]
    other = tmp_path / "other.pth"
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["model"] = {k: v * 0.9 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, other)
    members = [str(tiny_checkpoint), str(other)]
    a, _, _ = evaluate_ensemble(members, ds, "PublicTest", "fit", save=str(tmp_path / "a.json"))
    b, _, _ = evaluate_ensemble(members, scrambled, "PublicTest", "fit", save=str(tmp_path / "b.json"))
    assert [m["weight"] for m in a["members"]] == [m["weight"] for m in b["members"]]
    assert a["accuracy"] == b["accuracy"]
    assert json.loads((tmp_path / "a.json").read_text())["weights_fitted_on"] == "PublicTest"


def test_ensemble_reports_members_and_spec_is_accepted_by_evaluate(
    run_ferkit, tiny_real_csv, tiny_checkpoint, tmp_path
):
    spec = tmp_path / "ens.json"
    proc = run_ferkit(
        "ensemble",
        "--model_paths",
        tiny_checkpoint,
        tiny_checkpoint,
        "--data",
        tiny_real_csv,
        "--tta",
        "flip",
        "--save",
        spec,
        "--format",
        "json",
        *QUIET,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["members"]) == 2 and report["tta"] == "flip"
    assert report["accuracy"] == pytest.approx(report["members"][0]["accuracy"])  # identical members
    proc = run_ferkit("evaluate", "--model_path", spec, "--data", tiny_real_csv, "--format", "json", *QUIET)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["accuracy"] == report["accuracy"]  # the spec keeps its TTA


def test_precision_bf16_reports_what_bf16_inference_predicts(run_ferkit, tiny_real_csv, tiny_checkpoint):
    def evaluate(command, *extra):
        # the ensemble has two members, both the checkpoint: the same probabilities
        two = ("--model_paths", tiny_checkpoint, tiny_checkpoint)
        model = ("--model_path", tiny_checkpoint) if command == "evaluate" else two
        proc = run_ferkit(command, *model, "--data", tiny_real_csv, "--format", "json", *QUIET, *extra)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout), proc.stderr

    (fp32, fp32_err), (bf16, bf16_err) = evaluate("evaluate"), evaluate("evaluate", "--precision", "bf16")
    # emulated bf16 is slower than fp32: the user is told so, on exactly the CPUs without bf16 units
    assert BF16_EMULATED_WARNING not in fp32_err
    assert bf16_err.count(BF16_EMULATED_WARNING) == (not cpu_has_bf16())
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    data = load_dataset(tiny_real_csv).split("PrivateTest", labelled_only=True)
    model, _ = load_predictor(tiny_checkpoint, "cpu", "bf16")
    expected = classification_report(data.labels, model.predict(data.images), CLASS_NAMES)["accuracy"]
    assert bf16["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert abs(bf16["accuracy"] - fp32["accuracy"]) < 0.05
    bf16, bf16_err = evaluate("ensemble", "--precision", "bf16")
    assert bf16["accuracy"] == pytest.approx(expected, abs=1e-9)
    assert bf16_err.count(BF16_EMULATED_WARNING) == (not cpu_has_bf16())  # once for its two members
    proc = run_ferkit(
        "evaluate", "--model_path", tiny_checkpoint, "--data", tiny_real_csv, "--precision", "fp16"
    )
    assert_one_line_error(proc, "--precision fp16 needs a CUDA device")


def test_ensemble_members_may_be_specs_cards_and_shipped_models(
    run_ferkit, tiny_real_csv, tiny_checkpoint, tmp_path
) -> None:
    ds = load_dataset(tiny_real_csv)
    other = tmp_path / "other.pth"
    ckpt = load_checkpoint(tiny_checkpoint)
    ckpt["model"] = {k: v * 0.9 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, other)
    pair = tmp_path / "pair.json"
    evaluate_ensemble([str(tiny_checkpoint), str(other)], ds, "PublicTest", save=str(pair))
    outer = tmp_path / "outer.json"
    members = [str(pair), "ferkit-fer2013-fast", str(tiny_checkpoint)]
    report, data, probs = evaluate_ensemble(members, ds, "PrivateTest", "fit", tta="flip", save=str(outer))
    assert [m["path"] for m in report["members"]] == members
    assert report["members"][0]["arch"] == "ensemble(cnn, cnn)"
    spec = json.loads(outer.read_text())
    assert [m["path"] for m in spec["members"]] == ["pair.json", "ferkit-fer2013-fast", str(tiny_checkpoint)]
    flat, tta = load_predictor(outer, "cpu")  # nested ensembles vote as one flat ensemble
    w = [m["weight"] for m in report["members"]]
    assert tta == "flip" and np.allclose(flat.weights, [w[0] / 2, w[0] / 2, w[1], w[2]])
    assert np.allclose(flat.predict(data.images, "flip"), probs, atol=1e-9)
    loop = tmp_path / "loop.json"
    loop.write_text(json.dumps({"format": "ferkit-ensemble", "members": [{"path": "loop.json"}]}))
    proc = run_ferkit("evaluate", "--model_path", loop, "--data", tiny_real_csv, *QUIET)
    assert_one_line_error(proc, "loop.json: the ensemble contains itself")


def test_report_folder(run_ferkit, tiny_real_csv, tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "report"
    proc = run_ferkit(
        "evaluate", "--model_path", tiny_checkpoint, "--data", tiny_real_csv, "--report", out, *QUIET
    )
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert {"confusion_matrix.png", "per_class.png", "reliability.png", "mistakes.png", "summary.md"} <= names


def test_wandb_evaluate_job(run_ferkit, tiny_real_csv, tiny_checkpoint, tmp_path, inspect_wandb) -> None:
    out = tmp_path / "eval"
    env = {"HOME": str(tmp_path / "home"), "WANDB_MODE": None, "WANDB_API_KEY": None}
    proc = run_ferkit(
        "evaluate",
        "--model_path",
        tiny_checkpoint,
        "--data",
        tiny_real_csv,
        "--wandb",
        "offline",
        "--output_dir",
        out,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    recs = inspect_wandb(out)
    (run,) = recs["run"]
    assert run["job_type"] == "evaluate" if "job_type" in run else True
    logged = {k for h in recs.get("history", []) for k in h["item"]}
    assert "PrivateTest_confusion_matrix_table._type" in logged and "mistakes._type" in logged
    summary = {k: v for s in recs["summary"] for k, v in s["update"].items()}
    assert "PrivateTest/accuracy" in summary


def test_bad_checkpoints_and_inputs(
    run_ferkit, tiny_real_csv, tiny_checkpoint, make_fer_csv, tmp_path
) -> None:
    def evaluate(path, *extra):
        return run_ferkit("evaluate", "--model_path", path, "--data", tiny_real_csv, *QUIET, *extra)

    assert_one_line_error(evaluate(tmp_path / "missing.pth"), "not found")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    assert_one_line_error(evaluate(truncated), "truncated.pth")
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    assert_one_line_error(evaluate(foreign), "not a ferkit checkpoint")
    evil = tmp_path / "evil.pth"
    marker = tmp_path / "pwned"
    with open(evil, "wb") as f:  # a pickle that would create a file if it were ever unpickled unsafely
        pickle.dump(type("Evil", (), {"__reduce__": lambda s: (Path.touch, (marker,))})(), f)
    assert_one_line_error(evaluate(evil), "evil.pth")
    assert not marker.exists()
    other_classes = tmp_path / "eight.pth"
    ckpt = load_checkpoint(tiny_checkpoint)
    torch.save(ckpt | {"class_names": [*CLASS_NAMES, "Contempt"]}, other_classes)
    assert_one_line_error(evaluate(other_classes), "do not match")
    unlabelled = make_fer_csv(tmp_path / "test.csv", columns=("pixels",)).path
    proc = run_ferkit(
        "evaluate", "--model_path", tiny_checkpoint, "--data", unlabelled, "--split", "test", *QUIET
    )
    assert_one_line_error(proc, "no labelled rows")
    assert_one_line_error(run_ferkit("ensemble", "--model_paths", *QUIET), "model_paths")
    empty = tmp_path / "empty.json"
    empty.write_text('{"format": "ferkit-ensemble", "members": []}')
    assert_one_line_error(evaluate(empty), "no members")
