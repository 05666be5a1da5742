import pytest
import torch

from lenet_core.errors import ConfigError
from lenet_core.models import ACTIVATIONS, MODELS, POOLINGS, LeNet5, build_model, count_parameters


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_registered_model_maps_digits_to_ten_logits(name):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_lenet5_has_61706_parameters(variant):
    assert count_parameters(build_model("lenet5", variant=variant)) == 61_706


def test_resnet50_is_about_23_5_million_parameters():
    assert 23.4e6 < count_parameters(build_model("resnet50")) < 23.6e6


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_lenet5_features_have_documented_shapes(variant):
    model = build_model("lenet5", variant=variant)
    feats = model.features(torch.randn(4, 1, 28, 28))
    assert feats["conv1"].shape == (4, 6, 28, 28)
    assert feats["conv2"].shape == (4, 16, 10, 10)
    assert feats["penultimate"].shape == (4, 84)


def test_classic_variant_uses_conv3_and_modern_uses_fc():
    classic, modern = LeNet5(variant="classic"), LeNet5(variant="modern")
    assert classic.conv3 is not None and classic.fc1 is None
    assert modern.conv3 is None and modern.fc1.in_features == 400
    assert (classic.activation, classic.pooling) == ("tanh", "avg")
    assert (modern.activation, modern.pooling) == ("relu", "max")


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("pooling", sorted(POOLINGS))
def test_activation_and_pooling_override_the_variant(activation, pooling):
    model = build_model("lenet5", variant="classic", activation=activation, pooling=pooling)
    assert type(model.act1) is ACTIVATIONS[activation]
    assert isinstance(model.pool1, torch.nn.MaxPool2d if pooling == "max" else torch.nn.AvgPool2d)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "options", "listed"),
    [
        ("lenet7", {}, "lenet5, resnet18"),
        ("lenet5", {"activation": "swish"}, "relu, tanh, sigmoid"),
        ("lenet5", {"pooling": "median"}, "max, avg"),
        ("lenet5", {"variant": "1989"}, "classic, modern"),
        ("resnet18", {"activation": "relu"}, "none"),
        ("lenet5", {"width": 2}, "variant, activation, pooling"),
    ],
)
def test_unknown_names_and_options_list_the_choices(name, options, listed):
    with pytest.raises(ConfigError, match=listed):
        build_model(name, **options)
