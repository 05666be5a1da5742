"""Models built by name from one table: LeNet-5 (classic and modern) and torchvision ResNets.

All models take (B, 1, 28, 28) normalized images and return (B, 10) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from lenet_core.errors import ConfigError
from lenet_core.names import LENET_VARIANTS


class ScaledTanh(nn.Module):
    """f(a) = A tanh(S a) with A = 1.7159, S = 2/3 (LeCun et al. 1998, appendix A).

    The constants make f(1) = 1 and f(-1) = -1, where the second derivative peaks, so unit-variance
    inputs stay in the squashing function's most non-linear yet unsaturated range.
    """

    AMPLITUDE = 1.7159
    SLOPE = 2.0 / 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.AMPLITUDE * torch.tanh(self.SLOPE * x)


# ---------------------------------------------------------------- 2x2 pooling, fast inference on CPU
# PyTorch's CPU max_pool2d and avg_pool2d kernels walk each 2x2 window in scalar code on NCHW
# maps: pooling LeNet-5's (64, 6, 28, 28) conv1 maps took 1.6 ms. The same windows as four strided
# views, combined elementwise, are vectorized: 0.16 ms, and bitwise the same values. Inference
# (no gradient wanted) uses them: LeNet-5 at batch 256 ran 1.17x faster with its channels-last
# weights, 2.3x with NCHW ones. Training keeps the library kernels: with a backward pass, and on
# channels-last maps, they were as fast or faster than anything built from the corners (measured
# at batch 64, 1 thread, AVX-512). Odd sizes and GPUs keep the library kernels too.


def _window_corners(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, C, H, W) -> the four (B, C, H/2, W/2) strided views of each 2x2 window's elements, in
    the kernels' scan order: (0, 0), (0, 1), (1, 0), (1, 1)."""
    return x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]


def _use_corners(x: torch.Tensor) -> bool:
    """CPU inference on even-sized maps; anything that wants a gradient takes the library kernel."""
    wants_grad = torch.is_grad_enabled() and x.requires_grad
    even = x.dim() == 4 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0
    return x.device.type == "cpu" and even and not wants_grad


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2), bitwise (NaN-propagating, as the kernel), faster in CPU inference.
    (B, C, H, W) -> (B, C, H/2, W/2)."""
    if not _use_corners(x):
        return F.max_pool2d(x, 2)
    a, b, c, d = _window_corners(x)
    return torch.maximum(torch.maximum(a, b), torch.maximum(c, d))


def sum_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """Each 2x2 window's sum, stride 2: F.avg_pool2d(x, 2, divisor_override=1), bitwise (summed
    in the kernel's order), faster in CPU inference. (B, C, H, W) -> (B, C, H/2, W/2)."""
    if not _use_corners(x):
        return F.avg_pool2d(x, 2, divisor_override=1)
    a, b, c, d = _window_corners(x)
    return ((a + b) + c) + d


