"""`ferkit serve`: a web page and a JSON API around one model."""

from __future__ import annotations

import argparse

from ferkit.apps.serve import INSTALL_HINT, LOG_LEVELS, MAX_UPLOAD
from ferkit.cli.options import add_device, add_model_options, add_tta


def cmd_serve(args: argparse.Namespace) -> int:
    from ferkit.apps.serve import serve

    serve(
        args.model_path,
        args.backend,
        args.device,
        args.tta,
        args.precision,
        args.host,
        args.port,
        args.log_level,
        announce=lambda line: print(line, flush=True),
    )
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a web page to try a model on photos and the webcam (FastAPI + uvicorn)",
        description="Serve a page where a photo (upload, drop, paste or webcam frame) gets its faces boxed "
        "and their emotions shown, and a JSON API: POST /predict (multipart field 'file', the JSON of "
        "`ferkit predict --format json` for one image; ?detect=false for a ready-cropped face), GET /health. "
        f"Uploads are limited to {MAX_UPLOAD // 2**20} MB. Needs {INSTALL_HINT}.",
    )
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free one; default 8000)")
    add_device(p, help="auto, cpu, cuda or cuda:N (torch backend)")
    add_tta(p)
    p.add_argument(
        "--log-level",
        "--log_level",
        choices=LOG_LEVELS,
        default="warning",
        help="uvicorn's log level (info: a line per request)",
    )
    p.set_defaults(func=cmd_serve)
