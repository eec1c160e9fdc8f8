"""The seed's augmentation, scaled by one strength knob, on two backends that draw alike.

Strength s (``data.augment_strength``, default 1.0 = the seed) scales:
- ShiftScaleRotate: shift limit 0.0625*s (fraction of the side; the shift in pixels is that
  fraction times 32, truncated toward zero, as albumentations does), scale limit 0.1*s
  (x and y scale drawn independently from U(1-0.1s, 1+0.1s)), rotation limit 45*s degrees;
  reflect-101 border, bilinear, p=0.5;
- CoarseDropout: one square hole of side round(16*s) (at most 32), top-left corner uniform
  over the positions that keep the hole inside the image, filled with the dataset mean, p=0.5;
- HorizontalFlip stays at p=0.5 for any s > 0. s = 0 turns every transform off.
Normalisation (dataset mean and std) follows. `AugmentParams.flip_only()` keeps the flip alone:
the last `data.flip_only_frac` of a run's epochs train with it.

`albumentations` is the reference (per image, in DataLoader workers); `TorchAugment` applies
the same transforms to a batch with tensor ops (flip by mask, affine_grid/grid_sample with
per-sample matrices, a hole mask), drawing its parameters from the same distributions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SEED_SHIFT, SEED_SCALE, SEED_ROTATE, SEED_HOLE = 0.0625, 0.1, 45.0, 16


@dataclass(frozen=True)
class AugmentParams:
    """The transform limits at one strength; both backends read them from here."""

    strength: float
    flip_p: float
    affine_p: float
    shift: float
    scale: float
    rotate: float
    hole_p: float
    hole: int

    @classmethod
    def at(cls, strength: float, image_size: int = 32) -> AugmentParams:
        on = strength > 0
        hole = min(image_size, round(SEED_HOLE * strength))
        return cls(strength, 0.5 if on else 0.0, 0.5 if on else 0.0, SEED_SHIFT * strength,
                   SEED_SCALE * strength, SEED_ROTATE * strength,
                   0.5 if hole > 0 else 0.0, hole)

    @classmethod
    def flip_only(cls) -> AugmentParams:
        """The seed's flip without its warp and hole: a clean finish after strong augmentation."""
        return cls(1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0)

    @classmethod
    def of(cls, strength: float | AugmentParams) -> AugmentParams:
        return strength if isinstance(strength, AugmentParams) else cls.at(strength)


def albumentations_pipeline(strength: float | AugmentParams, mean: tuple[float, ...],
                            std: tuple[float, ...]):
    """The seed's pipeline in albumentations 2.x; strict, so a wrong argument raises."""
    import albumentations as A
    import cv2

    p = AugmentParams.of(strength)
    fill = tuple(float(m * 255.0) for m in mean)
    transforms = []
    if p.flip_p:
        transforms.append(A.HorizontalFlip(p=p.flip_p, strict=True))
    if p.affine_p:
        with warnings.catch_warnings():  # 2.x asks for Affine; this is the same transform
            warnings.filterwarnings("ignore", message="ShiftScaleRotate is a special case")
            transforms.append(A.ShiftScaleRotate(
                shift_limit=p.shift, scale_limit=p.scale, rotate_limit=p.rotate,
                interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REFLECT_101,
                p=p.affine_p, strict=True))
    if p.hole_p:
        transforms.append(A.CoarseDropout(
            num_holes_range=(1, 1), hole_height_range=(p.hole, p.hole),
            hole_width_range=(p.hole, p.hole), fill=fill, p=p.hole_p, strict=True))
    transforms.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0, strict=True))
    return A.Compose(transforms, strict=True)


@dataclass(frozen=True)
class BatchDraws:
    """Random parameters for a batch, drawn on the CPU so every device gets the same ones."""

    flip: torch.Tensor      # (N,) bool
    affine: torch.Tensor    # (N,) bool
    tx: torch.Tensor        # (N,) pixels, integer-valued
    ty: torch.Tensor
    sx: torch.Tensor        # (N,) scale factors
    sy: torch.Tensor
    angle: torch.Tensor     # (N,) degrees
    hole: torch.Tensor      # (N,) bool
    hole_y: torch.Tensor    # (N,) top-left corner
    hole_x: torch.Tensor


