"""`ferkit serve`: the JSON API (same answers as `ferkit predict`), upload limits, concurrency (faces of
concurrent requests batched, each answer still its own request's), the bounded queue and time limit,
/metrics, `--workers`, and the page end to end in headless Chromium on the real server.

Test photos are real FER2013 faces pasted onto a textured canvas, built as in test_predict.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_predict import DETECTABLE, GROUP, HEIGHT, WIDTH, assert_face_dicts, paste

from ferkit.apps.detectors import create_detector
from ferkit.apps.predict import COLORS, predict_paths
from ferkit.apps.serve import MAX_UPLOAD, create_app, model_name
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.runtime.loading import load_model
from tests.conftest import assert_one_line_error

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture(scope="module")
def real_faces(real_dataset) -> np.ndarray:
    """The real PublicTest faces test_predict.py found the cascade to detect, uint8 (5, 48, 48)."""
    public = np.flatnonzero(real_dataset.splits == "PublicTest")
    return real_dataset.images[public[list(DETECTABLE)]]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo(real_faces, tmp_path_factory) -> Path:
    """A 640x400 photo with three real faces at GROUP."""
    path = tmp_path_factory.mktemp("serve") / "group.png"
    path.write_bytes(png_bytes(paste(real_faces[:3], GROUP)))
    return path


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    from fastapi.testclient import TestClient

    with TestClient(create_app(str(tiny_checkpoint), device="cpu")) as c:
        yield c


def post(client, data: bytes, name: str = "photo.png", query: str = ""):
    return client.post(f"/predict{query}", files={"file": (name, data, "application/octet-stream")})


def error_of(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    (message,) = response.json().values()
    assert "ferkit-serve-" not in message  # never the server's temporary path
    return message


# ----------------------------------------------------------------------------- API
def test_health_and_self_contained_page(client, tiny_checkpoint) -> None:
    from ferkit.runtime.checkpoint import load_checkpoint

    health = client.get("/health").json()
    assert (
        health["status"] == "ok" and health["model"] == "best.pth"
    )  # the file's name, not the server's path
    assert health["arch"] == load_checkpoint(tiny_checkpoint)["arch"] and health["backend"] == "torch"
    assert health["precision"] == "fp32"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<canvas" in html and 'type="file"' in html and "getUserMedia" in html
    assert "{{" not in html and json.dumps(list(COLORS["Happy"])) in html
    for outside in ('src="http', "src='http", 'href="http', "href='http", "url(http", "//cdn", "@import"):
        assert outside not in html  # nothing outside can be reached: no CDN, fonts or scripts


def test_predict_photo_is_the_json_of_ferkit_predict(client, photo, tiny_checkpoint) -> None:
    response = post(client, photo.read_bytes(), "holiday/group.png")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["image"] == "group.png"  # the upload's name, without folders
    assert_face_dicts(result["faces"], GROUP)  # boxes found, probabilities sum to 1
    for face in result["faces"]:
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-3
    (expected,), errors = predict_paths([photo], str(tiny_checkpoint), device="cpu", progress=False)
    assert errors == [] and result == {**expected, "image": "group.png"}


def test_predict_48px_face(client, real_faces) -> None:
    face = real_faces[0]
    result = post(client, png_bytes(face), "face.png").json()
    (found,) = result["faces"]  # the cascade finds this face at FER2013's own size
    assert "note" not in result and found["box"][2] >= 30
    whole = post(client, png_bytes(face), "face.png", "?detect=false").json()
    (crop,) = whole["faces"]
    assert crop["box"] == [0, 0, 48, 48]
    expected = client.app.state.predictor.predict(face[None])[0]
    np.testing.assert_allclose([crop["probabilities"][c] for c in CLASS_NAMES], expected, atol=1e-4)
    assert crop["emotion"] == CLASS_NAMES[int(np.argmax(expected))]
    blank = post(client, png_bytes(np.full((120, 160), 128, np.uint8)), "wall.png").json()
    assert blank == {"image": "wall.png", "faces": [], "note": "no face found"}


def bomb_png(side: int = 10_000) -> bytes:
    """A valid side x side gray PNG of zeros (100 M pixels, over Pillow's limit) in about 100 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z, row = zlib.compressobj(9), bytes(side + 1)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    head = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_upload_limits_and_bad_files(client, photo) -> None:
    big = post(client, b"\0" * (11 * 2**20), "big.jpg")  # over 10 MB, refused from Content-Length
    assert "too large" in error_of(big, 413)

    def chunks():  # no Content-Length: refused once the body passes the limit, not read to the end
        for _ in range(64):
            yield b"\0" * 2**20

    streamed = client.post(
        "/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert "too large" in error_of(streamed, 413)

    text = post(client, b"these are my holiday notes\n" * 20, "notes.txt")
    assert "notes.txt: not an image" in error_of(text, 415)
    raw = client.post("/predict", content=photo.read_bytes(), headers={"content-type": "image/png"})
    assert "multipart/form-data" in error_of(raw, 415)
    assert "empty.png: empty file" in error_of(post(client, b"", "empty.png"), 400)
    missing = client.post("/predict", files={"photo": ("a.png", photo.read_bytes())})
    assert "field 'file'" in error_of(missing, 400)
    cut = post(client, photo.read_bytes()[:3000], "cut.png")  # a header, then nothing
    assert "cut.png" in error_of(cut, 400)

    bomb = bomb_png()
    assert len(bomb) < 200_000 < MAX_UPLOAD
    message = error_of(post(client, bomb, "bomb.png"), 413)
    assert "bomb.png" in message and "decompression bomb" in message
    assert client.get("/health").json()["status"] == "ok"  # and the server is still up


def assert_same_answer(got: dict, alone: dict) -> None:
    """`got` answers the same image as `alone`: same faces and emotions; probabilities equal to float
    rounding (a face's batch companions may change the last bit of its scores)."""
    assert got.keys() == alone.keys() and got["image"] == alone["image"]
    assert [f["box"] for f in got["faces"]] == [f["box"] for f in alone["faces"]]
    for face, single in zip(got["faces"], alone["faces"], strict=True):
        assert face["emotion"] == single["emotion"]
        for name in CLASS_NAMES:
            assert abs(face["probabilities"][name] - single["probabilities"][name]) <= 2e-4


def test_concurrent_requests_all_succeed_with_identical_results(client, photo, real_faces) -> None:
    uploads = [(photo.read_bytes(), "group.png"), (png_bytes(real_faces[3]), "face.png")]
    alone = [post(client, data, name).json() for data, name in uploads]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda i: post(client, *uploads[i % 2]), range(8)))
    assert [r.status_code for r in responses] == [200] * 8
    for i, r in enumerate(responses):
        assert_same_answer(r.json(), alone[i % 2])


