"""VGG-style net for 48x48 faces (after Khaireddin & Chen 2021, "Facial Emotion Recognition: State of
the Art Performance on FER2013")."""

from collections import OrderedDict

from torch import nn

from ferkit.models.blocks import conv_stages, fer_cfg, stage_widths
from ferkit.models.registry import register_model

HIDDEN = 1024
WIDTHS = stage_widths(64)


@register_model
def vgg(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool) -> nn.Module:
    """Four conv stages (64-512) to 512x3x3, then FC 4608-1024-1024-classes with dropout ``drop_rate``
    after each hidden FC (~10.5M params). Inputs other than 48x48 (the crop recipe's 40x40 crops end the
    conv stages at 2x2) are pooled to the 3x3 grid the FC expects; at 48x48 that pool is the identity."""
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(WIDTHS[-1] * 3 * 3, HIDDEN),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(HIDDEN, HIDDEN),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(HIDDEN, num_classes),
    )
    model = nn.Sequential(
        OrderedDict(
            features=conv_stages(in_chans, WIDTHS), pool=nn.AdaptiveAvgPool2d(3), classifier=classifier
        )
    )
    model.default_cfg = fer_cfg(in_chans)
    return model
