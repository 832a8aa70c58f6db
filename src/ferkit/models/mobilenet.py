"""torchvision MobileNetV2 at 96x96."""

from torch import nn

from ferkit.models.registry import register_model
from ferkit.models.torchvision_utils import replace_first_conv, torchvision_cfg, torchvision_models


@register_model
def mobilenet_v2(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool) -> nn.Module:
    """torchvision MobileNetV2 at 96x96."""
    model = torchvision_models().mobilenet_v2(num_classes=num_classes, dropout=drop_rate)
    replace_first_conv(model, "features.0.0", in_chans)
    model.default_cfg = torchvision_cfg("mobilenet_v2", in_chans, 96, "features.0.0", "classifier")
    return model
