"""`ferkit predict`: emotions of the faces in photos, folders and videos.

Each image is read upright (EXIF), its faces found with OpenCV's Haar cascade, cropped the way FER2013
framed its faces and classified in batches by a checkpoint or an ensemble spec. A bad file is reported
(one line naming it) and the run goes on; only a run where nothing succeeded fails.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError

FORMATS = ("text", "json", "csv", "jsonl")
NO_FACE = "no face found"
# Annotated copies: images smaller than this (longest side, px) are enlarged first so labels stay legible.
ANNOTATE_MIN_SIDE = 480
ANNOTATE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# At most this many decoded images wait for their batch when --annotate keeps them in memory.
ANNOTATE_PENDING = 8
COLORS = {  # RGB, one per class
    "Angry": (220, 40, 40),
    "Disgust": (60, 160, 60),
    "Fear": (150, 80, 200),
    "Happy": (250, 200, 0),
    "Sad": (50, 110, 220),
    "Surprise": (255, 140, 0),
    "Neutral": (170, 170, 170),
}


# ----------------------------------------------------------------------------- inputs
def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Files to process (folders expanded, non-recursively, to their images and videos, sorted by name;
    duplicates dropped) and one error line per input that is missing or an empty folder."""
    from ferkit.apps.faces import is_image, is_video

    files: list[Path] = []
    errors: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                (f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")),
                key=lambda f: f.name,
            )
            found = [f for f in found if is_image(f) or is_video(f)]
            if not found:
                errors.append(f"{p}: no images or videos in this folder")
        elif p.exists():
            found = [p]
        else:
            errors.append(f"{p}: file not found")
            found = []
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files, errors


# ----------------------------------------------------------------------------- prediction
class _Batcher:
    """Collects face crops from many files and classifies them a batch at a time (`FaceBatcher`, as the
    Python API's `Recognizer` does).

    Face dicts (`Face.to_dict()`) are filled in place when their batch runs; annotated copies wait for
    their faces.
    """

    def __init__(
        self,
        predictor: Any,
        tta: str,
        batch_size: int,
        annotate_dir: Path | None,
        explain_dir: Path | None = None,
        detector: Any = None,
    ) -> None:
        from ferkit.apps.recognizer import FaceBatcher  # torch: only once there is work

        self.batcher = FaceBatcher(predictor, tta, batch_size)
        self.detector = detector  # a `ferkit.apps.detectors.Detector`; None: the default one
        self.annotate_dir = annotate_dir
        self.annotations: list[tuple[Any, list[dict[str, Any]], Path]] = []
        self.explain_dir = explain_dir
        if explain_dir is not None:
            from ferkit.runtime.explain import check_explainable

            check_explainable(predictor)  # before any work: an ONNX model has no gradients
        self.explain_stems: set[str] = set()
        self.to_explain: list[tuple[np.ndarray, dict[str, Any], str]] = []

    def add(self, crop: Any, explain_as: str | None = None) -> dict[str, Any]:
        """A face dict for `crop` (a `FaceCrop`), its emotion filled in when its batch runs; with
        `explain_as` (a file name stem), its activation-map overlay is written then too."""
        face: dict[str, Any] = {"box": [int(v) for v in crop.box], "emotion": None, "probabilities": None}
        self.batcher.add(crop, lambda found: face.update(found.to_dict()))
        if explain_as is not None:
            self.to_explain.append((crop.crop, face, explain_as))
        if not self.batcher.pending:  # a batch just ran: the copies waiting for it can be drawn
            self._save_annotations()
            self._save_explanations()
        return face

    def explain_stem(self, path: Path) -> str | None:
        """A name stem for the overlays of `path`'s faces, unique in the run (None without --explain)."""
        if self.explain_dir is None:
            return None
        stem, k = path.stem, 0
        while stem.lower() in self.explain_stems:
            k += 1
            stem = f"{path.stem}-{k}"
        self.explain_stems.add(stem.lower())
        return stem

    def _save_explanations(self) -> None:
        """EXPLAIN_DIR/<stem>-face<k>-<Emotion>.png for each classified face waiting for its overlay."""
        if not self.to_explain or self.explain_dir is None:
            return
        from ferkit.runtime.explain import class_activation_maps, save_overlay

        todo, self.to_explain = self.to_explain, []
        crops = np.stack([crop for crop, _, _ in todo])
        emotions = [face["emotion"] for _, face, _ in todo]
        heat = class_activation_maps(self.batcher.predictor, crops, emotions, self.batcher.batch_size)
        for (crop, face, name), h in zip(todo, heat, strict=True):
            save_overlay(self.explain_dir / f"{name}-{face['emotion']}.png", crop, h)

    def annotate_later(self, image: Any, faces: list[dict[str, Any]], out: Path) -> None:
        self.annotations.append((image, faces, out))
        if len(self.annotations) >= ANNOTATE_PENDING:
            self.flush()

    def flush(self) -> None:
        self.batcher.flush()
        self._save_annotations()
        self._save_explanations()

    def _save_annotations(self) -> None:
        for image, faces, out in self.annotations:
            save_annotated(image, faces, out)
        self.annotations = []


