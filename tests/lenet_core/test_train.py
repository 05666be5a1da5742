import csv
import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lenet_core.train as train_module
from lenet_core.config import TrialConfig
from lenet_core.errors import ConfigError
from lenet_core.status import Status
from lenet_core.train import (
    COLLAPSE_MARGIN,
    OPTIMIZER_CLASSES,
    build_trial_model,
    evaluate,
    load_trial_model,
    majority_fraction,
    make_optimizer,
    make_scheduler,
    model_features,
    predict_logits,
    predict_proba,
    resolve_device,
    train_trial,
    trial_split,
)

FAST = {"dataset": "digits", "epochs": 1, "threads": 1, "device": "cpu"}
# Implementation switches, not hyperparameters: they change how a step is computed, not what.
IMPLEMENTATION_OPTIONS = {"foreach", "fused", "capturable", "differentiable"}


def val_split(data, config):
    _, val_idx = trial_split(data, config)
    return torch.from_numpy(data.train_images[val_idx]), torch.from_numpy(data.train_labels[val_idx])


def sabotage_after_first_epoch(monkeypatch):
    """Make every epoch after the first end with the head zeroed: constant logits, chance accuracy.

    Gives a deterministic run whose best validation epoch is the first and whose later epochs
    never improve, for early stopping and restoring.
    """
    real = train_module.train_one_epoch
    epochs = []

    def train_then_zero_head(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        epochs.append(None)
        if len(epochs) > 1:
            with torch.no_grad():
                model.head.weight.zero_()
                model.head.bias.zero_()
        return result

    monkeypatch.setattr(train_module, "train_one_epoch", train_then_zero_head)


# --------------------------------------------------------------------------- runs


def test_same_config_and_seed_give_identical_results(digits):
    config = TrialConfig(**FAST, seed=5)
    a, b = train_trial(config, digits), train_trial(config, digits)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"]
    assert (a.val_acc, a.test_acc, a.test_loss) == (b.val_acc, b.test_acc, b.test_loss)
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    c = train_trial(config.replace(seed=6), digits)
    assert c.history[0]["train_loss"] != a.history[0]["train_loss"]


def test_training_learns_digits_and_rows_carry_the_final_status_last(digits):
    result = train_trial(TrialConfig(**{**FAST, "epochs": 3}), digits)
    assert result.status == "completed"
    assert result.test_acc > 0.85
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert [row["status"] for row in result.history] == ["running", "running", "completed"]
    assert [row["lr"] for row in result.history] == [1e-3] * 3  # constant schedule
    assert result.parameters == 61_706
    assert result.data_checksum == digits.checksum
    assert {"torch", "ray", "optuna", "python"} <= set(result.versions)
    summary = result.summary()
    assert summary["best_epoch"] == result.best_epoch and summary["stopped_early"] is False
    assert summary["config"]["device"] == "cpu"


def test_sgd_with_learning_rate_10_diverges_without_crashing(digits):
    result = train_trial(TrialConfig(**{**FAST, "epochs": 3}, optimizer="sgd", lr=10.0), digits)
    assert result.status is Status.DIVERGED
    assert result.epochs_run == 1  # stops at the first epoch whose loss blew up
    assert result.history[-1]["status"] is Status.DIVERGED
    loss = result.history[0]["train_loss"]
    assert math.isnan(loss) or loss > 10 * math.log(10)


def test_a_nan_loss_is_caught_mid_epoch(digits):
    # At lr 1e38 the weights overflow to inf after one step and the loss turns NaN.
    config = TrialConfig(**FAST, optimizer="sgd", lr=1e38, momentum=0.0, activation="tanh")
    result = train_trial(config, digits)
    assert result.status == "diverged"
    assert math.isnan(result.history[0]["train_loss"])


def test_a_run_stuck_at_chance_is_collapsed(digits):
    # sgd at lr 1e-9 leaves the initial weights as they were: near-constant predictions.
    config = TrialConfig(**{**FAST, "epochs": 2}, optimizer="sgd", lr=1e-9)
    result = train_trial(config, digits)
    _, val_labels = val_split(digits, config)
    assert result.val_acc <= majority_fraction(val_labels.numpy()) + COLLAPSE_MARGIN
    assert result.status is Status.COLLAPSED
    assert [row["status"] for row in result.history] == [Status.RUNNING, Status.COLLAPSED]
    assert all(type(row["status"]) is Status for row in result.history)


def test_majority_fraction_is_the_most_frequent_label_share():
    assert majority_fraction(np.array([0, 1, 1, 1, 2])) == pytest.approx(0.6)
    assert majority_fraction(torch.tensor([3, 3])) == 1.0


def test_report_is_called_every_epoch_and_can_stop(digits):
    seen = []

    def report(row):
        seen.append(row["epoch"])
        return row["epoch"] == 2

    result = train_trial(TrialConfig(**{**FAST, "epochs": 4}), digits, report=report)
    assert seen == [1, 2]
    assert result.status is Status.STOPPED and result.epochs_run == 2
    assert [row["status"] for row in result.history] == ["running", "running"]
    assert math.isfinite(result.test_acc)


# --------------------------------------------------------------------------- splits


def test_train_indices_replace_the_split_and_validation_is_kept(digits):
    config = TrialConfig(**{**FAST, "epochs": 2})
    train_idx, val_idx = trial_split(digits, config)
    only_sevens = train_idx[digits.train_labels[train_idx] == 7]
    result = train_trial(config, digits, train_indices=only_sevens)
    model = load_trial_model(config, result.state_dict)
    predicted = predict_logits(model, digits.test_images, data=digits).argmax(1)
    # Trained on sevens alone, it answers 7 for (nearly) everything; the full split would not.
    assert float((predicted == 7).float().mean()) > 0.95
    assert result.status == "collapsed"  # validation is still the config's ten-class split
    val_images, val_labels = val_split(digits, config)
    assert evaluate(model, val_images, val_labels, data=digits)[1] == pytest.approx(result.val_acc)
    assert len(np.intersect1d(train_idx, val_idx)) == 0


def test_the_split_depends_on_split_seed_and_not_on_seed(digits):
    base = TrialConfig(**FAST)
    train_a, val_a = trial_split(digits, base)
    train_b, val_b = trial_split(digits, base.replace(seed=7))
    assert np.array_equal(train_a, train_b) and np.array_equal(val_a, val_b)
    train_c, val_c = trial_split(digits, base.replace(split_seed=1))
    assert not np.array_equal(val_a, val_c) and len(val_a) == len(val_c)
    assert len(np.intersect1d(train_c, val_c)) == 0


def test_the_train_fraction_subset_depends_on_split_seed_and_not_on_seed(digits):
    quarter = TrialConfig(**FAST, train_fraction=0.25)
    subset, _ = trial_split(digits, quarter)
    assert np.array_equal(subset, trial_split(digits, quarter.replace(seed=3))[0])
    other, _ = trial_split(digits, quarter.replace(split_seed=3))
    assert not np.array_equal(subset, other)


def test_train_fraction_shrinks_the_training_split(digits):
    full, _ = trial_split(digits, TrialConfig(**FAST))
    quarter, _ = trial_split(digits, TrialConfig(**FAST, train_fraction=0.25))
    assert abs(len(quarter) - len(full) / 4) <= 10 and set(quarter) <= set(full)


# --------------------------------------------------------------------------- optimizers, schedules


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_CLASSES))
def test_unset_optimizer_hyperparameters_are_pytorchs_defaults(optimizer):
    config = TrialConfig(optimizer=optimizer, lr=0.05)
    built = make_optimizer(config, build_trial_model(config).parameters())
    reference = OPTIMIZER_CLASSES[optimizer]([torch.zeros(1, requires_grad=True)]).defaults
    group = built.param_groups[0]
    assert group["lr"] == 0.05
    for key, value in reference.items():
        if key not in IMPLEMENTATION_OPTIONS | {"lr"}:
            assert group[key] == value, key
    if optimizer == "adamw":
        assert group["weight_decay"] == 0.01  # AdamW's own default, not 0


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_given_momentum_and_weight_decay_reach_the_optimizer(optimizer):
    config = TrialConfig(optimizer=optimizer, momentum=0.8, weight_decay=1e-4)
    group = make_optimizer(config, build_trial_model(config).parameters()).param_groups[0]
    assert (group["momentum"], group["weight_decay"]) == (0.8, 1e-4)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_CLASSES))
