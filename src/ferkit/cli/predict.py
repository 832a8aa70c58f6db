"""`ferkit predict`: emotions of the faces in images, folders and videos."""

from __future__ import annotations

import argparse
import sys

from ferkit.apps.predict import FORMATS
from ferkit.cli.options import (
    add_batch_size,
    add_detector,
    add_device,
    add_format,
    add_model_options,
    add_tta,
)


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ferkit.apps.detectors import create_detector
    from ferkit.apps.predict import RowWriter, VideoOptions, all_failed, format_results, predict_paths

    def report(line: str) -> None:
        tqdm.write(f"ferkit: error: {line}", file=sys.stderr)

    def note(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    writer = None if args.format == "json" else RowWriter(args.format, sys.stdout)
    video = VideoOptions(fps=args.fps, smooth=args.smooth, sink=writer.frame if writer else None, notes=note)

    results, errors = predict_paths(
        args.inputs,
        args.model_path,
        detect=not args.no_detect,
        annotate_dir=args.annotate,
        batch_size=args.batch_size,
        tta=args.tta,
        device=args.device,
        progress=not args.no_progress,
        on_error=report,
        backend=args.backend,
        precision=args.precision,
        explain_dir=args.explain,
        video=video,
        detector=create_detector(args.detector, args.min_face),
    )
    if all_failed(results, errors):
        return 1
    if writer is not None:
        writer.finish(results)
    else:
        print(format_results(results, args.format))
    if args.annotate:
        print(f"annotated copies in {args.annotate}", file=sys.stderr)
    if args.explain:
        print(f"activation maps in {args.explain}", file=sys.stderr)
    return 0


def video_fps(text: str) -> float | None:
    """`--fps`: frames a second to read from a video, or `all` (None: every frame)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of frames a second, or 'all'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0 (or 'all')")
    return value


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="emotions of the faces in images, folders and videos",
        description="Find faces (--detector) and classify their expressions. Folders are read "
        "non-recursively (images and videos, sorted by name); videos are read a frame at a time "
        "(--fps), each face tracked across frames, a row per frame and face written as it comes. A bad file "
        "is reported on stderr and the others still run; the exit code is non-zero only if none succeeded.",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="images, videos or folders of them")
    add_model_options(p)
    add_detector(p)
    add_format(p, FORMATS, help="text (a line per face), json, csv, jsonl (csv and jsonl: a row per face)")
    p.add_argument(
        "--annotate",
        metavar="OUT_DIR",
        help="write a copy of each image with labelled boxes here; for a video, the annotated video (.mp4) "
        "and a timeline picture of each track's probabilities (-timeline.png)",
    )
    p.add_argument(
        "--fps",
        type=video_fps,
        default=5.0,
        metavar="N",
        help="video frames a second to read (default 5; 'all': every frame; at most the file's own rate)",
    )
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="average each tracked face's probabilities over its last SECONDS (default 0: none)",
    )
    p.add_argument(
        "--no-detect",
        "--no_detect",
        action="store_true",
        help="skip face detection: each whole image is one face (for ready-cropped faces)",
    )
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="write each image face's crop with the class activation map (Grad-CAM) of its predicted "
        "emotion here, as <image>-face<k>-<Emotion>.png (images only; needs the 'explain' extra)",
    )
    add_tta(p)
    add_batch_size(p, 64, help="faces per model batch")
    add_device(p)
    p.add_argument("--no-progress", "--no_progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=cmd_predict)
