"""Training configuration: dataclass defaults <- YAML (`--config`) <- command-line flags."""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ferkit.errors import FerkitError
from ferkit.utils.io import atomic_write_text
from ferkit.utils.paths import is_file


def option(
    default: Any,
    help: str,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    below: float | None = None,
) -> Any:
    """A config field with its help text, allowed values and bounds (`minimum`/`maximum` inclusive,
    `below` exclusive)."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "below": below}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of `ferkit train`; the resolved instance is saved with each run and checkpoint."""

    model: str = option("cnn", "architecture (see `ferkit models`)")
    width: int = option(
        0, "cnn only: channels of the first stage, doubled at each (0: the default, 32)", minimum=0
    )
    img_size: int = option(
        0,
        "mobilenet_v2 and efficientnet_b0/b2 only: the side faces are resized to (0: the model's own)",
        minimum=0,
    )
    pretrained: str = option(
        "", "'imagenet' for ImageNet weights, or a local weights file; empty: from scratch"
    )
    drop_rate: float = option(0.3, "dropout before the classifier (and inside cnn/vgg)", minimum=0.0)
    data: str = option("", "FER2013 file or folder (default: $FERKIT_DATA, ./data/fer2013.csv)")
    labels: str = option("fer2013", "label source", ("fer2013", "ferplus"))
    ferplus: str = option("", "FER+ fer2013new.csv (default: $FERKIT_FERPLUS or beside the data)")
    soft_labels: bool = option(False, "train on FER+ vote distributions instead of majority labels")
    ferplus_votes: float = option(
        0.0,
        "with FER2013 labels: the FER+ vote distributions' share of the targets (the rest: labels), 0 to 1",
        minimum=0.0,
        maximum=1.0,
    )
    teacher: str = option(
        "",
        "distil from this model (checkpoint, ensemble .json, model card or shipped model's name): its "
        "flip-TTA probabilities",
    )
    distill: float = option(
        0.5,
        "with --teacher: the teacher's share of the targets (the rest is the labels), 0 to 1",
        minimum=0.0,
        maximum=1.0,
    )
    skip_bad_rows: bool = option(False, "skip malformed data rows")
    epochs: int = option(50, "training epochs", minimum=1)
    batch_size: int = option(64, "training batch size (per process)", minimum=1)
    eval_batch_size: int = option(512, "evaluation batch size", minimum=1)
    lr: float = option(0.001, "peak learning rate", minimum=0.0)
    optimizer: str = option("adam", "optimizer", ("sgd", "adam", "adamw"))
    momentum: float = option(0.9, "SGD momentum", minimum=0.0)
    nesterov: bool = option(True, "Nesterov momentum for SGD")
    weight_decay: float = option(0.0, "weight decay", minimum=0.0)
    scheduler: str = option(
        "cosine", "LR schedule", ("cosine", "restarts", "onecycle", "plateau", "step", "none")
    )
    restart_cycles: int = option(
        3,
        "restarts schedule: cosine cycles, each twice as long as the one before (at most 10)",
        minimum=1,
        maximum=10,
    )
    warmup_epochs: float = option(0.0, "linear LR warm-up, in epochs", minimum=0.0)
    min_lr: float = option(0.0, "floor of the cosine schedule", minimum=0.0)
    step_size: int = option(10, "epochs between LR drops (step schedule)", minimum=1)
    gamma: float = option(
        0.1, "LR factor at each drop (step and plateau schedules)", minimum=0.0, maximum=1.0
    )
    plateau_patience: int = option(5, "epochs without val improvement before an LR drop (plateau)", minimum=1)
    label_smoothing: float = option(0.0, "label smoothing", minimum=0.0, maximum=1.0)
    class_weights: str = option("none", "class-weighted loss", ("none", "inverse", "effective"))
    augment: str = option("standard", "augmentation preset", ("none", "flip", "standard", "strong"))
    progressive_resize: int = option(
        0,
        "progressive resizing: train at this side length first, growing in 4-pixel steps to the model's "
        "input size by --progressive_until (0: off)",
        minimum=0,
    )
    progressive_until: float = option(
        0.75,
        "with --progressive_resize: the fraction of training (epochs, or the time budget) from which it "
        "trains at full size",
        minimum=0.0,
        maximum=1.0,
    )
    progressive_mode: str = option(
        "scale",
        "with --progressive_resize: 'scale' shrinks whole faces, 'crop' takes crops at their own scale",
        ("scale", "crop"),
    )
    crop_size: int = option(
        0,
        "the crop recipe: train on random crops of this side (pixels of the 48x48 face, at its own scale); "
        "the model then sees crops at test too (centre, or ten with --tta tencrop) (0: whole faces)",
        minimum=0,
        maximum=47,
    )
    mixup: float = option(0.0, "mixup alpha (0: off)", minimum=0.0)
    cutmix: float = option(0.0, "cutmix alpha (0: off)", minimum=0.0)
    ema: float = option(
        0.0,
        "decay of a moving average of the weights, which is validated and saved (0: off; 0.999 is usual)",
        minimum=0.0,
        below=1.0,
    )
    freeze_epochs: int = option(0, "train only the head for this many epochs (fine-tuning)", minimum=0)
    backbone_lr_scale: float = option(0.1, "backbone LR factor after unfreezing (fine-tuning)", minimum=0.0)
    time_budget: float = option(
        0.0, "wall-time budget in minutes: stop when spent, LR schedule spread over it (0: off)", minimum=0.0
    )
    early_stopping: int = option(0, "stop after this many epochs without val improvement (0: off)", minimum=0)
    seed: int = option(42, "random seed")
    limit_batches: int = option(
        0, "cap train and eval batches per epoch (0: no cap), for smoke runs", minimum=0
    )
    output_dir: str = option("", "run folder (default runs/<time>-<model>)")
    save_best_to: str = option("models/best_model.pth", "also copy the best checkpoint here ('' to skip)")
    resume: bool = option(False, "continue from OUTPUT_DIR/last.pth")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    precision: str = option(
        "auto", "auto: bf16 on CPUs with bf16 units, fp16 AMP on CUDA", ("auto", "fp32", "bf16", "fp16")
    )
    channels_last: bool = option(True, "channels-last memory where it is faster (all but fp32 on bf16 CPUs)")
    progress: bool = option(True, "show a progress bar")
    wandb: str = option(
        "auto", "W&B mode (auto: online when logged in)", ("auto", "online", "offline", "disabled")
    )
    wandb_project: str = option("facial-expression-recognition", "W&B project")
    experiment_type: str = option("baseline", "third W&B tag, after model and dataset version")
    tags: list[str] = option([], "extra W&B tags")
    run_name: str = option("", "W&B run name (default: the output folder name)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    def validate(self, world: int = 1) -> None:
        """Checks across options (each option's own type and range is checked as it is read), for a run
        of `world` processes; a FerkitError names the options at fault."""
        if self.time_budget and world > 1:
            raise FerkitError("--time_budget is for single-process runs; use --epochs with torchrun")
        if self.ferplus_votes and self.labels == "ferplus":
            raise FerkitError(
                "--ferplus_votes is for FER2013 labels; with --labels ferplus use --soft_labels"
            )
        if self.soft_labels and self.labels != "ferplus":
            raise FerkitError("--soft_labels trains on FER+ vote distributions: add --labels ferplus")
        progressive_set = (self.progressive_mode, self.progressive_until) != (
            TrainConfig.progressive_mode,
            TrainConfig.progressive_until,
        )
        if progressive_set and not self.progressive_resize:
            raise FerkitError("--progressive_mode and --progressive_until need --progressive_resize SIDE")
        if self.crop_size and self.progressive_resize:
            raise FerkitError("--crop_size and --progressive_resize do not combine: choose one")
        if self.crop_size and self.crop_size < 16:
            raise FerkitError(f"--crop_size {self.crop_size}: expected 16 to 47 pixels, or 0 for whole faces")
        if self.img_size and not 32 <= self.img_size <= 512:
            raise FerkitError(f"--img_size {self.img_size}: expected 32 to 512 pixels, or 0 for the model's")
        if self.resume and not self.output_dir:
            raise FerkitError("--resume needs --output_dir (the run folder holding last.pth)")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _base_type(f: dataclasses.Field) -> type:
    hint = typing.get_type_hints(TrainConfig)[f.name]
    if isinstance(hint, types.UnionType):
        hint = typing.get_args(hint)[0]
    return typing.get_origin(hint) or hint


def field_type(name: str) -> type:
    """The type an option's values take (bool, int, float, str or list): how its flag parses them."""
    return _base_type(FIELDS[name])


def _check(name: str, value: Any, where: str) -> Any:
    """Coerce one value to its field's type and check its range; FerkitError names the option."""
    f = FIELDS.get(name)
    if f is None:
        raise FerkitError(f"{where}: unknown option {name!r}")
    kind = _base_type(f)
    try:
        if kind is bool and not isinstance(value, bool):
            raise ValueError
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        if isinstance(value, dict) or (
            isinstance(value, list) and (kind is not list or any(isinstance(v, (list, dict)) for v in value))
        ):
            raise ValueError  # a list or mapping where a value (or a list of values) belongs
        if kind is list:
            value = [str(v) for v in ([value] if isinstance(value, str) else value)]
        elif kind is not bool:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            value = kind(value) if value is not None else kind()
            if kind is float and not math.isfinite(value):
                raise ValueError
    except (TypeError, ValueError, OverflowError):
        # reprlib: a YAML alias bomb's repr would be exponential
        shown = reprlib.repr(value) if isinstance(value, (list, dict)) else repr(value)
        raise FerkitError(f"{where}: option {name!r}: {shown} is not a valid {kind.__name__}") from None
    meta = f.metadata
    if meta["choices"] and value not in meta["choices"]:
        raise FerkitError(f"{where}: option {name!r}: {value!r} is not one of {', '.join(meta['choices'])}")
    if meta["minimum"] is not None and value < meta["minimum"]:
        raise FerkitError(f"{where}: option {name!r}: {value!r} is below {meta['minimum']}")
    if meta["maximum"] is not None and value > meta["maximum"]:
        raise FerkitError(f"{where}: option {name!r}: {value!r} is above {meta['maximum']}")
    if meta["below"] is not None and value >= meta["below"]:
        raise FerkitError(f"{where}: option {name!r}: {value!r} is not below {meta['below']}")
    return value


def load_yaml(path: Path) -> dict[str, Any]:
    """The options of a YAML config file (a mapping of option names to values)."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FerkitError(f"{path}: config file not found") from None
    except OSError as e:
        raise FerkitError(f"{path}: cannot read the config file ({e.strerror})") from None
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: bad UTF-8, a 5000-digit int
        first = (str(e).splitlines() or [e.__class__.__name__])[0]
        raise FerkitError(f"{path}: not valid YAML ({first})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise FerkitError(f"{path}: expected a mapping of option: value")
    return {str(k).replace("-", "_"): v for k, v in loaded.items()}


def _base_file(path: Path, base: Any, chain: tuple[Path, ...]) -> Path:
    """The config file that `path`'s `base:` names, relative to `path`; FerkitError names `path` when
    it names none, a missing file, or a file already in the `chain` of bases."""
    if not isinstance(base, str) or not base.strip():
        raise FerkitError(f"{path}: option 'base': {reprlib.repr(base)} is not the name of a config file")
    base_path = path.parent / base
    if not is_file(base_path):
        raise FerkitError(f"{path}: option 'base': no config file {base_path}")
    if base_path.resolve() in {p.resolve() for p in (*chain, path)}:
        raise FerkitError(f"{path}: option 'base': {base} makes a loop of bases")
    return base_path


def read_config(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's checked options over those of the file its `base:` names (a path relative to it),
    so a recipe that differs from another by one option says only that option."""
    options = load_yaml(path)
    values: dict[str, Any] = {}
    if "base" in options:  # present but empty is an error, not "no base"
        values = read_config(_base_file(path, options.pop("base"), chain), (*chain, path))
    return values | {k: _check(k, v, str(path)) for k, v in options.items()}


def resolve_config(config_file: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the YAML file's options (over those of its `base:`), then the command line's flags."""
    values: dict[str, Any] = read_config(Path(config_file)) if config_file else {}
    for k, v in overrides.items():
        values[k] = _check(k, v, f"--{k}")
    return TrainConfig(**values)
