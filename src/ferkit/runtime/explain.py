"""Class activation maps (Grad-CAM, from the `grad-cam` package) of 48x48 faces: where in a face the
network found the evidence for a class. An ensemble's map is its members' maps weighted as their votes are;
each member is explained on its trained `model` (not the fused inference copy) at its own input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferkit.classes import CLASS_NAMES
from ferkit.data.transforms import to_float
from ferkit.errors import FerkitError
from ferkit.runtime.predictor import CheckpointModel, Ensemble, batches, members_and_weights
from ferkit.utils.io import atomic_write

FACE_SIZE = 48
MISSING = "class activation maps need the grad-cam package: pip install 'ferkit[explain]'"


def _grad_cam() -> tuple[Any, Any]:
    """pytorch_grad_cam's GradCAM and its class target (an optional dependency, imported when used)."""
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        raise FerkitError(MISSING) from None
    return GradCAM, ClassifierOutputTarget


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish)


def target_layer(model: nn.Module, source: str) -> nn.Module:
    """The layer Grad-CAM reads, found from the network's last convolution whatever the architecture: the
    activation after it in its block (cnn/vgg's last conv block, efficientnet/mobilenet's features[-1]),
    or the residual block holding it (a resnet's last layer4 block); the convolution itself otherwise.
    Activated features localise better than the raw convolution output."""
    convs = [path for path, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise FerkitError(f"{source}: the model has no convolution to explain")
    parent_path, _, name = convs[-1].rpartition(".")
    parent = model.get_submodule(parent_path)
    if parent is model:  # a head convolution right in the network (EfficientNet-Lite): the convolution
        return getattr(parent, name)
    if not isinstance(parent, nn.Sequential):
        return parent  # a block with its own forward (e.g. a residual block): its output is activated
    children = list(parent.named_children())
    at = [n for n, _ in children].index(name)
    after = [c for _, c in children[at + 1 :] if isinstance(c, ACTIVATIONS)]
    return after[0] if after else getattr(parent, name)


def class_indices(classes: Sequence[int | str] | np.ndarray, n: int) -> np.ndarray:
    """Class indices (N,) from indices or names (`ferkit.classes.CLASS_NAMES`); FerkitError otherwise."""
    out = []
    for c in list(classes):
        if isinstance(c, str) and c in CLASS_NAMES:
            out.append(CLASS_NAMES.index(c))
        elif isinstance(c, int | np.integer) and 0 <= int(c) < len(CLASS_NAMES):
            out.append(int(c))
        else:
            raise FerkitError(f"classes: {c!r} is not a class index 0-6 or one of {', '.join(CLASS_NAMES)}")
    if len(out) != n:
        raise FerkitError(f"classes: {len(out)} given for {n} faces")
    return np.array(out, np.int64)


def member_maps(
    member: CheckpointModel, faces: np.ndarray, classes: np.ndarray, batch_size: int
) -> np.ndarray:
    """Grad-CAM maps (N, 48, 48) in [0, 1] of one checkpoint for `classes`, computed at its input size (a
    crop model's on the centre crop, placed where it lies in the face)."""
    grad_cam, target = _grad_cam()
    model = member.model.eval()
    device = next(model.parameters()).device
    out = []
    with grad_cam(model=model, target_layers=[target_layer(model, member.path)]) as cam:
        for idx in batches(len(faces), batch_size, None):
            x = member.transform.prepare(to_float(torch.from_numpy(faces[idx.numpy()]).to(device)))
            maps = cam(input_tensor=x, targets=[target(int(c)) for c in classes[idx.numpy()]])
            side = member.transform.crop_size or FACE_SIZE  # a crop model sees the centre crop only
            heat = F.interpolate(torch.from_numpy(maps)[:, None], size=(side, side), mode="bilinear")
            far = FACE_SIZE - side
            heat = F.pad(heat, (far // 2, far - far // 2, far // 2, far - far // 2))  # 0 outside the crop
            out.append(heat[:, 0].clamp(0, 1).numpy())
    model.zero_grad(set_to_none=True)
    return np.concatenate(out).astype(np.float32)


def check_explainable(predictor: Any) -> None:
    """FerkitError (one line) unless `predictor` can be explained: a PyTorch model, grad-cam installed."""
    if not isinstance(predictor, CheckpointModel | Ensemble):
        raise FerkitError(
            f"{getattr(predictor, 'path', type(predictor).__name__)}: class activation maps need a PyTorch "
            "model (a checkpoint, model card or ensemble spec); an ONNX model has no gradients"
        )
    _grad_cam()


def class_activation_maps(
    predictor: Any,
    faces: np.ndarray,
    classes: Sequence[int | str] | np.ndarray | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Heat maps (N, 48, 48), float32 in [0, 1], of uint8 faces (N, 48, 48) for `classes` (indices or
    names; None: the predicted class). A CheckpointModel or an Ensemble (members' maps weighted by the
    ensemble's weights); an ONNX model has no gradients: FerkitError."""
    check_explainable(predictor)
    faces = np.ascontiguousarray(faces, np.uint8)
    if faces.ndim != 3 or faces.shape[1:] != (FACE_SIZE, FACE_SIZE):
        raise FerkitError(f"faces: shape {faces.shape}; expected uint8 N x 48 x 48")
    if len(faces) == 0:
        return np.zeros((0, FACE_SIZE, FACE_SIZE), np.float32)
    if classes is None:
        classes = predictor.predict(faces).argmax(1)
    picked = class_indices(classes, len(faces))
    members, weights = members_and_weights(predictor)
    maps = [member_maps(m, faces, picked, batch_size) for m in members]
    return np.tensordot(weights, np.stack(maps), axes=1).clip(0, 1).astype(np.float32)


def overlay(face: np.ndarray, heat: np.ndarray, size: int = 192, image_weight: float = 0.55) -> np.ndarray:
    """An RGB uint8 (size, size, 3) picture: the gray face enlarged, the heat map (jet colours) over it."""
    import cv2

    gray = cv2.resize(np.asarray(face, np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    mask = cv2.resize(np.asarray(heat, np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    jet = cv2.applyColorMap(np.uint8(255 * mask.clip(0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    mixed = image_weight * gray[..., None].astype(np.float32) + (1 - image_weight) * jet
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, face: np.ndarray, heat: np.ndarray, size: int = 192) -> Path:
    """Write `overlay(face, heat)` as a PNG, atomically; FerkitError naming the file if it cannot be."""
    from PIL import Image

    path = Path(path)
    try:
        with atomic_write(path, "wb") as fh:
            Image.fromarray(overlay(face, heat, size)).save(fh, format="PNG")
    except OSError as e:
        raise FerkitError(f"{path}: cannot write the explanation ({e.strerror or e})") from None
    return path
