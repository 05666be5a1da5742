"""scikit-learn's bundled 8x8 digits, brought to MNIST's 28x28 layout.

The one dataset that needs no download and no file, so tests, smoke runs and offline machines can
always train. Generated in a few milliseconds: nothing here is cached.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lenet_core.data.idx import IMAGE_SIDE, Arrays

DIGITS_SOURCE = "sklearn.datasets.load_digits"  # ImageData.source, for provenance
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # fixed: the digits train/test split is part of the dataset, not a trial
DIGITS_INNER_SIDE = 20  # MNIST digits fill a 20x20 box centred in 28x28; do the same


def digits_arrays() -> Arrays:
    """The 1,797 digits upscaled to a 20x20 digit centred in 28x28, split 80/20 stratified:
    (train images, train labels, test images, test labels), uint8 and int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    small = torch.from_numpy(bunch.images).float().unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0,1]
    big = F.interpolate(small, size=(DIGITS_INNER_SIDE,) * 2, mode="bilinear", align_corners=False)
    pad = (IMAGE_SIDE - DIGITS_INNER_SIDE) // 2
    big = F.pad(big, (pad, pad, pad, pad))  # (1797, 1, 28, 28)
    images = (big.squeeze(1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=DIGITS_SPLIT_SEED,
    )
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]
