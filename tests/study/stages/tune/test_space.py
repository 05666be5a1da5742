
import pytest

from lenet_core.errors import ConfigError
from study.stages.tune.space import default_space, load_space, parse_space
from tests.conftest import PROJECT_ROOT

EXPERIMENTS = PROJECT_ROOT / "experiments"


def test_search_toml_holds_the_default_space():
    assert load_space(EXPERIMENTS / "search.toml").params == default_space().params


def test_default_space_asks_the_study_questions():
    space = default_space()
    assert set(space.params) == {"optimizer", "lr", "activation", "pooling", "batch_size"}
    assert space.params["lr"] == {"low": 1e-4, "high": 1.0, "log": True}
    dists = space.optuna_distributions()
    assert dists["batch_size"].choices == (32, 64, 128, 256, 512)
    assert dists["lr"].log


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
