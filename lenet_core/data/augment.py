"""Tensor ops on whole batches: zero-copy views of the uint8 arrays, uint8 -> float, normalization
and seeded augmentation.

Batches are drawn by index and converted per batch, so no float copy of the dataset is ever made
and no per-sample DataLoader sits in the hot path. Augmentation draws from the caller's
``torch.Generator``, never the global RNG, so a trial's seed alone decides it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

MAX_ROTATION_DEGREES = 15.0
BLUR_KERNEL = 5  # pixels, square
BLUR_SIGMA_RANGE = (0.1, 1.5)  # pixels; sampled once per batch
MAX_SHIFT = 2  # pixels: shift translates each image by up to this much on each axis
CROP_PADDING = 2  # pixels of zeros around each image before crop cuts a window of its size


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """Zero-copy torch view of a (possibly read-only) numpy array; never written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we only read
        return torch.from_numpy(array)


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """(B, 28, 28) uint8 -> (B, 1, 28, 28) float in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def normalize_(x: torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    """In place: (x - mean) / std on a float batch."""
    return x.sub_(mean).div_(std)


def augment_batch(x: torch.Tensor, *, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Seeded batched augmentation of a (B, 1, H, W) batch in [0, 1] (zero is background)."""
    if kind not in AUGMENTATION_STEPS:
        raise ValueError(f"unknown augmentation {kind!r}; choose one of: {', '.join(AUGMENTATION_STEPS)}")
    for step in AUGMENTATION_STEPS[kind]:
        x = step(x, generator)
    return x


def _random_rotation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # One angle per image, uniform in [-15, 15] degrees; affine_grid wants (B, 2, 3) matrices.
    angles = (torch.rand(x.shape[0], generator=generator) * 2 - 1) * MAX_ROTATION_DEGREES
    radians = torch.deg2rad(angles).to(x.device)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zeros = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _random_blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Gaussian 5x5 with one sigma per batch, applied to a random half of the images.
    from torchvision.transforms.v2.functional import gaussian_blur

    low, high = BLUR_SIGMA_RANGE
    sigma = float(low + (high - low) * torch.rand(1, generator=generator))
    blurred = gaussian_blur(x, kernel_size=[BLUR_KERNEL, BLUR_KERNEL], sigma=[sigma, sigma])
    chosen = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(chosen, blurred, x)


def _random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # Mirror left-right (the W axis of (B, 1, H, W)) a random half: one fair coin per image.
    # A shirt mirrored is still a shirt; a mirrored 2 is no digit, so this suits Fashion-MNIST.
    chosen = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    return torch.where(chosen, x.flip(-1), x)


def translate(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, *, pad: int) -> torch.Tensor:
    """Each image of a (B, C, H, W) batch cut from its zero-padded copy at its own window offset.

    ``rows``/``cols`` (B,) integers in [0, 2 pad] are the top-left corners of the H x W windows in
    the (H + 2 pad) x (W + 2 pad) padded images: offset ``pad`` leaves an image as it is, and
    offset ``pad - d`` moves its content d pixels down (or right). One gather for the whole batch;
    pixels are only moved or zeroed, never mixed.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # zeros: the background of every dataset here
    rows = rows.to(x.device).view(b, 1, 1, 1) + torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = cols.to(x.device).view(b, 1, 1, 1) + torch.arange(w, device=x.device).view(1, 1, 1, w)
    batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    channel = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # One integer translation per image, each axis uniform in [-2, 2] pixels; zeros fill what
    # moves in, and what moves out of the 28 x 28 frame is lost.
    shifts = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2, x.shape[0]), generator=generator)
    return translate(x, MAX_SHIFT - shifts[0], MAX_SHIFT - shifts[1], pad=MAX_SHIFT)


def _random_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # torchvision's RandomCrop(28, padding=2) per image: pad with 2 zero pixels on every side,
    # then cut a 28 x 28 window at a corner uniform in [0, 4] x [0, 4].
    corners = torch.randint(0, 2 * CROP_PADDING + 1, (2, x.shape[0]), generator=generator)
    return translate(x, corners[0], corners[1], pad=CROP_PADDING)


# The steps of each name in names.AUGMENTATIONS, applied in order ("both" = rotate, then blur;
# "flip_shift" = flip, then shift).
AUGMENTATION_STEPS: dict[str, tuple[Callable[[torch.Tensor, torch.Generator], torch.Tensor], ...]] = {
    "none": (),
    "blur": (_random_blur,),
    "rotate": (_random_rotation,),
    "both": (_random_rotation, _random_blur),
    "flip": (_random_flip,),
    "shift": (_random_shift,),
    "crop": (_random_crop,),
    # the usual Fashion-MNIST recipe: mirror a random half, then translate each image by up to 2
    # pixels (crop is the same distribution of translations as shift: torchvision's RandomCrop)
    "flip_shift": (_random_flip, _random_shift),
}
