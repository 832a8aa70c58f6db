"""Batched, per-sample preprocessing and augmentation on tensors (no per-image Python work).

One `affine_grid` + `grid_sample` call applies flip, rotation, scale and shift to each image of a
batch with its own random parameters and resizes to the model's input size at the same time; random
erasing is a vectorised mask. Presets are named, as in torchvision's `references/classification`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ferkit.classes import TTA_MODES
from ferkit.errors import FerkitError

FACE_SIZE = 48  # the side of a FER2013 face, in pixels


@dataclass(frozen=True)
class AugmentPreset:
    """Random transform ranges: flip probability, degrees, scale range, shift as a fraction, erasing."""

    flip: float = 0.0
    degrees: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    translate: float = 0.0
    erase: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.25)

    @property
    def geometric(self) -> bool:
        return self.flip > 0 or self.degrees > 0 or self.scale != (1.0, 1.0) or self.translate > 0


PRESETS: dict[str, AugmentPreset] = {
    "none": AugmentPreset(),
    "flip": AugmentPreset(flip=0.5),
    "standard": AugmentPreset(flip=0.5, degrees=10, scale=(0.9, 1.1), translate=0.1, erase=0.25),
    "strong": AugmentPreset(flip=0.5, degrees=15, scale=(0.8, 1.2), translate=0.15, erase=0.5),
}


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 48, 48) or (N, 1, 48, 48) -> float (N, 1, 48, 48) in [0, 1]."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.float().div_(255.0)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to `size` (no-op when it already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def random_affine(
    x: torch.Tensor, preset: AugmentPreset, size: tuple[int, int], crop: float = 1.0, place: int = 0
) -> torch.Tensor:
    """Each image flipped/rotated/scaled/shifted with its own parameters, sampled at `size`; with `crop` < 1,
    from that fraction of each side (a crop at the faces' own scale) instead of the whole face.

    With `place` (a crop's side in pixels of the face), each crop lies at a random whole-pixel position
    inside the face, which replaces the preset's shift: the random crops of the crop recipe.
    """
    n = x.shape[0]
    dev = x.device
    angle = (torch.rand(n, device=dev) * 2 - 1) * math.radians(preset.degrees)
    lo, hi = preset.scale
    scale = lo + torch.rand(n, device=dev) * (hi - lo)
    flip = torch.where(torch.rand(n, device=dev) < preset.flip, -1.0, 1.0)
    if place:
        side = x.shape[-1]  # offsets 0 .. side - place, as normalised shifts of the crop's centre
        offset = torch.randint(0, side - place + 1, (n, 2), device=dev).float()
        shift = (2 * offset - (side - place)) / side
    else:
        shift = (torch.rand(n, 2, device=dev) * 2 - 1) * (2 * preset.translate)
    cos, sin = torch.cos(angle) / scale * crop, torch.sin(angle) / scale * crop
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_erase(x: torch.Tensor, p: float, area: tuple[float, float]) -> torch.Tensor:
    """Erase one random rectangle (noise-filled) in a fraction `p` of the images."""
    n, _, h, w = x.shape
    dev = x.device
    frac = area[0] + torch.rand(n, device=dev) * (area[1] - area[0])
    aspect = torch.exp((torch.rand(n, device=dev) * 2 - 1) * math.log(3.0))
    eh = (torch.sqrt(frac * aspect) * h).clamp(1, h)
    ew = (torch.sqrt(frac / aspect) * w).clamp(1, w)
    top = torch.rand(n, device=dev) * (h - eh)
    left = torch.rand(n, device=dev) * (w - ew)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    inside = (
        (rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
        & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1))
    )  # fmt: skip
    mask = (inside & (torch.rand(n, 1, 1, device=dev) < p)).unsqueeze(1)
    return torch.where(mask, torch.rand_like(x), x)


class BatchTransform:
    """uint8 faces -> normalised float batch at the model's input size, optionally augmented.

    With `crop_size` (the crop recipe; 0: whole faces) the model sees `crop_size` x `crop_size` crops of the
    48x48 faces at their own scale: random ones in training, the test views of `views` otherwise; `size`
    is then the model's input side scaled by crop_size / 48 (40 for a 48-pixel model).
    """

    def __init__(
        self,
        input_size: tuple[int, int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        preset: str = "none",
        channels_last: bool = False,
        crop_size: int = 0,
    ) -> None:
        self.channels, *hw = input_size
        if not 0 <= crop_size < FACE_SIZE:
            raise FerkitError(f"crop_size {crop_size}: expected 1 to {FACE_SIZE - 1}, or 0 for whole faces")
        self.crop_size = crop_size
        scale = crop_size / FACE_SIZE if crop_size else 1.0
        self.size = (round(hw[0] * scale), round(hw[1] * scale))
        self.preset = PRESETS[preset]
        self.channels_last = channels_last
        self.crop = scale  # the fraction of each side sampled (below 1: crops at the faces' scale)
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        if self.preset.geometric or self.crop != 1.0:
            x = random_affine(x, self.preset, self.size, self.crop, self.crop_size)
        else:
            x = resize(x, self.size)
        if self.preset.erase > 0:
            x = random_erase(x, self.preset.erase, self.preset.erase_area)
        return self.normalize(x)

    def at_size(self, size: tuple[int, int], crop: bool = False) -> BatchTransform:
        """The same transform, producing `size` images (progressive resizing trains smaller ones first):
        whole faces scaled down, or with `crop` crops of that size at the faces' own scale."""
        if self.crop_size and tuple(size) == self.size:
            return self  # a crop model trains at its own size throughout
        if self.crop_size:
            raise FerkitError("progressive resizing does not combine with crop_size")
        resized = copy.copy(self)
        resized.size = size
        resized.crop = size[0] / self.size[0] if crop else 1.0
        return resized

    def views(self, x: torch.Tensor, tta: str) -> list[torch.Tensor]:
        """The test views of float (N, 1, 48, 48) faces that `prepare` takes and TTA averages over: the one
        place that decides them. Whole faces: `tta_views`. Crops (none: the centre crop; flip: it and its
        mirror image; tencrop: the four corner crops and the centre one, each also mirrored)."""
        if not self.crop_size:
            return tta_views(x, tta)
        if tta not in TTA_MODES:
            raise FerkitError(f"--tta {tta!r}: expected one of {', '.join(TTA_MODES)}")
        far = x.shape[-1] - self.crop_size
        corners = [(0, 0), (0, far), (far, 0), (far, far)] if tta == "tencrop" else []
        crops = [x[..., t : t + self.crop_size, s : s + self.crop_size] for t, s in [*corners, centre(far)]]
        if tta == "none":
            return crops
        return crops + [c.flip(-1) for c in crops]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] views (N, 1, H, W) -> model input, without augmentation; whole 48x48 faces given to
        a crop transform are centre-cropped first (a crop model never sees whole faces)."""
        if self.crop_size and x.shape[-1] == FACE_SIZE:
            x = self.views(x, "none")[0]
        return self.normalize(resize(x, self.size))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Float [0, 1] gray at input size -> the model's channels, mean and std, memory format."""
        if self.channels != x.shape[1]:
            x = x.expand(-1, self.channels, -1, -1)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()


def centre(far: int) -> tuple[int, int]:
    """(top, left) of the centre crop when crops may start at 0 .. `far` pixels."""
    return far // 2, far // 2


# shifts of up to 2 pixels, as 44x44 crops of a 48x48 face: chosen on PublicTest with the shipped models
# (ensemble 71.22% with 2 against 71.05% with 4 and 70.86% with 1; fast model 69.99% against 69.55%)
TENCROP_PAD = 2


def tta_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The views of a float (N, 1, 48, 48) batch that test-time augmentation averages over.

    none: the faces; flip: the faces and their mirror images; tencrop (the standard FER2013 protocol):
    each face reflection-padded by TENCROP_PAD pixels and cropped back to its size at the four corners
    and the centre, each crop and its mirror image.
    """
    if tta == "none":
        return [x]
    if tta == "flip":
        return [x, x.flip(-1)]
    if tta == "tencrop":
        h, w = x.shape[-2:]
        p = TENCROP_PAD
        padded = F.pad(x, (p, p, p, p), mode="reflect")
        offsets = [(0, 0), (0, 2 * p), (2 * p, 0), (2 * p, 2 * p), (p, p)]
        crops = [padded[..., t : t + h, s : s + w] for t, s in offsets]
        return crops + [c.flip(-1) for c in crops]
    raise FerkitError(f"--tta {tta!r}: expected one of {', '.join(TTA_MODES)}")


def mix_batch(
    x: torch.Tensor, y: torch.Tensor, mixup: float, cutmix: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or CutMix (chosen at random when both are on) with a shuffled copy of the batch.

    `y` holds class indices or probability rows; mixed targets come back as probability rows.
    With both alphas 0 the batch is returned unchanged.
    """
    if mixup <= 0 and cutmix <= 0:
        return x, y
    num_classes = 7 if y.dim() == 1 else y.shape[1]
    probs = F.one_hot(y, num_classes).float() if y.dim() == 1 else y
    perm = torch.randperm(len(x), device=x.device)
    use_cutmix = cutmix > 0 and (mixup <= 0 or torch.rand(()) < 0.5)
    lam = float(
        torch.distributions.Beta(cutmix if use_cutmix else mixup, cutmix if use_cutmix else mixup).sample()
    )
    if use_cutmix:
        h, w = x.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * probs + (1 - lam) * probs[perm]