def _faces_of(
    pixels: np.ndarray, batcher: _Batcher, detect: bool, explain_stem: str | None = None
) -> list[dict[str, Any]]:
    """The faces of a uint8 gray or RGB image (the detector sees its colour), queued for classifying."""
    from ferkit.apps.recognizer import face_crops

    crops = face_crops(pixels, detect, batcher.detector)
    if explain_stem is None:
        return [batcher.add(crop) for crop in crops]
    return [batcher.add(crop, f"{explain_stem}-face{k}") for k, crop in enumerate(crops, 1)]


def _predict_image(path: Path, batcher: _Batcher, detect: bool, out: Path | None) -> dict[str, Any]:
    from ferkit.apps.faces import load_image

    image = load_image(path)
    faces = _faces_of(np.asarray(image), batcher, detect, batcher.explain_stem(path))
    result: dict[str, Any] = {"image": str(path), "faces": faces}
    if not faces:
        result["note"] = NO_FACE
    if out is not None:
        batcher.annotate_later(image, faces, out)
    return result


def predict_image(
    path: str | Path,
    predictor: Any,
    tta: str = "none",
    detect: bool = True,
    batch_size: int = 64,
    name: str | None = None,
    detector: Any = None,
) -> dict[str, Any]:
    """Faces and emotions of one image file: `{"image", "faces": [...]}` (plus `"note"`), exactly the entry
    `ferkit predict --format json` gives it. `name` replaces the path in `"image"` (e.g. an upload's name).

    FerkitError (naming `path`) for a file that is not a readable image, or a possible decompression bomb.
    """
    batcher = _Batcher(predictor, tta, batch_size, None, detector=detector)
    result = _predict_image(Path(path), batcher, detect, None)
    batcher.flush()
    if name is not None:
        result["image"] = name
    return result


def describe_model(predictor: Any) -> str:
    """The architecture a predictor runs: `cnn`, or `ensemble(cnn, resnet18)`."""
    return str(getattr(predictor, "arch", type(predictor).__name__))


def _predict_video(path: Path, rec: Any, opts: VideoOptions, used_names: set[str]) -> dict[str, Any]:
    """Stream a video's frames: each frame's entry (`{"frame", "time", "faces"}`) goes to `opts.sink`
    as it comes (or into the result's `"frames"` when there is no sink); with `opts.annotate_dir`, the
    annotated video and the timeline picture are written there (atomically: all or nothing)."""
    from tqdm import tqdm

    from ferkit.apps.video import (
        AnnotatedVideo,
        analyse,
        sampled_count,
        save_timeline,
        summary_lines,
        video_info,
    )

    info = video_info(path)
    summaries: dict[int, Any] = {}
    frames: list[dict[str, Any]] = []
    video = None
    if opts.annotate_dir is not None:
        out = annotated_path(path, opts.annotate_dir, used_names, ".mp4")
        video = AnnotatedVideo(out, opts.fps or info.fps)
    total = sampled_count(info, opts.fps) or None
    bar = tqdm(total=total, desc=path.name, unit="frame", file=sys.stderr, leave=False, disable=opts.quiet)
    try:
        for vf in analyse(rec, path, opts.fps, opts.smooth, opts.detect, summaries):
            entry = {"frame": vf.frame, "time": vf.time, "faces": [f.to_dict() for f in vf.faces]}
            if opts.sink is not None:
                opts.sink(str(path), entry)
            else:
                frames.append(entry)
            if video is not None:
                video.write(draw_video_frame(vf.image, entry["faces"]))
            bar.update()
    except BaseException:
        if video is not None:
            video.discard()
        raise
    finally:
        bar.close()
    result: dict[str, Any] = {"video": str(path), "fps": opts.fps or info.fps}
    if opts.sink is None:
        result["frames"] = frames
    result["tracks"] = [s.to_dict() for _, s in sorted(summaries.items())]
    if not summaries:
        result["note"] = NO_FACE
    if video is not None:
        video.close()
        timeline = video.out.with_name(f"{video.out.stem}-timeline.png")
        save_timeline(summaries, timeline, path.name, COLORS)
    for line in summary_lines(str(path), result["tracks"]) if opts.notes else []:
        opts.notes(line)
    return result


