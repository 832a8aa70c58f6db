"""torchvision EfficientNets at CPU-friendly input sizes."""

from torch import nn

from ferkit.models.registry import register_model
from ferkit.models.torchvision_utils import replace_first_conv, torchvision_cfg, torchvision_models


def _efficientnet(arch: str, size: int, num_classes: int, in_chans: int, drop_rate: float) -> nn.Module:
    model = getattr(torchvision_models(), arch)(num_classes=num_classes, dropout=drop_rate)
    replace_first_conv(model, "features.0.0", in_chans)
    # torchvision draws the head from U(+-1/sqrt(num_classes)): fine for 1000 classes, but for 7 it starts
    # with logits in the tens, and from scratch training collapsed to the class prior (25%, measured).
    head: nn.Linear = model.classifier[-1]
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    model.default_cfg = torchvision_cfg(arch, in_chans, size, "features.0.0", "classifier")
    model.model_args = {"img_size": size}
    return model


@register_model
def efficientnet_b0(
    *, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, img_size: int = 96
) -> nn.Module:
    """torchvision EfficientNet-B0 at 96x96 (or ``img_size``)."""
    return _efficientnet("efficientnet_b0", img_size, num_classes, in_chans, drop_rate)


@register_model
def efficientnet_b2(
    *, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, img_size: int = 112
) -> nn.Module:
    """torchvision EfficientNet-B2 at 112x112 (or ``img_size``)."""
    return _efficientnet("efficientnet_b2", img_size, num_classes, in_chans, drop_rate)
