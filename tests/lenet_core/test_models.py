import math

import pytest
import torch
import torch.nn.functional as F

from lenet_core import names
from lenet_core.errors import ConfigError
from lenet_core.models import (
    ACTIVATIONS,
    C3_TABLE,
    MODELS,
    POOLINGS,
    AvgPool2x2,
    LeNet5,
    MaxPool2x2,
    PartialConv2d,
    ScaledTanh,
    Subsample,
    avg_pool_2x2,
    build_model,
    count_parameters,
    max_pool_2x2,
    sum_pool_2x2,
)
from lenet_core.status import Status

# Table I of LeCun et al. 1998, written as the paper prints it: rows are S2 maps, columns C3 maps.
PAPER_TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""


def paper_connection_mask() -> torch.Tensor:
    rows = PAPER_TABLE_I.split()
    return torch.tensor([[row[c] == "X" for row in rows] for c in range(16)])  # (16 C3, 6 S2)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_every_registered_model_maps_digits_to_ten_logits(name, channels_last):
    model = build_model(name).eval()
    x = torch.randn(3, 1, 28, 28)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_names_module_lists_exactly_the_tables_keys():
    assert names.MODEL_NAMES == tuple(MODELS)
    assert names.ACTIVATION_NAMES == tuple(ACTIVATIONS)
    assert names.POOLING_NAMES == tuple(POOLINGS)
    for defaults in names.LENET_VARIANTS.values():
        assert defaults["activation"] in ACTIVATIONS and defaults["pooling"] in POOLINGS
    # The failed statuses are Status's failed members, as plain strings in the enum's order.
    assert names.FAILED_STATUSES == tuple(str(s) for s in Status if s.failed) == ("diverged", "collapsed")
    assert all(type(s) is str for s in names.FAILED_STATUSES)


def test_classic_lenet5_has_the_papers_60000_parameters_plus_an_850_parameter_output():
    model = build_model("lenet5", variant="classic")
    per_layer = {name: count_parameters(child) for name, child in model.named_children()}
    paper = {"conv1": 156, "pool1": 12, "conv2": 1_516, "pool2": 32, "conv3": 48_120, "fc2": 10_164}
    assert {name: per_layer[name] for name in paper} == paper
    assert sum(paper.values()) == 60_000
    assert per_layer["head"] == 850
    assert count_parameters(model) == 60_850


@pytest.mark.parametrize(
    ("variant", "pooling", "expected"),
    [
        ("modern", None, 61_706),
        ("modern", "avg", 61_706),
        ("modern", "subsample", 61_706 + 2 * (6 + 16)),
        ("classic", "max", 60_850 - 2 * (6 + 16)),
        ("classic", "subsample", 60_850),
    ],
)
def test_parameter_counts_follow_the_documented_overrides(variant, pooling, expected):
    assert count_parameters(build_model("lenet5", variant=variant, pooling=pooling)) == expected


def test_modern_lenet5_keeps_its_dense_layers():
    model = LeNet5(variant="modern")
    assert model.conv2.weight.shape == (16, 6, 5, 5) and model.fc1.in_features == 400
    assert [name for name, _ in model.named_parameters()] == [
        f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2", "head") for kind in ("weight", "bias")
    ]


def test_resnet50_is_about_23_5_million_parameters():
    assert 23.4e6 < count_parameters(build_model("resnet50")) < 23.6e6


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_lenet5_features_have_documented_shapes(variant):
    model = build_model("lenet5", variant=variant)
    feats = model.features(torch.randn(4, 1, 28, 28))
    assert feats["conv1"].shape == (4, 6, 28, 28)
    assert feats["conv2"].shape == (4, 16, 10, 10)
    assert feats["penultimate"].shape == (4, 84)
    assert isinstance(model.conv1, torch.nn.Conv2d)


def test_variants_resolve_to_their_documented_layers():
    classic, modern = LeNet5(variant="classic"), LeNet5(variant="modern")
    assert (classic.activation, classic.pooling) == ("scaled_tanh", "subsample")
    assert (modern.activation, modern.pooling) == ("relu", "max")
    assert classic.input_pad == 2 and classic.conv1.padding == (0, 0)
    assert isinstance(classic.conv2, PartialConv2d) and classic.fc1 is None
    assert classic.conv3.weight.shape == (120, 16, 5, 5)
    assert isinstance(classic.act1, ScaledTanh) and isinstance(classic.pool1, Subsample)
    # The trainable subsampling layers are squashed, as in the paper; fixed pools are not.
    assert isinstance(classic.pool1_act, ScaledTanh)
    assert isinstance(modern.pool1_act, torch.nn.Identity)
    assert modern.input_pad == 0 and modern.conv1.padding == (2, 2) and modern.conv3 is None


