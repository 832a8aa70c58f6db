"""Videos built from REAL FER2013 faces: frames read lazily at the asked rate, one stable track per person,
rows for every sampled frame, smoothing, the annotated video and timeline, and one-line errors for bad input.

The clip: two PublicTest faces (enlarged to 96 px) on a textured 320x240 background, one moving right and
down, the other left and down, 10 frames a second for 3 seconds (mp4v).
"""

from __future__ import annotations

import csv
import io
import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.apps.predict import RowWriter, VideoOptions, predict_paths
from ferkit.apps.recognizer import load_recognizer
from ferkit.apps.video import read_frames
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from tests.conftest import assert_one_line_error

FACES = (4, 52)  # PublicTest ranks the Haar cascade finds (tests/test_predict.py's DETECTABLE)
SIZE, W, H, FPS, SECONDS = 96, 320, 240, 10, 3


def clip_frames(faces: np.ndarray, n: int = FPS * SECONDS) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(np.clip(rng.normal(128, 20, (H, W)), 0, 255).astype(np.uint8), (0, 0), 3)
    big = [cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC) for f in faces]
    frames = []
    for i in range(n):
        canvas = bg.copy()
        a = (10 + 2 * i, 20 + i)  # moving right and down
        b = (W - SIZE - 10 - 2 * i, 10 + i)  # moving left and down: the two cross paths
        for face, (x, y) in zip(big, (a, b), strict=True):
            canvas[y : y + SIZE, x : x + SIZE] = face
        frames.append(canvas)
    return frames


def write_clip(path: Path, frames: list[np.ndarray], fps: float = FPS) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(real_dataset, tmp_path_factory) -> Path:
    public = np.flatnonzero(real_dataset.splits == "PublicTest")
    faces = real_dataset.images[public[list(FACES)]]
    return write_clip(tmp_path_factory.mktemp("video") / "clip.mp4", clip_frames(faces))


@pytest.fixture(scope="module")
def rec(tiny_checkpoint):
    return load_recognizer(tiny_checkpoint, device="cpu")


def test_frames_are_read_lazily_at_the_asked_rate(clip) -> None:
    frames = read_frames(clip, fps=5)
    assert isinstance(frames, types.GeneratorType)  # nothing decoded until asked, nothing held
    first = next(frames)
    assert (first.index, first.time, first.rgb.shape) == (0, 0.0, (H, W, 3))
    assert [f.index for f in frames] == list(range(2, FPS * SECONDS, 2))
    assert [f.time for f in read_frames(clip, fps=None)] == [round(i / FPS, 4) for i in range(FPS * SECONDS)]


def test_two_people_keep_two_stable_tracks(rec, clip) -> None:
    frames = list(rec.video(clip, fps=5))
    assert [f.frame for f in frames] == list(range(0, FPS * SECONDS, 2))
    found = [f for f in frames if len(f.faces) == 2]
    assert len(found) >= 0.8 * len(frames)
    for f in found:
        left, right = sorted(f.faces, key=lambda face: face.box[0])
        # the face that started on the left keeps its id while it moves right, and the other its own
        if f.frame < 20:
            assert (left.track, right.track) == (1, 2), f
    tracks = {face.track for f in frames for face in f.faces}
    assert tracks == {1, 2}
    assert all(face.score is None or 0 <= face.score <= 1 for f in frames for face in f.faces)


def test_smoothing_averages_each_track(rec, clip) -> None:
    raw = list(rec.video(clip, fps=5))
    smooth = list(rec.video(clip, fps=5, smooth=10.0))
    for track in (1, 2):
        p_raw = np.array(
            [[f.probabilities[c] for c in CLASS_NAMES] for v in raw for f in v.faces if f.track == track]
        )
        p_smooth = [
            [f.probabilities[c] for c in CLASS_NAMES] for v in smooth for f in v.faces if f.track == track
        ]
        # over a window longer than the clip, the last smoothed value is the mean of all raw values so far
        np.testing.assert_allclose(p_smooth[-1], p_raw.mean(0), atol=1e-6)
        assert np.ptp(p_smooth[1:], axis=0).max() <= np.ptp(p_raw, axis=0).max()


