"""Class activation maps: shape and range, heat on the face in real photos with the shipped fast model,
an ensemble's map as its members' weighted mean, ONNX refused, overlays."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ferkit.apps.recognizer import gray_of, load_recognizer
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.runtime.explain import class_activation_maps, overlay, target_layer
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.predictor import Ensemble

FIXTURES = Path(__file__).parent / "fixtures"
CENTRE = np.zeros((48, 48), bool)
CENTRE[8:40, 8:40] = True  # the middle 44% of a crop: where a FER2013-framed face's features are


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    return np.load(FIXTURES / "faces.npy")[:6]


@pytest.fixture(scope="module")
def photo_crops() -> np.ndarray:
    """The faces the Haar cascade finds in real photos ($FERKIT_DATA's sibling faces-in-photos/)."""
    folder = Path(os.environ.get("FERKIT_DATA", "missing")).parent / "faces-in-photos"
    photos = sorted(folder.glob("*.jpg"))[:4]
    if not photos:
        pytest.skip(f"no real photos in {folder}")
    rec = load_recognizer("ferkit-fer2013-fast", device="cpu")
    return np.stack([c.crop for p in photos for c in rec.face_crops(gray_of(p))])


def test_maps_have_the_faces_shape_and_unit_range(faces: np.ndarray) -> None:
    predictor, _ = load_predictor(FIXTURES / "tiny_cnn.pth", "cpu")
    maps = class_activation_maps(predictor, faces)
    assert maps.shape == (len(faces), 48, 48) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0.5
    named = class_activation_maps(predictor, faces, ["Happy"] * len(faces))
    assert np.allclose(named, class_activation_maps(predictor, faces, [3] * len(faces)))
    assert class_activation_maps(predictor, faces[:0]).shape == (0, 48, 48)


def test_heat_lies_on_the_face_in_real_photos(photo_crops: np.ndarray) -> None:
    rec = load_recognizer("ferkit-fer2013-fast", device="cpu")
    maps = class_activation_maps(rec.predictor, photo_crops)
    inside = (maps * CENTRE).sum((1, 2)) / maps.sum((1, 2))
    assert len(photo_crops) >= 5
    assert np.median(inside) > 0.6 and (maps * CENTRE).sum() / maps.sum() > 0.6, inside


def test_ensemble_map_is_the_weighted_mean_of_its_members(faces: np.ndarray) -> None:
    first, _ = load_predictor(FIXTURES / "tiny_cnn.pth", "cpu")
    second, _ = load_predictor("ferkit-fer2013-fast", "cpu")
    mixed = Ensemble([first, second], np.array([1.0, 3.0]))
    classes = mixed.predict(faces).argmax(1)
    members = [class_activation_maps(m, faces, classes) for m in (first, second)]
    assert np.allclose(class_activation_maps(mixed, faces), 0.25 * members[0] + 0.75 * members[1], atol=1e-6)


def test_target_layer_is_the_activated_last_convolution() -> None:
    from ferkit.models import create_model

    cnn = create_model("cnn", num_classes=7, in_chans=1, drop_rate=0.0, pretrained=False)
    assert target_layer(cnn, "cnn") is cnn.features[-1][5]  # conv, BN, ReLU: the ReLU
    lite = create_model("efficientnet_lite0")
    assert target_layer(lite, "lite") is lite._conv_head  # in the network itself, not in a block
    with pytest.raises(FerkitError, match="no convolution"):
        target_layer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 7)), "mlp")


def test_onnx_and_bad_classes_are_one_line_errors(faces: np.ndarray) -> None:
    predictor, _ = load_predictor(FIXTURES / "tiny_cnn.pth", "cpu")
    with pytest.raises(FerkitError, match="ONNX model has no gradients"):
        class_activation_maps(object(), faces)
    with pytest.raises(FerkitError, match="'Joy' is not a class"):
        class_activation_maps(predictor, faces[:1], ["Joy"])
    with pytest.raises(FerkitError, match="2 given for 6 faces"):
        class_activation_maps(predictor, faces, [0, 1])


