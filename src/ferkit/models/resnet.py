"""torchvision ResNets, with a small-image stem for training from scratch at 48x48."""

from torch import nn

from ferkit.errors import FerkitError
from ferkit.models.registry import register_model
from ferkit.models.torchvision_utils import replace_first_conv, torchvision_cfg, torchvision_models

STEM_INPUT_SIZE = {"small": 48, "imagenet": 112}


def _resnet(arch: str, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, stem: str | None):
    """``stem="small"``: 3x3 stride-1 conv1 and no maxpool; ``"imagenet"``: torchvision's 7x7/2 + maxpool.
    None picks "imagenet" when pretrained weights are loaded, else "small"."""
    stem = stem or ("imagenet" if pretrained else "small")
    if stem not in STEM_INPUT_SIZE:
        raise FerkitError(f"unknown stem {stem!r} for {arch}; choose one of: {', '.join(STEM_INPUT_SIZE)}")
    model = getattr(torchvision_models(), arch)(num_classes=num_classes)
    if stem == "small":
        replace_first_conv(model, "conv1", in_chans, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    else:
        replace_first_conv(model, "conv1", in_chans)
    model.fc = nn.Sequential(nn.Dropout(drop_rate), model.fc)
    model.default_cfg = torchvision_cfg(arch, in_chans, STEM_INPUT_SIZE[stem], "conv1", "fc")
    model.model_args = {"stem": stem}
    return model


@register_model
def resnet18(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, stem: str | None = None):
    """torchvision ResNet-18; see `_resnet` for ``stem``."""
    return _resnet("resnet18", num_classes, in_chans, drop_rate, pretrained, stem)


@register_model
def resnet34(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, stem: str | None = None):
    """torchvision ResNet-34; see `_resnet` for ``stem``."""
    return _resnet("resnet34", num_classes, in_chans, drop_rate, pretrained, stem)
