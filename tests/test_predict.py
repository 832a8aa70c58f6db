"""`ferkit predict` on photos built from REAL FER2013 faces: detection, crops, every image form, EXIF,
videos, annotated copies, and batch runs that survive bad files.

No real photos ship offline, so test photos are FER2013 PublicTest faces enlarged to 160x160 and pasted
onto a textured 640x400 canvas at known places. The faces used were checked to be found by the Haar
cascade at each of the places below (and through JPEG, mp4v and the other image forms used here).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ferkit.apps.faces import crop_face, detect_faces, load_image, resize_gray
from ferkit.apps.predict import COLORS, VideoOptions, format_csv, format_text, frame_rows, predict_paths
from ferkit.apps.video import read_frames
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.runtime.predictor import CheckpointModel

# Faces (rank among the PublicTest rows: Angry, Happy, Surprise, Neutral, Angry) that the cascade finds,
# enlarged to FACE px, at each of the five places below with 40+ overlapping raw detections (5 are needed):
# the most robust of the first 60 PublicTest faces.
DETECTABLE = (34, 4, 52, 49, 50)
FACE = 160
HEIGHT, WIDTH = 400, 640
GROUP = ((40, 120), (240, 60), (440, 200))  # three faces, left to right
BORDER = ((0, 0), (480, 240))  # touching the top-left and the bottom-right edges


@pytest.fixture(scope="module")
def faces(real_dataset) -> np.ndarray:
    """The detectable real faces, uint8 (5, 48, 48)."""
    public = np.flatnonzero(real_dataset.splits == "PublicTest")
    return real_dataset.images[public[list(DETECTABLE)]]


def background(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(np.clip(rng.normal(128, 20, (HEIGHT, WIDTH)), 0, 255).astype(np.uint8), (0, 0), 3)


def paste(faces: np.ndarray, positions) -> np.ndarray:
    canvas = background()
    for face, (x, y) in zip(faces, positions, strict=True):
        canvas[y : y + FACE, x : x + FACE] = cv2.resize(face, (FACE, FACE), interpolation=cv2.INTER_CUBIC)
    return canvas


@pytest.fixture(scope="module")
def group(faces) -> np.ndarray:
    return paste(faces[:3], GROUP)


@pytest.fixture(scope="module")
def border(faces) -> np.ndarray:
    return paste(faces[3:5], BORDER)


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


def assert_boxes(boxes, positions) -> None:
    """One box per pasted face, in the same (left-to-right) order, each overlapping its face."""
    assert len(boxes) == len(positions), boxes
    for box, (x, y) in zip(boxes, positions, strict=True):
        assert iou(box, (x, y, FACE, FACE)) > 0.3, (box, (x, y))


def assert_face_dicts(faces: list[dict], positions) -> None:
    assert_boxes([f["box"] for f in faces], positions)
    for f in faces:
        assert set(f) - {"score"} == {"box", "emotion", "probabilities"}  # score: the detector's, if any
        assert 0.0 <= f.get("score", 0.0) <= 1.0
        assert list(f["probabilities"]) == list(CLASS_NAMES)
        assert abs(sum(f["probabilities"].values()) - 1) < 1e-3
        assert f["emotion"] == max(f["probabilities"], key=f["probabilities"].get)


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


# ----------------------------------------------------------------------------- faces.py
def test_cascade_finds_the_pasted_faces_left_to_right(group, border) -> None:
    assert_boxes(detect_faces(group), GROUP)
    assert_boxes(detect_faces(border), BORDER)  # faces touching the image edges


def test_crop_face_is_square_48_and_pads_at_the_border() -> None:
    gray = np.tile(np.arange(100, dtype=np.uint8), (60, 1))  # value = column
    inside = crop_face(gray, (20, 10, 40, 40), margin=0.0)
    assert inside.shape == (48, 48) and inside.dtype == np.uint8
    np.testing.assert_array_equal(inside, resize_gray(gray[10:50, 20:60]))
    edge = crop_face(gray, (0, 0, 30, 30), margin=0.5)  # a 60 px square, half of it outside
    assert edge.shape == (48, 48)
    assert edge[:, :12].max() == 0  # the left pad repeats the first column
    np.testing.assert_array_equal(edge[0], edge[-1])  # rows repeat above and below the image
    wide = crop_face(gray, (50, 20, 40, 10), margin=0.0)  # square around a non-square box
    assert wide.shape == (48, 48)


def test_load_image_every_form_gives_the_same_pixels(tmp_path, group) -> None:
    rgb = np.repeat(group[..., None], 3, axis=2)
    forms = {
        "gray.png": Image.fromarray(group),
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(np.dstack([rgb, np.full_like(group, 255)])),
        "palette.png": Image.fromarray(rgb).quantize(256),
        "deep.png": Image.fromarray(group.astype(np.uint16) * 257),
        "deep.tif": Image.fromarray(group.astype(np.int32) * 257),
    }
    for name, im in forms.items():
        im.save(tmp_path / name)
        loaded = load_image(tmp_path / name)
        assert loaded.mode in ("RGB", "L") and loaded.size == (WIDTH, HEIGHT), name
        gray = np.asarray(loaded.convert("L"), np.int16)
        assert np.abs(gray - group).max() <= (8 if name == "palette.png" else 1), name
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    # transparent parts are flattened onto white, not onto whatever colour they hide
    clear = np.dstack([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    save(clear, tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_load_image_applies_exif_orientation(tmp_path, group, orientation) -> None:
    upright = Image.fromarray(group)
    # what a camera stores: the inverse of the turn that Pillow's exif_transpose applies for the tag
    stored = upright.transpose(
        {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[
            orientation
        ]
    )
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "turned.jpg"
    stored.save(path, exif=exif, quality=95)
    loaded = np.asarray(load_image(path), np.int16)
    assert loaded.shape == (HEIGHT, WIDTH)
    assert np.abs(loaded - group).mean() < 3  # JPEG, upright


def test_load_image_errors_name_the_file(tmp_path, monkeypatch, group) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo\n")
    truncated = tmp_path / "cut.jpg"
    save(group, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    for path in (text, truncated, tmp_path / "missing.png"):
        with pytest.raises(FerkitError, match=path.name):
            load_image(path)
    # decompression bombs: Pillow's warning (over MAX_IMAGE_PIXELS) is refused as well as its error (2x)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side in (40, 100):
        big = save(np.zeros((side, side), np.uint8), tmp_path / f"big{side}.png")
        with pytest.raises(FerkitError, match=f"big{side}.png.*decompression bomb"):
            load_image(big)


# ----------------------------------------------------------------------------- predict_paths
def test_predict_several_faces_exif_and_every_image_form(tmp_path, tiny_checkpoint, group, border) -> None:
    rgb = np.repeat(group[..., None], 3, axis=2)
    folder = tmp_path / "photos"
    save(group, folder / "a_gray.png")
    save(np.dstack([rgb, np.full_like(group, 255)]), folder / "b_rgba.png")
    Image.fromarray(rgb).quantize(256).save(folder / "c_palette.png")
    save(group.astype(np.uint16) * 257, folder / "d_deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(folder / "e_turned.jpg", exif=exif)
    save(border, folder / "f_border.jpg", quality=90)
    save(background(1), folder / "g_blank.png")
    (folder / "readme.txt").write_text("not an image: skipped in folders")

    results, errors = predict_paths([str(folder)], str(tiny_checkpoint), batch_size=4, device="cpu")
    assert errors == []
    names = [Path(r["image"]).name for r in results]
    assert names == ["a_gray.png", "b_rgba.png", "c_palette.png", "d_deep16.png", "e_turned.jpg"] + [
        "f_border.jpg",
        "g_blank.png",
    ]
    for r in results[:5]:  # boxes in the upright frame, whatever the form
        assert_face_dicts(r["faces"], GROUP)
        assert "note" not in r
    assert_face_dicts(results[5]["faces"], BORDER)
    assert results[6] == {"image": str(folder / "g_blank.png"), "faces": [], "note": "no face found"}
    # the same faces give the same emotions in every form (batching does not mix faces up)
    emotions = {tuple(f["emotion"] for f in r["faces"]) for r in results[:4]}
    assert len(emotions) == 1

    rows = list(csv.DictReader(io.StringIO(format_csv(results))))
    assert len(rows) == 5 * 3 + 2 + 1
    assert rows[0]["face"] == "1" and rows[0]["emotion"] in CLASS_NAMES and rows[0]["time"] == ""
    assert rows[-1]["image"].endswith("g_blank.png") and rows[-1]["face"] == rows[-1]["emotion"] == ""
    lines = format_text(results).splitlines()
    assert len(lines) == len(rows) and lines[-1].endswith("g_blank.png: no face found")


def test_no_detect_matches_checkpoint_model_predict(tmp_path, tiny_checkpoint, real_dataset) -> None:
    import torch

    crops = real_dataset.images[np.flatnonzero(real_dataset.splits == "PublicTest")[:10]]
    paths = [save(c, tmp_path / "crops" / f"{i:02d}.png") for i, c in enumerate(crops)]
    results, errors = predict_paths(
        [str(tmp_path / "crops")], str(tiny_checkpoint), detect=False, batch_size=3, device="cpu"
    )
    assert errors == [] and [r["image"] for r in results] == [str(p) for p in paths]
    expected = CheckpointModel.load(tiny_checkpoint, torch.device("cpu")).predict(crops)
    for r, p in zip(results, expected, strict=True):
        (face,) = r["faces"]
        assert face["box"] == [0, 0, 48, 48]
        np.testing.assert_allclose([face["probabilities"][c] for c in CLASS_NAMES], p, atol=1e-4)
        assert face["emotion"] == CLASS_NAMES[int(np.argmax(p))]


def test_bf16_precision_is_autocast_and_close_to_fp32(tmp_path, tiny_checkpoint, real_dataset) -> None:
    crops = real_dataset.images[np.flatnonzero(real_dataset.splits == "PublicTest")[:10]]
    for i, c in enumerate(crops):
        save(c, tmp_path / "crops" / f"{i:02d}.png")
    probs = {}
    for precision in ("fp32", "bf16"):
        results, _ = predict_paths(
            [str(tmp_path / "crops")], str(tiny_checkpoint), detect=False, device="cpu", precision=precision
        )
        faces = [r["faces"][0]["probabilities"] for r in results]
        probs[precision] = np.array([[face[c] for c in CLASS_NAMES] for face in faces])
    assert not np.array_equal(probs["fp32"], probs["bf16"])  # bf16 really ran
    np.testing.assert_allclose(probs["bf16"], probs["fp32"], atol=0.03)


def test_annotate_writes_labelled_copies(tmp_path, tiny_checkpoint, group, faces) -> None:
    src = tmp_path / "in"
    save(group, src / "group.jpg", quality=95)
    save(faces[0], src / "small.png")
    out = tmp_path / "annotated"
    results, errors = predict_paths([str(src)], str(tiny_checkpoint), annotate_dir=str(out), device="cpu")
    assert errors == [] and len(results) == 2
    big = np.asarray(Image.open(out / "group.jpg"))
    assert big.shape == (HEIGHT, WIDTH, 3)
    for face in results[0]["faces"]:  # each box is drawn in its emotion's colour
        x, y, w, h = face["box"]
        edge = big[y + h // 2, x].astype(int)
        assert np.abs(edge - COLORS[face["emotion"]]).max() < 40, (edge, face["emotion"])
    small = np.asarray(Image.open(out / "small.png"))
    assert min(small.shape[:2]) >= 480  # enlarged so that the label is legible


def test_video_sampled_once_a_second(tmp_path, tiny_checkpoint, group, border) -> None:
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for canvas in (group, background(2), border):  # one second each
        for _ in range(5):
            writer.write(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    writer.release()
    assert [(f.index, f.time) for f in read_frames(path, fps=1.0)] == [(0, 0.0), (5, 1.0), (10, 2.0)]

    video = VideoOptions(fps=1.0)
    results, errors = predict_paths([str(path)], str(tiny_checkpoint), device="cpu", video=video)
    assert errors == []
    (r,) = results
    assert r["video"] == str(path) and [f["time"] for f in r["frames"]] == [0.0, 1.0, 2.0]
    assert [f["frame"] for f in r["frames"]] == [0, 5, 10]
    assert_face_dicts([{k: v for k, v in f.items() if k != "track"} for f in r["frames"][0]["faces"]], GROUP)
    assert r["frames"][1]["faces"] == []
    assert_boxes([f["box"] for f in r["frames"][2]["faces"]], BORDER)
    rows = [row for f in r["frames"] for row in frame_rows(r["video"], f)]
    assert [row["time"] for row in rows] == [0.0] * 3 + [1.0] + [2.0] * 2


def test_corrupt_video_names_the_file(tmp_path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(FerkitError, match="broken.mp4"):
        list(read_frames(bad))


@pytest.mark.slow
def test_rows_piped_to_a_reader_that_leaves_end_quietly(tmp_path, tiny_checkpoint) -> None:
    """`ferkit predict clip | head -1`: once the reader has gone, no error blames the clip."""
    import subprocess
    import sys

    clip = tmp_path / "plain.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 64))
    for _ in range(200):
        writer.write(np.full((64, 96, 3), 128, np.uint8))
    writer.release()
    cmd = [
        sys.executable,
        "-m",
        "ferkit",
        "predict",
        str(clip),
        "--fps",
        "all",
        "--model_path",
        str(tiny_checkpoint),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert b"plain.avi" in proc.stdout.readline()
    proc.stdout.close()  # the reader leaves after one row
    err = proc.stderr.read().decode()
    assert proc.wait(120) == 141, err
    assert "Error" not in err and "plain.avi" not in err, err


def test_empty_folder_is_an_error_before_any_model_loads(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(FerkitError, match="empty: no images or videos"):
        predict_paths([str(tmp_path / "empty")], str(tmp_path / "no-such-model.pth"))


# ----------------------------------------------------------------------------- the command line
def stderr_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()


def test_cli_json_with_bad_files_in_the_folder(tmp_path, run_ferkit, tiny_checkpoint, group, border) -> None:
    folder = tmp_path / "mixed"
    save(group, folder / "1_group.png")
    save(border, folder / "2_border.jpg")
    corrupt = save(group, folder / "3_corrupt.jpg")
    corrupt.write_bytes(corrupt.read_bytes()[:1500])
    (folder / "4_notes.jpg").write_text("this is text\n")
    out = tmp_path / "annotated"
    proc = run_ferkit(
        "predict", folder, "--model_path", tiny_checkpoint, "--format", "json", "--annotate", out,
        "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [Path(r["image"]).name for r in results] == ["1_group.png", "2_border.jpg"]
    assert_face_dicts(results[0]["faces"], GROUP)
    assert_face_dicts(results[1]["faces"], BORDER)
    errors = [line for line in stderr_lines(proc) if "error" in line]
    assert len(errors) == 2
    assert "3_corrupt.jpg" in errors[0] and "4_notes.jpg" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["1_group.png", "2_border.jpg"]


def ferkit_main(capsys, *args) -> tuple[int, str, list[str]]:
    """`ferkit ARGS...` in this process (no second torch start-up): exit code, stdout, stderr lines."""
    from ferkit.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err.strip().splitlines()


def test_cli_all_bad_fails_and_csv_format(tmp_path, capsys, tiny_checkpoint, faces) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("text")
    (bad / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    code, out, lines = ferkit_main(capsys, "predict", bad, "--model_path", tiny_checkpoint, "--device", "cpu")
    assert code != 0 and out == ""
    assert len(lines) == 3 and "a.jpg" in lines[0] and "b.png" in lines[1], lines  # + "none of the 2"
    assert all(line.startswith("ferkit: error:") for line in lines)

    crop = save(faces[0], tmp_path / "face.png")
    code, out, lines = ferkit_main(
        capsys, "predict", crop, "--no-detect", "--format", "csv", "--model_path", tiny_checkpoint
    )
    assert code == 0 and lines == [], lines
    (row,) = csv.DictReader(io.StringIO(out))
    assert row["image"] == str(crop) and row["face"] == "1" and row["w"] == row["h"] == "48"
    assert abs(sum(float(row[c]) for c in CLASS_NAMES) - 1) < 1e-3


@pytest.mark.parametrize(
    "case", ["empty folder", "corrupt video", "missing file", "bad option", "bf16 on onnx"]
)
def test_cli_one_line_errors(tmp_path, capsys, tiny_checkpoint, case) -> None:
    target, extra = tmp_path / "nothing", []
    if case == "empty folder":
        needle = "nothing: no images or videos"
        target.mkdir()
    elif case == "corrupt video":
        target, needle = tmp_path / "broken.mp4", "broken.mp4: not a video"
        target.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    elif case == "missing file":
        target, needle = tmp_path / "gone.jpg", "gone.jpg: file not found"
    elif case == "bad option":
        needle, extra = "--batch_size 0", ["--batch_size", "0"]
        target.mkdir()
    else:
        needle = "--precision bf16 is for --backend torch"
        extra = ["--backend", "onnx", "--precision", "bf16"]
        save(np.full((48, 48), 128, np.uint8), target / "face.png")
    code, out, lines = ferkit_main(capsys, "predict", target, "--model_path", tiny_checkpoint, *extra)
    assert code != 0 and out == ""
    (line,) = lines
    assert line.startswith("ferkit: error:") and needle in line, line


def test_using_a_model_imports_neither_torchvision_nor_wandb(tmp_path, faces) -> None:
    """Predicting with a shipped model needs neither: their imports would double predict's start-up (about
    2.5 s against 5 s on a 2-core CPU). A torchvision model still builds, importing torchvision then."""
    import subprocess
    import sys

    face = tmp_path / "face.png"
    Image.fromarray(faces[0]).save(face)
    script = (
        "import sys\n"
        "from ferkit.apps.predict import predict_paths\n"
        f"results, failed = predict_paths([{str(face)!r}], None, detect=False, progress=False)\n"
        "assert results[0]['faces'] and not failed, (results, failed)\n"
        "loaded = sorted({'torchvision', 'wandb'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
        "from ferkit.models import create_model\n"
        "create_model('resnet18')\n"
        "assert 'torchvision' in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