def test_classic_and_modern_compute_different_functions():
    x = torch.randn(5, 1, 28, 28)
    outputs = {}
    for variant in ("classic", "modern"):
        torch.manual_seed(0)
        outputs[variant] = build_model("lenet5", variant=variant).eval()(x)
    assert not torch.allclose(outputs["classic"], outputs["modern"], atol=1e-3)


def test_classic_with_relu_and_max_keeps_the_classic_skeleton():
    model = build_model("lenet5", variant="classic", activation="relu", pooling="max")
    assert isinstance(model.conv2, PartialConv2d) and model.conv3 is not None and model.input_pad == 2
    assert isinstance(model.pool1, MaxPool2x2) and type(model.act1) is torch.nn.ReLU
    out = model(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("pooling", sorted(POOLINGS))
@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_activation_and_pooling_override_the_variant(variant, activation, pooling):
    model = build_model("lenet5", variant=variant, activation=activation, pooling=pooling)
    assert type(model.act1) is ACTIVATIONS[activation]
    assert type(model.pool1) is type(POOLINGS[pooling](channels=6))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_scaled_tanh_is_lecuns_squashing_function():
    f = ACTIVATIONS["scaled_tanh"]()
    x = torch.tensor([-1.0, 0.0, 1.0, 30.0])
    expected = torch.tensor([-1.7159 * math.tanh(2 / 3), 0.0, 1.7159 * math.tanh(2 / 3), 1.7159])
    torch.testing.assert_close(f(x), expected)
    assert abs(f(torch.tensor(1.0)).item() - 1.0) < 1e-3  # the constants make f(1) ~ 1


def test_subsample_is_a_per_map_scaled_and_shifted_2x2_sum():
    layer = POOLINGS["subsample"](channels=2)
    assert count_parameters(layer) == 4
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.5, 3.0]))
    x = torch.arange(32.0).view(1, 2, 4, 4)  # map 0 holds 0..15, map 1 holds 16..31
    # 2x2 window sums: map 0 [[0+1+4+5, 2+3+6+7], [8+9+12+13, 10+11+14+15]], map 1 adds 4*16 each.
    sums = torch.tensor([[[10.0, 18.0], [42.0, 50.0]], [[74.0, 82.0], [106.0, 114.0]]])
    expected = torch.stack([sums[0] * 2.0 + 0.5, sums[1] * -1.0 + 3.0]).unsqueeze(0)
    torch.testing.assert_close(layer(x), expected)


# The fast 2x2 poolings against the library kernels they replace: bitwise, forward and backward.
LIBRARY_POOLS = {
    "max": (max_pool_2x2, lambda x: F.max_pool2d(x, 2)),
    "avg": (avg_pool_2x2, lambda x: F.avg_pool2d(x, 2)),
    "sum": (sum_pool_2x2, lambda x: F.avg_pool2d(x, 2, divisor_override=1)),
}
POOL_INPUTS = {
    "random": lambda: torch.randn(4, 6, 28, 28),
    "relu ties at zero": lambda: torch.relu(torch.randn(4, 6, 28, 28)),
    "many ties": lambda: torch.randint(0, 3, (4, 16, 10, 10)).float(),
    "channels-last": lambda: torch.randn(4, 6, 14, 14).contiguous(memory_format=torch.channels_last),
    "odd size (library path)": lambda: torch.randn(2, 3, 7, 9),
}


@pytest.mark.parametrize("inputs", sorted(POOL_INPUTS))
@pytest.mark.parametrize("kind", sorted(LIBRARY_POOLS))
def test_fast_pooling_is_bitwise_the_library_kernel(kind, inputs):
    fast, library = LIBRARY_POOLS[kind]
    torch.manual_seed(0)
    x = POOL_INPUTS[inputs]().requires_grad_()
    expected = library(x)
    grad_out = torch.randn_like(expected)
    out = fast(x)
    assert torch.equal(out, expected)
    # ties: max_pool2d sends a window's gradient to its first maximum only, and so must we
    assert torch.equal(
        torch.autograd.grad(out, x, grad_out)[0], torch.autograd.grad(expected, x, grad_out)[0]
    )
    with torch.inference_mode():  # inference takes the corners (training, the library kernel)
        assert torch.equal(fast(x.detach()), expected.detach())
    nan_at_window_start = x.detach().clone()
    nan_at_window_start[..., 0, 0] = math.nan  # NaN propagates, wherever in the window it sits
    with torch.inference_mode():
        assert torch.equal(fast(nan_at_window_start).isnan(), library(nan_at_window_start).isnan())


def test_fast_pooling_trains_lenet_exactly_as_the_library_modules():
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for pooling, library in (("max", torch.nn.MaxPool2d(2)), ("avg", torch.nn.AvgPool2d(2))):
        weights = []
        for swap in (False, True):
            torch.manual_seed(0)
            model = LeNet5(pooling=pooling)
            assert isinstance(model.pool1, MaxPool2x2 if pooling == "max" else AvgPool2x2)
            if swap:
                model.pool1 = model.pool2 = library
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            for _ in range(3):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            weights.append(model.conv1.weight.detach().clone())
        assert torch.equal(weights[0], weights[1])


