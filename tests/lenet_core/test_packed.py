"""Packed training (lenet_core.packed) against train_trial, member by member, on the 8x8 digits.

Tolerance. A modern LeNet-5 in a pack of one runs the very kernels train_trial runs (a grouped
convolution of one group is the convolution, a batched matmul of one is the matmul), so it is
compared bitwise. (The classic one's C5 runs as a matmul in a pack, not as a convolution.) In a
pack of K > 1, the grouped convolutions (conv1 above all) and the batched matmuls add the same
float32 products in another order than one model's kernels do: a member's gradients differ from
its twin's by rounding, about 1e-6 of their size (measured here: at most 6.4e-6 for conv1's
weight, 3.4e-7 for the dense layers). Training carries that on: SGD linearly, so its weights stay
within 1e-7 of the twin's after an epoch; Adam and RMSprop scale each weight's step by its own
gradient history, so a weight whose gradient is rounding noise moves by up to lr in a direction
rounding picks, and RMSprop's first steps are 10 lr, which parts its trajectories quickly (up to
10% of the weights' norm after 21 steps). Hence, after one epoch (21 steps of 32 images):

- per-epoch training and validation losses within LOSS_RTOL = 1e-3 relative (measured: <= 3e-5);
- all weights within WEIGHT_RTOL = 1e-3 relative in L2 norm (measured: Adam <= 7.5e-5), and SGD
  members within SGD_WEIGHT_RTOL = 1e-5 (measured: <= 1.2e-7);
- RMSprop is compared bitwise in a pack of one, and by its accuracy over seeds in a pack of five.
"""

import math

import numpy as np
import pytest
import torch

import lenet_core.packed as packed_module
from lenet_core.config import TrialConfig
from lenet_core.data import as_tensor, bootstrap_indices, normalize_, to_unit_float
from lenet_core.errors import ConfigError
from lenet_core.names import ACTIVATION_NAMES, OPTIMIZERS, POOLING_NAMES
from lenet_core.packed import PackedLeNet, check_packable, make_optimizers, pack_key, train_packed
from lenet_core.status import Status
from lenet_core.train import (
    MEMORY_FORMAT,
    build_trial_model,
    evaluate,
    load_trial_model,
    train_trial,
    trial_split,
)

LOSS_RTOL = 1e-3
WEIGHT_RTOL = 1e-3
SGD_WEIGHT_RTOL = 1e-5
GRAD_RTOL = 1e-4  # one step's gradients, relative to each tensor's largest (measured: <= 6e-6)

FAST = {"dataset": "digits", "threads": 1, "device": "cpu", "batch_size": 32}
HALF = {**FAST, "epochs": 1, "train_fraction": 0.5}  # 646 images: 21 steps
ARCHITECTURES = [("modern", a, p) for a in ACTIVATION_NAMES for p in POOLING_NAMES] + [
    ("classic", "scaled_tanh", "subsample"),
    ("classic", "relu", "max"),
]
TIMING_KEYS = {"seconds", "images_per_s"}
HISTORY_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"} | {
    "seconds",
    "images_per_s",
    "status",
}  # a member's share of the packed epoch, not its own


def arch_id(arch):
    return "-".join(arch)