def test_rows_for_every_sampled_frame_and_annotated_video(tmp_path, tiny_checkpoint, clip) -> None:
    out = io.StringIO()
    writer = RowWriter("csv", out)
    video = VideoOptions(fps=5, sink=writer.frame)
    results, errors = predict_paths([clip], str(tiny_checkpoint), annotate_dir=tmp_path / "ann", video=video)
    writer.finish(results)
    assert errors == []
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert list(rows[0]) == [
        "image",
        "frame",
        "time",
        "track",
        "x",
        "y",
        "w",
        "h",
        "score",
        "emotion",
        *CLASS_NAMES,
    ]
    assert sorted({int(r["frame"]) for r in rows}) == list(range(0, FPS * SECONDS, 2))
    assert {r["track"] for r in rows} == {"1", "2"}
    assert all(float(r["time"]) == int(r["frame"]) / FPS for r in rows)
    (r,) = results
    assert [t["track"] for t in r["tracks"]] == [1, 2]
    assert all(abs(sum(t["emotions"].values()) - 1) < 1e-3 for t in r["tracks"])
    annotated = tmp_path / "ann" / "clip.mp4"
    cap = cv2.VideoCapture(str(annotated))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FPS * SECONDS // 2
    cap.release()
    assert (tmp_path / "ann" / "clip-timeline.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["clip-timeline.png", "clip.mp4"]


def test_video_json_lists_frames(tiny_checkpoint, clip) -> None:
    results, _ = predict_paths([clip], str(tiny_checkpoint), video=VideoOptions(fps=2))
    (r,) = results
    assert [f["frame"] for f in r["frames"]] == list(range(0, FPS * SECONDS, 5))
    assert {face["track"] for f in r["frames"] for face in f["faces"]} == {1, 2}
    json.dumps(results)


def test_fps_above_the_files_rate_is_an_error(clip) -> None:
    with pytest.raises(FerkitError, match=r"clip.mp4: --fps 30 is above the video's own 10 frames"):
        next(read_frames(clip, fps=30))


@pytest.mark.parametrize("content", [b"", b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4])
def test_empty_or_unreadable_video_is_an_error_and_writes_nothing(tmp_path, tiny_checkpoint, content) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(FerkitError, match="bad.mp4"):
        list(read_frames(bad))
    ann = tmp_path / "ann"
    results, errors = predict_paths([bad], str(tiny_checkpoint), annotate_dir=ann)
    assert results == [] and len(errors) == 1 and "bad.mp4" in errors[0]
    assert list(ann.iterdir()) == []


def test_video_without_faces(tmp_path, tiny_checkpoint) -> None:
    blank = write_clip(tmp_path / "blank.mp4", [np.full((H, W), 128, np.uint8)] * 10)
    results, errors = predict_paths([blank], str(tiny_checkpoint), video=VideoOptions(fps=5))
    (r,) = results
    assert errors == [] and r["note"] == "no face found" and r["tracks"] == []
    assert [f["faces"] for f in r["frames"]] == [[]] * 5  # 10 frames at 10 a second, read 5 a second


@pytest.mark.slow
def test_cli_streams_rows_and_fails_in_one_line(tmp_path, tiny_checkpoint, clip, run_ferkit) -> None:
    proc = run_ferkit("predict", clip, "--model_path", tiny_checkpoint, "--format", "jsonl", "--fps", "2")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted({r["frame"] for r in rows}) == list(range(0, FPS * SECONDS, 5))
    assert "track 1" in proc.stderr and "track 2" in proc.stderr  # the per-track summary
    ann = tmp_path / "ann"
    proc = run_ferkit("predict", clip, "--model_path", tiny_checkpoint, "--fps", "25", "--annotate", ann)
    assert_one_line_error(proc, "clip.mp4", "--fps 25")
    assert list(ann.iterdir()) == []


def test_missing_tracker_is_one_line(monkeypatch, rec, clip) -> None:
    monkeypatch.setitem(sys.modules, "norfair", None)  # as if norfair were not installed
    with pytest.raises(FerkitError, match=r"needs norfair: pip install 'ferkit\[video\]'"):
        next(rec.video(clip))