def draw(n: int, p: AugmentParams, gen: torch.Generator, size: int = 32) -> BatchDraws:
    """Draw a batch's transform parameters from the albumentations distributions."""
    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, generator=gen, dtype=torch.float64) * (hi - lo) + lo

    def bern(prob: float) -> torch.Tensor:
        return torch.rand(n, generator=gen) < prob

    flip, affine = bern(p.flip_p), bern(p.affine_p)
    tx = torch.trunc(u(-p.shift, p.shift) * size)
    ty = torch.trunc(u(-p.shift, p.shift) * size)
    sx, sy = u(1 - p.scale, 1 + p.scale), u(1 - p.scale, 1 + p.scale)
    angle = u(-p.rotate, p.rotate)
    hole = bern(p.hole_p)
    span = size - p.hole + 1
    hole_y = torch.randint(0, span, (n,), generator=gen)
    hole_x = torch.randint(0, span, (n,), generator=gen)
    return BatchDraws(flip, affine, tx, ty, sx, sy, angle, hole, hole_y, hole_x)


def affine_theta(d: BatchDraws, size: int) -> torch.Tensor:
    """affine_grid matrices (align_corners=True) inverting albumentations' forward matrix.

    Albumentations maps a centred source point c to R(angle) S(sx, sy) c + t. affine_grid
    wants the inverse, output -> input, in coordinates where the corner pixel centres are -1
    and 1, i.e. centred pixels times 2/(size-1).
    """
    rad = torch.deg2rad(d.angle)
    cos, sin = torch.cos(rad), torch.sin(rad)
    a = torch.stack([torch.stack([cos * d.sx, sin * d.sy], -1),
                     torch.stack([-sin * d.sx, cos * d.sy], -1)], -2)  # (N, 2, 2) = R @ S
    a_inv = torch.linalg.inv(a)
    t = torch.stack([d.tx, d.ty], -1).unsqueeze(-1) * (2.0 / (size - 1))
    return torch.cat([a_inv, -a_inv @ t], dim=-1)


class TorchAugment:
    """Batched augmentation + normalisation of uint8 NHWC batches on the training device."""

    def __init__(self, strength: float | AugmentParams, mean: tuple[float, ...],
                 std: tuple[float, ...], device: torch.device) -> None:
        self.p = AugmentParams.of(strength)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) on the device -> normalised float (N, 3, H, W)."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self.mean) / self.std

    def __call__(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, size = images.shape[0], images.shape[1]
        if self.p.strength == 0:
            return self.normalize(images)
        d = draw(n, self.p, gen, size)
        x = apply_geometry(images.permute(0, 3, 1, 2).float().div_(255.0), d)
        x = (x - self.mean) / self.std
        if self.p.hole_p:
            x = x.masked_fill(hole_mask(d, self.p.hole, size).to(x.device).unsqueeze(1), 0.0)
        return x  # the hole holds 0: the dataset mean, once normalised


def apply_geometry(x: torch.Tensor, d: BatchDraws) -> torch.Tensor:
    """Flip, then warp the samples whose `affine` flag is set (float NCHW, any device)."""
    dev, size = x.device, x.shape[-1]
    x = torch.where(d.flip.to(dev).view(-1, 1, 1, 1), x.flip(3), x)
    idx = torch.nonzero(d.affine).squeeze(1)
    if len(idx):
        theta = affine_theta(_select(d, idx), size).to(dev, torch.float32)
        grid = F.affine_grid(theta, [len(idx), x.shape[1], size, size], align_corners=True)
        warped = F.grid_sample(x[idx.to(dev)], grid, mode="bilinear",
                               padding_mode="reflection", align_corners=True)
        x = x.index_copy(0, idx.to(dev), warped)
    return x


def hole_mask(d: BatchDraws, side: int, size: int) -> torch.Tensor:
    """(N, size, size) bool: the CoarseDropout hole of each sample that has one."""
    ar = torch.arange(size)
    ys = (ar >= d.hole_y[:, None]) & (ar < d.hole_y[:, None] + side)
    xs = (ar >= d.hole_x[:, None]) & (ar < d.hole_x[:, None] + side)
    return (ys[:, :, None] & xs[:, None, :]) & d.hole[:, None, None]


def _select(d: BatchDraws, idx: torch.Tensor) -> BatchDraws:
    return BatchDraws(*(getattr(d, f)[idx] for f in BatchDraws.__dataclass_fields__))

