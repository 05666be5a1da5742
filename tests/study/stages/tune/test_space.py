import pytest

from lenet_core.errors import ConfigError
from study.stages.tune.space import default_space, load_space, parse_space
from tests.conftest import PROJECT_ROOT

EXPERIMENTS = PROJECT_ROOT / "experiments"


def test_search_toml_holds_the_default_space():
    assert load_space(EXPERIMENTS / "search.toml").params == default_space().params


def test_default_space_asks_the_study_questions():
    space = default_space()
    assert set(space.params) == {
        "optimizer",
        "lr",
        "activation",
        "pooling",
        "batch_size",
        "lr_schedule",
        "weight_decay",
        "label_smoothing",
        "augment",
    }
    assert space.params["lr"] == {"low": 1e-4, "high": 1.0, "log": True}
    dists = space.optuna_distributions()
    assert dists["batch_size"].choices == (32, 64, 128, 256, 512)
    assert dists["lr"].log


def test_default_space_searches_schedules_and_regularization():
    space = default_space()
    assert space.params["lr_schedule"]["choices"] == ["constant", "step", "cosine", "onecycle"]
    # weight decay on a log scale from a tiny 1e-6 (no decay to speak of) to 1e-2
    assert space.params["weight_decay"] == {"low": 1e-6, "high": 1e-2, "log": True}
    assert space.params["label_smoothing"] == {"low": 0.0, "high": 0.15, "log": False}
    assert space.params["augment"]["choices"] == ["none", "shift"]  # no flip: digits; crop = shift
    assert "patience" not in space.params  # a fixed budget: early stopping would confound schedules


def test_fashion_space_searches_step_and_keeps_a_fixed_budget():
    from study.experiments import load_experiment
    from study.stages.tune.run import default_point

    experiment = load_experiment(EXPERIMENTS / "fashion.toml")
    space = parse_space({"space": experiment.space, "fixed": experiment.fixed}, source="fashion.toml")
    assert "patience" not in space.params and experiment.base_config().patience == 0
    assert space.params["lr_schedule"]["choices"] == ["constant", "step", "cosine", "onecycle"]
    assert space.params["augment"]["choices"] == ["none", "shift", "flip", "flip_shift"]
    assert {"lr_gamma", "lr_step_size", "weight_decay", "label_smoothing"} <= set(space.params)
    assert space.optuna_distributions()["lr_step_size"].step == 1  # an int range: whole epochs
    assert (experiment.grace_period, experiment.reduction_factor) == (3, 3.0)
    # the first trial is still the library's defaults, at the values they train with (step size: a
    # third of the 30 epochs)
    [point] = default_point(experiment.base_config(), space)
    assert (point["lr_schedule"], point["augment"], point["label_smoothing"]) == ("constant", "none", 0.0)
    assert (point["lr_step_size"], point["lr_gamma"], point["weight_decay"]) == (10, 0.1, 1e-6)
    # --smoke's single epoch too: step's fields are unused by the default constant schedule
    [smoke_point] = default_point(experiment.smoke().base_config(), space)
    assert smoke_point["lr_step_size"] == 3 and smoke_point["lr_schedule"] == "constant"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"space": {"lr": {"low": 1.0, "high": 1e-4, "log": True}}}, "range reversed"),
        ({"space": {"lr": {"low": 0.0, "high": 1.0, "log": True}}}, "log range needs low > 0"),
        ({"space": {"optimizer": {"choices": []}}}, "non-empty list"),
        ({"space": {"optimizer": {"choices": ["adam", "lbfgs"]}}}, "lbfgs"),
        ({"space": {"learning_rate": {"low": 0.1, "high": 1.0}}}, "unknown key 'learning_rate'"),
        ({"space": {"lr": {"low": 0.1, "high": 1.0, "step": 2}}}, "unknown key 'step'"),
        ({"space": {"lr": {"low": "a", "high": 1.0}}}, "numeric"),
        ({"space": {"lr": {"low": 0.1}}}, "needs both low and high"),
        ({"space": {"seed": {"choices": [1, 2]}}}, "set by the study"),
        ({"space": {"lr": {"low": 0.1, "high": 1.0}}, "extra": {}}, "unknown key 'extra'"),
        ({"space": {}}, "at least one field"),
        ({"space": {"lr": {"low": 0.1, "high": 1.0}}, "fixed": {"epochs": "3"}}, "epochs must be int"),
    ],
)
def test_bad_spaces_are_rejected_by_name(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_space(raw, source="test.toml")


def test_space_file_that_is_not_toml(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text("[space\nlr = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_space(path)
