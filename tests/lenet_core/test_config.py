import dataclasses
import subprocess
import sys

import pytest

from lenet_core.config import FIELD_NAMES, TrialConfig, field_types, from_dict
from lenet_core.errors import ConfigError
from lenet_core.names import LENET_VARIANTS


def test_importing_the_config_does_not_import_torch():
    code = "import sys, lenet_core.config; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_defaults_leave_optimizer_hyperparameters_to_pytorch_and_pick_the_device():
    config = TrialConfig()
    assert (config.momentum, config.weight_decay) == (None, None)
    assert (config.device, config.precision, config.lr_schedule) == ("auto", "fp32", "constant")
    assert (config.split_seed, config.patience) == (0, 0)


def test_schedule_and_regularization_defaults_are_budget_relative_or_off():
    config = TrialConfig()
    assert (config.lr_gamma, config.lr_step_size, config.warmup_epochs, config.label_smoothing) == (
        0.1,
        None,
        0,
        0.0,
    )
    # step decays every third of the scheduled epochs (rounded up): twice per run at any cap
    assert [TrialConfig(epochs=e).step_size() for e in (1, 3, 5, 6, 10, 20, 50)] == [1, 1, 2, 2, 4, 7, 17]
    assert TrialConfig(epochs=20, warmup_epochs=2).step_size() == 6  # thirds of the 18 after warm-up
    assert TrialConfig(epochs=20, lr_step_size=5).step_size() == 5
    # a budget-relative default stays relative: a config replayed with another cap rescales it
    assert TrialConfig(epochs=20).replace(epochs=9).step_size() == 3


# Library errors name TrialConfig's fields as a Python caller spells them, never a CLI flag; the
# patterns are anchored so that a "--lr must be ..." would not match.
INVALID_VALUES = [
    ({"lr": -1.0}, r"^lr must be > 0, got -1.0$"),
    ({"lr": float("nan")}, "^lr must be > 0, got nan$"),
    ({"batch_size": 0}, "^batch_size must be >= 1, got 0$"),
    ({"epochs": 0}, "^epochs must be >= 1"),
    ({"optimizer": "sgd", "momentum": 1.0}, r"^momentum must be in \[0, 1\)"),
    ({"optimizer": "rmsprop", "momentum": -0.1}, "^momentum must be in"),
    ({"momentum": 0.9}, "^momentum applies to sgd and rmsprop only, not adam$"),
    (
        {"optimizer": "adagrad", "momentum": 0.0},
        "^momentum applies to sgd and rmsprop only, not adagrad$",
    ),
    ({"weight_decay": -1e-4}, "^weight_decay must be >= 0"),
    ({"val_fraction": 0.95}, r"^val_fraction must be in \[0, 0.9\]"),
    ({"train_fraction": 0.0}, r"^train_fraction must be in \(0, 1\]"),
    ({"split_seed": -1}, "^split_seed must be >= 0"),
    ({"threads": -1}, "^threads must be >= 0"),
    ({"seed": -1}, "^seed must be >= 0"),
    ({"lr_schedule": "linear"}, "constant, step, cosine, onecycle"),
    ({"lr_step_size": 0}, "^lr_step_size must be >= 1, got 0$"),
    ({"warmup_epochs": -1}, "^warmup_epochs must be >= 0, got -1$"),
    ({"warmup_epochs": 10, "epochs": 10}, r"^warmup_epochs must be < epochs \(10\), got 10"),
    (
        {"warmup_epochs": 1, "lr_schedule": "onecycle"},
        "^warmup_epochs does not combine with lr_schedule 'onecycle'",
    ),
    ({"label_smoothing": 1.0}, r"^label_smoothing must be in \[0, 1\), got 1.0$"),
    ({"label_smoothing": -0.1}, r"^label_smoothing must be in \[0, 1\)"),
    ({"augment": "translate"}, "none, blur, rotate, both, flip, shift, crop"),
    ({"lr_gamma": 0.0}, r"^lr_gamma must be in \(0, 1\]"),
    ({"lr_gamma": 1.5}, "^lr_gamma must be in"),
    ({"patience": -1}, "^patience must be >= 0"),
    ({"patience": 2, "val_fraction": 0.0}, r"^patience needs a validation split \(val_fraction > 0\)$"),
    ({"precision": "fp8"}, "fp32, bf16, fp16"),
    ({"optimizer": "lbfgs"}, "sgd, adadelta, adagrad, rmsprop, adam, adamax"),
    ({"activation": "swish"}, "relu, tanh"),
    ({"model": "resnet18", "activation": "tanh"}, "^activation applies to lenet5 only, not resnet18$"),
    ({"model": "resnet34", "variant": "classic"}, "^variant applies to lenet5 only, not resnet34$"),
    ({"dataset": "cifar"}, "mnist, fashion-mnist, digits"),
]


