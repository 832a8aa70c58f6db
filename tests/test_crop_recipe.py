"""The 40-pixel crop recipe (`crop_size`): random crops of the 48x48 faces in training, crops at test (centre,
or the four corners and the centre, mirrored), carried by the checkpoint and the model card."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, ferkit_train_cmd

import ferkit
from ferkit.classes import CLASS_NAMES
from ferkit.config import TrainConfig
from ferkit.data import load_dataset
from ferkit.data.transforms import BatchTransform, tta_views
from ferkit.errors import FerkitError
from ferkit.runtime.checkpoint import check_payload, load_checkpoint, model_from_checkpoint
from ferkit.runtime.explain import member_maps
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import CheckpointModel

CPU = torch.device("cpu")
# (top, left) of the ten-crop views of a 40-pixel crop model, written out: corners, then the centre
TEN_CROPS_40 = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]


def crop_transform(crop_size: int = 40, preset: str = "none") -> BatchTransform:
    return BatchTransform((1, 48, 48), (0.0,), (1.0,), preset, crop_size=crop_size)


def test_crop_views_are_the_corner_and_centre_crops_and_their_mirror_images() -> None:
    x = torch.arange(2 * 48 * 48, dtype=torch.float32).view(2, 1, 48, 48)
    tf = crop_transform()
    crops = [x[..., t : t + 40, s : s + 40] for t, s in TEN_CROPS_40]
    (centre,) = tf.views(x, "none")
    assert torch.equal(centre, crops[4])
    flip = tf.views(x, "flip")
    assert len(flip) == 2 and torch.equal(flip[0], crops[4]) and torch.equal(flip[1], crops[4].flip(-1))
    ten = tf.views(x, "tencrop")
    assert len(ten) == 10
    for got, want in zip(ten, crops + [c.flip(-1) for c in crops], strict=True):
        assert torch.equal(got, want)
    # an odd margin: the centre crop starts at 3 (7 pixels to share), the far corner at 7
    odd = crop_transform(41).views(x, "tencrop")
    assert torch.equal(odd[4], x[..., 3:44, 3:44]) and torch.equal(odd[3], x[..., 7:48, 7:48])
    # prepare: whole faces given to a crop model are centre-cropped, its views kept as they are
    assert torch.equal(tf.prepare(x), crops[4]) and torch.equal(tf.prepare(crops[0]), crops[0])


@pytest.mark.parametrize("tta", ["none", "flip", "tencrop"])
def test_whole_face_views_are_unchanged(tta: str) -> None:
    x = torch.rand(3, 1, 48, 48)
    whole = BatchTransform((1, 48, 48), (0.5,), (0.5,))
    assert whole.size == (48, 48)
    got, want = whole.views(x, tta), tta_views(x, tta)
    assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_training_crops_are_random_whole_pixel_crops_inside_the_face() -> None:
    torch.manual_seed(0)
    faces = torch.randint(0, 256, (64, 48, 48), dtype=torch.uint8)
    out = crop_transform()(faces)
    assert out.shape == (64, 1, 40, 40)
    x = faces.float() / 255
    places = set()
    for i in range(len(faces)):
        found = [
            (t, s)
            for t in range(9)
            for s in range(9)
            if torch.allclose(out[i, 0], x[i, t : t + 40, s : s + 40], atol=1e-5)
        ]
        assert found, f"face {i} is not a 40x40 crop of itself"
        places.add(found[0])
    assert len(places) > 20  # positions drawn per face (81 possible), not one fixed crop
    # with a preset, its flips and turns on top: still 40x40 crops of the faces
    assert crop_transform(preset="standard")(faces).shape == (64, 1, 40, 40)


def test_a_crop_run_trains_and_validates_on_crops() -> None:
    from ferkit.models import create_model
    from ferkit.training.setup import transforms

    train_tf, eval_tf = transforms(TrainConfig(crop_size=40), create_model("cnn"), channels_last=False)
    assert train_tf.crop_size == eval_tf.crop_size == 40 and train_tf.size == eval_tf.size == (40, 40)
    assert train_tf.preset.geometric and not eval_tf.preset.geometric
    assert train_tf.at_size((40, 40)) is train_tf  # the loop's per-epoch size, without progressive resizing
    faces = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    assert train_tf(faces).shape == (4, 1, 40, 40)


def test_bad_crop_options_are_refused() -> None:
    with pytest.raises(FerkitError, match="do not combine"):
        TrainConfig(crop_size=40, progressive_resize=32).validate()
    with pytest.raises(FerkitError, match="expected 16 to 47"):
        TrainConfig(crop_size=8).validate()
    TrainConfig(crop_size=40).validate()
    with pytest.raises(FerkitError, match="crop_size 48"):
        BatchTransform((1, 48, 48), (0.5,), (0.5,), crop_size=48)
    with pytest.raises(FerkitError, match="does not combine"):
        crop_transform().at_size((32, 32), crop=True)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--crop_size", "48"], ["'crop_size'", "above 47"]),
        (["--crop_size", "40", "--progressive_resize", "32"], ["--crop_size", "--progressive_resize"]),
    ],
)
def test_bad_crop_options_are_one_line_errors(run_ferkit, tmp_path: Path, args, needles) -> None:
    proc = run_ferkit("train", "--data", tmp_path / "none.csv", "--output_dir", tmp_path / "run", *args)
    assert_one_line_error(proc, *needles)


@pytest.fixture(scope="module")
def crop_checkpoint(tiny_real_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pth of a real (tiny) `ferkit train` run of the crop recipe on `tiny_real_csv`."""
    out = tmp_path_factory.mktemp("crop-run") / "run"
    args = ["--config", "configs/cnn_crop40.yaml", "--epochs", "1", "--batch_size", "32"]
    args += ["--limit_batches", "3", "--wandb", "disabled", "--no-progress"]
    proc = subprocess.run(
        ferkit_train_cmd(tiny_real_csv, out, *args),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    return out / "best.pth"


def ten_crops_by_hand(ckpt: dict, faces: np.ndarray) -> np.ndarray:
    """The mean softmax over the ten 40x40 crops, cut and normalised here, run on the rebuilt model."""
    model = model_from_checkpoint(ckpt)
    x = torch.from_numpy(faces).float()[:, None] / 255
    crops = [x[..., t : t + 40, s : s + 40] for t, s in TEN_CROPS_40]
    views = crops + [c.flip(-1) for c in crops]
    mean, std = ckpt["mean"][0], ckpt["std"][0]
    with torch.no_grad():
        probs = sum(model((v - mean) / std).softmax(1) for v in views) / len(views)
    return probs.double().numpy()


def test_a_crop_run_writes_a_crop_model_that_loads_with_its_crops(
    crop_checkpoint: Path, tiny_real_csv
) -> None:
    ckpt = load_checkpoint(crop_checkpoint)
    assert ckpt["config"]["crop_size"] == 40 and ckpt["input_size"] == [1, 48, 48]
    model = CheckpointModel.load(crop_checkpoint, CPU)
    assert model.transform.crop_size == 40 and model.transform.size == (40, 40)
    faces = load_dataset(tiny_real_csv).images[:24]
    rec = ferkit.load(str(crop_checkpoint), device="cpu", tta="tencrop")
    assert np.abs(rec.classify(faces) - ten_crops_by_hand(ckpt, faces)).max() < 1e-5
    # files without the entry (from before the recipe) are whole-face models, as before
    del ckpt["config"]["crop_size"]
    whole = CheckpointModel.from_payload(ckpt, "old", CPU)
    assert whole.transform.crop_size == 0 and whole.transform.size == (48, 48)
    for bad in (99, True, "40"):
        with pytest.raises(FerkitError, match="crop_size .* is not a crop side below 48"):
            check_payload(ckpt | {"crop_size": bad}, "bad.pth")


def test_evaluate_tencrop_of_a_crop_model_averages_the_ten_crops(
    run_ferkit, crop_checkpoint: Path, tiny_real_csv: Path, tmp_path: Path
) -> None:
    pred = tmp_path / "pred.csv"
    proc = run_ferkit(
        "evaluate", "--model_path", crop_checkpoint, "--data", tiny_real_csv, "--split", "PrivateTest",
        "--tta", "tencrop", "--predictions", pred, "--wandb", "disabled",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(pred, newline="") as f:
        rows = list(csv.DictReader(f))
    ds = load_dataset(tiny_real_csv)
    faces = ds.images[[int(r["index"]) for r in rows]]
    probs = np.array([[float(r[c]) for c in CLASS_NAMES] for r in rows])
    assert len(rows) == 140
    assert np.abs(probs - ten_crops_by_hand(load_checkpoint(crop_checkpoint), faces)).max() < 1e-5


def test_a_shipped_crop_model_keeps_its_crop(
    run_ferkit, crop_checkpoint: Path, tiny_real_csv, tmp_path
) -> None:
    card_path = tmp_path / "crop.json"
    proc = run_ferkit(
        "ship", "--model_path", crop_checkpoint, "--output", card_path, "--command", "test",
        "--data", tiny_real_csv, "--tta", "tencrop",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    card = json.loads(card_path.read_text())
    assert card["members"][0]["crop_size"] == 40
    shipped, tta = load_predictor(card_path, "cpu")
    assert tta == "tencrop" and shipped.transform.crop_size == 40
    faces = load_dataset(tiny_real_csv).images[:32]
    original = CheckpointModel.load(crop_checkpoint, CPU)
    assert np.abs(original.predict(faces, "tencrop") - shipped.predict(faces, "tencrop")).max() < 5e-3
    # an ONNX graph takes whole faces and crops their centre: it cannot take a crop model's ten crops
    proc = run_ferkit(
        "export", "--model_path", card_path, "--output", tmp_path / "crop.onnx", "--data", tiny_real_csv
    )
    assert_one_line_error(proc, "ten-crop", "crop_size 40", "--tta flip")
    assert not (tmp_path / "crop.onnx").exists()


def test_an_exported_crop_model_sees_its_centre_crop(
    run_ferkit, crop_checkpoint: Path, tiny_real_csv, tmp_path
) -> None:
    """The ONNX graph of a crop model crops the centre of the whole face it is given, so it agrees with
    PyTorch without TTA and with flip; ten-crop (corner crops) is refused, not run on other views."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ferkit.runtime.onnx import OnnxPredictor

    onnx_path = tmp_path / "crop.onnx"
    proc = run_ferkit(
        "export", "--model_path", crop_checkpoint, "--output", onnx_path, "--data", tiny_real_csv
    )
    assert proc.returncode == 0, proc.stderr
    exported, original = OnnxPredictor(onnx_path), CheckpointModel.load(crop_checkpoint, CPU)
    assert exported.crop_sizes == [40]
    faces = load_dataset(tiny_real_csv).images[:48]
    for tta in ("none", "flip"):
        assert np.abs(exported.predict(faces, tta) - original.predict(faces, tta)).max() < 1e-4, tta
    with pytest.raises(FerkitError, match="ten-crop TTA of a crop model .crop_size 40."):
        exported.predict(faces, "tencrop")


def test_grad_cam_of_a_crop_model_covers_its_centre_crop(crop_checkpoint: Path, tiny_real_csv) -> None:
    model = CheckpointModel.load(crop_checkpoint, CPU)
    faces = load_dataset(tiny_real_csv).images[:4]
    heat = member_maps(model, faces, np.zeros(4, np.int64), 4)
    assert heat.shape == (4, 48, 48)
    border = np.ones((48, 48), bool)
    border[4:44, 4:44] = False
    assert (heat[:, border] == 0).all() and heat[:, 4:44, 4:44].max() > 0
