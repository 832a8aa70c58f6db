"""Helpers shared by the torchvision-based architectures.

Each builds its torchvision model through `torchvision_models`: torchvision is imported only when such a
model is built, since its import takes 1-2 s (it loads torch._dynamo) that every command would pay.
"""

from types import ModuleType

from torch import nn

from ferkit.models.pretrained import imagenet_stats


def torchvision_models() -> ModuleType:
    """`torchvision.models`, imported on first use."""
    from torchvision import models

    return models


def replace_first_conv(model: nn.Module, path: str, in_chans: int, **overrides) -> None:
    """Swap the conv at ``path`` for a fresh one taking ``in_chans`` inputs; ``overrides`` change
    other Conv2d arguments (e.g. ``kernel_size=3, stride=1`` for a small-image stem)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    old: nn.Conv2d = getattr(parent, attr)
    args = {
        "out_channels": old.out_channels,
        "kernel_size": old.kernel_size,
        "stride": old.stride,
        "padding": old.padding,
        "dilation": old.dilation,
        "groups": old.groups,
        "bias": old.bias is not None,
    }
    setattr(parent, attr, nn.Conv2d(in_chans, **(args | overrides)))


def torchvision_cfg(arch: str, in_chans: int, size: int, first_conv: str, classifier: str) -> dict:
    """default_cfg of a torchvision arch: ImageNet stats (so a checkpoint rebuilt from ``model_args``
    normalises as the pretrained model did) and torchvision's default ImageNet weights."""
    mean, std = imagenet_stats(in_chans)
    return {
        "input_size": (in_chans, size, size),
        "mean": mean,
        "std": std,
        "first_conv": first_conv,
        "classifier": classifier,
        "weights": str(torchvision_models().get_model_weights(arch).DEFAULT),
    }