def metrics_of(client) -> dict[str, list]:
    """/metrics parsed as Prometheus text: metric family name -> its samples."""
    from prometheus_client.parser import text_string_to_metric_families

    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def test_faces_of_concurrent_requests_are_batched_and_map_back(tiny_checkpoint, photo, real_faces) -> None:
    from fastapi.testclient import TestClient

    mirrored = photo.with_name("mirrored.png")
    mirrored.write_bytes(png_bytes(np.ascontiguousarray(np.asarray(Image.open(photo))[:, ::-1])))
    uploads = [  # different images, different numbers of faces
        (photo.read_bytes(), "group.png", ""),
        (mirrored.read_bytes(), "mirrored.png", ""),
        (png_bytes(real_faces[3]), "face.png", ""),
        (png_bytes(real_faces[4]), "crop.png", "?detect=false"),
        (png_bytes(np.full((120, 160), 128, np.uint8)), "wall.png", ""),
    ]
    app = create_app(str(tiny_checkpoint), device="cpu", batch_wait_ms=300, max_batch=64)
    with TestClient(app) as c:
        alone = [post(c, data, name, query).json() for data, name, query in uploads]
        assert [len(a["faces"]) for a in alone] == [3, 3, 1, 1, 0]
        order = [i % len(uploads) for i in range(15)]
        with ThreadPoolExecutor(15) as pool:
            responses = list(pool.map(lambda i: post(c, *uploads[i]), order))
        assert [r.status_code for r in responses] == [200] * len(order)
        for i, r in zip(order, responses, strict=True):
            assert_same_answer(r.json(), alone[i])  # each request gets its own faces back
        metrics = metrics_of(c)

    (faces,) = [s.value for s in metrics["ferkit_faces"] if s.name == "ferkit_faces_total"]
    assert faces == sum(len(a["faces"]) for a in alone) + sum(len(alone[i]["faces"]) for i in order)
    sizes = {s.name.removeprefix("ferkit_batch_faces"): s for s in metrics["ferkit_batch_faces"]}
    assert sizes["_sum"].value == faces  # every face ran once
    with_faces = sum(1 for a in alone if a["faces"]) + sum(1 for i in order if alone[i]["faces"])
    assert sizes["_count"].value < with_faces  # fewer batches than requests: faces of several shared one
    answered = {s.labels["status"]: s.value for s in metrics["ferkit_requests"] if s.name.endswith("_total")}
    assert answered == {"200": len(uploads) + len(order)}
    (depth,) = [s.value for s in metrics["ferkit_queue_depth"]]
    assert depth == 0


