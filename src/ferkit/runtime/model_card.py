"""Models as safetensors + a JSON model card: the format of the model that ships inside ferkit.

The card (`*.json`, format `ferkit-model-card`) names its weights file, describes each member (architecture,
arguments, input size, normalisation, a crop model's `crop_size`, ensemble weight), the class names, the
default test-time augmentation, the command that trained it, and the PublicTest/PrivateTest accuracy
measured on the card's own weights by `ferkit.evaluate.evaluate_model`: the same code `ferkit evaluate`
runs, so the two agree by construction.
Weights are stored as float16 (half the size) or, with `weights_dtype="int8"`, convolution and linear weights
as int8 with a float16 scale per output channel (a quarter of the size; biases and BatchNorm stay float16);
accuracy is measured after that rounding.
"""

from __future__ import annotations

import hashlib
import reprlib
from pathlib import Path
from typing import Any

import torch

from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.runtime.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ferkit.runtime.predictor import CheckpointModel, Ensemble, voting_weights
from ferkit.utils.paths import is_file

CARD_FORMAT = "ferkit-model-card"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED_CARD = SHIPPED_DIR / "ferkit-fer2013.json"  # the default model
MEMBER_KEYS = ("arch", "model_args", "input_size", "mean", "std")
CARD_KEYS = ("weights", "members", "class_names")
SCALE_PREFIX = "int8_scale:"  # safetensors key of an int8 tensor's per-output-channel scale


def is_model_card(obj: dict[str, Any]) -> bool:
    return obj.get("format") == CARD_FORMAT


def shipped_models() -> dict[str, Path]:
    """The model cards shipped inside ferkit, by name (the card's file name without `.json`)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.json"))}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_from_card(
    card: dict[str, Any], card_path: Path, device: torch.device
) -> tuple[CheckpointModel | Ensemble, str]:
    """The model a card (read from `card_path`) describes: one member, a CheckpointModel; several, an
    Ensemble; and its default TTA."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    members = card.get("members") or []
    if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
        raise FerkitError(f"{card_path}: its members are not a list of member descriptions")
    missing = [k for k in CARD_KEYS if k not in card] + [
        f"members[{i}].{k}" for i, m in enumerate(members) for k in (*MEMBER_KEYS, "weight") if k not in m
    ]
    if missing or not card.get("members"):
        raise FerkitError(f"{card_path}: incomplete model card (missing: {', '.join(missing) or 'members'})")
    name = card["weights"]
    if not (
        isinstance(name, str)
        and Path(name).name == name
        and name not in ("", ".", "..")
        and "\x00" not in name
    ):
        raise FerkitError(f"{card_path}: weights {reprlib.repr(name)} is not a file name beside the card")
    if not isinstance(card["class_names"], list) or card["class_names"] != list(CLASS_NAMES):
        raise FerkitError(
            f"{card_path}: model classes {card['class_names']} do not match FER2013's {list(CLASS_NAMES)}"
        )
    weights_path = card_path.parent / name
    if not is_file(weights_path):
        raise FerkitError(f"{card_path}: its weights file {weights_path} is missing")
    if card.get("sha256") and sha256(weights_path) != card["sha256"]:
        raise FerkitError(f"{weights_path}: checksum differs from its card {card_path} (damaged or replaced)")
    try:
        tensors = from_storage(load_file(weights_path))
    except (SafetensorError, OSError, RuntimeError) as e:  # RuntimeError: an int8 scale of the wrong shape
        raise FerkitError(f"{weights_path}: not a readable safetensors file ({e})") from None
    members = []
    for i, member in enumerate(card["members"]):
        prefix = f"{i}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        # crop_size: a crop model's only (cards of whole-face models have none, as before the crop recipe)
        payload = {k: member[k] for k in (*MEMBER_KEYS, "crop_size") if k in member} | {
            "format": CHECKPOINT_FORMAT,
            "class_names": card["class_names"],
            "model": state,
        }
        members.append(CheckpointModel.from_payload(payload, f"{weights_path} (member {i})", device))
    tta = card.get("tta", "none")
    if len(members) == 1:
        return members[0], tta
    return Ensemble(members, voting_weights([m["weight"] for m in card["members"]], str(card_path))), tta


def to_storage(key: str, value: torch.Tensor, weights_dtype: str) -> dict[str, torch.Tensor]:
    """One state_dict entry as stored in a card's safetensors: float16, or (int8, for weights of two or
    more dimensions) symmetric int8 with a float16 scale per output channel under SCALE_PREFIX + key."""
    if weights_dtype not in ("float16", "int8"):
        raise FerkitError(f"weights_dtype {weights_dtype!r}: expected float16 or int8")
    v = value.detach().cpu()
    if not v.is_floating_point():
        return {key: v.contiguous()}
    if weights_dtype == "float16" or v.ndim < 2:
        return {key: v.half().contiguous()}
    amax = v.abs().amax(dim=tuple(range(1, v.ndim)), keepdim=True).float()
    scale = (amax / 127).clamp_min(1e-12).half()
    q = torch.round(v / scale.float()).clamp(-127, 127).to(torch.int8)
    return {key: q.contiguous(), SCALE_PREFIX + key: scale.contiguous()}


def from_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo `to_storage`: float32 tensors (int8 ones times their scale), integer buffers unchanged."""
    out = {}
    for k, v in tensors.items():
        if k.startswith(SCALE_PREFIX):
            continue
        scale = tensors.get(SCALE_PREFIX + k)
        if scale is not None:
            out[k] = v.float() * scale.float()
        elif v.is_floating_point():
            out[k] = v.float()
        else:
            out[k] = v
    return out
