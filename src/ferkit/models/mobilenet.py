"""MobileNetV2 (Sandler et al. 2018), at 96x96 unless told another side.

Module for module torchvision's `mobilenet_v2` (same state-dict keys, same outputs: a test holds them
equal), so torchvision's ImageNet files and earlier checkpoints load. Written here because a shipped model
with a MobileNetV2 member would otherwise import torchvision on every load: 2.3 s more than torch alone on a
2-core CPU (`python -c "import torch, torchvision.models"`: 6.1 s against 3.8 s).
"""

import torch
from torch import nn

from ferkit.models.pretrained import imagenet_stats
from ferkit.models.registry import register_model

# (expansion, output channels, blocks, first block's stride) of each stage, as in the paper's Table 2
STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNELS = 1280
TORCHVISION_WEIGHTS = "MobileNet_V2_Weights.IMAGENET1K_V2"  # torchvision's default, for --pretrained imagenet


def conv_bn_relu6(
    inputs: int, outputs: int, kernel: int = 3, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; a shortcut when the shape is kept."""

    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = inputs * expansion
        layers = [conv_bn_relu6(inputs, hidden, 1)] if expansion != 1 else []
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
        ]
        self.conv = nn.Sequential(*layers)
        self.shortcut = stride == 1 and inputs == outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.shortcut else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        layers, channels = [conv_bn_relu6(in_chans, 32, stride=2)], 32
        for expansion, outputs, blocks, stride in STAGES:
            for i in range(blocks):
                layers.append(InvertedResidual(channels, outputs, stride if i == 0 else 1, expansion))
                channels = outputs
        layers.append(conv_bn_relu6(channels, LAST_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(LAST_CHANNELS, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


@register_model
def mobilenet_v2(
    *, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool, img_size: int = 96
) -> nn.Module:
    """MobileNetV2 on ``img_size`` x ``img_size`` inputs (64 trains about 3x faster than 96 on a 2-core
    CPU without AMX)."""
    model = MobileNetV2(in_chans, num_classes, drop_rate)
    mean, std = imagenet_stats(in_chans)
    model.default_cfg = {
        "input_size": (in_chans, img_size, img_size),
        "mean": mean,
        "std": std,
        "first_conv": "features.0.0",
        "classifier": "classifier",
        "weights": TORCHVISION_WEIGHTS,
    }
    model.model_args = {"img_size": img_size}
    return model
