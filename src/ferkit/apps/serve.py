"""`ferkit serve`: a web page and a JSON API around one model, built to take many requests at once.

`GET /` is one self-contained page (no outside assets): upload a photo or stream the webcam, see the
faces boxed and each face's emotions as bars. `POST /predict` (multipart field `file`) answers exactly the
entry `ferkit predict --format json` gives an image; `GET /health` names the model (its shipped name or
its file's name, never a path on the server) and the face detector; `GET /metrics` is Prometheus text.
The model is loaded once, before the server listens.

Webcam frames come with `?session=ID&smooth=SECONDS`: the server keeps one face tracker per session (the
tracker and smoothing `ferkit predict` applies to a video's frames, `ferkit.apps.video`), so each face
gets its `track` id and its track's probabilities averaged over the last SECONDS. At most MAX_SESSIONS
sessions are kept (the least recently used is dropped), and one idle for SESSION_IDLE_S is forgotten.

A request is admitted while fewer than `queue_size` are in the server, else it gets 503 with Retry-After
at once. Its upload is read and checked, then decoded and its faces found on a few threads, outside the
model. Its face crops join the queue of the one thread that runs the model: while more requests are on
their way it waits up to `batch_wait_ms` for their faces, so the faces of concurrent requests are
classified together, up to `max_batch` at a time. A request not answered within `timeout_s` gets 503 as
well. `--workers N` runs N such processes on one port.

Uploads over `MAX_UPLOAD` bytes are refused (413) from their Content-Length, or as soon as the body grows
past it; anything Pillow cannot identify as an image is 415, a possible decompression bomb 413, an empty
or damaged file 400. Errors are JSON: `{"error": "..."}`.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime.
"""

import asyncio
import contextlib
import inspect
import io
import json
import logging
import math
import os
import queue
import re
import socket
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ferkit.apps.predict import COLORS, NO_FACE
from ferkit.errors import FerkitError

MAX_UPLOAD = 10 * 1024 * 1024  # bytes of the image itself
MULTIPART_SLACK = 64 * 1024  # room for the multipart boundaries and headers around it
INSTALL_HINT = "pip install 'ferkit[serve]'"
ANY_HOST = ("0.0.0.0", "::", "")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # uvicorn's
SETTINGS_ENV = "FERKIT_SERVE_SETTINGS"  # how `--workers` processes get the settings (JSON)
RETRY_AFTER = "1"  # seconds, in every 503
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Face detectors (`ferkit.apps.detectors` names) whose calls may run in several threads at once: no state
# shared between calls once one has run. OpenCV's cascade is not one (it fails on concurrent calls).
CONCURRENT_DETECTORS = ("libfacedetection",)
# Webcam sessions: each holds a face tracker and its tracks' recent probabilities (a few kB).
MAX_SESSIONS = 64  # past this, the least recently used session is dropped
SESSION_IDLE_S = 60.0  # a session without a frame for this long is dropped
# The frame rate a session's tracker assumes: a track lives on this many frames times
# `ferkit.apps.video.TRACK_MEMORY_SECONDS` without its face (norfair counts frames, not seconds).
WEBCAM_FPS = 10.0
DEFAULT_SMOOTH = 1.0  # seconds, when a session's frame does not say
MAX_SMOOTH = 10.0
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
log = logging.getLogger("uvicorn.error")


class UploadError(Exception):
    """A request refused with `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _import_web():
    try:
        import fastapi
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401

        try:  # python-multipart, which FastAPI needs for uploads (`multipart` before 0.0.13)
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as e:
        name = {"multipart": "python-multipart", "python_multipart": "python-multipart"}.get(e.name, e.name)
        name = "prometheus-client" if name == "prometheus_client" else name
        raise FerkitError(f"`ferkit serve` needs {name}: {INSTALL_HINT}") from None
    return fastapi


def page_html() -> str:
    """The app's page, with the class colours and the upload limit filled in."""
    text = resources.files("ferkit.apps").joinpath("static", "index.html").read_text(encoding="utf-8")
    return (
        text.replace("{{COLORS}}", json.dumps({k: list(v) for k, v in COLORS.items()}))
        .replace("{{MAX_BYTES}}", str(MAX_UPLOAD))
        .replace("{{MAX_MB}}", f"{MAX_UPLOAD / 2**20:g}")
    )


