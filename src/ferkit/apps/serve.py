"""`ferkit serve`: a small web app around `ferkit predict` for one photo at a time.

`GET /` is one self-contained page (no outside assets): upload a photo or capture a webcam frame, see the
faces boxed and each face's emotions as bars. `POST /predict` (multipart field `file`) answers exactly the
entry `ferkit predict --format json` gives an image; `GET /health` names the model. The model is loaded
once, before the server listens, and one request at a time runs it.

Uploads over `MAX_UPLOAD` bytes are refused (413) from their Content-Length, or as soon as the body grows
past it; anything Pillow cannot identify as an image is 415, a possible decompression bomb 413, an empty
or damaged file 400. Errors are JSON: `{"error": "..."}`.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime.
"""

import io
import json
import socket
import tempfile
import threading
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ferkit.apps.predict import COLORS, describe_model, predict_image
from ferkit.errors import FerkitError

MAX_UPLOAD = 10 * 1024 * 1024  # bytes of the image itself
MULTIPART_SLACK = 64 * 1024  # room for the multipart boundaries and headers around it
INSTALL_HINT = "pip install 'ferkit[serve]'"
ANY_HOST = ("0.0.0.0", "::", "")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # uvicorn's


class UploadError(Exception):
    """A request refused with `status` and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _import_web():
    try:
        import fastapi
        import uvicorn  # noqa: F401

        try:  # python-multipart, which FastAPI needs for uploads (`multipart` before 0.0.13)
            import python_multipart  # noqa: F401
        except ImportError:
            import multipart  # noqa: F401
    except ImportError as e:
        name = "python-multipart" if e.name in ("multipart", "python_multipart") else e.name
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


def create_app(
    model_path: str | None = None,
    backend: str = "torch",
    device: str = "cpu",
    tta: str | None = None,
    precision: str = "fp32",
):
    """The FastAPI app serving `model_path` (None: the shipped model; `.onnx` with backend "onnx").

    The model is loaded here, so a missing or broken model is a FerkitError before any server starts.
    """
    fastapi = _import_web()
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import HTMLResponse, JSONResponse

    from ferkit.runtime.loading import load_model  # torch: only once a server starts

    predictor, default_tta, shown = load_model(model_path, backend, device, precision)
    tta = tta or default_tta
    lock = threading.Lock()
    html = page_html()
    health = {
        "status": "ok",
        "model": shown,
        "arch": describe_model(predictor),
        "backend": backend,
        "precision": precision,
        "tta": tta,
    }

    def infer(data: bytes, name: str, detect: bool) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="ferkit-serve-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                with lock:
                    return predict_image(path, predictor, tta, detect=detect, name=name)
            except FerkitError as e:
                message = str(e).replace(str(path), name)
                raise UploadError(413 if "decompression bomb" in message else 400, message) from None
            except (OSError, ValueError) as e:
                raise UploadError(400, f"{name}: cannot read the image ({e.__class__.__name__})") from None

    app = fastapi.FastAPI(
        title="ferkit",
        summary="Facial expression recognition (FER2013, 7 classes)",
        docs_url=None,
        redoc_url=None,
    )
    app.state.predictor, app.state.health = predictor, health

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(html)

    @app.get("/health")
    def get_health() -> dict[str, Any]:
        return health

    @app.post("/predict")
    async def post_predict(request: Request, detect: bool = True) -> Any:
        """One image (multipart field `file`): `{"image", "faces": [{"box", "emotion", "probabilities"}]}`.

        `detect=false` takes the whole image as one face (for ready-cropped faces, like `--no-detect`).
        """
        try:
            data, name = await read_upload(request)
            check_image(data, name)
            return await run_in_threadpool(infer, data, name, detect)
        except UploadError as e:
            return JSONResponse({"error": e.message}, status_code=e.status)

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
    model_path: str | None = None,
    backend: str = "torch",
    device: str = "auto",
    tta: str | None = None,
    precision: str = "fp32",
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    announce: Callable[[str], None] = print,
) -> None:
    """Serve `create_app`'s app on host:port until interrupted. The model loads first, so its errors come
    before anything listens; `announce` gets one line saying what runs where, once the socket is bound."""
    if not 0 <= port <= 65535:
        raise FerkitError(f"--port {port}: must be 0 to 65535")
    app = create_app(model_path, backend, device, tta, precision)
    import uvicorn

    sock = bind(host, port)
    extra = " (listening on every interface)" if host in ANY_HOST else ""
    info = app.state.health
    announce(f"ferkit serve: {info['arch']} ({info['model']}) at {url_of(sock, host)}{extra}  Ctrl+C stops")
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