def test_memory_stays_flat_over_many_requests(client, photo) -> None:
    """Nothing a request touches stays behind (the face detector once kept ~1 MB of every photo)."""
    data = photo.read_bytes()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: post(client, data, "group.png"), range(20)))
        before = rss_mb()
        statuses = list(pool.map(lambda _: post(client, data, "group.png").status_code, range(120)))
    assert statuses == [200] * 120
    assert rss_mb() - before < 30, (before, rss_mb())


def test_metrics_are_prometheus_text_and_health_names_no_path(client, photo) -> None:
    assert post(client, photo.read_bytes(), "group.png").status_code == 200
    assert post(client, b"", "empty.png").status_code == 400
    metrics = metrics_of(client)
    assert {
        "ferkit_requests",
        "ferkit_request_seconds",
        "ferkit_queue_depth",
        "ferkit_faces",
    } <= metrics.keys()
    answered = {s.labels["status"]: s.value for s in metrics["ferkit_requests"] if s.name.endswith("_total")}
    assert answered["200"] >= 1 and answered["400"] >= 1
    (count,) = [s.value for s in metrics["ferkit_request_seconds"] if s.name.endswith("_count")]
    assert count == sum(answered.values())
    health = client.get("/health").json()
    assert os.sep not in health["model"] and "tmp" not in json.dumps(health)
    from ferkit.runtime.model_card import shipped_models

    for name, card in shipped_models().items():  # a shipped model is named, not its card's path
        assert model_name(str(card)) == name


# ----------------------------------------------------------------------------- command line
def serve_args(*argv: str) -> argparse.Namespace:
    from ferkit.cli.main import build_parser

    return build_parser().parse_args(["serve", *argv])


def test_cli_errors_before_the_server_starts(tmp_path, tiny_checkpoint) -> None:
    cases = [
        (["--model_path", str(tmp_path / "gone.pth")], "gone.pth: checkpoint not found"),
        (["--model_path", str(tiny_checkpoint), "--backend", "onnx"], "--backend onnx takes an .onnx"),
        (["--backend", "onnx"], "--backend onnx needs --model_path"),
        (["--max_batch", "0"], "--max_batch 0: must be at least 1"),
        (["--queue_size", "0"], "--queue_size 0: must be at least 1"),
        (["--timeout_s", "0"], "--timeout_s 0.0: must be a number of seconds above 0"),
        (["--batch_wait_ms", "-1"], "--batch_wait_ms -1.0: must be 0 to 1000"),
        (["--model_path", str(tiny_checkpoint), "--workers", "0"], "--workers 0: must be at least 1"),
        (["--detector", "nope"], "detector 'nope': unknown"),  # before the model loads
        (["--detector", "haar", "--min_face", "0"], "min_face 0: must be at least 1"),
    ]
    for argv, needle in cases:
        args = serve_args(*argv)
        with pytest.raises(FerkitError, match=needle):
            args.func(args)
    with pytest.raises(FerkitError, match="ONNX model: pass --backend onnx"):
        load_model(str(tmp_path / "model.onnx"), "torch")
    with socket.socket() as busy:  # a port someone else holds: one line, no traceback from uvicorn
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = serve_args("--model_path", str(tiny_checkpoint), "--device", "cpu", "--port", str(port))
        with pytest.raises(FerkitError, match=f"cannot listen on 127.0.0.1:{port}"):
            args.func(args)


def test_detector_options_reach_the_recognizer(tiny_checkpoint, photo, monkeypatch, capsys) -> None:
    """`ferkit serve --detector haar` finds the faces with OpenCV's cascade (no `score`), as `ferkit predict
    --detector haar` does; `--min_face` drops the faces smaller than it."""
    import httpx

    argv = ("--model_path", str(tiny_checkpoint), "--detector", "haar")
    with running_server(monkeypatch, capsys, *argv) as url:
        assert httpx.get(f"{url}health").json()["detector"] == "haar"
        result = httpx.post(f"{url}predict", files={"file": ("group.png", photo.read_bytes())}).json()
    assert_face_dicts(result["faces"], GROUP)
    assert all("score" not in face for face in result["faces"])  # the cascade gives none
    (expected,), _ = predict_paths(
        [photo], str(tiny_checkpoint), device="cpu", progress=False, detector=create_detector("haar")
    )
    assert result == {**expected, "image": "group.png"}
    from fastapi.testclient import TestClient

    with TestClient(create_app(str(tiny_checkpoint), detector="haar", min_face=400)) as small:
        assert post(small, photo.read_bytes()).json()["faces"] == []  # the faces are 160 px


