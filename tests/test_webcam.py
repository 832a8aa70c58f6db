"""`ferkit serve`'s webcam mode: frames sent with a session id get each face's track id (the tracker
`ferkit predict` runs on videos) and its track's smoothed probabilities; sessions are bounded and expire;
and the page, in headless Chromium with a fake camera playing a clip, shows stable track ids, each
track's bars and the frames a second.

The clip is tests/test_video.py's: two real PublicTest faces (enlarged to 96 px) moving on a textured
320x240 background, 10 frames a second; the first 20 frames, before their paths meet.
"""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_serve import CHROMIUM, CHROMIUM_ARGS, chromium_page, error_of, png_bytes, post, running_server
from test_video import FACES, FPS, clip_frames

from ferkit.apps.recognizer import Face
from ferkit.apps.serve import MAX_SESSIONS, Tracking, WebcamSessions, create_app
from ferkit.classes import CLASS_NAMES

FRAMES = 20  # the clip's frames before the two faces' paths meet


@pytest.fixture(scope="module")
def frames(real_dataset) -> list[np.ndarray]:
    public = np.flatnonzero(real_dataset.splits == "PublicTest")
    return clip_frames(real_dataset.images[public[list(FACES)]], FRAMES)


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    from fastapi.testclient import TestClient

    with TestClient(create_app(str(tiny_checkpoint), device="cpu")) as c:
        yield c


def probs(face: dict) -> list[float]:
    return [face["probabilities"][c] for c in CLASS_NAMES]


def test_session_frames_keep_their_tracks_and_are_smoothed(client, frames) -> None:
    images = [png_bytes(f) for f in frames]
    alone = [post(client, data, "webcam.png").json() for data in images]
    raw = [post(client, data, "webcam.png", "?session=clip-raw-0001&smooth=0").json() for data in images]
    smooth = [post(client, data, "webcam.png", "?session=clip-smooth-01&smooth=10").json() for data in images]
    assert all("track" not in face for a in alone for face in a["faces"])  # a photo: answered as before
    pairs = [r["faces"] for r in raw if len(r["faces"]) == 2]
    assert len(pairs) >= 0.8 * FRAMES
    for left, right in pairs:  # the face that starts on the left keeps track 1, the other track 2
        assert left["box"][0] < right["box"][0] and (left["track"], right["track"]) == (1, 2)
    for got, plain in zip(raw, alone, strict=True):  # smooth=0: the frame's own answer, plus the track
        assert [{k: v for k, v in f.items() if k != "track"} for f in got["faces"]] == plain["faces"]
    for track in (1, 2):
        seen = np.array([probs(f) for r in raw for f in r["faces"] if f["track"] == track])
        averaged = [probs(f) for r in smooth for f in r["faces"] if f["track"] == track]
        assert len(averaged) == len(seen)
        # a window longer than the clip: each track's last answer is the mean of all its frames so far
        np.testing.assert_allclose(averaged[-1], seen.mean(0), atol=3e-4)
        assert np.ptp(averaged[1:], axis=0).max() <= np.ptp(seen, axis=0).max()
    for answer in smooth:
        for face in answer["faces"]:
            assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
    assert "ferkit_webcam_sessions 2.0" in client.get("/metrics").text


def test_bad_session_or_smoothing_is_a_one_line_400(client, frames) -> None:
    data = png_bytes(frames[0])
    cases = [
        ("?session=short", "session 'short': expected 8 to 64 letters, digits, '-' or '_'"),
        ("?session=../../etc/passwd", "expected 8 to 64 letters"),
        ("?session=abcdefgh&smooth=-1", "smooth '-1': must be 0 to 10 seconds"),
        ("?session=abcdefgh&smooth=nan", "smooth 'nan': must be 0 to 10 seconds"),
        ("?session=abcdefgh&smooth=soon", "smooth 'soon': must be 0 to 10 seconds"),
        ("?smooth=1", "smooth needs a session"),
    ]
    for query, needle in cases:
        assert needle in error_of(post(client, data, "webcam.png", query), 400)


def face_at(x: int) -> Face:
    p = dict.fromkeys(CLASS_NAMES, 1 / len(CLASS_NAMES))
    return Face((x, 10, 50, 50), "Angry", p)


