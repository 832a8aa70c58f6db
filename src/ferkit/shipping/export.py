"""ONNX export of a checkpoint or an ensemble spec, and an ONNX Runtime predictor with ferkit's interface.

The exported graph is self-contained: it takes gray faces as float32 `N x 1 x 48 x 48` in [0, 1] and does
the model's own preprocessing inside (a crop model's centre crop, bilinear resize to its input size,
channel expansion, mean/std normalisation), then returns softmax probabilities `N x 7` (an ensemble: the
weighted mean of its members'). The batch dimension is dynamic. Test-time augmentation stays outside the
graph: `OnnxPredictor.predict(..., tta=...)` averages the views `ferkit.data.transforms.tta_views` makes,
as `CheckpointModel.predict` does. For a crop model those views equal its own for no TTA and flip (the
mirror image of the centre crop is the centre crop of the mirror image), not for ten-crop, which takes
corner crops: a graph with crop models refuses ten-crop.

Heavy imports (torch, onnx, onnxruntime) happen inside the functions, so the CLI parser stays fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ferkit.classes import CLASS_NAMES, NUM_CLASSES
from ferkit.errors import FerkitError
from ferkit.runtime.onnx import (
    INPUT_NAME,
    INSTALL_HINT,
    OUTPUT_NAME,
    check_crop_tta,
    faces_to_float,
    import_onnxruntime,
    onnx_session,
    run_session,
)
from ferkit.utils.io import atomic_write

if TYPE_CHECKING:
    from torch import nn

    from ferkit.data.dataset import FerDataset
    from ferkit.runtime.predictor import CheckpointModel, Ensemble

BATCH_DIM = "batch"
ONNX_FORMAT = "ferkit-onnx"
PARITY_TOLERANCE = 1e-4
MIN_OPSET = 18  # torch's exporter has no implementations below 18 (it would silently keep 18)
CHECK_IMAGES = 64
CALIBRATION_IMAGES = 1024  # Training faces that set the int8 activation ranges
INT8_MIN_AGREEMENT = 0.9  # an int8 graph choosing PyTorch's class less often than this is refused
QUANTIZE_MODES = ("none", "int8")


def _import_exporter():
    """onnx and onnxscript, which torch's (torch.export-based) ONNX exporter needs."""
    try:
        import onnx
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise FerkitError(f"ONNX export needs {e.name or 'onnx'}: {INSTALL_HINT}") from None
    return onnx


