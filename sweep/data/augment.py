"""Whole-batch augmentation and normalisation on the device.

Random parameters are drawn on the CPU from a ``torch.Generator`` (so a seed gives the same batch
on every device) and applied to the batch in one indexing or ``grid_sample`` call:

- ``pad_crop``: zero-pad by ``padding``, crop back to the input size at a random offset, flip
  horizontally with probability 1/2 (CIFAR recipe). Crop and flip are one gather.
- ``resized_crop``: a random box with area fraction in ``scale`` and aspect ratio log-uniform in
  ``ratio`` (clamped to the image; no rejection loop), resampled bilinearly to ``size``, flipped
  with probability 1/2 (the ImageNet recipe, batched).
- ``centre_crop``: the evaluation view.

Outputs are float32 ``(x / 255 - mean) / std`` in ``channels_last`` memory format.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def norm_affine(mean: Sequence[float], std: Sequence[float], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of shape (1, 3, 1, 1) with ``x_u8 * scale + shift == (x / 255 - mean) / std``."""
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return 1.0 / (255.0 * s), -m / s


def normalise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float32, channels_last."""
    x = x.contiguous(memory_format=torch.channels_last)
    return torch.addcmul(shift, x.float(), scale).contiguous(memory_format=torch.channels_last)


def sample_pad_crop(g: torch.Generator, n: int, padding: int, flip: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Offsets (n, 2) in ``[0, 2 * padding]`` (row, column) and flip flags (n,)."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return offsets, flips


def pad_crop(x: torch.Tensor, padding: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random crop of the zero-padded batch plus horizontal flip, as one gather.

    Args:
        x: (B, C, H, W) any dtype.
        padding: zero padding on every side.
        offsets: (B, 2) top-left corner of the crop in the padded image (row, column).
        flips: (B,) bool, flip that image horizontally.

    Returns:
        (B, C, H, W), channels_last strides.
    """
    b, _, h, w = x.shape
    dev = x.device
    offsets, flips = offsets.to(dev), flips.to(dev)
    xp = F.pad(x, (padding,) * 4) if padding else x
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, :1] + ar_h                                    # (B, H)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # (B, W)
    bi = torch.arange(b, device=dev)[:, None, None]
    out = xp[bi, :, rows[:, :, None], cols[:, None, :]]             # (B, H, W, C): advanced dims first
    return out.permute(0, 3, 1, 2)                                  # (B, C, H, W) channels_last


def sample_resized_crop(g: torch.Generator, n: int, scale: Sequence[float], ratio: Sequence[float],
                        flip: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boxes (n, 4) as (centre y, centre x, height, width) in fractions of the side, and flips (n,)."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=g)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(log_r)
    bw = torch.sqrt(area * r).clamp(max=1.0)
    bh = torch.sqrt(area / r).clamp(max=1.0)
    cy = bh / 2 + torch.rand(n, generator=g) * (1 - bh)
    cx = bw / 2 + torch.rand(n, generator=g) * (1 - bw)
    flips = torch.rand(n, generator=g) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return torch.stack([cy, cx, bh, bw], 1), flips


def resized_crop(x: torch.Tensor, size: int, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Bilinear resample of each box of float ``x`` (B, C, H, W) to (size, size), flipped where asked."""
    b = x.shape[0]
    boxes, flips = boxes.to(x.device, x.dtype), flips.to(x.device)
    cy, cx, bh, bw = boxes.unbind(1)
    sign = torch.where(flips, -1.0, 1.0).to(x.dtype)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = bw * sign
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = bh
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central (size, size) window of (B, C, H, W)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]
