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


# The steps of each name in names.AUGMENTATIONS, applied in order ("both" = rotate, then blur).
AUGMENTATION_STEPS: dict[str, tuple[Callable[[torch.Tensor, torch.Generator], torch.Tensor], ...]] = {
    "none": (),
    "blur": (_random_blur,),
    "rotate": (_random_rotation,),
    "both": (_random_rotation, _random_blur),
    "flip": (_random_flip,),
}