@pytest.mark.parametrize(("values", "message"), INVALID_VALUES)
def test_invalid_config_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrialConfig(**values)
    assert "--" not in str(info.value)  # a field name, not a flag


def test_momentum_is_accepted_for_sgd_and_rmsprop():
    assert TrialConfig(optimizer="sgd", momentum=0.9).momentum == 0.9
    assert TrialConfig(optimizer="rmsprop", momentum=0.0).momentum == 0.0


def test_from_dict_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="epochs must be int"):
        from_dict({"epochs": "three"})
    with pytest.raises(ConfigError, match="split_seed must be int"):
        from_dict({"split_seed": 1.5})
    assert from_dict({"lr": 1}).lr == 1.0
    assert from_dict({"optimizer": "sgd", "momentum": 0}).momentum == 0.0


def test_config_round_trips_through_dict():
    config = TrialConfig(dataset="digits", variant="classic", lr=0.02)
    assert from_dict(config.to_dict()) == config
    classic = LENET_VARIANTS["classic"]  # the variant's defaults are resolved into the record
    assert (config.activation, config.pooling) == (classic["activation"], classic["pooling"])
    scheduled = TrialConfig(
        optimizer="sgd", momentum=0.5, lr_schedule="cosine", patience=3, precision="bf16", split_seed=4
    )
    assert from_dict(scheduled.to_dict()) == scheduled
    regularized = TrialConfig(
        lr_schedule="step", lr_step_size=3, warmup_epochs=2, label_smoothing=0.1, augment="crop"
    )
    assert from_dict(regularized.to_dict()) == regularized
    # a config saved before these fields existed loads with them off
    old = {k: v for k, v in TrialConfig().to_dict().items() if k not in ("lr_step_size", "warmup_epochs")}
    assert from_dict({k: v for k, v in old.items() if k != "label_smoothing"}) == TrialConfig()
    assert scheduled.replace(momentum=None, optimizer="adam").momentum is None


def test_every_field_carries_help_for_its_cli_flag():
    fields = {f.name: f for f in dataclasses.fields(TrialConfig)}
    assert set(FIELD_NAMES) == set(fields)
    for name, f in fields.items():
        assert f.metadata["help"].strip(), name
    assert fields["lr_schedule"].metadata["choices"] == ("constant", "step", "cosine", "onecycle")
    assert fields["precision"].metadata["choices"] == ("fp32", "bf16", "fp16")
    assert (
        "split" in fields["split_seed"].metadata["help"] and "--seed" in fields["split_seed"].metadata["help"]
    )


def test_field_types_unwrap_optional_fields():
    types_ = field_types()
    assert types_["momentum"] is float and types_["weight_decay"] is float
    assert types_["split_seed"] is int and types_["patience"] is int and types_["precision"] is str


def test_only_the_step_schedule_reads_gamma_and_step_size():
    assert TrialConfig(lr_schedule="step").ignored_fields() == ()
    for schedule in ("constant", "cosine", "onecycle"):
        assert TrialConfig(lr_schedule=schedule).ignored_fields() == ("lr_gamma", "lr_step_size")
