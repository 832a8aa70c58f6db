"""How face crops are made, measured end to end on labelled scenes: detector -> crop -> shipped model.

    python bench/crops.py [--faces 500] [--seed 0] [--max_angle 25] [--margins 0.05 -0.05]

We have no labelled photos of real scenes, so the scenes are made from REAL FER2013 faces of PublicTest
only (never Training, which trained the model, nor PrivateTest, the honest test): `--faces` faces drawn at
random (`--seed`), each enlarged 3x (48 -> 144 px) and pasted at a random place of its own 400x400
textured background, twice: turned by a random in-plane angle, uniform in +-`--max_angle` degrees (the
rotated scenes), and upright (the control). Both copies share the face, the place and the background, so
every comparison is paired. Each scene goes through the Recognizer's path: its detector on the RGB scene,
then `crop_detection` (the crop `Recognizer.predict` makes), then the model (`--model`, its own TTA).

Per condition it prints the detection rate (a detection whose box centre lies within 0.3 of the face's side
of the face's centre), false detections, the crops' framing against the true face square (side ratio,
centre offset; FER2013's own framing is 1.00 and 0), the error of the eye angle, and the accuracy on the
faces found of each crop variant: `box` (the box's square, upright), `aligned` (turned so the eyes are
level), `aligned, true angle` (turned by the angle the scene was made with: what perfect landmarks would
give), each `--margins` value (aligned), and `original` (the 48x48 face itself: the best a crop can do).
Accuracies carry a 95% bootstrap interval; each variant's gain over `box` a paired bootstrap interval (the
same faces resampled for both). Prints the command, commit, CPU (`lscpu`) and load average.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import cv2
import numpy as np

import ferkit
from ferkit.apps.detectors import Detection
from ferkit.apps.faces import crop_face, eye_angle, to_gray
from ferkit.apps.recognizer import crop_detection
from ferkit.data import load_dataset
from ferkit.errors import FerkitError
from ferkit.shipping.model_card import git_commit

SCALE = 3  # 48 -> 144 px faces
CANVAS = 400
MATCH = 0.3  # a detection finds the face when its box centre is within this share of the face's side
BOOTSTRAP = 2000


@dataclass
class Scene:
    """One face pasted into a scene: its label, true centre, side and turn (degrees clockwise)."""

    label: int
    centre: tuple[float, float]
    side: float
    angle: float
    rgb: np.ndarray


def make_scene(face: np.ndarray, label: int, angle: float, place: np.ndarray, level: float) -> Scene:
    """`face` enlarged SCALE x, turned `angle` degrees clockwise, on a textured background: one affine warp
    (bilinear) onto the background, which shows wherever the turned face does not reach."""
    rng = np.random.default_rng(int(place[2]))
    noise = np.clip(rng.normal(level, 25, (CANVAS, CANVAS)), 0, 255).astype(np.uint8)
    canvas = cv2.GaussianBlur(noise, (0, 0), 2)
    side = 48.0 * SCALE
    reach = side * 0.71  # half the diagonal: the turned face stays inside the canvas
    cx, cy = (reach + place[:2] * (CANVAS - 2 * reach)).tolist()
    matrix = cv2.getRotationMatrix2D((23.5, 23.5), -angle, SCALE)  # about the face's centre
    matrix[:, 2] += (cx - 0.5, cy - 0.5)
    matrix[:, 2] -= (23.5, 23.5)
    cv2.warpAffine(face, matrix, (CANVAS, CANVAS), canvas, cv2.INTER_LINEAR, cv2.BORDER_TRANSPARENT)
    return Scene(label, (cx, cy), side, angle, cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB))


def scenes(n: int, seed: int, max_angle: float) -> tuple[list[Scene], list[Scene], np.ndarray]:
    """(rotated scenes, upright scenes, the original 48x48 faces) of `n` random PublicTest faces."""
    public = load_dataset().split("PublicTest", labelled_only=True)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(public), size=min(n, len(public)), replace=False)
    rotated, upright = [], []
    for i in pick:
        angle = float(rng.uniform(-max_angle, max_angle))
        place = np.array([*rng.uniform(0, 1, 2), rng.integers(1 << 31)])
        level = float(rng.uniform(60, 200))
        face, label = public.images[i], int(public.labels[i])
        rotated.append(make_scene(face, label, angle, place, level))
        upright.append(make_scene(face, label, 0.0, place, level))
    return rotated, upright, public.images[pick]


def match(found: list[Detection], scene: Scene) -> Detection | None:
    """The most confident detection whose box centre lies near the face's centre, else None."""
    near = [
        d
        for d in found
        if np.hypot(d.box[0] + d.box[2] / 2 - scene.centre[0], d.box[1] + d.box[3] / 2 - scene.centre[1])
        <= MATCH * scene.side
    ]
    return max(near, key=lambda d: d.score or 0.0, default=None)


def crops_of(scene: Scene, d: Detection, margins: list[float]) -> dict[str, np.ndarray]:
    """The crop variants of one detected face (`box` and `aligned` through the Recognizer's own path)."""
    gray = to_gray(scene.rgb)
    out = {
        "box": crop_detection(gray, d, align=False).crop,
        "aligned": crop_detection(gray, d, align=True).crop,
    }
    out["aligned, true angle"] = crop_face(gray, d.box, angle=scene.angle)  # perfect eyes: the most to gain
    for m in margins:
        out[f"margin {m:+.2f}"] = crop_face(gray, d.box, margin=m, angle=eye_angle(d.landmarks))
    return out