# ----------------------------------------------------------------------------- the graph
def build_graph_module(predictor: CheckpointModel | Ensemble) -> nn.Module:
    """A module: float (N, 1, 48, 48) in [0, 1] -> probabilities (N, 7), preprocessing inside.

    Each member takes its centre crop (a crop model), resizes (bilinear), both as `BatchTransform.prepare`
    does, expands channels and normalises with its own checkpoint's input size, mean and std; member
    probabilities are mixed with normalised weights.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from ferkit.runtime.predictor import members_and_weights

    members, normalised = members_and_weights(predictor)
    weights = normalised.tolist()

    class FaceGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.nets = nn.ModuleList(m.model for m in members)
            self.sizes = [tuple(m.transform.size) for m in members]
            self.crops = [crop_window(m.transform.crop_size) for m in members]
            self.channels = [int(m.transform.channels) for m in members]
            self.weights = weights
            for i, m in enumerate(members):
                self.register_buffer(f"mean{i}", m.transform.mean.detach().clone().float())
                self.register_buffer(f"std{i}", m.transform.std.detach().clone().float())

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = None
            for i, net in enumerate(self.nets):
                x = images
                if self.crops[i] is not None:
                    start, end = self.crops[i]
                    x = x[..., start:end, start:end]
                if tuple(x.shape[-2:]) != self.sizes[i]:
                    x = F.interpolate(x, size=self.sizes[i], mode="bilinear", align_corners=False)
                if self.channels[i] != 1:
                    x = x.expand(-1, self.channels[i], -1, -1)
                x = (x - getattr(self, f"mean{i}")) / getattr(self, f"std{i}")
                p = net(x).float().softmax(1)
                if len(self.nets) > 1:
                    p = p * self.weights[i]
                out = p if out is None else out + p
            return out

    return FaceGraph().eval()


def crop_window(crop_size: int) -> tuple[int, int] | None:
    """(start, end) of a crop model's centre crop in a 48x48 face, as `BatchTransform.views` takes it;
    None for a whole-face model."""
    from ferkit.data.transforms import FACE_SIZE, centre  # torch: only once a model is exported

    if not crop_size:
        return None
    start = centre(FACE_SIZE - crop_size)[0]
    return start, start + crop_size


def crop_sizes(predictor: CheckpointModel | Ensemble) -> list[int]:
    """The crop side of each network of `predictor` (0: whole faces)."""
    from ferkit.runtime.predictor import members_and_weights

    return [int(m.transform.crop_size) for m in members_and_weights(predictor)[0]]


def _describe(model_path: str, predictor: CheckpointModel | Ensemble, tta: str) -> dict[str, str]:
    """Metadata stored in the ONNX file (strings): what it is, where it came from, how to feed it."""
    from ferkit.runtime.predictor import members_and_weights
    from ferkit.version import __version__

    members = members_and_weights(predictor)[0]
    return {
        "format": ONNX_FORMAT,
        "ferkit_version": __version__,
        "source": Path(model_path).name,
        "arch": "+".join(m.arch for m in members),
        "class_names": json.dumps(list(CLASS_NAMES)),
        "input": f"{INPUT_NAME}: float32 N x 1 x 48 x 48 gray faces in [0, 1]",
        "output": f"{OUTPUT_NAME}: float32 N x {NUM_CLASSES} softmax probabilities",
        "tta": tta,
        "crop_sizes": json.dumps(crop_sizes(predictor)),
    }


def _export_proto(module: nn.Module, opset: int | None, source: str):
    """torch.onnx.export (torch.export-based) with a dynamic batch; the ModelProto, exporter chatter muted."""
    import torch

    example = torch.rand(2, 1, 48, 48)  # batch 2: a batch of 1 would be specialised to a constant
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), _quiet_loggers("onnxscript", "torch.onnx"), torch.no_grad():
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"images": {0: torch.export.Dim(BATCH_DIM)}},
                verbose=False,
                optimize=True,
            )
    except Exception as e:  # the exporter raises many types; the CLI shows one line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise FerkitError(
            f"{source}: ONNX export failed"
            + (f" at opset {opset}" if opset is not None else "")
            + f" ({e.__class__.__name__}: {first})"
        ) from e
    return program.model_proto


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Only errors from these loggers meanwhile (the exporter logs tracebacks of fallbacks it survives)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _opset_of(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def random_faces(n: int = CHECK_IMAGES, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 'faces' (N, 48, 48), for a parity check when no FER2013 data is at hand."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 1, 12, 12, generator=g)
    fine = F.interpolate(coarse, size=(48, 48), mode="bilinear", align_corners=False)
    noise = torch.rand(n, 1, 48, 48, generator=g) * 0.15
    return ((fine * 0.85 + noise).clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()


def check_output(output: Path) -> None:
    """FerkitError unless `output` can be written (its folder is created), checked before the slow export."""
    if output.is_dir():
        raise FerkitError(f"--output {output}: is a folder; give a file name such as model.onnx")
    blocker = next((a for a in output.parents if a.exists() and not a.is_dir()), None)
    if blocker is not None:
        raise FerkitError(f"--output {output}: cannot write there ({blocker} is a file, not a folder)")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output.parent).close()
    except OSError as e:
        raise FerkitError(
            f"--output {output}: cannot write there ({e.strerror or e.__class__.__name__})"
        ) from None


def quantize_int8(data: bytes, calibration: np.ndarray, batch_size: int = 128) -> bytes:
    """ONNX Runtime's static int8 quantization of a float graph (QDQ: int8 weights per output channel,
    uint8 activations whose ranges come from running `calibration`, uint8 N x 48 x 48 Training faces);
    the final softmax stays float.

    The weights use 7 of their 8 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2, AVX-512 without
    VNNI) ONNX Runtime's uint8 x int8 kernels add products pairwise in saturating 16 bits, which full-range
    weights overflow (docs/findings.md, 2026-12-01). The file then runs correctly on every CPU, whichever
    CPU exported it."""
    import_onnxruntime()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    x = faces_to_float(calibration)

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(x[i : i + batch_size] for i in range(0, len(x), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="ferkit-int8-") as tmp, _quiet_loggers("root"):
        float_path, pre_path, int8_path = (Path(tmp) / n for n in ("float.onnx", "pre.onnx", "int8.onnx"))
        float_path.write_bytes(data)
        quant_pre_process(str(float_path), str(pre_path))
        onnx = _import_exporter()
        softmax = [n.name for n in onnx.load(str(pre_path)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(pre_path),
            str(int8_path),
            Faces(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=True,
            nodes_to_exclude=softmax,  # float probabilities that sum to 1, not steps of 1/255
        )
        return int8_path.read_bytes()


@dataclass(frozen=True)
class _Parity:
    """The faces every exported graph is checked on (float, as `faces_to_float` makes them), with PyTorch's
    probabilities for them (no TTA)."""

    model_path: str
    output: Path
    x: np.ndarray
    reference: np.ndarray
    batch_size: int

    def run(self, data: bytes, what: str) -> np.ndarray:
        """The graph's probabilities on the faces, on ONNX Runtime."""
        return run_session(onnx_session(data, f"{what} {self.model_path}"), self.x, self.batch_size)

    def max_diff(self, got: np.ndarray) -> float:
        return float(np.abs(got.astype(np.float64) - self.reference).max())


