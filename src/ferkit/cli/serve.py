"""`ferkit serve`: a web page and a JSON API around one model."""

from __future__ import annotations

import argparse

from ferkit.apps.serve import INSTALL_HINT, LOG_LEVELS, MAX_UPLOAD, ServeSettings
from ferkit.cli.options import add_detector, add_device, add_model_options, add_tta

DEFAULTS = ServeSettings()


def cmd_serve(args: argparse.Namespace) -> int:
    from ferkit.apps.serve import serve

    settings = ServeSettings(
        args.model_path,
        args.backend,
        args.device,
        args.tta,
        args.precision,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        queue_size=args.queue_size,
        timeout_s=args.timeout_s,
        detector=args.detector,
        min_face=args.min_face,
    )
    serve(
        settings,
        args.host,
        args.port,
        args.log_level,
        workers=args.workers,
        announce=lambda line: print(line, flush=True),
    )
    return 0


def add_load_options(p: argparse.ArgumentParser) -> None:
    """How the server takes load: processes, batching, the queue and the time limit."""
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes on the one port, each with its own copy of the model (default 1)",
    )
    p.add_argument(
        "--max_batch",
        "--max-batch",
        type=int,
        default=DEFAULTS.max_batch,
        help=f"most faces, from any requests, the model classifies at once (default {DEFAULTS.max_batch})",
    )
    p.add_argument(
        "--batch_wait_ms",
        "--batch-wait-ms",
        type=float,
        default=DEFAULTS.batch_wait_ms,
        help="how long the model waits for other requests' faces to fill a batch, while more requests "
        f"are on their way (default {DEFAULTS.batch_wait_ms:g})",
    )
    p.add_argument(
        "--queue_size",
        "--queue-size",
        type=int,
        default=DEFAULTS.queue_size,
        help="most requests in a server process at once; more get 503 with Retry-After at once "
        f"(default {DEFAULTS.queue_size})",
    )
    p.add_argument(
        "--timeout_s",
        "--timeout-s",
        type=float,
        default=DEFAULTS.timeout_s,
        help=f"a request not answered in this many seconds gets 503 (default {DEFAULTS.timeout_s:g})",
    )


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page to try a model on photos and the webcam (FastAPI + uvicorn)",
        description="Serve a page where a photo (upload, drop, paste) gets its faces boxed and their "
        "emotions shown, and the webcam streams: each face tracked across frames with its smoothed emotions "
        "and the frames a second. A JSON API: POST /predict (multipart field 'file', the JSON of "
        "`ferkit predict --format json` for one image; ?detect=false for a ready-cropped face; "
        "?session=ID&smooth=SECONDS for a webcam frame, its faces tracked as `ferkit predict` tracks a "
        "video's), GET /health, GET /metrics (Prometheus). Faces of concurrent requests are classified "
        "together. "
        f"Uploads are limited to {MAX_UPLOAD // 2**20} MB. Needs {INSTALL_HINT}.",
    )
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    add_device(p, help="auto, cpu, cuda or cuda:N (torch backend)")
    add_tta(p)
    add_detector(p)
    p.add_argument(
        "--log-level",
        "--log_level",
        choices=LOG_LEVELS,
        default="warning",
        help="uvicorn's log level (info: a line per request)",
    )
    add_load_options(p)
    p.set_defaults(func=cmd_serve)