def avg_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.avg_pool2d(x, 2), bitwise (dividing by 4 is exact, as the kernel's own division), faster
    in CPU inference. (B, C, H, W) -> (B, C, H/2, W/2)."""
    return sum_pool_2x2(x) / 4 if _use_corners(x) else F.avg_pool2d(x, 2)


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2) computed by :func:`max_pool_2x2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


class AvgPool2x2(nn.Module):
    """nn.AvgPool2d(2) computed by :func:`avg_pool_2x2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2(x)


class Subsample(nn.Module):
    """LeNet-5's S2/S4 layers: per map, the 2x2 window's sum (stride 2) times one trainable
    coefficient plus one trainable bias, i.e. 2 parameters per map.

    The coefficient starts at 1/4, so an untrained layer is average pooling. The squashing that
    the paper applies next is the model's job (``LeNet5`` adds its activation after this layer).
    """

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), 0.25))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window_sum = sum_pool_2x2(x)  # (B, C, H, W) -> (B, C, H/2, W/2)
        return window_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


# Table I of LeCun et al. 1998: the S2 maps (0-5) each C3 map (0-15) sees. Six maps see three
# contiguous inputs, nine see four (six contiguous, three not), and the last sees all six. Breaking
# the symmetry forces the maps to extract different features and keeps C3 at 1,516 parameters.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip


class PartialConv2d(nn.Module):
    """A convolution where output map j sees only the input maps ``table[j]``.

    Missing connections are never parameters: ``weight`` holds one (k, k) kernel per edge of the
    table (60 for Table I), ordered by output map and then by the table's input order, and each
    forward pass scatters them into a zero (out, in, k, k) weight for one dense convolution.
    Gradients reach only the scattered kernels, so missing entries stay zero under any optimizer
    or weight decay. (Grouped convolutions over gathered inputs, 6 groups of 3 + 9 of 4 + 1 of 6,
    compute the same but run about 5x slower than this on CPU.)
    """

    def __init__(self, *, table: tuple[tuple[int, ...], ...], in_channels: int, kernel_size: int) -> None:
        super().__init__()
        _check_table(table, in_channels=in_channels)
        self.table, self.in_channels, self.kernel_size = table, in_channels, kernel_size
        fan_ins = torch.tensor([len(inputs) for inputs in table])  # (out,)
        # Where each edge's kernel goes in the dense weight; derived from the table, so kept out of
        # the state dict, but buffers so that they follow the model to its device.
        edge_rows = torch.repeat_interleave(torch.arange(len(table)), fan_ins)  # (edges,)
        edge_cols = torch.tensor([i for inputs in table for i in inputs])  # (edges,)
        self.register_buffer("edge_rows", edge_rows, persistent=False)
        self.register_buffer("edge_cols", edge_cols, persistent=False)
        # nn.Conv2d's default initialization, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), per output map.
        bound = (fan_ins * kernel_size**2).float().rsqrt()  # (out,)
        weight = torch.empty(len(edge_rows), kernel_size, kernel_size).uniform_(-1, 1)  # (edges, k, k)
        self.weight = nn.Parameter(weight * bound[edge_rows].view(-1, 1, 1))
        self.bias = nn.Parameter(torch.empty(len(table)).uniform_(-1, 1) * bound)  # (out,)

    @property
    def out_channels(self) -> int:
        return len(self.table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, 6, H, W) -> (B, 16, H-4, W-4); a channels-last input gives a channels-last output.
        return F.conv2d(x, self.dense_weight(), self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The equivalent (out, in, k, k) = (16, 6, 5, 5) weight, zero where the table has no edge."""
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        return dense.index_put((self.edge_rows, self.edge_cols), self.weight)


def _check_table(table: tuple[tuple[int, ...], ...], *, in_channels: int) -> None:
    for j, inputs in enumerate(table):
        if not inputs or len(set(inputs)) != len(inputs) or not all(0 <= i < in_channels for i in inputs):
            raise ValueError(f"output map {j} must see distinct input maps in [0, {in_channels}): {inputs}")


class PoolingBuilder(Protocol):
    """Builds a pooling layer for ``channels`` feature maps (parameter-free poolings ignore it)."""

    def __call__(self, *, channels: int) -> nn.Module: ...


def _max_pool(*, channels: int) -> nn.Module:
    return MaxPool2x2()


def _avg_pool(*, channels: int) -> nn.Module:
    return AvgPool2x2()


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "scaled_tanh": ScaledTanh,
}
POOLINGS: dict[str, PoolingBuilder] = {
    "max": _max_pool,
    "avg": _avg_pool,
    "subsample": Subsample,
}


class LeNet5(nn.Module):
    """LeNet-5 in two skeletons; ``activation`` and ``pooling`` override the variant's defaults.

    classic (LeCun et al. 1998, section II-B), 60,850 parameters with its defaults (scaled_tanh,
    subsample): pad 28x28 -> 32x32; C1 conv 1->6 5x5 (28x28, 156); S2 subsample (14x14, 12);
    C3 conv 6->16 5x5 with Table I's partial connections (10x10, 1,516); S4 subsample (5x5, 32);
    C5 conv 16->120 5x5 (1x1, 48,120); F6 linear 120->84 (10,164); output linear 84->10 (850)
    trained with cross-entropy (the paper's RBF output is not built). Every layer up to F6 is
    squashed by the activation, the subsampling layers included.

    modern, 61,706 parameters with its defaults (relu, max): conv1 1->6 5x5 padding 2 (28x28),
    pool (14x14), dense conv2 6->16 5x5 (10x10), pool (5x5), flatten 16*5*5 = 400, linear
    400->120->84->10.

    Overrides: C3's partial table and C5 belong to the classic skeleton whatever the activation or
    pooling. Every activation is parameter-free. max and avg pooling have no parameters and are
    applied to the activated conv maps with no further activation, so classic with max or avg has
    60,806 parameters. subsample adds 2 parameters per map (S2 12 + S4 32 = 44) and is followed by
    the activation in either skeleton (an unsquashed affine map would just fold into the next
    conv), so modern with subsample has 61,750.
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
        act = ACTIVATIONS[activation]
        classic = variant == "classic"
        self.input_pad = 2 if classic else 0  # the classic net sees a 32x32 field
        self.conv1 = nn.Conv2d(1, 6, 5, padding=0 if classic else 2)
        self.act1 = act()
        self.pool1, self.pool1_act = _pooling_stage(pooling, channels=6, act=act)
        self.conv2: nn.Module = (
            PartialConv2d(table=C3_TABLE, in_channels=6, kernel_size=5) if classic else nn.Conv2d(6, 16, 5)
        )
        self.act2 = act()
        self.pool2, self.pool2_act = _pooling_stage(pooling, channels=16, act=act)
        # C5 (a conv 16->120 on a 5x5 map) and fc 400->120 compute the same function; the classic
        # skeleton keeps the paper's convolution.
        self.conv3 = nn.Conv2d(16, 120, 5) if classic else None
        self.fc1 = None if classic else nn.Linear(400, 120)
        self.act3 = act()
        self.fc2 = nn.Linear(120, 84)
        self.act4 = act()
        self.head = nn.Linear(84, 10)
        # max(relu(a), relu(b)) == relu(max(a, b)), and the gradient reaches the same element (the
        # first maximum, or none when the window is <= 0), so the forward pass may pool first and
        # apply ReLU to a quarter of the elements: the same values (a zero may carry the other
        # sign), the same gradients, a LeNet-5 step about 4% faster. Other activations can
        # saturate to ties that pick another element; avg and subsample commute with none of them.
        self.pool_first = activation == "relu" and pooling == "max"

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Intermediate activations: conv1 (B,6,28,28), conv2 (B,16,10,10), penultimate (B,84)."""
        return self._layers(x, keep_maps=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._layers(x, keep_maps=False)["penultimate"])

    def _layers(self, x: torch.Tensor, *, keep_maps: bool) -> dict[str, torch.Tensor]:
        """The activations up to the penultimate layer; the full-size activated conv maps only
        when ``keep_maps`` (without them ReLU may follow max pooling, see ``pool_first``)."""
        if self.input_pad:
            x = F.pad(x, (self.input_pad,) * 4)  # (B, 1, 32, 32)
        conv1, pooled1 = self._conv_stage(
            x, conv=self.conv1, act=self.act1, pool=self.pool1, pool_act=self.pool1_act, keep_maps=keep_maps
        )  # (B, 6, 28, 28), (B, 6, 14, 14)
        conv2, pooled2 = self._conv_stage(
            pooled1,
            conv=self.conv2,
            act=self.act2,
            pool=self.pool2,
            pool_act=self.pool2_act,
            keep_maps=keep_maps,
        )  # (B, 16, 10, 10), (B, 16, 5, 5)
        if self.conv3 is not None:
            hidden = self.act3(self.conv3(pooled2)).flatten(1)  # (B, 120, 1, 1) -> (B, 120)
        else:
            hidden = self.act3(self.fc1(pooled2.flatten(1)))  # (B, 400) -> (B, 120)
        penultimate = self.act4(self.fc2(hidden))  # (B, 84)
        if conv1 is None or conv2 is None:
            return {"penultimate": penultimate}
        return {"conv1": conv1, "conv2": conv2, "penultimate": penultimate}

    def _conv_stage(
        self,
        x: torch.Tensor,
        *,
        conv: nn.Module,
        act: nn.Module,
        pool: nn.Module,
        pool_act: nn.Module,
        keep_maps: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(activated conv map, pooled map); no activated map when the pool ran first (max pooling
        has no ``pool_act`` to skip: it is nn.Identity)."""
        maps = conv(x)
        if self.pool_first and not keep_maps:
            return None, act(pool(maps))
        activated = act(maps)
        return activated, pool_act(pool(activated))

    def conv2_dense_weight(self) -> torch.Tensor:
        """conv2's (16, 6, 5, 5) weight in either skeleton; classic C3's missing edges are zero."""
        if isinstance(self.conv2, PartialConv2d):
            return self.conv2.dense_weight()
        return self.conv2.weight


def _pooling_stage(
    pooling: str, *, channels: int, act: Callable[[], nn.Module]
) -> tuple[nn.Module, nn.Module]:
    """The pooling layer and what follows it: the activation after a trainable subsampling layer
    (as in the paper), nothing after a parameter-free pool of already activated maps."""
    pool = POOLINGS[pooling](channels=channels)
    return pool, act() if isinstance(pool, Subsample) else nn.Identity()


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
