"""`ferkit ship`: write a model as safetensors + a JSON model card (the format `ferkit.runtime.model_card`
reads), with its accuracy measured on the written files by the same code `ferkit evaluate` runs."""

from __future__ import annotations

import os
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

from ferkit.classes import CLASS_NAMES
from ferkit.errors import FerkitError
from ferkit.evaluation.evaluate import evaluate_model
from ferkit.runtime.loading import load_predictor
from ferkit.runtime.model_card import CARD_FORMAT, MEMBER_KEYS, SCALE_PREFIX, sha256, to_storage
from ferkit.runtime.predictor import CheckpointModel, members_and_weights
from ferkit.utils.io import atomic_write, atomic_write_json
from ferkit.version import __version__


def data_provenance(source: str) -> dict[str, str]:
    """The data a card is measured on, by file name and, for a file, its SHA-256: a path means nothing
    on another machine, the digest says whether two cards saw the same bytes."""
    path = Path(source)
    return {"file": path.name} | ({"sha256": sha256(path)} if path.is_file() else {})


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


def member_entry(member: CheckpointModel, weight: float) -> dict[str, Any]:
    """A card's description of one member: what rebuilds it, its crop side when it is a crop model (so it
    is tested on crops again; whole-face members' entries stay as before), its voting weight."""
    crop = {"crop_size": member.transform.crop_size} if member.transform.crop_size else {}
    return {k: member.ckpt[k] for k in MEMBER_KEYS} | crop | {"weight": weight}


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
    on the written files. FerkitError, before any work, unless `card_path` is a .json file."""
    from safetensors.torch import save

    if card_path.suffix != ".json":
        raise FerkitError(f"--output {card_path}: the model card is a .json file (weights go beside it)")
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
    with atomic_write(draft_weights, "wb") as fh:  # a full disk: one line naming the file, never half a file
        fh.write(save(tensors, metadata={"format": CARD_FORMAT, "card": card_path.name}))
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
        "members": [member_entry(m, float(w)) for m, w in zip(members, weights, strict=True)],
        "class_names": list(CLASS_NAMES),
        "input": "N x 1 x 48 x 48 grayscale faces; each member resizes and normalises with its mean/std",
        "tta": tta,
        "training_command": command,
        "commit": git_commit(),
        "ferkit_version": __version__,
        "date": date.today().isoformat(),
        "data": data_provenance(ds.source),
        "checkpoint_selection": "PublicTest (PrivateTest is only reported)",
    }
    accuracy: dict[str, dict[str, float]] = {}
    try:
        atomic_write_json(draft, card)
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
    atomic_write_json(card_path, card)
    return card