def test_every_optimizer_trains(digits, optimizer):
    result = train_trial(TrialConfig(**FAST, optimizer=optimizer, lr=0.01, train_fraction=0.25), digits)
    assert result.status in ("completed", "collapsed", "diverged") and result.epochs_run == 1


def scheduled_lrs(config: TrialConfig) -> list[float]:
    """The lr of each epoch as train_trial drives the schedule (after every epoch but the last),
    without training: a model-free optimizer and the same make_scheduler."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(config, optimizer)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return lrs


def onecycle_lr(lr: float, epochs: int, epoch: int) -> float:
    """torch's OneCycleLR, written out: epochs + 1 steps, 30% rising from lr/25 to lr, then cosine
    down to lr/25/1e4 at the last step (the epoch after the cap); epoch e trains at step e - 1."""
    steps, step = epochs + 1, epoch - 1
    start, low = lr / 25, lr / 25 / 1e4
    peak = 0.3 * steps - 1  # the step at the top of the cycle

    def cos_from(a: float, b: float, pct: float) -> float:
        return b + (a - b) / 2 * (1 + math.cos(math.pi * pct))

    if step <= peak:
        return cos_from(start, lr, step / peak)
    return cos_from(lr, low, (step - peak) / (steps - 1 - peak))


# (lr_schedule, epochs, warmup_epochs, lr_step_size, lr_gamma) -> each epoch's lr / config.lr, written out
SCHEDULES = [
    ("constant", 4, 0, None, 0.1, [1, 1, 1, 1]),
    ("constant", 5, 2, None, 0.1, [1 / 3, 2 / 3, 1, 1, 1]),
    # step: a decay every ceil(scheduled / 3) epochs: twice per run
    ("step", 6, 0, None, 0.5, [1, 1, 0.5, 0.5, 0.25, 0.25]),
    ("step", 9, 0, None, 0.1, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01]),
    ("step", 7, 0, 2, 0.5, [1, 1, 0.5, 0.5, 0.25, 0.25, 0.125]),  # an explicit step size
    ("step", 7, 1, None, 0.5, [0.5, 1, 1, 0.5, 0.5, 0.25, 0.25]),  # warm-up, then thirds of 6
    ("step", 3, 0, None, 0.5, [1, 0.5, 0.25]),
    # cosine over the scheduled epochs T: (1 + cos(pi t / T)) / 2, t = 0 .. T - 1
    ("cosine", 4, 0, None, 0.1, [(1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)]),
    ("cosine", 6, 2, None, 0.1, [1 / 3, 2 / 3, *((1 + math.cos(math.pi * t / 4)) / 2 for t in range(4))]),
    ("onecycle", 10, 0, None, 0.1, [onecycle_lr(1.0, 10, e) for e in range(1, 11)]),
    ("onecycle", 1, 0, None, 0.1, [onecycle_lr(1.0, 1, 1)]),
]


@pytest.mark.parametrize(("schedule", "epochs", "warmup", "step_size", "gamma", "factors"), SCHEDULES)
def test_every_schedule_sets_each_epochs_lr_by_its_documented_formula(
    schedule, epochs, warmup, step_size, gamma, factors
):
    config = TrialConfig(
        optimizer="sgd",
        lr=0.05,
        epochs=epochs,
        lr_schedule=schedule,
        warmup_epochs=warmup,
        lr_step_size=step_size,
        lr_gamma=gamma,
    )
    assert scheduled_lrs(config) == pytest.approx([0.05 * f for f in factors], rel=1e-9)


def test_onecycle_rises_to_its_peak_then_anneals_and_every_epoch_trains():
    lrs = scheduled_lrs(TrialConfig(optimizer="sgd", lr=0.1, epochs=20, lr_schedule="onecycle"))
    top = lrs.index(max(lrs))
    assert lrs[0] == pytest.approx(0.1 / 25) and 4 <= top <= 6 and max(lrs) > 0.099
    assert lrs[: top + 1] == sorted(lrs[: top + 1]) and lrs[top:] == sorted(lrs[top:], reverse=True)
    assert lrs[-1] > 0.1 / 25 / 1e4  # its floor falls on the epoch after the cap, as cosine's 0 does


@pytest.mark.parametrize("epochs", [5, 6, 10, 20, 50, 100])
def test_step_decays_twice_whatever_the_epoch_cap(epochs):
    lrs = scheduled_lrs(TrialConfig(optimizer="sgd", lr=1.0, epochs=epochs, lr_schedule="step", lr_gamma=0.5))
    assert sorted(set(lrs), reverse=True) == [1.0, 0.5, 0.25]  # two decays by gamma, never more
    assert lrs[-1] == 0.25  # the last third of the budget trains at gamma**2
    # the three stretches are a third of the budget each (up to rounding)
    assert max(lrs.count(v) for v in (1.0, 0.5, 0.25)) - min(lrs.count(v) for v in (1.0, 0.5, 0.25)) <= 2


@pytest.mark.parametrize(
    ("schedule", "warmup"), [("step", 0), ("cosine", 1), ("onecycle", 0), ("constant", 2)]
)
def test_the_lr_column_is_the_lr_each_epoch_trained_with(digits, monkeypatch, schedule, warmup):
    real = train_module.train_one_epoch
    seen = []

    def recording(model, optimizer, *args, **kwargs):
        result = real(model, optimizer, *args, **kwargs)
        seen.append(optimizer.param_groups[0]["lr"])  # the lr of the epoch's steps, after them
        return result

    monkeypatch.setattr(train_module, "train_one_epoch", recording)
    config = TrialConfig(
        **{**FAST, "epochs": 4},
        optimizer="sgd",
        lr=0.05,
        lr_schedule=schedule,
        warmup_epochs=warmup,
        lr_gamma=0.5,
        train_fraction=0.1,
    )
    result = train_trial(config, digits)
    assert [row["lr"] for row in result.history] == seen == scheduled_lrs(config)
    assert len(set(seen)) > 1  # the schedule moved the lr


def test_label_smoothing_shapes_the_training_loss_only(digits, monkeypatch):
    calls = []
    real = F.cross_entropy

    def spy(*args, **kwargs):
        calls.append(kwargs.get("label_smoothing", 0.0))
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy)
    config = TrialConfig(**FAST, label_smoothing=0.1, train_fraction=0.25)
    result = train_trial(config, digits)
    assert 0.1 in calls and set(calls) == {0.0, 0.1}  # training steps smoothed, evaluation plain
    monkeypatch.undo()
    # the recorded validation and test losses are plain cross-entropy of the kept weights
    model = load_trial_model(config, result.state_dict)
    images, labels = val_split(digits, config)
    assert evaluate(model, images, labels, data=digits) == pytest.approx((result.val_loss, result.val_acc))
    plain = train_trial(config.replace(label_smoothing=0.0), digits)
    assert plain.history[0]["train_loss"] != result.history[0]["train_loss"]
    # a smoothed target's loss cannot reach 0: even a perfect prediction pays the smoothing's entropy
    logits = torch.tensor([[50.0, 0.0, 0.0]])
    assert float(real(logits, torch.tensor([0]), label_smoothing=0.1)) > 0.1


@pytest.mark.parametrize("kind", ["shift", "crop"])
def test_translating_augmentations_train_without_touching_the_data(digits, kind):
    images, labels = digits.train_images.copy(), digits.train_labels.copy()
    result = train_trial(TrialConfig(**FAST, augment=kind, train_fraction=0.25), digits)
    assert result.status in ("completed", "collapsed") and result.epochs_run == 1
    assert np.array_equal(digits.train_images, images) and np.array_equal(digits.train_labels, labels)
    again = train_trial(TrialConfig(**FAST, augment=kind, train_fraction=0.25), digits)
    assert again.history[0]["train_loss"] == result.history[0]["train_loss"]  # seeded by the run


# --------------------------------------------------------------------------- early stopping


def test_patience_stops_a_plateau_and_keeps_the_best_epoch(digits, monkeypatch):
    sabotage_after_first_epoch(monkeypatch)
    config = TrialConfig(**{**FAST, "epochs": 10}, patience=2)
    result = train_trial(config, digits)
    assert result.epochs_run == 3 and result.stopped_early  # epochs 2 and 3 did not improve
    assert result.status == "completed" and result.history[-1]["status"] == "completed"
    assert result.best_epoch == 1
    first = result.history[0]
    assert result.history[-1]["val_acc"] < first["val_acc"]  # the last weights are worse
    model = load_trial_model(config, result.state_dict)
    assert model.head.weight.abs().sum() > 0  # not the zeroed head of the last epoch
    val_images, val_labels = val_split(digits, config)
    assert evaluate(model, val_images, val_labels, data=digits)[1] == pytest.approx(first["val_acc"])
    assert result.val_acc == first["val_acc"] == result.best_val_acc
    test = evaluate(model, digits.test_images, torch.from_numpy(digits.test_labels), data=digits)
    assert (result.test_loss, result.test_acc) == pytest.approx(test)
    assert (result.history[-1]["test_loss"], result.history[-1]["test_acc"]) == pytest.approx(test)


def test_without_patience_the_best_epoch_is_still_restored_at_the_end(digits, monkeypatch):
    sabotage_after_first_epoch(monkeypatch)
    result = train_trial(TrialConfig(**{**FAST, "epochs": 2}), digits)
    assert result.epochs_run == 2 and not result.stopped_early
    assert result.best_epoch == 1 and result.val_acc == result.history[0]["val_acc"]
    assert result.state_dict["head.weight"].abs().sum() > 0


def test_without_a_validation_split_the_last_weights_are_kept(digits, monkeypatch):
    sabotage_after_first_epoch(monkeypatch)
    result = train_trial(TrialConfig(**{**FAST, "epochs": 2}, val_fraction=0.0), digits)
    assert result.status == "completed" and result.best_epoch == 2
    assert math.isnan(result.val_acc)
    assert result.state_dict["head.weight"].abs().sum() == 0  # the sabotaged last epoch


# --------------------------------------------------------------------------- precision


def test_bf16_trains_on_cpu_and_is_recorded(digits):
    config = TrialConfig(**FAST, train_fraction=0.25)
    fp32 = train_trial(config, digits)
    bf16 = train_trial(config.replace(precision="bf16"), digits)
    assert bf16.status == "completed" and math.isfinite(bf16.history[0]["train_loss"])
    assert bf16.history[0]["train_loss"] != fp32.history[0]["train_loss"]  # autocast did run
    assert bf16.summary()["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in bf16.state_dict.values() if v.is_floating_point())


def test_fp16_on_cpu_is_refused(digits):
    # A library error: it names the field and its values, as a Python caller writes them.
    with pytest.raises(ConfigError, match=r"^precision 'fp16' needs CUDA \(the device is cpu\)") as info:
        train_trial(TrialConfig(**FAST, precision="fp16"), digits)
    assert "'bf16'" in str(info.value) and "--" not in str(info.value)


def test_cuda_without_a_gpu_is_refused_by_field_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^device 'cuda' asked for, but CUDA sees no GPU") as info:
        resolve_device("cuda")
    assert "--" not in str(info.value)
    assert resolve_device("auto") == torch.device("cpu")


# --------------------------------------------------------------------------- inference


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


def test_model_features_match_the_logits_and_accept_numpy_or_tensors(digits):
    model = build_trial_model(TrialConfig(**FAST))
    images = digits.test_images[:50]  # (50, 28, 28) uint8 numpy
    features = model_features(model, images, data=digits, keys=("conv2", "penultimate"), batch_size=16)
    assert features["conv2"].shape == (50, 16, 10, 10) and features["penultimate"].shape == (50, 84)
    assert features["penultimate"].dtype == np.float32
    logits = predict_logits(model, torch.from_numpy(images.copy()), data=digits, batch_size=7)
    with torch.no_grad():
        from_features = model.head(torch.from_numpy(features["penultimate"]))
    assert torch.allclose(from_features, logits, atol=1e-5)
    empty = model_features(model, images[:0], data=digits)
    assert empty["penultimate"].shape == (0, 84)
    with pytest.raises(ValueError, match="no feature 'fc9'"):
        model_features(model, images, data=digits, keys=("fc9",))


def test_bf16_inference_returns_fp32_close_to_fp32(digits):
    model = build_trial_model(TrialConfig(**FAST))
    fp32 = predict_logits(model, digits.test_images, data=digits)
    bf16 = predict_logits(model, digits.test_images, data=digits, precision="bf16")
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    assert torch.allclose(bf16, fp32, atol=0.05)


def test_resnet_trains_one_epoch(digits):
    config = TrialConfig(**FAST, model="resnet18", train_fraction=0.1, batch_size=32)
    result = train_trial(config, digits)
    assert result.status in ("completed", "collapsed") and result.parameters > 11e6


def test_dataset_mismatch_is_refused(digits):
    with pytest.raises(ConfigError, match="dataset 'mnist'"):
        train_trial(TrialConfig(dataset="mnist"), digits)


# --------------------------------------------------------------------------- statuses


def test_statuses_are_status_members_written_as_plain_text(digits, tmp_path):
    """History rows and TrialResult.status hold the Status enum (a StrEnum); JSON, CSV and parquet
    (through pandas or pyarrow alone) hold its text, so readers of the files see plain strings."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    reported = []
    config = TrialConfig(**{**FAST, "epochs": 2}, train_fraction=0.25)
    result = train_trial(config, digits, report=lambda row: reported.append(row["status"]))
    assert result.status is Status.COMPLETED
    assert reported == [Status.RUNNING, Status.COMPLETED]
    assert [type(row["status"]) for row in result.history] == [Status, Status]
    assert json.loads(json.dumps(result.summary()))["status"] == "completed"
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(result.history[0]))
    writer.writeheader()
    writer.writerows(result.history)
    assert [row["status"] for row in csv.DictReader(io.StringIO(text.getvalue()))] == ["running", "completed"]
    pd.DataFrame(result.history).to_parquet(tmp_path / "pandas.parquet", index=False)
    pq.write_table(pa.Table.from_pylist(result.history), tmp_path / "arrow.parquet")
    for path in (tmp_path / "pandas.parquet", tmp_path / "arrow.parquet"):
        column = pq.read_table(path).column("status")
        assert pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        assert column.to_pylist() == ["running", "completed"]