def test_overlay_is_an_enlarged_rgb_picture_hot_where_the_map_is(faces: np.ndarray) -> None:
    heat = np.zeros((48, 48), np.float32)
    heat[:, 24:] = 1.0
    picture = overlay(faces[0], heat, size=192)
    assert picture.shape == (192, 192, 3) and picture.dtype == np.uint8
    red_minus_blue = picture[..., 0].astype(int) - picture[..., 2].astype(int)
    assert red_minus_blue[:, 120:].mean() > 40 > red_minus_blue[:, :72].mean()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real photos with faces the Haar cascade finds (copied, so their names can collide)."""
    folder = Path(os.environ.get("FERKIT_DATA", "missing")).parent / "faces-in-photos"
    found = sorted(folder.glob("*.jpg"))[1:3]
    if len(found) < 2:
        pytest.skip(f"no real photos in {folder}")
    out = tmp_path_factory.mktemp("photos")
    (out / "a").mkdir()
    (out / "b").mkdir()
    copies = [out / "a" / "photo.jpg", out / "b" / "photo.jpg"]
    for src, dest in zip(found, copies, strict=True):
        dest.write_bytes(src.read_bytes())
    return copies


def test_recognizer_explain_matches_predict(photos: list[Path]) -> None:
    rec = load_recognizer("ferkit-fer2013-fast", device="cpu")
    explained = rec.explain(photos)
    predicted = rec.predict(photos)
    assert [[e.face for e in per] for per in explained] == predicted
    one = rec.explain(photos[0])
    assert len(one) == len(predicted[0]) >= 1
    assert one[0].crop.shape == one[0].heat.shape == (48, 48) and one[0].overlay().shape == (192, 192, 3)
    assert np.allclose(one[0].heat, explained[0][0].heat, atol=1e-6)


def test_predict_explain_writes_one_overlay_per_face(tmp_path: Path, photos: list[Path]) -> None:
    from PIL import Image

    from ferkit.apps.predict import predict_paths

    out = tmp_path / "explained"
    results, errors = predict_paths(
        photos, "ferkit-fer2013-fast", explain_dir=out, device="cpu", progress=False
    )
    assert not errors
    expected = sorted(
        f"{stem}-face{k}-{face['emotion']}.png"
        for stem, r in zip(("photo", "photo-1"), results, strict=True)
        for k, face in enumerate(r["faces"], 1)
    )
    assert sorted(p.name for p in out.iterdir()) == expected and len(expected) >= 3
    picture = np.asarray(Image.open(out / expected[0]))
    assert picture.shape == (192, 192, 3)


def test_predict_explain_refuses_videos_and_onnx_in_one_line(tmp_path: Path, photos: list[Path]) -> None:
    from ferkit.apps.predict import predict_paths

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: refused before")
    with pytest.raises(FerkitError, match="clip.mp4 is a video; explanations are for images only"):
        predict_paths([photos[0], video], None, explain_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from ferkit.shipping.export import export_onnx

    onnx = tmp_path / "tiny.onnx"
    export_onnx(str(FIXTURES / "tiny_cnn.pth"), onnx, check_images=np.load(FIXTURES / "faces.npy"))
    with pytest.raises(FerkitError, match="ONNX model has no gradients"):
        predict_paths([photos[0]], str(onnx), explain_dir=tmp_path / "out", backend="onnx", progress=False)


def colourful(png: Path) -> float:
    """The fraction of a picture's pixels that are clearly coloured (not gray, black or white)."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return float((rgb.max(2) - rgb.min(2) > 60).mean())


def test_report_mistakes_page_shows_the_maps(
    tmp_path: Path, tiny_real_csv: Path, tiny_checkpoint: Path
) -> None:
    from ferkit.data import load_dataset
    from ferkit.evaluation.evaluate import evaluate_model, explainable_model, publish

    ds = load_dataset(tiny_real_csv)
    report, data, probs = evaluate_model(str(tiny_checkpoint), ds, "PrivateTest", device="cpu")
    publish(report, data, probs, report_dir=str(tmp_path / "maps"), wandb="disabled")
    assert "Grad-CAM" in (tmp_path / "maps" / "summary.md").read_text()
    assert colourful(tmp_path / "maps" / "mistakes.png") > 0.02

    from ferkit.evaluation.report import write_report

    plain = write_report(
        tmp_path / "plain", report, probs, data.labels, data.images, data.indices, CLASS_NAMES, "t"
    )
    assert "Grad-CAM" not in plain.read_text() and colourful(plain.parent / "mistakes.png") < 0.002
    members = [{"path": str(tiny_checkpoint), "weight": 0.25}, {"path": str(tiny_checkpoint), "weight": 0.75}]
    ensemble = explainable_model({"model_path": "ensemble", "weights": "fit", "members": members})
    assert isinstance(ensemble, Ensemble) and np.allclose(ensemble.weights, [0.25, 0.75])
    assert explainable_model(report | {"backend": "onnx"}) is None


def test_cli_predict_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str], photos: list[Path]) -> None:
    from ferkit.cli import main

    out = tmp_path / "explained"
    code = main(["predict", str(photos[0]), "--model_path", "ferkit-fer2013-fast", "--explain", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    faces = [line for line in captured.out.splitlines() if ": face " in line]
    written = sorted(p.name for p in out.iterdir())
    assert len(written) == len(faces) >= 1 and all(n.startswith("photo-face") for n in written)
    assert f"activation maps in {out}" in captured.err