def _check_opset(onnx: Any, opset: int | None) -> None:
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise FerkitError(f"--opset {opset}: torch's ONNX exporter writes opsets {MIN_OPSET} to {newest}")


def _float_graph(onnx: Any, model_path: str, predictor: Any, opset: int | None, props: dict[str, str]):
    """The exported float graph (a ModelProto) with its metadata; FerkitError if the opset is not `opset`."""
    proto = _export_proto(build_graph_module(predictor), opset, model_path)
    if opset is not None and _opset_of(proto) != opset:
        raise FerkitError(f"--opset {opset}: the exporter wrote opset {_opset_of(proto)} instead")
    onnx.helper.set_model_props(proto, props)
    proto.doc_string = f"ferkit {Path(model_path).name}: FER2013 expression probabilities"
    return proto


def _check_float(data: bytes, parity: _Parity) -> float:
    """The float graph's largest probability difference from PyTorch; FerkitError over the tolerance."""
    diff = parity.max_diff(parity.run(data, "exported"))
    if not diff <= PARITY_TOLERANCE:  # catches NaN too
        raise FerkitError(
            f"{parity.model_path}: ONNX Runtime and PyTorch disagree by {diff:.3g} (> {PARITY_TOLERANCE:g}) "
            f"on {len(parity.x)} faces; {parity.output} not written"
        )
    return diff


def _quantize_checked(
    data: bytes, calibration: np.ndarray, parity: _Parity
) -> tuple[bytes, dict[str, float]]:
    """The int8 graph of a checked float one, with its difference from PyTorch and its share of PyTorch's
    classes; FerkitError when that share is under INT8_MIN_AGREEMENT."""
    data = quantize_int8(data, calibration)
    got = parity.run(data, "int8")
    int8 = {
        "int8_max_abs_diff": parity.max_diff(got),
        "int8_agreement": float((got.argmax(1) == parity.reference.argmax(1)).mean()),
    }
    if not int8["int8_agreement"] >= INT8_MIN_AGREEMENT:
        raise FerkitError(
            f"{parity.model_path}: the int8 graph picks PyTorch's class on only "
            f"{int8['int8_agreement']:.1%} of {len(parity.x)} faces (< {INT8_MIN_AGREEMENT:.0%}); "
            f"{parity.output} not written"
        )
    return data, int8


def export_onnx(
    model_path: str,
    output: Path,
    opset: int | None = None,
    check_images: np.ndarray | None = None,
    batch_size: int = 256,
    calibration: np.ndarray | None = None,
) -> dict[str, Any]:
    """Export a checkpoint (.pth) or ensemble spec (.json) to one ONNX file, checked against PyTorch.

    The parity check runs ONNX Runtime on `check_images` (uint8 N x 48 x 48 real faces; None: 64 random
    faces) and compares with ferkit's PyTorch probabilities (no TTA); over `PARITY_TOLERANCE` is an
    error and nothing is written. With `calibration` (uint8 Training faces) the checked float graph is
    then quantized to int8 (`quantize_int8`) and written instead, if it picks PyTorch's class on at least
    `INT8_MIN_AGREEMENT` of the check faces. The file is written atomically (temporary file + rename) only
    after the checks pass. Returns {"output", "max_abs_diff", "images", "opset", "random_faces",
    "quantized"} and, for int8, "int8_max_abs_diff" and "int8_agreement" (the share of same classes).
    """
    import torch

    from ferkit.runtime.loading import load_predictor

    onnx = _import_exporter()
    _check_opset(onnx, opset)
    import_onnxruntime()
    output = Path(output)
    random = check_images is None
    faces = random_faces() if random else np.asarray(check_images)
    if len(faces) == 0:
        raise FerkitError("the parity check needs at least one face")
    x = faces_to_float(faces)
    predictor, tta = load_predictor(model_path, "cpu")
    check_crop_tta(crop_sizes(predictor), tta, model_path)
    check_output(output)
    with torch.no_grad():
        parity = _Parity(model_path, output, x, predictor.predict(faces, "none", batch_size), batch_size)
    quantized = "none" if calibration is None else "int8"
    props = _describe(model_path, predictor, tta) | {"quantized": quantized}
    proto = _float_graph(onnx, model_path, predictor, opset, props)
    data = proto.SerializeToString()
    diff = _check_float(data, parity)
    int8: dict[str, float] = {}
    if calibration is not None:
        data, int8 = _quantize_checked(data, calibration, parity)
    with atomic_write(output, "wb") as fh:
        fh.write(data)
    return {
        "output": str(output),
        "max_abs_diff": diff,
        "images": len(faces),
        "opset": _opset_of(proto),
        "random_faces": random,
        "quantized": quantized,
    } | int8


