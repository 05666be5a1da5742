"""Models built by name from one table: LeNet-5 (classic and modern) and torchvision ResNets.

All models take (B, 1, 28, 28) normalized images and return (B, 10) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lenet_core.errors import ConfigError
from lenet_core.names import LENET_VARIANTS

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}
POOLINGS: dict[str, Callable[[], nn.Module]] = {
    "max": lambda: nn.MaxPool2d(2),
    "avg": lambda: nn.AvgPool2d(2),
}


class LeNet5(nn.Module):
    """LeNet-5, 61,706 parameters in both variants.

    classic: pad 28x28 -> 32x32, conv1 1->6 5x5 (28x28), pool (14x14), conv2 6->16 5x5 (10x10),
             pool (5x5), conv3 16->120 5x5 (1x1), fc 120->84->10.
    modern:  conv1 1->6 5x5 padding 2 (28x28), pool, conv2 6->16 5x5, pool, flatten 16*5*5=400,
             fc 400->120->84->10.
    """

    def __init__(
        self, *, variant: str = "modern", activation: str | None = None, pooling: str | None = None
    ) -> None:
        super().__init__()
        _check_choice("variant", variant, LENET_VARIANTS)
        defaults = LENET_VARIANTS[variant]
        activation = activation or defaults["activation"]
        pooling = pooling or defaults["pooling"]
        _check_choice("activation", activation, ACTIVATIONS)
        _check_choice("pooling", pooling, POOLINGS)
        self.variant, self.activation, self.pooling = variant, activation, pooling
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]
        classic = variant == "classic"
        self.input_pad = 2 if classic else 0  # the classic net sees a 32x32 field
        self.conv1 = nn.Conv2d(1, 6, 5, padding=0 if classic else 2)
        self.act1, self.pool1 = act(), pool()
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.act2, self.pool2 = act(), pool()
        # conv3 (16->120 on a 5x5 map) and fc 400->120 have the same weights, laid out differently
        self.conv3 = nn.Conv2d(16, 120, 5) if classic else None
        self.fc1 = None if classic else nn.Linear(400, 120)
        self.act3 = act()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = act()
        self.head = nn.Linear(84, 10)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate activations: conv1 (B,6,28,28), conv2 (B,16,10,10), penultimate (B,84)."""
        if self.input_pad:
            x = F.pad(x, (self.input_pad,) * 4)  # (B, 1, 32, 32)
        conv1 = self.act1(self.conv1(x))  # (B, 6, 28, 28)
        conv2 = self.act2(self.conv2(self.pool1(conv1)))  # (B, 16, 10, 10)
        pooled = self.pool2(conv2)  # (B, 16, 5, 5)
        if self.conv3 is not None:
            hidden = self.act3(self.conv3(pooled)).flatten(1)  # (B, 120)
        else:
            hidden = self.act3(self.fc1(pooled.flatten(1)))  # (B, 400) -> (B, 120)
        penultimate = self.act4(self.fc2(hidden))  # (B, 84)
        return {"conv1": conv1, "conv2": conv2, "penultimate": penultimate}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)["penultimate"])


def _resnet(depth: int) -> Callable[..., nn.Module]:
    def build() -> nn.Module:
        import torchvision.models

        model = getattr(torchvision.models, f"resnet{depth}")(weights=None, num_classes=10)
        # 28x28 grey digits: a 3x3 stride-1 stem with one input channel instead of 7x7 stride 2,
        # keeping torchvision's max pool: stages see 14, 7, 4, 2 pixels (the ImageNet stem would
        # leave 1x1 by stage 3; dropping the pool too costs 4x the compute for CPU studies).
        model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
        return model

    return build


# The one table every caller builds from: name -> (builder, options it accepts).
MODELS: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "lenet5": (LeNet5, ("variant", "activation", "pooling")),
    "resnet18": (_resnet(18), ()),
    "resnet34": (_resnet(34), ()),
    "resnet50": (_resnet(50), ()),
}


def build_model(name: str, **options: Any) -> nn.Module:
    """Build a registered model. Options that are None are ignored (the model's defaults hold)."""
    _check_choice("model", name, MODELS)
    builder, accepted = MODELS[name]
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) or "none"
        raise ConfigError(f"model {name!r} takes no option {unknown[0]!r}; its options: {valid}")
    return builder(**given)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_choice(what: str, value: str, choices: dict[str, Any]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