def test_unknown_detector_is_one_line(run_ferkit) -> None:
    proc = run_ferkit("serve", "--detector", "nope", "--port", "0")
    assert_one_line_error(proc, "detector 'nope': unknown (known: auto,")


# ----------------------------------------------------------------------------- the page, in Chromium
@contextlib.contextmanager
def running_server(monkeypatch, capsys, *argv: str) -> Iterator[str]:
    """`ferkit serve --port 0 ARGV` running in a thread: the URL it printed."""
    import uvicorn

    servers: list[uvicorn.Server] = []

    class Recorded(uvicorn.Server):
        def __init__(self, config: uvicorn.Config) -> None:
            super().__init__(config)
            servers.append(self)

    monkeypatch.setattr(uvicorn, "Server", Recorded)
    args = serve_args("--device", "cpu", "--port", "0", *argv)
    thread = threading.Thread(target=args.func, args=(args,), daemon=True)
    thread.start()
    printed, deadline = "", time.monotonic() + 60
    while not (servers and servers[0].started) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    printed = capsys.readouterr().out
    assert servers and servers[0].started, printed
    (line,) = printed.strip().splitlines()
    url = line.split(" at ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/"), line
    yield url
    servers[0].should_exit = True
    thread.join(15)
    assert not thread.is_alive()


@pytest.fixture
def live_server(tiny_checkpoint, monkeypatch, capsys):
    with running_server(monkeypatch, capsys, "--model_path", str(tiny_checkpoint)) as url:
        yield url


def start_upload(url: str, data: bytes) -> socket.socket:
    """A POST /predict whose body stops half way: the request is in the server until the rest comes."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    boundary = "ferkitboundary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.png"\r\n\r\n'
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nConnection: close\r\n\r\n".encode()
        + body[: len(body) // 2]
    )
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """Status, headers (lower-case names) and JSON body of the one response on `sock`."""
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    sock.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def response_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and (chunk := sock.recv(4096)):
        head += chunk
    return head


def test_huge_uploads_are_refused_at_once_without_memory(live_server) -> None:
    """A 60 MB body: 413 from its Content-Length before any of it is read, or, streamed without one, once
    it passes the limit; the server (in this process) never holds it."""
    host, port = live_server.removeprefix("http://").rstrip("/").split(":")
    size, start_rss, peak = 60 * 2**20, rss_mb(), [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        start = time.monotonic()
        sock.sendall(f"{head}Content-Length: {size}\r\n\r\n".encode() + b"\0" * 65536)
        answer = response_head(sock)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 413") and took < 1.0, (answer, took)
    assert peak[0] - start_rss < 5, (start_rss, peak[0])  # none of the body was kept

    with socket.create_connection((host, int(port)), timeout=30) as sock:  # chunked: no Content-Length
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = f"{2**20:x}\r\n".encode() + b"\0" * 2**20 + b"\r\n"
        sent = 0
        with contextlib.suppress(OSError):  # the server may close once it has answered
            for _ in range(size // 2**20):
                sock.sendall(chunk)
                sent += 1
        answer = response_head(sock)
    sampling.set()
    sampler.join()
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert peak[0] - start_rss < 30, (start_rss, peak[0], sent)  # at most the 10 MB limit, not 60 MB


def test_full_queue_is_503_with_retry_after_at_once_and_slow_requests_time_out(
    tiny_checkpoint, photo, monkeypatch, capsys
) -> None:
    import httpx

    argv = ("--model_path", str(tiny_checkpoint), "--queue_size", "1", "--timeout_s", "3")
    with running_server(monkeypatch, capsys, *argv) as url:
        data = photo.read_bytes()
        slow = start_upload(url, data)  # holds the one place in the queue
        time.sleep(0.5)
        start = time.monotonic()
        refused = httpx.post(f"{url}predict", files={"file": ("group.png", data)}, timeout=30)
        assert time.monotonic() - start < 1.0  # at once, not after the slow one
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "server busy" in error_of(refused, 503)
        status, headers, body = read_answer(slow)  # its body never came: the time limit answers
        assert status == 503 and headers["retry-after"] == "1" and "no answer within 3 s" in body["error"]
        ok = httpx.post(f"{url}predict", files={"file": ("group.png", data)}, timeout=30)
        assert ok.status_code == 200 and len(ok.json()["faces"]) == len(GROUP)  # the place is free again
        metrics = httpx.get(f"{url}metrics").text
    assert 'ferkit_requests_total{status="503"} 2.0' in metrics


@pytest.mark.slow
def test_workers_processes_serve_requests(tiny_checkpoint, photo, tmp_path) -> None:
    """`ferkit serve --workers 2`: two processes answer on the one port, as a single one would."""
    import httpx

    cmd = [sys.executable, "-m", "ferkit", "serve", "--model_path", str(tiny_checkpoint), "--device", "cpu"]
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*cmd, "--port", "0", "--workers", "2"], stdout=subprocess.PIPE, stderr=err, text=True
        )
    try:
        line = proc.stdout.readline()
        assert "(2 worker processes)" in line, (line, log.read_text())
        url = line.split(" at ")[1].split()[0]
        deadline = time.monotonic() + 120
        while True:  # the workers load the model first
            try:
                if httpx.get(f"{url}health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.25)
        assert httpx.get(f"{url}health").json()["model"] == "best.pth"
        data = photo.read_bytes()

        def ask(_: int) -> httpx.Response:
            return httpx.post(f"{url}predict", files={"file": ("g.png", data)}, timeout=60)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(8)))
        assert [a.status_code for a in answers] == [200] * 8
        for a in answers:
            assert_same_answer(a.json(), answers[0].json())
        assert len(worker_pids(proc.pid)) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()


def worker_pids(parent: int) -> list[int]:
    """The processes uvicorn spawned for `parent`'s workers (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == parent and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