def detect_and_crop(rec: ferkit.Recognizer, all_scenes: list[Scene], margins: list[float]) -> dict:
    """Detections, framing figures and crops of each scene's face (None where it was not found)."""
    found, false, crops, framing, angle_error = [], 0, [], [], []
    for scene in all_scenes:
        detections = rec.detector(scene.rgb)
        d = match(detections, scene)
        false += len(detections) - (d is not None)
        found.append(d is not None)
        if d is None:
            continue
        x, y, w, h = d.box
        offset = np.hypot(x + w / 2 - scene.centre[0], y + h / 2 - scene.centre[1]) / scene.side
        framing.append((max(w, h) / scene.side, offset))
        if d.landmarks:
            angle_error.append(eye_angle(d.landmarks) - scene.angle)
        crops.append(crops_of(scene, d, margins))
    return dict(found=np.array(found), false=false, crops=crops, framing=framing, angle_error=angle_error)


def score(
    rec: ferkit.Recognizer, result: dict, labels: np.ndarray, originals: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per crop variant: whether the model is right on each face found, and the crops' median correlation
    with the original 48x48 faces (1: the face exactly as FER2013 framed it)."""
    found = result["found"]
    faces = originals[found].reshape(int(found.sum()), -1).astype(float)
    correct, likeness = {}, {}
    for name in result["crops"][0] if result["crops"] else ():
        crops = np.stack([c[name] for c in result["crops"]])
        correct[name] = rec.classify(crops).argmax(1) == labels[found]
        flat = crops.reshape(len(crops), -1).astype(float)
        likeness[name] = float(np.median([np.corrcoef(a, b)[0, 1] for a, b in zip(flat, faces, strict=True)]))
    return correct, likeness


def interval(correct: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """95% bootstrap interval of a mean (of 0/1 per face, or of paired differences)."""
    if len(correct) == 0:
        return float("nan"), float("nan")
    means = correct[rng.integers(0, len(correct), (BOOTSTRAP, len(correct)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def report(
    title: str, result: dict, correct: dict[str, np.ndarray], likeness: dict[str, float], n: int
) -> None:
    """One condition's figures (see the module's docstring)."""
    rng = np.random.default_rng(0)
    hits = int(result["found"].sum())
    p = hits / n
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    print(f"\n## {title}: {hits}/{n} faces found ({p:.3f} +- {half:.3f}), {result['false']} false detections")
    if result["framing"]:
        ratio, offset = np.array(result["framing"]).T
        print(
            f"framing: box side / face side median {np.median(ratio):.3f} "
            f"(IQR {np.percentile(ratio, 25):.3f}-{np.percentile(ratio, 75):.3f}); "
            f"centre offset / side median {np.median(offset):.3f}"
        )
    if result["angle_error"]:
        err = np.abs(result["angle_error"])
        print(
            f"eye angle - true turn: median |error| {np.median(err):.1f} deg, 90th percentile "
            f"{np.percentile(err, 90):.1f} deg ({len(err)} faces with landmarks)"
        )
    print("\n| crop | like the face | accuracy on faces found | 95% interval | gain over box (paired 95%) |")
    print("|---|---|---|---|---|")
    for name, ok in correct.items():
        lo, hi = interval(ok, rng)
        diff = ok.astype(float) - correct["box"]
        dlo, dhi = interval(diff, rng)
        gain = "" if name == "box" else f"{100 * diff.mean():+.1f} ({100 * dlo:+.1f} to {100 * dhi:+.1f})"
        accuracy = f"{100 * ok.mean():.1f}% | {100 * lo:.1f}-{100 * hi:.1f}"
        print(f"| {name} | {likeness[name]:.3f} | {accuracy} | {gain} |")


def commit() -> str:
    """The commit, and whether the package or the benches differ from it in the working tree."""
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "src", "bench"],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return git_commit() + (" (with uncommitted changes to src/ or bench/)" if changed else "")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=500, help="PublicTest faces drawn (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="which faces, turns, places (default 0)")
    parser.add_argument("--max_angle", type=float, default=25.0, help="turns uniform in +-this (degrees)")
    parser.add_argument("--margins", type=float, nargs="*", default=[], help="margin variants, e.g. 0.05")
    parser.add_argument("--model", default="ferkit-fer2013", help="the model (default ferkit-fer2013)")
    args = parser.parse_args(argv)
    start = time.time()
    print(f"python bench/crops.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(
        f"{date.today()}, commit {commit()}, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"load average {load_average()} at the start"
    )
    try:
        rec = ferkit.load(args.model)
        rotated, upright, originals = scenes(args.faces, args.seed, args.max_angle)
    except FerkitError as e:
        raise SystemExit(f"bench/crops.py: {e}") from None
    print(f"model {args.model} (TTA {rec.tta}), detector {rec.detector!r}")
    labels = np.array([s.label for s in rotated])
    reference = rec.classify(originals).argmax(1) == labels
    for title, condition in ((f"Turned +-{args.max_angle:g} deg", rotated), ("Upright (control)", upright)):
        result = detect_and_crop(rec, condition, args.margins)
        correct, likeness = score(rec, result, labels, originals)
        correct["original"] = reference[result["found"]]
        likeness["original"] = 1.0
        report(title, result, correct, likeness, len(condition))
    print(f"\n{time.time() - start:.0f} s; load average {load_average()} at the end")


if __name__ == "__main__":
    main()