# ----------------------------------------------------------------------------- the export command
def export_data(data: str | None, skip_bad_rows: bool) -> FerDataset | None:
    """The FER2013 data for export's parity check and int8 calibration, loaded once: `data`, or (None)
    $FERKIT_DATA or ./data/fer2013.csv when present; None when there is none."""
    from ferkit.data import load_dataset, resolve_data_path

    if data is None:
        try:
            resolve_data_path(None)
        except FerkitError:
            return None
    return load_dataset(data, skip_bad_rows=skip_bad_rows)


def parity_faces(ds: FerDataset | None, n: int) -> tuple[np.ndarray | None, str]:
    """The first `n` PublicTest faces of `ds` (any split when there is none) and where they came from;
    (None, note) without data: random faces."""
    if ds is None:
        return None, "random faces (no FER2013 data found: pass --data for a check on real faces)"
    if "PublicTest" in ds.split_names():
        ds, what = ds.split("PublicTest"), "PublicTest faces"
    else:
        what = "faces"
    return ds.images[:n], f"{min(n, len(ds))} {what} of {ds.source or 'the data'}"


def calibration_faces(ds: FerDataset | None, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """`n` Training faces of `ds` drawn at random (seed 0) for int8 calibration: never a test split's."""
    if ds is None:
        raise FerkitError(
            "--quantize int8 calibrates on FER2013 Training faces: pass --data (or set FERKIT_DATA)"
        )
    if "Training" not in ds.split_names():
        raise FerkitError(f"--quantize int8: {ds.source} has no Training faces to calibrate on")
    return calibration_sample(ds.split("Training").images, n)


def calibration_sample(images: np.ndarray, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """`n` of `images` drawn at random (seed 0), in their order."""
    pick = np.random.default_rng(0).choice(len(images), min(n, len(images)), replace=False)
    return images[np.sort(pick)]


def preflight(model_path: str, output: Path, opset: int | None = None) -> None:
    """The cheap checks, before torch is imported and the parity faces are loaded: the model file
    exists and is not ONNX already, the opset is one the exporter writes, the output's folder takes a file."""
    p = Path(model_path)
    if not p.is_file():
        raise FerkitError(f"{p}: {'ensemble spec' if p.suffix == '.json' else 'checkpoint'} not found")
    if p.suffix == ".onnx":
        raise FerkitError(f"{p}: already ONNX; export takes a checkpoint (.pth) or an ensemble spec (.json)")
    if opset is not None and opset < MIN_OPSET:
        raise FerkitError(f"--opset {opset}: torch's ONNX exporter writes opset {MIN_OPSET} or newer")
    check_output(output)


def export_model(
    model_path: str | None,
    output: str | Path,
    data: str | None = None,
    skip_bad_rows: bool = False,
    check_images: int = CHECK_IMAGES,
    opset: int | None = None,
    quantize: str = "none",
) -> dict[str, Any]:
    """`ferkit export` from start to end: the cheap checks, then FER2013 (`data`, or the default when there
    is one) loaded once for the parity check's first `check_images` PublicTest faces and, with `quantize`
    "int8", the calibration's Training faces; then `export_onnx`. Its result, plus "checked_on" (which faces
    the parity check used, in words) and "calibration_images" (0 without int8)."""
    if check_images < 1:
        raise FerkitError(f"--check_images {check_images}: must be at least 1")
    if quantize not in QUANTIZE_MODES:
        raise FerkitError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE_MODES)}")
    from ferkit.runtime.loading import resolve_model_path  # torch: only once the options are checked

    model_path = resolve_model_path(model_path)
    output = Path(output)
    preflight(model_path, output, opset)
    ds = export_data(data, skip_bad_rows)
    calibration = calibration_faces(ds) if quantize == "int8" else None
    faces, what = parity_faces(ds, check_images)
    result = export_onnx(model_path, output, opset, faces, calibration=calibration)
    if result["random_faces"]:
        what = f"{result['images']} {what}"
    return result | {"checked_on": what, "calibration_images": 0 if calibration is None else len(calibration)}