@contextlib.contextmanager
def chromium_page(sync_api, args: list[str], problems: list[str]) -> Iterator:
    """A page of Debian's headless Chromium (launched with `args`) at VIEWPORT; its script errors and
    console errors are appended to `problems`."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            yield page
        finally:
            browser.close()


def test_page_end_to_end_in_chromium(live_server, photo, tmp_path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    import httpx

    expected = httpx.post(f"{live_server}predict", files={"file": ("group.png", photo.read_bytes())}).json()
    assert len(expected["faces"]) == len(GROUP)
    shot = tmp_path / "serve.png"
    problems: list[str] = []
    with chromium_page(sync_api, CHROMIUM_ARGS, problems) as page:
        page.goto(live_server)
        page.wait_for_function("document.getElementById('model').textContent.includes('torch')")
        shown = page.locator("#model").inner_text()
        assert shown.startswith("best.pth ") and "/" not in shown  # the model's name, not its path
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=60_000)
        assert page.locator("#status").inner_text() == "group.png: 3 faces"
        cards = page.locator("#faces .face")
        assert cards.count() == 3
        for i, face in enumerate(expected["faces"]):
            card = cards.nth(i)
            assert card.get_attribute("data-emotion") == face["emotion"]
            names = card.locator(".bars .name").all_inner_texts()
            shown = [float(t.rstrip("%")) for t in card.locator(".bars .pct").all_inner_texts()]
            ranked = sorted(face["probabilities"].items(), key=lambda kv: -kv[1])
            assert names == [name for name, _ in ranked]  # 7 bars, largest first
            assert np.allclose(shown, [100 * p for _, p in ranked], atol=0.051)
        canvas = page.locator("#canvas")
        assert canvas.is_visible()
        scale = float(canvas.get_attribute("data-scale"))
        line = float(canvas.get_attribute("data-line"))
        frame = canvas.bounding_box()
        page.screenshot(path=str(shot))
        assert problems == []

    image = Image.open(shot)
    assert image.format == "PNG" and image.size == (VIEWPORT["width"], VIEWPORT["height"])
    pixels = np.asarray(image.convert("RGB")).astype(int)
    assert pixels.std() > 20  # not blank
    for face in expected["faces"]:  # each box's left edge, at mid-height, is drawn in its emotion's colour
        x, y, w, h = face["box"]
        px = round(frame["x"] + x * scale + line / 2)
        py = round(frame["y"] + (y + h / 2) * scale)
        got = pixels[py, px]
        assert np.abs(got - COLORS[face["emotion"]]).max() < 40, (face, got.tolist())
    assert frame["width"] <= VIEWPORT["width"] and round(frame["width"] / scale) == WIDTH
    assert round(frame["height"] / scale) == HEIGHT