@dataclass
class VideoOptions:
    """How `predict_paths` reads videos: `fps` frames a second (None: every frame), probabilities averaged
    over `smooth` seconds per track; `sink(source, frame_entry)` receives each frame as it comes, `notes`
    each line of the per-track summary (share of time per emotion)."""

    fps: float | None = 5.0
    smooth: float = 0.0
    detect: bool = True
    annotate_dir: Path | None = None
    sink: Callable[[str, dict[str, Any]], None] | None = None
    notes: Callable[[str], None] | None = None
    quiet: bool | None = None


def draw_video_frame(rgb: np.ndarray, faces: Sequence[dict[str, Any]]) -> np.ndarray:
    """A video frame as `draw_faces` draws a photo (labels "#track Emotion 87%"), plus probability bars."""
    from ferkit.apps.video import draw_bars

    out = draw_faces(rgb, faces)
    scale = out.shape[0] / rgb.shape[0]
    for face in faces:
        box = tuple(round(v * scale) for v in face["box"])
        draw_bars(out, box, face["probabilities"], COLORS)  # type: ignore[arg-type]
    return out


def predict_paths(
    paths: Sequence[str | Path],
    model_path: str | None,
    detect: bool = True,
    annotate_dir: str | Path | None = None,
    batch_size: int = 64,
    tta: str | None = None,
    device: str = "auto",
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    video: VideoOptions | None = None,
    explain_dir: str | Path | None = None,
    detector: Any = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Faces and emotions of every image and video under `paths`, and one error line per failed input.

    Images give `{"image", "faces": [{"box": [x, y, w, h], "emotion", "probabilities"}]}` (plus
    `"note": "no face found"`); videos `{"video", "fps", "frames": [{"frame", "time", "faces"}], "tracks"}`,
    each face with its `"track"` (`video`: rate, smoothing, where frames and summaries go: `VideoOptions`).
    `detect=False` takes each whole image as the face. `model_path` None: the shipped model. `tta` None:
    the model's own (an ensemble spec's, else none). `on_error` is called with each error line as it happens.
    `backend` "onnx": `model_path` is an `.onnx` file written by `ferkit export` (ONNX Runtime, CPU).
    `precision` bf16/fp16: the torch backend under autocast (faster on CPUs with bf16 units).
    `explain_dir`: each image face's crop with the class activation map (Grad-CAM) of its predicted emotion
    is written there as `<image stem>-face<k>-<Emotion>.png` (images only; a torch model). `detector`: a
    `ferkit.apps.detectors.Detector` (None: "auto"). Raises FerkitError when there is nothing to process
    or the model cannot load.
    """
    import cv2
    from tqdm import tqdm

    from ferkit.apps.faces import is_video
    from ferkit.apps.recognizer import Recognizer
    from ferkit.runtime.loading import load_model  # torch: only once there is work

    if batch_size < 1:
        raise FerkitError(f"--batch_size {batch_size}: must be at least 1")
    files, errors = collect_inputs(paths)
    if not files:
        raise FerkitError("; ".join(errors) if errors else "no images or videos given")
    for line in errors:
        if on_error:
            on_error(line)
    videos = [f for f in files if is_video(f)]
    if explain_dir and videos:
        raise FerkitError(f"--explain: {videos[0]} is a video; explanations are for images only")
    out_dir = output_folder(annotate_dir, "--annotate")
    explain_out = output_folder(explain_dir, "--explain")
    predictor, default_tta, _ = load_model(model_path, backend, device, precision)
    batcher = _Batcher(predictor, tta or default_tta, batch_size, out_dir, explain_out, detector)
    video = replace(video or VideoOptions(), detect=detect, annotate_dir=out_dir, quiet=not progress or None)
    rec = Recognizer(predictor, tta or default_tta, batch_size, detector)

    results: list[dict[str, Any]] = []
    used_names: set[str] = set()
    bar = tqdm(
        files, desc="predict", unit="file", file=sys.stderr, leave=False, disable=None if progress else True
    )
    for path in bar:
        try:
            if is_video(path):
                results.append(_predict_video(path, rec, video, used_names))
            else:
                out = annotated_path(path, out_dir, used_names) if out_dir is not None else None
                results.append(_predict_image(path, batcher, detect, out))
        except BrokenPipeError:  # the reader of the rows left (`| head`): not this file's fault
            raise
        except (FerkitError, OSError, ValueError, cv2.error) as e:
            line = str(e) if isinstance(e, FerkitError) else f"{path}: {e.__class__.__name__}: {e}"
            line = " ".join(line.split())  # one line, whatever the library said
            errors.append(line)
            if on_error:
                bar.clear()
                on_error(line)
    batcher.flush()
    bar.close()
    return results, errors


# ----------------------------------------------------------------------------- annotated copies
def output_folder(path: str | Path | None, option: str) -> Path | None:
    """The folder an output option names, created (None when the option is not given)."""
    if not path:
        return None
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FerkitError(f"{option} {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def annotated_path(src: Path, out_dir: Path, used: set[str], suffix: str | None = None) -> Path:
    """OUT_DIR/<name> (`suffix`, or the source's; PNG for formats not worth re-encoding), never the source
    file, never reused."""
    if suffix is None:
        suffix = src.suffix.lower() if src.suffix.lower() in ANNOTATE_SUFFIXES else ".png"
    stem, k = src.stem, 0
    while True:
        name = f"{stem}{suffix}" if k == 0 else f"{stem}-{k}{suffix}"
        out = out_dir / name
        if name.lower() not in used and out.resolve() != src.resolve():
            used.add(name.lower())
            return out
        k += 1


def draw_faces(image: Any, faces: Sequence[dict[str, Any]]) -> np.ndarray:
    """An RGB copy, each face boxed and labelled "Emotion 87%", sized to the image (small ones enlarged)."""
    import cv2

    rgb = np.array(image.convert("RGB") if hasattr(image, "convert") else image, np.uint8)
    if rgb.ndim == 2:
        rgb = cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    scale = 1.0
    if max(rgb.shape[:2]) < ANNOTATE_MIN_SIDE:
        scale = ANNOTATE_MIN_SIDE / max(rgb.shape[:2])
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    height, width = rgb.shape[:2]
    longest = max(height, width)
    line = max(2, round(longest / 400))
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.6, longest / 1400)
    text_line = max(1, round(font_scale * 1.6))
    pad = max(2, round(4 * font_scale))
    for face in faces:
        x, y, w, h = (round(v * scale) for v in face["box"])
        emotion = face["emotion"]
        color = COLORS.get(emotion, (255, 255, 255))
        cv2.rectangle(rgb, (x, y), (x + w - 1, y + h - 1), color, line)
        label = f"{emotion} {face['probabilities'][emotion]:.0%}"
        if face.get("track") is not None:
            label = f"#{face['track']} {label}"
        (tw, th), base = cv2.getTextSize(label, font, font_scale, text_line)
        box_w, box_h = tw + 2 * pad, th + base + 2 * pad
        top = y - box_h if y - box_h >= 0 else min(y + line, max(0, height - box_h))
        left = max(0, min(x, width - box_w))
        cv2.rectangle(rgb, (left, top), (left + box_w, top + box_h), color, -1)
        ink = (
            (0, 0, 0)
            if sum(c * k for c, k in zip(color, (0.299, 0.587, 0.114), strict=True)) > 140
            else (255,) * 3
        )
        cv2.putText(rgb, label, (left + pad, top + pad + th), font, font_scale, ink, text_line, cv2.LINE_AA)
    return rgb


def save_annotated(image: Any, faces: Sequence[dict[str, Any]], out: Path) -> None:
    from PIL import Image

    pil = Image.fromarray(draw_faces(image, faces))
    try:
        if out.suffix in (".jpg", ".jpeg"):
            pil.save(out, quality=95)
        else:
            pil.save(out)
    except OSError as e:
        raise FerkitError(f"{out}: cannot write the annotated copy ({e})") from None


# ----------------------------------------------------------------------------- output
def _face_rows(result: dict[str, Any]) -> list[tuple[str, float | None, int | None, dict[str, Any] | None]]:
    """(source, time, face number, face) per face; one row with no face for a file without any."""
    source = result.get("image") or result["video"]
    rows: list[tuple[str, float | None, int | None, dict[str, Any] | None]] = []
    if "frames" in result:
        for frame in result["frames"]:
            rows += [(source, frame["time"], i, f) for i, f in enumerate(frame["faces"], 1)] or [
                (source, frame["time"], None, None)
            ]
    else:
        rows += [(source, None, i, f) for i, f in enumerate(result["faces"], 1)]
    return rows or [(source, None, None, None)]


def format_text(results: Sequence[dict[str, Any]]) -> str:
    """One line per face: `path: face 1 [x, y, w, h]: Happy 87% (Neutral 9%)`; videos add `@ 3.0s`."""
    lines = []
    for result in results:
        for source, t, i, face in _face_rows(result):
            where = source if t is None else f"{source} @ {t:.1f}s"
            if face is None:
                lines.append(f"{where}: {NO_FACE}")
                continue
            ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])
            (top, p1), (second, p2) = ranked[0], ranked[1]
            who = f"face {i}" if face.get("track") is None else f"track {face['track']}"
            lines.append(f"{where}: {who} {face['box']}: {top} {p1:.0%} ({second} {p2:.0%})")
    return "\n".join(lines)


def format_csv(results: Sequence[dict[str, Any]]) -> str:
    """image, time (videos), face (1-based), x, y, w, h, emotion, one column per class probability.

    A file without any face has one row with the face columns empty.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "time", "face", "x", "y", "w", "h", "emotion", *CLASS_NAMES])
    for result in results:
        for source, t, i, face in _face_rows(result):
            time = "" if t is None else t
            if face is None:
                writer.writerow([source, time] + [""] * (6 + len(CLASS_NAMES)))
            else:
                probs = [face["probabilities"][c] for c in CLASS_NAMES]
                writer.writerow([source, time, i, *face["box"], face["emotion"], *probs])
    return buf.getvalue().rstrip("\n")