def test_sessions_are_bounded_and_expire() -> None:
    """The least recently used session goes past the limit, an idle one after `idle_s`; a track's history
    goes once its smoothing window has passed."""
    sessions = WebcamSessions(limit=2, idle_s=0.5)

    async def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            a, b, c = (Tracking(name * 8, 0.2) for name in "abc")
            assert [f.track for f in await sessions.track(a, [face_at(10)], pool)] == [1]
            await sessions.track(b, [], pool)
            assert [f.track for f in await sessions.track(a, [face_at(12)], pool)] == [1]  # same face
            await sessions.track(c, [], pool)  # the third: b, the least recently used, goes
            assert list(sessions.sessions) == [a.session, c.session]
            history = sessions.sessions[a.session].smoother.history
            assert list(history) == [1]
            time.sleep(0.3)  # past a's smoothing window: its track's history goes at a's next frame
            await sessions.track(a, [], pool)
            assert history == {}
            time.sleep(0.6)  # past idle_s: both go at the next frame of any session
            await sessions.track(Tracking("d" * 8, 1.0), [], pool)
            assert list(sessions.sessions) == ["d" * 8]

    asyncio.run(run())
    assert WebcamSessions().limit == MAX_SESSIONS == 64


# ----------------------------------------------------------------------------- the page, in Chromium
def write_y4m(path: Path, frames: list[np.ndarray], fps: int = FPS) -> Path:
    """Gray uint8 frames as a raw YUV4MPEG2 clip (4:2:0, flat chroma): what Chromium's fake camera plays
    (and loops)."""
    h, w = frames[0].shape
    chroma = np.full(2 * (h // 2) * (w // 2), 128, np.uint8).tobytes()
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + np.ascontiguousarray(frame).tobytes() + chroma)
    return path


def test_webcam_mode_in_chromium_tracks_faces(tiny_checkpoint, frames, tmp_path, monkeypatch, capsys) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    # forwards then backwards, so that the camera's loop never jumps: the faces keep their tracks
    clip = write_y4m(tmp_path / "clip.y4m", frames + frames[-2:0:-1])
    camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]
    args = [*CHROMIUM_ARGS, *camera, f"--use-file-for-fake-video-capture={clip}"]
    problems: list[str] = []
    with (
        running_server(monkeypatch, capsys, "--model_path", str(tiny_checkpoint)) as url,
        chromium_page(sync_api, args, problems) as page,
    ):
        answers: list = []
        page.on("response", lambda r: answers.append(r) if "/predict?" in r.url else None)
        page.goto(url)
        page.click("#tab-cam")
        page.click("#start")
        page.wait_for_function(
            "document.querySelectorAll('#faces .face[data-track]').length === 2"
            " && parseFloat(document.getElementById('fps').textContent) > 0",
            timeout=30_000,
        )
        deadline = time.monotonic() + 20
        while len(answers) < 8 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        fps = page.locator("#fps").inner_text()
        cards = page.locator("#faces .face")
        shown = sorted(int(cards.nth(i).get_attribute("data-track")) for i in range(cards.count()))
        bars = [cards.nth(i).locator(".bars .pct").all_inner_texts() for i in range(cards.count())]
        names = [sorted(cards.nth(i).locator(".bars .name").all_inner_texts()) for i in range(2)]
        canvas_visible = page.locator("#canvas").is_visible()
        page.click("#pause")
        assert page.locator("body").get_attribute("data-state") == "done"
        bodies = [(r.status, r.request.url, r.json()) for r in answers]
    assert problems == []
    assert re.fullmatch(r"\d+\.\d frames/s", fps) and float(fps.split()[0]) > 0, fps
    assert len(bodies) >= 8 and all(status == 200 for status, _, _ in bodies), bodies
    sessions = {re.search(r"session=([0-9a-f]+)&smooth=1$", u).group(1) for _, u, _ in bodies}
    assert len(sessions) == 1  # one session, the page's default 1 s of smoothing
    pairs = [sorted(b["faces"], key=lambda f: f["box"][0]) for _, _, b in bodies if len(b["faces"]) == 2]
    assert len(pairs) >= 0.7 * len(bodies), bodies
    left, right = pairs[0][0]["track"], pairs[0][1]["track"]
    assert left != right
    assert all((a["track"], b["track"]) == (left, right) for a, b in pairs)  # the same ids, frame after frame
    assert {f["track"] for _, _, b in bodies for f in b["faces"]} == {left, right}
    assert shown == sorted((left, right)) and canvas_visible
    assert names == [sorted(CLASS_NAMES)] * 2  # each track's 7 bars
    for pcts in bars:
        assert abs(sum(float(t.rstrip("%")) for t in pcts) - 100) < 0.5
