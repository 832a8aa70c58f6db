"""Pieces shared by the from-scratch FER networks (`cnn`, `vgg`)."""

from torch import nn

FER2013_MEAN = 0.5077  # pixel statistics of the FER2013 training split, scaled to [0, 1]
FER2013_STD = 0.2550


def stage_widths(width: int) -> tuple[int, ...]:
    """Channel counts of the four stages: width, 2x, 4x, 8x."""
    return (width, 2 * width, 4 * width, 8 * width)


def conv_stages(in_chans: int, widths: tuple[int, ...], drop_rate: float = 0.0) -> nn.Sequential:
    """Stages of (conv3x3-BN-ReLU) x2 + 2x2 maxpool (+ dropout if ``drop_rate``); four stages
    halve the resolution four times (48 -> 3)."""
    stages = []
    for cin, cout in zip((in_chans, *widths[:-1]), widths, strict=True):
        layers = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        ]
        if drop_rate:
            layers.append(nn.Dropout(drop_rate))
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages)


def fer_cfg(in_chans: int) -> dict:
    """default_cfg of a from-scratch net: 48x48 input, FER2013 stats, no ImageNet weights."""
    return {
        "input_size": (in_chans, 48, 48),
        "mean": (FER2013_MEAN,) * in_chans,
        "std": (FER2013_STD,) * in_chans,
        "first_conv": "features.0.0",
        "classifier": "classifier",
        "weights": None,
    }
