import math

import numpy as np
import pytest
import torch

from lenet_core.config import TrialConfig, from_dict
from lenet_core.errors import ConfigError
from lenet_core.train import load_trial_model, predict_proba, train_trial, trial_split

FAST = {"dataset": "digits", "epochs": 1, "threads": 1}


def test_same_config_and_seed_give_identical_results(digits):
    config = TrialConfig(**FAST, seed=5)
    a, b = train_trial(config, digits), train_trial(config, digits)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert (a.val_acc, a.test_acc, a.test_loss) == (b.val_acc, b.test_acc, b.test_loss)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = train_trial(config.replace(seed=6), digits)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_training_learns_digits(digits):
    result = train_trial(TrialConfig(dataset="digits", epochs=3, threads=2), digits)
    assert result.status == "completed"
    assert result.test_acc > 0.85
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.parameters == 61_706
    assert result.data_checksum == digits.checksum
    assert {"torch", "ray", "optuna", "python"} <= set(result.versions)


def test_sgd_with_learning_rate_10_diverges_without_crashing(digits):
    result = train_trial(TrialConfig(**{**FAST, "epochs": 3}, optimizer="sgd", lr=10.0), digits)
    assert result.status == "diverged"
    assert result.epochs_run == 1  # stops at the first epoch whose loss blew up
    loss = result.history[0]["train_loss"]
    assert math.isnan(loss) or loss > 10 * math.log(10)


def test_a_nan_loss_is_caught_mid_epoch(digits):
    # At lr 1e38 the weights overflow to inf after one step and the loss turns NaN.
    config = TrialConfig(**FAST, optimizer="sgd", lr=1e38, momentum=0.0, activation="tanh")
    result = train_trial(config, digits)
    assert result.status == "diverged"
    assert math.isnan(result.history[0]["train_loss"])


def test_report_is_called_every_epoch_and_can_stop(digits):
    seen = []

    def report(row):
        seen.append(row["epoch"])
        return row["epoch"] == 2

    result = train_trial(TrialConfig(**{**FAST, "epochs": 4}), digits, report=report)
    assert seen == [1, 2]
    assert result.status == "stopped" and result.epochs_run == 2


def test_train_indices_replace_the_split_and_validation_is_kept(digits):
    config = TrialConfig(**FAST)
    train_idx, val_idx = trial_split(digits, config)
    small = train_idx[:64]
    result = train_trial(config, digits, train_indices=small)
    assert result.history[0]["images_per_s"] > 0
    assert np.isfinite(result.val_acc)
    assert len(np.intersect1d(train_idx, val_idx)) == 0


def test_train_fraction_shrinks_the_training_split(digits):
    full, _ = trial_split(digits, TrialConfig(**FAST))
    quarter, _ = trial_split(digits, TrialConfig(**FAST, train_fraction=0.25))
    assert abs(len(quarter) - len(full) / 4) <= 10 and set(quarter) <= set(full)


def test_classic_variant_with_augmentation_and_weights_round_trip(digits):
    config = TrialConfig(**FAST, variant="classic", augment="both", optimizer="sgd", lr=0.05)
    result = train_trial(config, digits)
    model = load_trial_model(config, result.state_dict)
    images = torch.from_numpy(digits.test_images.copy())
    proba = predict_proba(model, images, data=digits)
    assert proba.shape == (len(images), 10)
    assert torch.allclose(proba.sum(1), torch.ones(len(images)), atol=1e-5)
    accuracy = float((proba.argmax(1) == torch.from_numpy(digits.test_labels)).float().mean())
    assert accuracy == pytest.approx(result.test_acc, abs=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adadelta", "adagrad", "rmsprop", "adam", "adamax", "adamw"])
def test_every_optimizer_trains(digits, optimizer):
    result = train_trial(TrialConfig(**FAST, optimizer=optimizer, lr=0.01), digits)
    assert result.status in ("completed", "diverged") and result.epochs_run == 1


def test_resnet_trains_one_epoch(digits):
    config = TrialConfig(**FAST, model="resnet18", train_fraction=0.1, batch_size=32)
    result = train_trial(config, digits)
    assert result.status == "completed" and result.parameters > 11e6


def test_dataset_mismatch_is_refused(digits):
    with pytest.raises(ConfigError, match="dataset 'mnist'"):
        train_trial(TrialConfig(dataset="mnist"), digits)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"lr": -1.0}, "--lr must be > 0"),
        ({"lr": float("nan")}, "--lr"),
        ({"batch_size": 0}, "--batch-size must be >= 1"),
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"momentum": 1.0}, "--momentum must be in"),
        ({"val_fraction": 0.95}, "--val-fraction"),
        ({"train_fraction": 0.0}, "--train-fraction"),
        ({"optimizer": "lbfgs"}, "sgd, adadelta, adagrad, rmsprop, adam, adamax"),
        ({"activation": "swish"}, "relu, tanh"),
        ({"model": "resnet18", "activation": "tanh"}, "lenet5 only"),
        ({"dataset": "cifar"}, "mnist, fashion-mnist, digits"),
    ],
)
def test_invalid_config_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        TrialConfig(**values)


def test_from_dict_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="epochs must be int"):
        from_dict({"epochs": "three"})
    assert from_dict({"lr": 1}).lr == 1.0


def test_config_round_trips_through_dict():
    config = TrialConfig(dataset="digits", variant="classic", lr=0.02)
    assert from_dict(config.to_dict()) == config
    assert (config.activation, config.pooling) == ("tanh", "avg")