ROW_COLUMNS = ("image", "frame", "time", "track", "x", "y", "w", "h", "score", "emotion", *CLASS_NAMES)


def frame_rows(source: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows (`ROW_COLUMNS`) of one video frame entry, or of an image (frame and time None): one per
    face, or one with the face columns None when there is none."""
    base = {"image": source, "frame": entry.get("frame"), "time": entry.get("time")}
    if not entry["faces"]:
        return [{**base, **dict.fromkeys(ROW_COLUMNS[3:])}]
    return [
        {
            **base,
            "track": f.get("track"),
            **dict(zip("xywh", f["box"], strict=True)),
            "score": f.get("score"),
            "emotion": f["emotion"],
            **{c: f["probabilities"][c] for c in CLASS_NAMES},
        }
        for f in entry["faces"]
    ]


class RowWriter:
    """`ferkit predict`'s output for every format but json, written as it comes: video frames (`frame`,
    the `VideoOptions` sink) at once, flushed; then the images' results (`finish`). CSV: a header, then
    `ROW_COLUMNS`; a run without a video keeps the images' own table (`format_csv`). jsonl: one JSON
    object per row. text: `format_text`'s lines."""

    def __init__(self, fmt: str, stream: Any) -> None:
        self.fmt = fmt
        self.stream = stream
        self.csv = csv.writer(stream, lineterminator="\n")
        self.started = False

    def _write_rows(self, rows: list[dict[str, Any]]) -> None:
        if self.fmt == "csv" and not self.started:
            self.csv.writerow(ROW_COLUMNS)
        self.started = True
        for row in rows:
            if self.fmt == "csv":
                self.csv.writerow(["" if row[k] is None else row[k] for k in ROW_COLUMNS])
            else:
                self.stream.write(json.dumps(row) + "\n")

    def frame(self, source: str, entry: dict[str, Any]) -> None:
        if self.fmt == "text":
            self.stream.write(format_text([{"video": source, "frames": [entry]}]) + "\n")
        else:
            self._write_rows(frame_rows(source, entry))
        self.stream.flush()

    def finish(self, results: Sequence[dict[str, Any]]) -> None:
        """Write the images among `results` (videos were written frame by frame)."""
        images = [r for r in results if "image" in r]
        if self.fmt in ("text", "csv") and not (self.fmt == "csv" and self.started):
            text = format_text(images) if self.fmt == "text" else format_csv(images)
            if text:
                self.stream.write(text + "\n")
        else:
            for r in images:
                self._write_rows(frame_rows(r["image"], r))
        self.stream.flush()


def all_failed(results: Sequence[dict[str, Any]], errors: Sequence[str]) -> bool:
    """Whether a `predict_paths` run failed as a whole: none of its inputs succeeded. Each failure has had
    its own line; when there were several, a FerkitError sums them up."""
    if results:
        return False
    if len(errors) > 1:
        raise FerkitError(f"none of the {len(errors)} inputs could be processed")
    return True


def format_results(results: Sequence[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(list(results), indent=2)
    if fmt == "csv":
        return format_csv(results)
    return format_text(results)
