"""`ferkit export`: a model as one ONNX file (optionally int8), checked against PyTorch."""

from __future__ import annotations

import argparse

from ferkit.cli.options import add_data, add_model_path, add_skip_bad_rows
from ferkit.shipping.export import CALIBRATION_IMAGES, CHECK_IMAGES, QUANTIZE_MODES


def cmd_export(args: argparse.Namespace) -> int:
    from ferkit.shipping.export import export_model

    result = export_model(
        args.model_path,
        args.output,
        args.data,
        args.skip_bad_rows,
        args.check_images,
        args.opset,
        args.quantize,
    )
    print(result["output"])
    print(
        f"opset {result['opset']}; largest |ONNX Runtime - PyTorch| probability difference "
        f"{result['max_abs_diff']:.2e} on {result['checked_on']}"
    )
    if result["quantized"] == "int8":
        print(
            f"int8 (calibrated on {result['calibration_images']} Training faces): largest probability "
            f"difference {result['int8_max_abs_diff']:.2e}, "
            f"PyTorch's class on {result['int8_agreement']:.1%} of them"
        )
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    ex = sub.add_parser(
        "export", help="export a checkpoint or ensemble to ONNX (preprocessing inside), parity-checked"
    )
    add_model_path(ex, onnx=False)
    ex.add_argument("--output", "-o", required=True, help="ONNX file to write, e.g. model.onnx")
    add_data(
        ex,
        help="FER2013 file or folder for the parity check (default: $FERKIT_DATA, ./data/fer2013.csv; "
        "random faces when none)",
    )
    add_skip_bad_rows(ex, help="skip malformed rows of --data")
    ex.add_argument(
        "--check_images",
        "--check-images",
        type=int,
        default=CHECK_IMAGES,
        help=f"faces compared between ONNX Runtime and PyTorch (default {CHECK_IMAGES})",
    )
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    ex.add_argument(
        "--quantize",
        choices=QUANTIZE_MODES,
        default="none",
        help=f"int8: static int8 quantization for ONNX Runtime, calibrated on {CALIBRATION_IMAGES} "
        "Training faces of --data (about 2x faster on a CPU; default none)",
    )
    ex.set_defaults(func=cmd_export)
