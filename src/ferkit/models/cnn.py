"""The seed's simple CNN."""

from collections import OrderedDict

from torch import nn

from ferkit.models.blocks import conv_stages, fer_cfg, stage_widths
from ferkit.models.registry import register_model


@register_model
def cnn(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, width: int = 32) -> nn.Module:
    """Four conv stages (``width`` to 8x ``width`` channels; 32 gives ~1.2M params) with dropout
    ``drop_rate / 2``, global average pool, then FC 8w-256-classes with dropout ``drop_rate``."""
    widths = stage_widths(width)
    classifier = nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(drop_rate),
        nn.Linear(widths[-1], 256),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(256, num_classes),
    )
    features = conv_stages(in_chans, widths, drop_rate / 2)
    model = nn.Sequential(OrderedDict(features=features, classifier=classifier))
    model.default_cfg = fer_cfg(in_chans)
    model.model_args = {"width": width}
    return model