def relative_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over every tensor of two state dicts."""
    assert a.keys() == b.keys()
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b)
    den = sum(float(b[k].double().pow(2).sum()) for k in b)
    return math.sqrt(num / den)


def assert_close_loss(a: float, b: float) -> None:
    if math.isnan(b):
        assert math.isnan(a)
    else:
        assert a == pytest.approx(b, rel=LOSS_RTOL), (a, b)


def assert_matches(packed, separate, *, weight_rtol: float | None = None) -> None:
    """A packed member's result against its train_trial twin, within the module's tolerances."""
    if weight_rtol is None:
        weight_rtol = SGD_WEIGHT_RTOL if separate.config.optimizer == "sgd" else WEIGHT_RTOL
    assert packed.config == separate.config
    assert (packed.status, packed.epochs_run, packed.best_epoch, packed.stopped_early) == (
        separate.status,
        separate.epochs_run,
        separate.best_epoch,
        separate.stopped_early,
    )
    for row, twin in zip(packed.history, separate.history, strict=True):
        assert (row["epoch"], row["lr"], row["status"]) == (twin["epoch"], twin["lr"], twin["status"])
        assert_close_loss(row["train_loss"], twin["train_loss"])
        assert_close_loss(row["val_loss"], twin["val_loss"])
    if separate.status != Status.DIVERGED:
        assert relative_weight_difference(packed.state_dict, separate.state_dict) <= weight_rtol
        assert_close_loss(packed.test_loss, separate.test_loss)
    assert packed.parameters == separate.parameters


def assert_bitwise(packed, separate) -> None:
    """A pack of one against train_trial: every history value but the timings, every weight."""
    assert packed.config == separate.config
    assert (packed.status, packed.best_epoch, packed.stopped_early) == (
        separate.status,
        separate.best_epoch,
        separate.stopped_early,
    )
    for row, twin in zip(packed.history, separate.history, strict=True):
        same = {k: v for k, v in row.items() if k not in TIMING_KEYS}
        assert same == {k: v for k, v in twin.items() if k not in TIMING_KEYS} or _nan_equal(same, twin)
    assert packed.state_dict.keys() == separate.state_dict.keys()
    for key, value in separate.state_dict.items():
        assert torch.equal(packed.state_dict[key], value), key
    assert (packed.val_acc, packed.test_acc) == (separate.val_acc, separate.test_acc)


def _nan_equal(row: dict, twin: dict) -> bool:
    return all(
        (isinstance(v, float) and math.isnan(v) and math.isnan(twin[k])) or v == twin[k]
        for k, v in row.items()
    )


# --------------------------------------------------------------------------- a pack of one: bitwise

ONE_MEMBER_CASES = {
    **{name: {"optimizer": name, "lr": 3e-3 if name != "sgd" else 0.05} for name in OPTIMIZERS},
    "sgd-momentum-decay": {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-3},
    "schedules-augmentation-smoothing": {
        "epochs": 3,
        "train_fraction": 0.3,
        "lr_schedule": "step",
        "lr_step_size": 1,
        "warmup_epochs": 1,
        "augment": "both",
        "label_smoothing": 0.1,
        "seed": 4,
    },
    "onecycle-flip-patience": {
        "epochs": 3,
        "train_fraction": 0.3,
        "lr_schedule": "onecycle",
        "augment": "flip",
        "patience": 1,
    },
    "bf16": {"precision": "bf16", "activation": "tanh", "pooling": "avg"},
}


@pytest.mark.parametrize("options", ONE_MEMBER_CASES.values(), ids=ONE_MEMBER_CASES.keys())
def test_a_pack_of_one_is_train_trial_bitwise(digits, options):
    config = TrialConfig(**{**HALF, **options})
    [packed] = train_packed([config], digits)
    assert_bitwise(packed, train_trial(config, digits))


def test_a_pack_of_one_with_bootstrap_indices_is_train_trial_bitwise(digits):
    config = TrialConfig(**HALF, seed=3)
    split, _ = trial_split(digits, config)
    in_bag, _ = bootstrap_indices(len(split), seed=11)
    resample = split[in_bag]
    [packed] = train_packed([config], digits, train_indices=[resample])
    assert_bitwise(packed, train_trial(config, digits, train_indices=resample))


# --------------------------------------------------------------------------- packs: within rounding


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=arch_id)
def test_one_step_gradients_of_each_member_match_its_own_model(digits, arch):
    variant, activation, pooling = arch
    configs = [
        TrialConfig(**FAST, variant=variant, activation=activation, pooling=pooling, seed=s) for s in range(3)
    ]
    alone = [build_trial_model(c) for c in configs]
    members = [build_trial_model(c) for c in configs]
    pack = PackedLeNet(members)
    batches = []
    for k, model in enumerate(alone):
        images = as_tensor(digits.train_images[32 * k : 32 * (k + 1)])
        x = normalize_(to_unit_float(images), mean=digits.mean, std=digits.std).contiguous(
            memory_format=MEMORY_FORMAT
        )
        y = as_tensor(digits.train_labels[32 * k : 32 * (k + 1)])
        torch.nn.functional.cross_entropy(model(x), y).backward()
        batches.append((x, y))
    x = torch.cat([x for x, _ in batches], dim=1)  # (32, 3, 28, 28): member k's batch is channel k
    logits = pack(x.contiguous(memory_format=MEMORY_FORMAT))
    with torch.no_grad():
        expected = torch.stack([model(bx) for model, (bx, _) in zip(alone, batches, strict=True)])
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5)
    losses = [torch.nn.functional.cross_entropy(logits[k], y) for k, (_, y) in enumerate(batches)]
    torch.stack(losses).sum().backward()
    pack.hand_out_grads(range(3))
    for model, member in zip(alone, members, strict=True):
        for (name, p), q in zip(model.named_parameters(), member.parameters(), strict=True):
            scale = float(p.grad.abs().max())
            assert float((p.grad - q.grad).abs().max()) <= GRAD_RTOL * scale, name


@pytest.mark.parametrize("arch", ARCHITECTURES, ids=arch_id)
def test_packed_members_match_their_separately_trained_twins(digits, arch):
    variant, activation, pooling = arch
    base = {**HALF, "variant": variant, "activation": activation, "pooling": pooling}
    configs = [
        TrialConfig(**base, seed=1, optimizer="adam", lr=2e-3, weight_decay=1e-3),
        TrialConfig(**base, seed=2, optimizer="sgd", lr=0.05, momentum=0.5),
    ]
    results = train_packed(configs, digits)
    for config, packed in zip(configs, results, strict=True):
        assert_matches(packed, train_trial(config, digits))


def test_members_keep_their_own_bootstrap_schedule_augmentation_and_epochs(digits):
    base = {**FAST, "train_fraction": 0.4}
    configs = [
        TrialConfig(**base, seed=1, epochs=3, lr_schedule="step", lr_step_size=1, augment="rotate"),
        TrialConfig(**base, seed=2, epochs=2, optimizer="sgd", lr=0.05, lr_schedule="cosine"),
        TrialConfig(**base, seed=3, epochs=3, lr=2e-3, warmup_epochs=1, label_smoothing=0.1, augment="flip"),
    ]
    split, _ = trial_split(digits, configs[0])
    resamples = [split[bootstrap_indices(len(split), seed=20 + i)[0]] for i in range(2)] + [None]
    results = train_packed(configs, digits, train_indices=resamples)
    assert [r.epochs_run for r in results] == [3, 2, 3]
    for config, indices, packed in zip(configs, resamples, results, strict=True):
        assert_matches(packed, train_trial(config, digits, train_indices=indices))


def test_a_diverging_member_ends_while_the_others_train_on(digits):
    # sgd at lr 10 blows the loss up in its first epoch (as in test_train); the pack goes on
    base = {**FAST, "epochs": 2, "train_fraction": 0.5}
    configs = [
        TrialConfig(**base, seed=0, lr=2e-3),
        TrialConfig(**base, seed=1, optimizer="sgd", lr=10.0),
        TrialConfig(**base, seed=2, optimizer="sgd", lr=0.05),
    ]
    results = train_packed(configs, digits)
    assert [r.status for r in results] == [Status.COMPLETED, Status.DIVERGED, Status.COMPLETED]
    assert [r.epochs_run for r in results] == [2, 1, 2]
    for config, packed in zip(configs, results, strict=True):
        assert_matches(packed, train_trial(config, digits))


def test_a_nan_loss_is_caught_mid_epoch_and_that_member_stops_stepping(digits):
    # at lr 1e38 the weights overflow after one step and the loss turns NaN (as in test_train)
    base = {**FAST, "epochs": 2, "train_fraction": 0.5, "activation": "tanh"}
    configs = [
        TrialConfig(**base, seed=0, optimizer="sgd", lr=1e38),
        TrialConfig(**base, seed=1, optimizer="sgd", lr=0.05),
    ]
    blown, fine = train_packed(configs, digits)
    assert blown.status == Status.DIVERGED and math.isnan(blown.history[0]["train_loss"])
    twin = train_trial(configs[0], digits)
    # it stopped at the same divergence check: its last weights are its twin's (NaN where they are)
    for key, value in twin.state_dict.items():
        assert torch.equal(blown.state_dict[key].isnan(), value.isnan()), key
    assert_matches(fine, train_trial(configs[1], digits))


def test_patience_ends_one_member_early_and_its_weights_stop_changing(digits):
    # sgd at lr 1e-9 leaves the weights as they were: validation accuracy never improves after epoch 1
    base = {**FAST, "epochs": 3, "train_fraction": 0.4}
    configs = [
        TrialConfig(**base, seed=5, optimizer="sgd", lr=1e-9, patience=1),
        TrialConfig(**base, seed=6, lr=2e-3),
    ]
    stuck, learning = train_packed(configs, digits)
    assert stuck.stopped_early and stuck.epochs_run == 2 and stuck.best_epoch == 1
    assert learning.epochs_run == 3 and not learning.stopped_early
    for config, packed in zip(configs, (stuck, learning), strict=True):
        assert_matches(packed, train_trial(config, digits))


def test_report_sees_every_member_and_can_stop_one(digits):
    calls = []

    def report(index, row):
        calls.append((index, row["epoch"]))
        return index == 0 and row["epoch"] == 1

    # one config but the seed: the members share one optimizer and one step schedule
    configs = [
        TrialConfig(**{**HALF, "epochs": 3}, seed=s, lr_schedule="step", lr_step_size=1) for s in range(2)
    ]
    stopped, finished = train_packed(configs, digits, report=report)
    assert calls == [(0, 1), (1, 1), (1, 2), (1, 3)]
    assert stopped.status == Status.STOPPED and stopped.epochs_run == 1 and math.isfinite(stopped.test_acc)
    assert finished.status == Status.COMPLETED and finished.epochs_run == 3
    assert [row["lr"] for row in finished.history] == pytest.approx([1e-3, 1e-4, 1e-5])
    assert_matches(stopped, train_trial(configs[0], digits, report=lambda row: row["epoch"] == 1))
    assert_matches(finished, train_trial(configs[1], digits))


def test_report_epoch_judges_the_pack_as_one_and_can_stop_every_member(digits):
    seen = []

    def report_epoch(rows):
        seen.append(sorted(rows))
        return sum(row["val_acc"] for row in rows.values()) / len(rows) > 0  # stop after epoch 1

    configs = [TrialConfig(**{**HALF, "epochs": 3}, seed=s) for s in range(3)]
    results = train_packed(configs, digits, report_epoch=report_epoch)
    assert seen == [[0, 1, 2]]
    assert [(r.status, r.epochs_run) for r in results] == [(Status.STOPPED, 1)] * 3
    for config, result in zip(configs, results, strict=True):
        assert_matches(result, train_trial(config, digits, report=lambda row: True))


def test_members_with_one_optimizer_config_share_one_optimizer():
    configs = [TrialConfig(**HALF, seed=0), TrialConfig(**HALF, seed=1), TrialConfig(**HALF, lr=2e-3)]
    built = make_optimizers(configs, [build_trial_model(c) for c in configs])
    assert built[0] is built[1] and built[2][0] is not built[0][0]
    assert len(built[0][0].param_groups[0]["params"]) == 2 * 10 and built[0][1] is None


# --------------------------------------------------------------------------- results, errors


def test_results_have_train_trials_shape_and_load_as_a_lenet(digits):
    configs = [TrialConfig(**HALF, seed=s, variant="classic") for s in range(2)]
    results = train_packed(configs, digits)
    for config, result in zip(configs, results, strict=True):
        reference = build_trial_model(config).state_dict()
        assert {k: v.shape for k, v in result.state_dict.items()} == {
            k: v.shape for k, v in reference.items()
        }
        assert all(v.device.type == "cpu" for v in result.state_dict.values())
        model = load_trial_model(config, result.state_dict)
        test_loss, test_acc = evaluate(
            model, digits.test_images, torch.from_numpy(digits.test_labels), data=digits
        )
        assert test_acc == pytest.approx(result.test_acc, abs=1e-6)
        assert test_loss == pytest.approx(result.test_loss, rel=1e-5)
        assert result.history[-1].keys() == HISTORY_KEYS
        assert result.summary()["seed"] == config.seed and result.images_per_s > 0
        assert result.parameters == 60_850


def test_members_seconds_share_the_packed_epochs(digits):
    configs = [TrialConfig(**HALF, seed=s) for s in range(3)]
    images = len(trial_split(digits, configs[0])[0])
    for result in train_packed(configs, digits):
        row = result.history[0]
        assert row["images_per_s"] == pytest.approx(images / row["seconds"])
        assert result.seconds >= row["seconds"] > 0


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ([{}, {"batch_size": 64, "activation": "tanh"}], ["batch_size", "activation"]),
        ([{}, {"split_seed": 1}], ["split_seed"]),
        (
            [{"model": "resnet18", "variant": None, "activation": None, "pooling": None}],
            ["lenet5", "resnet18"],
        ),
        ([{"precision": "fp16"}], ["precision", "fp16"]),
    ],
    ids=["architecture-and-batch", "split", "resnet", "fp16"],
)
def test_configs_that_do_not_pack_raise_one_line_naming_the_fields(changes, named):
    configs = [TrialConfig(**{**HALF, **c}) for c in changes]
    with pytest.raises(ConfigError) as error:
        check_packable(configs)
    message = str(error.value)
    assert "\n" not in message
    for word in named:
        assert word in message


def test_train_indices_must_be_one_per_config_and_of_one_length(digits):
    configs = [TrialConfig(**HALF, seed=s) for s in range(2)]
    split, _ = trial_split(digits, configs[0])
    with pytest.raises(ConfigError, match="train_indices has 1 entries for 2 configs"):
        train_packed(configs, digits, train_indices=[split])
    with pytest.raises(ConfigError, match="one length"):
        train_packed(configs, digits, train_indices=[split, split[:-5]])
    with pytest.raises(ConfigError, match="training split's length"):
        train_packed(configs, digits, train_indices=[None, split[:-5]])
    with pytest.raises(ConfigError, match="dataset 'mnist'"):
        train_packed([TrialConfig(**{**HALF, "dataset": "mnist"})], digits)


def test_configs_grouped_by_pack_key_pack():
    configs = [
        TrialConfig(**HALF, seed=1),
        TrialConfig(**HALF, activation="tanh"),
        TrialConfig(**{**HALF, "epochs": 3}, seed=2, lr=0.01, optimizer="sgd", augment="flip"),
    ]
    groups: dict = {}
    for config in configs:
        groups.setdefault(pack_key(config), []).append(config)
    assert sorted(len(group) for group in groups.values()) == [1, 2]
    for group in groups.values():
        check_packable(group)


def test_a_field_the_pack_does_not_know_must_keep_its_default(monkeypatch):
    # a field added to TrialConfig later is refused until packed training handles it
    monkeypatch.setattr(
        packed_module,
        "MEMBER_FIELDS",
        tuple(f for f in packed_module.MEMBER_FIELDS if f != "label_smoothing"),
    )
    check_packable([TrialConfig(**HALF)])
    with pytest.raises(ConfigError, match=r"does not support label_smoothing yet \(configs\[1\]"):
        check_packable([TrialConfig(**HALF), TrialConfig(**HALF, label_smoothing=0.1)])


# --------------------------------------------------------------------------- over seeds


def test_accuracy_over_seeds_is_that_of_separate_training(digits):
    # RMSprop: the optimizer whose packed and separate trajectories part soonest (see the top)
    configs = [TrialConfig(**FAST, epochs=3, optimizer="rmsprop", seed=s) for s in range(5)]
    packed = np.array([r.test_acc for r in train_packed(configs, digits)])
    separate = np.array([train_trial(c, digits).test_acc for c in configs])
    assert packed.mean() > 0.85 and separate.mean() > 0.85
    # the standard error of a difference of two 5-seed means is about 1 point here
    assert abs(packed.mean() - separate.mean()) <= 0.03
    assert np.abs(packed - separate).max() <= 0.06
