"""Video benchmark: frames a second end to end (`ferkit predict CLIP --fps all --format csv`, in process:
decode, find faces, classify, track, write the rows) at 640x360 and 1280x720, for each shipped model and
the face detector the Recognizer uses; beside it the decode-only and decode+detect rates, to show where
the time goes.

    python bench/video.py [--seconds 4] [--rounds 2] [--threads 2]

The clips are made here from REAL FER2013 faces ($FERKIT_DATA): two PublicTest faces enlarged to 2/5 of
the frame's height on a textured background, crossing the frame, 25 frames a second (mp4v). Prints the CPU
(`lscpu`), the load average (`uptime`) and the commit: the machine may be shared, so read each rate
beside its load. A rate is the best of `--rounds` runs (the least disturbed by other work).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from ferkit.apps.detectors import default_detector
from ferkit.apps.faces import to_gray
from ferkit.apps.predict import RowWriter, VideoOptions, predict_paths
from ferkit.apps.video import read_frames
from ferkit.data import load_dataset
from ferkit.shipping.model_card import git_commit
from ferkit.utils.device import cpu_name

SIZES = ((640, 360), (1280, 720))
MODELS = ("ferkit-fer2013-fast", "ferkit-fer2013")
FPS = 25
FACES = (4, 52)  # PublicTest ranks the Haar cascade finds (tests/test_predict.py's DETECTABLE)


def make_clip(path: Path, faces: np.ndarray, width: int, height: int, seconds: float) -> int:
    """Two real faces crossing a textured frame; returns the number of frames written."""
    size = height * 2 // 5
    big = [cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in faces]
    rng = np.random.default_rng(0)
    bg = cv2.GaussianBlur(np.clip(rng.normal(128, 20, (height, width)), 0, 255).astype(np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    n = round(seconds * FPS)
    span = width / 2 - size
    for i in range(n):
        t = i / max(1, n - 1)
        canvas = bg.copy()
        for face, (x, y) in zip(
            big, ((round(t * span), height // 10), (round(width - size - t * span), height // 2)), strict=True
        ):
            canvas[y : y + size, x : x + size] = face
        writer.write(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    writer.release()
    return n


def best_rate(run, frames: int, rounds: int) -> float:
    """Frames a second of the fastest of `rounds` runs of `run()`."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return frames / best


def end_to_end(clip: Path, model: str) -> None:
    out = io.StringIO()
    writer = RowWriter("csv", out)
    video = VideoOptions(fps=None, sink=writer.frame)
    results, errors = predict_paths([clip], model, device="cpu", progress=False, video=video)
    if errors:
        raise SystemExit(f"bench/video.py: {errors[0]}")
    writer.finish(results)


def decode_only(clip: Path) -> None:
    for _ in read_frames(clip, None):
        pass


def decode_detect(clip: Path) -> None:
    detector = default_detector()  # what the Recognizer uses
    for frame in read_frames(clip, None):
        detector(to_gray(frame.rgb))


def machine() -> str:
    name = cpu_name()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return (
        f"CPU: {name}; torch threads {torch.get_num_threads()}\nuptime: {load}\ncommit: {git_commit() or '?'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each generated clip")
    ap.add_argument("--rounds", type=int, default=2, help="runs per measurement; the best is kept")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads (the target: 2 cores)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    ds = load_dataset(None)
    faces = ds.images[np.flatnonzero(ds.splits == "PublicTest")[list(FACES)]]
    print(machine())
    print("| size | model | detector | decode f/s | decode+detect f/s | end to end f/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in SIZES:
            clip = Path(tmp) / f"clip-{width}x{height}.mp4"
            n = make_clip(clip, faces, width, height, args.seconds)
            dec = best_rate(lambda c=clip: decode_only(c), n, args.rounds)
            det = best_rate(lambda c=clip: decode_detect(c), n, args.rounds)
            for model in MODELS:
                end_to_end(clip, model)  # warm-up: the model loaded and cached once
                e2e = best_rate(lambda m=model, c=clip: end_to_end(c, m), n, args.rounds)
                print(
                    f"| {width}x{height} | {model} | {default_detector().name} "
                    f"| {dec:.0f} | {det:.0f} | {e2e:.1f} |",
                    flush=True,
                )
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    sys.exit(main())