def one_step_gradients(model, x, y, forward):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(forward(model, x), y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def relu_then_pool(model, x):
    return model.head(model.features(x)["penultimate"])  # the maps kept: ReLU, then max pooling


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("variant", ["modern", "classic"])
def test_max_pooling_before_relu_gives_bitwise_the_same_training(variant, channels_last, digits):
    # real digits: flat background, so windows tie (at zero after ReLU, and before it too)
    pixels = torch.tensor(digits.train_images[:32]).float().unsqueeze(1) / 255  # (32, 1, 28, 28)
    x = (pixels - digits.mean) / digits.std
    y = torch.tensor(digits.train_labels[:32])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    runs = []
    for forward in (LeNet5.__call__, relu_then_pool):
        torch.manual_seed(0)
        model = LeNet5(variant=variant, activation="relu", pooling="max").to(memory_format=fmt)
        assert model.pool_first
        assert isinstance(model.pool1_act, torch.nn.Identity) and isinstance(
            model.pool2_act, torch.nn.Identity
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        steps = []
        for _ in range(3):
            steps.append(one_step_gradients(model, x, y, forward))
            optimizer.step()
        runs.append((steps, [p.detach().clone() for p in model.parameters()]))
    (fast_steps, fast_weights), (library_steps, library_weights) = runs
    for (fast_loss, fast_grads), (library_loss, library_grads) in zip(fast_steps, library_steps, strict=True):
        assert torch.equal(fast_loss, library_loss)
        assert all(torch.equal(a, b) for a, b in zip(fast_grads, library_grads, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(fast_weights, library_weights, strict=True))
    with torch.inference_mode():  # and in inference, where the pools take the strided corners
        assert torch.equal(model(x), relu_then_pool(model, x))


@pytest.mark.parametrize(
    ("activation", "pooling"), [("tanh", "max"), ("sigmoid", "max"), ("relu", "avg"), ("relu", "subsample")]
)
def test_only_relu_with_max_pooling_pools_first(activation, pooling):
    assert not LeNet5(activation=activation, pooling=pooling).pool_first


def test_untrained_subsample_is_average_pooling():
    x = torch.randn(3, 6, 8, 8)
    torch.testing.assert_close(POOLINGS["subsample"](channels=6)(x), F.avg_pool2d(x, 2))


def test_c3_connects_exactly_table_i_of_the_paper():
    c3 = LeNet5(variant="classic").conv2
    assert torch.equal(c3.dense_weight().ne(0).all(dim=(2, 3)), paper_connection_mask())
    assert torch.equal(torch.tensor([len(inputs) for inputs in C3_TABLE]), paper_connection_mask().sum(dim=1))
    # 6 maps x (3*25 + 1) + 9 x (4*25 + 1) + 1 x (6*25 + 1)
    assert count_parameters(c3) == 6 * 76 + 9 * 101 + 151 == 1_516


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_c3_equals_a_dense_convolution_with_its_dense_weight(channels_last):
    c3 = PartialConv2d(table=C3_TABLE, in_channels=6, kernel_size=5)
    x = torch.randn(4, 6, 14, 14)
    if channels_last:
        c3, x = c3.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    expected = F.conv2d(x.contiguous(), c3.dense_weight(), c3.bias)
    torch.testing.assert_close(c3(x), expected)
    # Output map j depends on input map i only where the table connects them.
    x.requires_grad_(True)
    for j in (0, 4, 14, 15):
        (grad,) = torch.autograd.grad(c3(x)[:, j].sum(), x)
        touched = {i for i in range(6) if grad[:, i].abs().sum() > 0}
        assert touched == set(C3_TABLE[j])


def test_missing_c3_connections_stay_zero_through_training():
    torch.manual_seed(0)
    model = build_model("lenet5", variant="classic").to(memory_format=torch.channels_last)
    missing = ~paper_connection_mask()
    before = model.conv2_dense_weight().detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(4):
        x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.conv2_dense_weight().detach()
    assert after[missing].abs().max() == 0
    present_changed = (after != before)[~missing].all(dim=(1, 2))
    assert present_changed.all()


@pytest.mark.parametrize(
    ("name", "options", "listed"),
    [
        ("lenet7", {}, "lenet5, resnet18"),
        ("lenet5", {"activation": "swish"}, "relu, tanh, sigmoid, .*scaled_tanh"),
        ("lenet5", {"pooling": "median"}, "max, avg, subsample"),
        ("lenet5", {"variant": "1989"}, "classic, modern"),
        ("resnet18", {"activation": "relu"}, "none"),
        ("lenet5", {"width": 2}, "variant, activation, pooling"),
    ],
)
def test_unknown_names_and_options_list_the_choices(name, options, listed):
    with pytest.raises(ConfigError, match=listed):
        build_model(name, **options)
