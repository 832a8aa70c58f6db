"""Faces in videos: frames decoded one at a time (every frame, or N a second) so memory stays flat however
long the clip; each frame's faces found and classified by a `Recognizer`; each face given the id of its
track (the same person across frames, norfair's tracker); probabilities optionally averaged over each
track's last seconds. Also the per-track summary (share of time per emotion), the timeline picture and the
annotated video, written atomically.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.utils.plot import save_figure, subplots

# Silence FFmpeg's own console messages: a bad video is reported once, by us (set before cv2 loads).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")

import cv2  # noqa: E402

DEFAULT_FPS = 5.0
# A track lives on this long without its face being found (the cascade misses faces in some frames).
TRACK_MEMORY_SECONDS = 1.0
# Boxes of one track in successive frames overlap by more than 1 - this (norfair's IoU distance).
TRACK_IOU_DISTANCE = 0.9
TRACKER_HINT = "tracking faces across video frames needs norfair: pip install 'ferkit[video]'"


class Frame(NamedTuple):
    """One decoded frame: its index in the file, its time (`index / the file's fps`) and RGB pixels."""

    index: int
    time: float
    rgb: np.ndarray


@dataclass(frozen=True)
class VideoInfo:
    """A video file's frame rate, frame count (0 where the container does not say) and size."""

    path: Path
    fps: float
    frames: int
    width: int
    height: int