def upload_name(filename: str | None) -> str:
    """The upload's own file name, without any folders a client sent."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name or "upload"


def check_image(data: bytes, name: str) -> None:
    """Refuse what is not an image (415) or claims too many pixels (413) from its header, before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UploadError(400, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UploadError(
            413,
            f"{name}: image too large (over {Image.MAX_IMAGE_PIXELS:,} pixels), refusing a possible "
            "decompression bomb",
        ) from None
    except UnidentifiedImageError:
        raise UploadError(
            415, f"{name}: not an image (or a format Pillow cannot read): send a JPEG, PNG, WebP, ..."
        ) from None
    except Exception as e:  # a damaged header: Pillow raises many types
        raise UploadError(400, f"{name}: corrupt or unreadable image ({e.__class__.__name__})") from None
    if width < 1 or height < 1:
        raise UploadError(400, f"{name}: image has no pixels ({width}x{height})")


async def read_upload(request: Any) -> tuple[bytes, str]:
    """The bytes and name of the multipart field `file`; never reads more than the limit allows."""
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise UploadError(415, "send the image as multipart/form-data, in the field 'file'")
    limit = MAX_UPLOAD + MULTIPART_SLACK
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise UploadError(400, f"bad Content-Length {length!r}")
        if int(length) > limit:
            raise UploadError(413, f"upload too large: {int(length):,} bytes (the limit is {MAX_UPLOAD:,})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise UploadError(413, f"upload too large: over {MAX_UPLOAD:,} bytes")

    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as e:  # python-multipart / Starlette: a malformed body
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or e.__class__.__name__
        raise UploadError(400, f"malformed multipart body ({detail})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise UploadError(400, "no file: send the image in the multipart field 'file'")
        name = upload_name(upload.filename)
        data = await upload.read(MAX_UPLOAD + 1)
    finally:
        await form.close()
    if len(data) > MAX_UPLOAD:
        raise UploadError(413, f"{name}: too large (the limit is {MAX_UPLOAD:,} bytes)")
    return data, name


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class ServeSettings:
    """The model a server runs and how it takes load; `--workers` processes get it as JSON (SETTINGS_ENV).

    `max_batch`: most faces the model classifies at once; `batch_wait_ms`: how long the model waits for
    other requests' faces to fill a batch (only while more requests are on their way); `queue_size`: most
    requests in the server at once (past it: 503 at once); `timeout_s`: a request's time limit (then 503);
    `detector` and `min_face`: the face detector, as `ferkit.apps.detectors.create_detector` takes them.
    """

    model_path: str | None = None
    backend: str = "torch"
    device: str = "auto"
    tta: str | None = None
    precision: str = "fp32"
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    queue_size: int = 32
    timeout_s: float = 30.0
    detector: str = "auto"
    min_face: int | None = None

    def __post_init__(self) -> None:
        for option, value in (("--max_batch", self.max_batch), ("--queue_size", self.queue_size)):
            if value < 1:
                raise FerkitError(f"{option} {value}: must be at least 1")
        if not (math.isfinite(self.batch_wait_ms) and 0 <= self.batch_wait_ms <= 1000):
            raise FerkitError(f"--batch_wait_ms {self.batch_wait_ms}: must be 0 to 1000")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise FerkitError(f"--timeout_s {self.timeout_s}: must be a number of seconds above 0")


def model_name(source: str) -> str:
    """What the server calls its model: a shipped model's name, else its file's name (never its folder)."""
    from ferkit.runtime.model_card import shipped_models  # torch: only once a server starts

    path = Path(source)
    shipped = {card.resolve(): name for name, card in shipped_models().items()}
    return shipped.get(path.resolve(), path.name)


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ----------------------------------------------------------------------------- metrics
class ServeMetrics:
    """One server process's Prometheus metrics, in a registry of their own (one per app)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "ferkit_requests", "POST /predict answers by HTTP status", ["status"], registry=reg
        )
        self.latency = Histogram(
            "ferkit_request_seconds", "POST /predict time to answer", buckets=LATENCY_BUCKETS, registry=reg
        )
        self.queue_depth = Gauge(
            "ferkit_queue_depth", "requests in the server, not yet answered", registry=reg
        )
        self.faces = Counter("ferkit_faces", "faces classified", registry=reg)
        self.batch_faces = Histogram(
            "ferkit_batch_faces", "faces per batch the model ran", buckets=BATCH_BUCKETS, registry=reg
        )
        self.sessions = Gauge("ferkit_webcam_sessions", "webcam sessions with a face tracker", registry=reg)

    def answered(self, status: int, seconds: float) -> None:
        self.requests.labels(str(status)).inc()
        self.latency.observe(seconds)

    def text(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# ----------------------------------------------------------------------------- the model's thread
@dataclass
class _Job:
    """One request's face crops and the future its faces go to (on the request's event loop)."""

    crops: Sequence[Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


def _settle(future: asyncio.Future, faces: list[Any] | None, error: BaseException | None) -> None:
    if future.done():  # the request timed out meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(faces)


class FaceQueue:
    """The one thread that runs the model: it classifies the face crops of concurrent requests together.

    It takes every job waiting, and while requests are still on their way (`upstream`: admitted, not yet
    queued) waits up to `wait_s` for more, until `max_batch` faces; then one `Recognizer.faces_of` call.
    """

    def __init__(self, recognizer: Any, max_batch: int, wait_s: float, metrics: ServeMetrics) -> None:
        self.recognizer = recognizer
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.metrics = metrics
        self.upstream = 0  # changed on the event loop's thread only
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="ferkit-model", daemon=True)
        self.thread.start()

    async def classify(self, crops: Sequence[Any]) -> list[Any]:
        """The `Face` of each crop, in order, once its batch has run."""
        loop = asyncio.get_running_loop()
        job = _Job(crops, loop, loop.create_future())
        self.jobs.put(job)
        return await job.future

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(10)

    def _run(self) -> None:
        running = True
        while running:
            first = self.jobs.get()
            if first is None:
                return
            batch, running = self._collect(first)
            self._classify([job for job in batch if not job.future.done()])

    def _collect(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and the jobs that join it in one batch; False once told to stop."""
        batch, count = [first], len(first.crops)
        deadline = time.monotonic() + self.wait_s
        while count < self.max_batch:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                left = deadline - time.monotonic()
                if left <= 0 or self.upstream <= 0:
                    break
                try:
                    job = self.jobs.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:
                return batch, False
            batch.append(job)
            count += len(job.crops)
        return batch, True

    def _classify(self, batch: list[_Job]) -> None:
        crops = [crop for job in batch for crop in job.crops]
        if not crops:
            return
        try:
            faces, error = self.recognizer.faces_of(crops), None
        except Exception as e:  # the model failed: every request waiting on it gets the error
            log.exception("ferkit serve: the model failed on %d faces", len(crops))
            faces, error = [], e
        for start in range(0, len(crops), self.max_batch):
            self.metrics.batch_faces.observe(min(self.max_batch, len(crops) - start))
        self.metrics.faces.inc(len(crops))
        start = 0
        for job in batch:
            done = None if error else faces[start : start + len(job.crops)]
            with contextlib.suppress(RuntimeError):  # its event loop has closed: the server is stopping
                job.loop.call_soon_threadsafe(_settle, job.future, done, error)
            start += len(job.crops)


# ----------------------------------------------------------------------------- webcam sessions
@dataclass(frozen=True)
class Tracking:
    """A webcam frame's session id and how many seconds of its tracks' probabilities to average."""

    session: str
    smooth: float


def tracking_of(session: str | None, smooth: str | None) -> Tracking | None:
    """The `session` and `smooth` query parameters, checked (400 naming the bad one); None without a
    session (a photo: answered alone, as `ferkit predict` answers it)."""
    if session is None:
        if smooth is not None:
            raise UploadError(400, "smooth needs a session: send ?session=ID&smooth=SECONDS")
        return None
    if not SESSION_ID.fullmatch(session):
        raise UploadError(400, f"session {session[:80]!r}: expected 8 to 64 letters, digits, '-' or '_'")
    try:
        seconds = DEFAULT_SMOOTH if smooth is None else float(smooth)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SMOOTH):
        raise UploadError(400, f"smooth {smooth[:80]!r}: must be 0 to {MAX_SMOOTH:g} seconds")
    return Tracking(session, seconds)


@dataclass
class _Session:
    """One webcam session's face tracker, its tracks' smoother, and when its last frame came."""

    tracker: Any  # ferkit.apps.video.FaceTracker
    smoother: Any  # ferkit.apps.video.Smoother
    seen: float  # time.monotonic()


class WebcamSessions:
    """Each webcam session's tracker and smoother (`ferkit.apps.video`'s, as `ferkit predict` uses on a
    video), for the `limit` most recently used sessions, each forgotten after `idle_s` without a frame.
    Used from the event loop's thread only, so a session's frames are tracked one after another."""

    def __init__(self, limit: int = MAX_SESSIONS, idle_s: float = SESSION_IDLE_S) -> None:
        self.limit = limit
        self.idle_s = idle_s
        self.sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self.sessions)

    def expire(self, now: float) -> None:
        """Drop the sessions idle for `idle_s` or more."""
        while self.sessions and now - next(iter(self.sessions.values())).seen >= self.idle_s:
            self.sessions.popitem(last=False)

    async def session(self, tracking: Tracking, pool: ThreadPoolExecutor) -> _Session:
        """`tracking`'s session, made on its first frame (norfair's import, about 1.5 s the first time,
        runs on `pool`, off the event loop); the least recently used one dropped past `limit`."""
        from ferkit.apps.video import FaceTracker, Smoother

        state = self.sessions.get(tracking.session)
        if state is None:
            try:
                tracker = await asyncio.get_running_loop().run_in_executor(pool, FaceTracker, WEBCAM_FPS)
            except FerkitError as e:  # norfair is not installed
                raise UploadError(501, str(e)) from None
            state = self.sessions.setdefault(
                tracking.session, _Session(tracker, Smoother(tracking.smooth), time.monotonic())
            )
            while len(self.sessions) > self.limit:
                self.sessions.popitem(last=False)
        if state.smoother.seconds != tracking.smooth:
            state.smoother = Smoother(tracking.smooth)
        return state

    async def track(self, tracking: Tracking, faces: list[Any], pool: ThreadPoolExecutor) -> list[Any]:
        """One webcam frame's faces, each with its `track` id and its track's smoothed probabilities."""
        from ferkit.apps.video import track_faces

        self.expire(time.monotonic())
        state = await self.session(tracking, pool)
        now = time.monotonic()
        state.seen = now
        self.sessions.move_to_end(tracking.session)
        return track_faces(faces, state.tracker, state.smoother, now)


