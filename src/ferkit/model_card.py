"""Models as safetensors + a JSON model card: the format of the model that ships inside ferkit.

The card (`*.json`, format `ferkit-model-card`) names its weights file, describes each member (architecture,
arguments, input size, normalisation, ensemble weight), the class names, the default test-time augmentation,
the command that trained it, and the PublicTest/PrivateTest accuracy measured on the card's own weights by
`ferkit.evaluate.evaluate_model`: the same code `ferkit evaluate` runs, so the two agree by construction.
Weights are stored as float16 (half the size) or, with `weights_dtype="int8"`, convolution and linear weights
as int8 with a float16 scale per output channel (a quarter of the size; biases and BatchNorm stay float16);
accuracy is measured after that rounding.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferkit import __version__
from ferkit.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.inference import CheckpointModel, Ensemble, load_predictor, members_and_weights

CARD_FORMAT = "ferkit-model-card"
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
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

    missing = [k for k in CARD_KEYS if k not in card] + [
        f"members[{i}].{k}"
        for i, m in enumerate(card.get("members") or [])
        for k in (*MEMBER_KEYS, "weight")
        if k not in m
    ]
    if missing or not card.get("members"):
        raise FerkitError(f"{card_path}: incomplete model card (missing: {', '.join(missing) or 'members'})")
    if list(card["class_names"]) != list(CLASS_NAMES):
        raise FerkitError(
            f"{card_path}: model classes {card['class_names']} do not match FER2013's {list(CLASS_NAMES)}"
        )
    weights_path = card_path.parent / card["weights"]
    if not weights_path.is_file():
        raise FerkitError(f"{card_path}: its weights file {weights_path} is missing")
    if card.get("sha256") and sha256(weights_path) != card["sha256"]:
        raise FerkitError(f"{weights_path}: checksum differs from its card {card_path} (damaged or replaced)")
    try:
        tensors = from_storage(load_file(weights_path))
    except (SafetensorError, OSError) as e:
        raise FerkitError(f"{weights_path}: not a readable safetensors file ({e})") from None
    members = []
    for i, member in enumerate(card["members"]):
        prefix = f"{i}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        payload = {k: member[k] for k in MEMBER_KEYS} | {
            "format": CHECKPOINT_FORMAT,
            "class_names": card["class_names"],
            "model": state,
        }
        members.append(CheckpointModel.from_payload(payload, f"{weights_path} (member {i})", device))
    tta = card.get("tta", "none")
    if len(members) == 1:
        return members[0], tta
    return Ensemble(members, np.array([float(m["weight"]) for m in card["members"]])), tta


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


def git_commit() -> str:
    """The commit of the working tree ferkit runs from ('unknown' outside a git checkout)."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def write_model_card(
    model_path: str,
    card_path: Path,
    ds: Any,
    tta: str,
    command: str,
    name: str = "",
    batch_size: int = 512,
    weights_dtype: str = "float16",
) -> dict[str, Any]:
    """Write `model_path` (a checkpoint or ensemble spec) as safetensors (`weights_dtype`, see `to_storage`)
    + card at `card_path`, with its accuracy on PublicTest and PrivateTest (single-crop and `tta`) measured
    on the written files."""
    from safetensors.torch import save_file

    from ferkit.evaluate import evaluate_model

    predictor, _ = load_predictor(model_path, "cpu")
    members, weights = members_and_weights(predictor)
    tensors = {}
    for i, m in enumerate(members):
        for k, v in m.model.state_dict().items():
            tensors |= to_storage(f"{i}.{k}", v, weights_dtype)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    weights_path = card_path.with_suffix(".safetensors")
    # Written and measured as drafts beside the card, which take its place only once measured: an
    # interrupted or failed ship leaves no card without its accuracy, and an earlier card intact.
    draft = card_path.with_name(f".{card_path.stem}.draft.json")
    draft_weights = draft.with_suffix(".safetensors")
    save_file(tensors, draft_weights, metadata={"format": CARD_FORMAT, "card": card_path.name})
    os.chmod(draft_weights, 0o644)
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": name or card_path.stem,
        "description": "Facial expression classifier for 48x48 grayscale faces (FER2013's 7 classes)",
        "weights": draft_weights.name,
        "sha256": sha256(draft_weights),
        "parameters": int(
            sum(
                v.numel()
                for k, v in tensors.items()
                if not k.endswith("num_batches_tracked") and not k.startswith(SCALE_PREFIX)
            )
        ),
        "weights_dtype": weights_dtype,
        "members": [
            {k: m.ckpt[k] for k in MEMBER_KEYS} | {"weight": float(w)}
            for m, w in zip(members, weights, strict=True)
        ],
        "class_names": list(CLASS_NAMES),
        "input": "N x 1 x 48 x 48 grayscale faces; each member resizes and normalises with its mean/std",
        "tta": tta,
        "training_command": command,
        "commit": git_commit(),
        "ferkit_version": __version__,
        "date": date.today().isoformat(),
        "data": ds.source,
        "checkpoint_selection": "PublicTest (PrivateTest is only reported)",
    }
    accuracy: dict[str, dict[str, float]] = {}
    try:
        write_json(draft, card)
        for split in ("PublicTest", "PrivateTest"):
            accuracy[split] = {}
            for mode in dict.fromkeys(("none", tta)):
                report, _, _ = evaluate_model(str(draft), ds, split, mode, batch_size, "cpu")
                accuracy[split][mode] = round(report["accuracy"], 6)
        os.replace(draft_weights, weights_path)
    finally:
        draft.unlink(missing_ok=True)
        draft_weights.unlink(missing_ok=True)
    card |= {"weights": weights_path.name, "accuracy": accuracy}
    write_json(card_path, card)
    return card


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write JSON atomically (temporary file + rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(obj, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