def _open(path: Path) -> tuple[Any, VideoInfo]:
    if not path.is_file():
        raise FerkitError(f"{path}: file not found")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise FerkitError(f"{path}: not a video OpenCV can decode (corrupt or unsupported)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if math.isfinite(fps) and fps > 0 else 25.0
    count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    return cap, VideoInfo(path, float(fps), count, w, h)


def video_info(path: str | Path) -> VideoInfo:
    """The video's frame rate, frame count and size; FerkitError naming a file OpenCV cannot open."""
    cap, info = _open(Path(path))
    cap.release()
    return info


def check_fps(info: VideoInfo, fps: float | None) -> None:
    """FerkitError when `fps` (None: every frame) is not positive or above the file's own rate."""
    if fps is None:
        return
    if not fps > 0:
        raise FerkitError(f"--fps {fps:g}: must be above 0 (or 'all' for every frame)")
    if fps > info.fps + 1e-6:
        raise FerkitError(f"{info.path}: --fps {fps:g} is above the video's own {info.fps:g} frames a second")


def sampled_count(info: VideoInfo, fps: float | None) -> int:
    """How many frames `read_frames` will give (from the container's frame count; 0 when unknown)."""
    if fps is None or info.frames == 0:
        return info.frames
    return math.ceil(info.frames * fps / info.fps - 1e-6)


def read_frames(path: str | Path, fps: float | None = DEFAULT_FPS) -> Iterator[Frame]:
    """The video's frames, one at a time: every frame (`fps` None) or `fps` a second, the first frame
    first; a frame is decoded only when it is taken, and none is kept.

    FerkitError naming the file when it is missing, cannot be opened, has no decodable frame, or when
    `fps` is above the file's own rate.
    """
    cap, info = _open(Path(path))
    try:
        check_fps(info, fps)
        step = 1.0 if fps is None else info.fps / fps
        index, taken = 0, 0
        while cap.grab():
            index += 1
            if index - 1 + 1e-6 < taken * step:
                continue
            ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                continue
            taken += 1
            yield Frame(index - 1, round((index - 1) / info.fps, 4), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if taken == 0:
            raise FerkitError(f"{info.path}: no video frame could be decoded (empty, corrupt or unsupported)")
    finally:
        cap.release()


# ----------------------------------------------------------------------------- tracks
class FaceTracker:
    """Track ids for the face boxes of successive frames (norfair's tracker on box IoU, with a Kalman
    filter predicting where each face moves); a track survives `memory` seconds without its face."""

    def __init__(self, fps: float, memory: float = TRACK_MEMORY_SECONDS) -> None:
        try:
            import norfair
        except ImportError:
            raise FerkitError(TRACKER_HINT) from None
        self._detection = norfair.Detection
        self._frame = 0
        self._tracker = norfair.Tracker(
            distance_function="iou",
            distance_threshold=TRACK_IOU_DISTANCE,
            hit_counter_max=max(1, round(fps * memory)),
            initialization_delay=0,
        )

    def assign(self, boxes: list[tuple[int, int, int, int]]) -> list[int]:
        """One track id per box, in order."""
        self._frame += 1
        dets = [
            self._detection(np.array([[x, y], [x + w, y + h]], np.float64), data=(self._frame, i))
            for i, (x, y, w, h) in enumerate(boxes)
        ]
        ids = [0] * len(boxes)
        for obj in self._tracker.update(dets):
            frame, i = obj.last_detection.data
            if frame == self._frame:  # matched in this frame (not a track living on without its face)
                ids[i] = int(obj.id)
        return ids


class Smoother:
    """Each track's probabilities averaged over its last `seconds` (its frames in (t - seconds, t])."""

    def __init__(self, seconds: float) -> None:
        if seconds < 0:
            raise FerkitError(f"--smooth {seconds:g}: must be at least 0 seconds")
        self.seconds = seconds
        self.history: dict[int, deque[tuple[float, np.ndarray]]] = {}

    def __call__(self, track: int, time: float, p: np.ndarray) -> np.ndarray:
        if self.seconds == 0:
            return p
        h = self.history.setdefault(track, deque())
        h.append((time, p))
        while h[0][0] <= time - self.seconds:
            h.popleft()
        return np.mean([q for _, q in h], axis=0)

    def forget(self, now: float) -> None:
        """Drop the history of tracks without a frame in the window ending `now` (their next frame would
        drop it anyway), so a long video or webcam session keeps only its recent tracks."""
        for track in [t for t, h in self.history.items() if h and h[-1][0] <= now - self.seconds]:
            del self.history[track]


@dataclass
class TrackSummary:
    """One track over the video: frames seen, first and last time, frames per emotion, and its
    probabilities over time (for the timeline picture)."""

    track: int
    counts: dict[str, int] = field(default_factory=dict)
    times: list[float] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)

    def add(self, time: float, emotion: str, p: np.ndarray) -> None:
        self.counts[emotion] = self.counts.get(emotion, 0) + 1
        self.times.append(time)
        self.probs.append(p)

    def shares(self) -> dict[str, float]:
        """Emotion -> share of this track's frames, largest first."""
        n = sum(self.counts.values())
        return {e: round(c / n, 4) for e, c in sorted(self.counts.items(), key=lambda kv: -kv[1])}

    def to_dict(self) -> dict[str, Any]:
        return {
            "track": self.track,
            "frames": len(self.times),
            "start": self.times[0],
            "end": self.times[-1],
            "emotions": self.shares(),
        }


# ----------------------------------------------------------------------------- faces in frames
class FaceSource(Protocol):
    """What `analyse` needs of a `Recognizer`: its face finder and its classifier."""

    def face_crops(self, image: np.ndarray, detect: bool = True) -> list[Any]: ...

    def faces_of(self, crops: Any) -> list[Any]: ...


@dataclass(frozen=True)
class VideoFrame:
    """A sampled frame's index in the file, its time in seconds, its faces (`Face`, each with `track`)
    and its RGB pixels (dropped by the caller when not needed: nothing keeps them)."""

    frame: int
    time: float
    faces: list[Any]
    image: np.ndarray = field(repr=False)


def _probs(face: Any) -> np.ndarray:
    return np.array([face.probabilities[c] for c in CLASS_NAMES], np.float64)


def _smoothed(face: Any, track: int, p: np.ndarray) -> Any:
    probabilities = {c: float(v) for c, v in zip(CLASS_NAMES, p, strict=True)}
    return replace(face, track=track, probabilities=probabilities, emotion=CLASS_NAMES[int(np.argmax(p))])


def track_faces(faces: list[Any], tracker: FaceTracker, smoother: Smoother, time: float) -> list[Any]:
    """One frame's faces (`Face`s, at `time` seconds), each with its `track` id and its track's smoothed
    probabilities: what `analyse` does to every frame, and `ferkit serve` to each webcam frame."""
    ids = tracker.assign([f.box for f in faces])
    smoother.forget(time)
    return [
        _smoothed(face, track, smoother(track, time, _probs(face)))
        for face, track in zip(faces, ids, strict=True)
    ]


def analyse(
    rec: FaceSource,
    path: str | Path,
    fps: float | None = DEFAULT_FPS,
    smooth: float = 0.0,
    detect: bool = True,
    summaries: dict[int, TrackSummary] | None = None,
) -> Iterator[VideoFrame]:
    """Each sampled frame of the video with its faces, each `Face` carrying its `track` id; `smooth`
    seconds: each track's probabilities (and so its emotion) are its average over that long.
    `summaries`, when given, is filled with each track's `TrackSummary` as frames go by."""
    info = video_info(path)
    check_fps(info, fps)
    tracker = FaceTracker(info.fps if fps is None else fps)
    smoother = Smoother(smooth)
    for frame in read_frames(path, fps):
        faces = rec.faces_of(rec.face_crops(frame.rgb, detect))
        out = track_faces(faces, tracker, smoother, frame.time)
        if summaries is not None:
            for face in out:
                summary = summaries.setdefault(face.track, TrackSummary(face.track))
                summary.add(frame.time, face.emotion, _probs(face))
        yield VideoFrame(frame.index, frame.time, out, frame.rgb)


def summary_lines(source: str, tracks: list[dict[str, Any]]) -> list[str]:
    """`clip.mp4: track 1 (0.0-3.8 s, 20 frames): Happy 80%, Neutral 20%` per track (as `to_dict` gives)."""
    lines = []
    for t in tracks:
        shares = ", ".join(f"{e} {v:.0%}" for e, v in t["emotions"].items())
        span = f"{t['start']:.1f}-{t['end']:.1f} s, {t['frames']} frames"
        lines.append(f"{source}: track {t['track']} ({span}): {shares}")
    return lines


# ----------------------------------------------------------------------------- pictures
def save_timeline(summaries: dict[int, TrackSummary], out: Path, title: str, colors: dict) -> Path:
    """A picture of each track's class probabilities over time (the 8 longest tracks), one panel each."""
    tracks = sorted(summaries.values(), key=lambda s: -len(s.times))[:8]
    tracks.sort(key=lambda s: s.track)
    n = max(1, len(tracks))
    fig, axes = subplots(n, 1, figsize=(9, 1.9 * n + 0.8), sharex=True, squeeze=False)
    for ax, s in zip(axes[:, 0], tracks, strict=False):
        probs = np.array(s.probs)
        for k, name in enumerate(CLASS_NAMES):
            ax.plot(s.times, probs[:, k], color=np.array(colors[name]) / 255, label=name, lw=1.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {s.track}")
    if not tracks:
        axes[0, 0].text(0.5, 0.5, "no face found", ha="center", va="center")
    axes[-1, 0].set_xlabel("time (s)")
    axes[0, 0].set_title(title)
    if tracks:
        axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def draw_bars(rgb: np.ndarray, box: tuple[int, int, int, int], p: dict[str, float], colors: dict) -> None:
    """Seven small probability bars under (or, at the bottom edge, inside) a face's box, in place."""
    x, y, w, h = box
    bar_h = max(3, h // 24)
    top = y + h + 2 if y + h + 2 + 7 * bar_h <= rgb.shape[0] else y + h - 7 * bar_h - 2
    for k, name in enumerate(CLASS_NAMES):
        y0 = top + k * bar_h
        cv2.rectangle(rgb, (x, y0), (x + w - 1, y0 + bar_h - 2), (40, 40, 40), -1)
        cv2.rectangle(rgb, (x, y0), (x + round((w - 1) * p[name]), y0 + bar_h - 2), colors[name], -1)


class AnnotatedVideo:
    """An mp4 (OpenCV's mp4v) written to a temporary file beside `out`, renamed over it by `close()`;
    `discard()` removes it, so `out` is either the whole video or untouched."""

    def __init__(self, out: Path, fps: float) -> None:
        self.out = out
        self.fps = fps
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".mp4")
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer: Any = None

    def write(self, rgb: np.ndarray) -> None:
        if self.writer is None:
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self.writer.isOpened():
                raise FerkitError(f"{self.out}: cannot write the annotated video (OpenCV's mp4v writer)")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is None:
            self.discard()
            return
        self.writer.release()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.out)

    def discard(self) -> None:
        if self.writer is not None:
            self.writer.release()
        self.tmp.unlink(missing_ok=True)