# ----------------------------------------------------------------------------- one server process
def busy(message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    return 503, {"error": message}, {"Retry-After": RETRY_AFTER}


def load_served_model(settings: ServeSettings) -> tuple[Any, dict[str, Any]]:
    """The `Recognizer` of `settings` (its batches `max_batch` faces, its faces found by `settings`'
    detector) and the server's /health answer. A bad detector is an error before the model loads."""
    from ferkit.apps.detectors import create_detector
    from ferkit.apps.recognizer import load_recognizer  # torch: only once a server starts

    detector = create_detector(settings.detector, settings.min_face)
    recognizer = load_recognizer(
        settings.model_path,
        backend=settings.backend,
        device=settings.device,
        precision=settings.precision,
        tta=settings.tta,
        batch_size=settings.max_batch,
        detector=detector,
    )
    health = {
        "status": "ok",
        "model": model_name(recognizer.model_path),
        "arch": recognizer.arch,
        "backend": settings.backend,
        "precision": settings.precision,
        "tta": recognizer.tta,
        "detector": detector.name,
    }
    return recognizer, health


class Service:
    """One server process's model, threads and counters; `answer` runs one POST /predict."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.recognizer, self.health = load_served_model(settings)
        self.recognizer.face_crops(np.zeros((64, 64), np.uint8))  # first calls prepare the detector
        self.recognizer.classify(np.zeros((1, 48, 48), np.uint8))  # and the model
        self.metrics = ServeMetrics()
        self.pending = 0  # requests admitted, not yet answered (event loop's thread only)
        concurrent = getattr(self.recognizer.detector, "name", None) in CONCURRENT_DETECTORS
        self.detect_lock = contextlib.nullcontext() if concurrent else threading.Lock()
        self.pool = ThreadPoolExecutor(available_cpus(), thread_name_prefix="ferkit-detect")
        wait_s = settings.batch_wait_ms / 1000
        self.faces = FaceQueue(self.recognizer, settings.max_batch, wait_s, self.metrics)
        self.webcam = WebcamSessions()

    def stop(self) -> None:
        self.faces.stop()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def answer(
        self, request: Any, detect: bool, session: str | None = None, smooth: str | None = None
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, JSON body, headers) for one POST /predict (`session`, `smooth`: a webcam frame's)."""
        started = time.perf_counter()
        limit = self.settings.queue_size
        if self.pending >= limit:
            answer = busy(
                f"server busy: {self.pending} requests in progress (at most {limit}); retry shortly"
            )
            self.metrics.answered(503, time.perf_counter() - started)
            return answer
        self.pending += 1
        self.metrics.queue_depth.inc()
        try:
            work = self.predict(request, detect, session, smooth)
            body = await asyncio.wait_for(work, self.settings.timeout_s)
            answer = 200, body, {}
        except UploadError as e:
            answer = e.status, {"error": e.message}, {}
        except asyncio.TimeoutError:
            answer = busy(
                f"no answer within {self.settings.timeout_s:g} s: the server is busy; retry shortly"
            )
        except Exception as e:  # a bug or the model failing: one line, the traceback in the server's log
            log.exception("ferkit serve: POST /predict failed")
            answer = 500, {"error": f"internal error ({e.__class__.__name__})"}, {}
        finally:
            self.pending -= 1
            self.metrics.queue_depth.dec()
        self.metrics.answered(answer[0], time.perf_counter() - started)
        return answer

    async def predict(
        self, request: Any, detect: bool, session: str | None = None, smooth: str | None = None
    ) -> dict[str, Any]:
        """The predict JSON of the uploaded image: read, checked, faces found off the event loop, then
        classified with other requests' faces; a webcam frame's (`session`) then tracked and smoothed."""
        tracking = tracking_of(session, smooth)
        self.faces.upstream += 1
        try:
            data, name = await read_upload(request)
            check_image(data, name)
            crops = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.find_faces, data, name, detect
            )
        finally:
            self.faces.upstream -= 1
        found = await self.faces.classify(crops) if crops else []
        if tracking is not None:  # a frame without faces too: its tracks age
            found = await self.webcam.track(tracking, found, self.pool)
            self.metrics.sessions.set(len(self.webcam))
        result: dict[str, Any] = {"image": name, "faces": [face.to_dict() for face in found]}
        if not found:
            result["note"] = NO_FACE
        return result

    def find_faces(self, data: bytes, name: str, detect: bool) -> list[Any]:
        """The face crops of an upload (decoded upright as `ferkit predict` reads files, then its faces
        found); errors name the upload."""
        from ferkit.apps.recognizer import pixels_of

        with tempfile.TemporaryDirectory(prefix="ferkit-serve-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                pixels = pixels_of(path)  # in colour where it has colour, for the detector
                with self.detect_lock:  # one image at a time, unless the detector allows more
                    return self.recognizer.face_crops(pixels, detect)
            except FerkitError as e:
                message = str(e).replace(str(path), name)
                raise UploadError(413 if "decompression bomb" in message else 400, message) from None
            except (OSError, ValueError) as e:
                raise UploadError(400, f"{name}: cannot read the image ({e.__class__.__name__})") from None


# ----------------------------------------------------------------------------- the app
def create_app(
    model_path: str | None = None,
    backend: str = "torch",
    device: str = "cpu",
    tta: str | None = None,
    precision: str = "fp32",
    **load: Any,
):
    """The FastAPI app serving `model_path` (None: the shipped model; `.onnx` with backend "onnx");
    `load`: `ServeSettings`' max_batch, batch_wait_ms, queue_size, timeout_s, detector, min_face.

    The model is loaded here, so a missing or broken model is a FerkitError before any server starts.
    """
    return app_for(ServeSettings(model_path, backend, device, tta, precision, **load))


def app_from_env():
    """The app of the settings in SETTINGS_ENV: what each `--workers` process runs (uvicorn's factory)."""
    return app_for(ServeSettings(**json.loads(os.environ[SETTINGS_ENV])))


def app_for(settings: ServeSettings):
    """The FastAPI app of `settings`: the page, /predict, /health and /metrics."""
    fastapi = _import_web()
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    service = Service(settings)
    html = page_html()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        yield
        service.stop()

    app = fastapi.FastAPI(
        title="ferkit",
        summary="Facial expression recognition (FER2013, 7 classes)",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service, app.state.health = service, service.health
    app.state.predictor = service.recognizer.predictor

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return service.health

    @app.get("/metrics")
    def get_metrics() -> Response:
        text, kind = service.metrics.text()
        return Response(text, media_type=kind)

    @app.post("/predict")
    async def post_predict(
        request: Request, detect: bool = True, session: str | None = None, smooth: str | None = None
    ) -> JSONResponse:
        """One image (multipart field `file`): `{"image", "faces": [{"box", "emotion", "probabilities"}]}`.

        `detect=false` takes the whole image as one face (for ready-cropped faces, like `--no-detect`).
        `session` (8-64 of A-Z a-z 0-9 - _): a webcam frame, its faces tracked across the session's frames,
        each with its `track` and its track's probabilities averaged over `smooth` seconds (default 1).
        """
        status, body, headers = await service.answer(request, detect, session, smooth)
        return JSONResponse(body, status_code=status, headers=headers)

    return app


# ----------------------------------------------------------------------------- running the server
def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: any free port); FerkitError when it cannot bind."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        raise FerkitError(f"--host {host}: {getattr(e, 'strerror', None) or e}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise FerkitError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    shown = host
    if host in ANY_HOST:
        shown = "127.0.0.1" if sock.family == socket.AF_INET else "::1"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{sock.getsockname()[1]}/"


def serve(
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    workers: int = 1,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve `settings`' app on host:port until interrupted, in `workers` processes. The model loads first
    (in this process), so its errors come before anything listens; `announce` gets one line saying what
    runs where, once the socket is bound."""
    if not 0 <= port <= 65535:
        raise FerkitError(f"--port {port}: must be 0 to 65535")
    if workers < 1:
        raise FerkitError(f"--workers {workers}: must be at least 1")
    app = app_for(settings) if workers == 1 else None
    info = app.state.health if app is not None else load_served_model(settings)[1]  # checks the model
    import uvicorn

    sock = bind(host, port)
    extra = " (listening on every interface)" if host in ANY_HOST else ""
    processes = f" ({workers} worker processes)" if workers > 1 else ""
    where = f"{url_of(sock, host)}{extra}{processes}"
    announce(f"ferkit serve: {info['arch']} ({info['model']}) at {where}  Ctrl+C stops")
    if app is not None:
        config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
        return
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
    config = uvicorn.Config(
        f"{__name__}:app_from_env",
        factory=True,
        workers=workers,
        log_level=log_level,
        timeout_graceful_shutdown=5,
    )
    run_workers(config, sock)


def run_workers(config: Any, sock: socket.socket) -> None:
    """uvicorn's supervisor of `config.workers` processes, all answering on `sock`."""
    from uvicorn.supervisors import Multiprocess

    if "target" in inspect.signature(Multiprocess).parameters:  # older uvicorn takes the server's run
        import uvicorn

        Multiprocess(config, target=uvicorn.Server(config).run, sockets=[sock]).run()
    else:
        Multiprocess(config, sockets=[sock]).run()
