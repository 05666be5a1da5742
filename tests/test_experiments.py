"""Every experiment file runs with --smoke on the digits and yields its table and figures;
`study report` writes a REPORT.md whose sentences come from the numbers."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from lenet_core.errors import ConfigError
from study.cli import app
from study.experiments import load_experiment, parse_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SWEEPS = {
    "optimizers": ("train_loss_per_epoch.png", 6),
    "learning-rates": ("train_loss_per_epoch.png", 7),
    "lenet-variants": ("val_acc_per_epoch.png", 12),
    "data-fraction": ("error_vs_training_examples.png", 5),
    "augmentation": ("val_acc_per_epoch.png", 4),
    "lenet-vs-resnet": ("test_error_per_epoch.png", 2),
}
runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def test_every_experiment_file_parses():
    names = {p.stem for p in EXPERIMENTS.glob("*.toml")}
    assert names == {*SWEEPS, "search", "ensemble"}
    for path in EXPERIMENTS.glob("*.toml"):
        experiment = load_experiment(path)
        assert experiment.description


def test_full_runs_repeat_seeds_and_smoke_cuts_them():
    experiment = load_experiment(EXPERIMENTS / "optimizers.toml")
    assert len(experiment.configs()) == 6 * 3
    assert {c.epochs for c in experiment.configs()} == {10}
    smoke = experiment.smoke()
    assert len(smoke.configs()) == 6 and {c.epochs for c in smoke.configs()} == {1}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_sweep_experiments_smoke_on_digits(tmp_path, name):
    figure, points = SWEEPS[name]
    result = runner.invoke(
        app,
        ["run", str(EXPERIMENTS / f"{name}.toml"), "--smoke", "--dataset", "digits", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / name
    runs = pd.read_parquet(folder / "runs.parquet")
    assert len(runs) == points and list(runs["run"]) == list(range(points))
    assert pd.read_csv(folder / "runs.csv").shape[0] == points
    summary = pd.read_parquet(folder / "summary.parquet")
    assert len(summary) == points
    columns = {
        "n",
        "failed",
        "test_error_mean",
        "test_error_std",
        "ci95_low",
        "ci95_high",
        "p_holm_vs_best",
        "verdict",
    }
    assert columns <= set(summary.columns)
    assert summary["verdict"].iloc[0] in ("best", "failed")
    assert set(pd.read_parquet(folder / "epochs.parquet")["run"]) == set(range(points))
    for png in (figure, "test_error.png", "learning_curves.png"):
        assert (folder / png).read_bytes()[:8] == PNG
    report = runner.invoke(app, ["report", str(folder)])
    assert report.exit_code == 0, report.output
    text = (folder / "REPORT.md").read_text()
    ok = summary[summary["n"] > 0]
    if len(ok):
        best = ok.sort_values("test_error_mean").iloc[0]
        assert f"{100 * best['test_error_mean']:.2f}%" in text  # the sentence quotes the real number
        assert "lowest mean test error" in text
    assert "sha256" in text and f"]({figure})" in text


def test_learning_rate_smoke_keeps_diverging_runs(tmp_path):
    runner.invoke(
        app,
        [
            "run",
            str(EXPERIMENTS / "learning-rates.toml"),
            "--smoke",
            "--dataset",
            "digits",
            "--out",
            str(tmp_path),
        ],
    )
    runs = pd.read_parquet(tmp_path / "learning-rates" / "runs.parquet")
    assert (runs.loc[runs["lr"] == 10.0, "status"] == "diverged").all()
    summary = pd.read_parquet(tmp_path / "learning-rates" / "summary.parquet").set_index("lr")
    assert summary.loc[10.0, "n"] == 0 and summary.loc[10.0, "failed"] == 1  # counted, never averaged in
    assert summary.loc[10.0, "verdict"] == "failed"
    runner.invoke(app, ["report", str(tmp_path / "learning-rates")])
    text = (tmp_path / "learning-rates" / "REPORT.md").read_text()
    assert "failed and are left out of every mean" in text and "lr=10.0 (diverged)" in text


@pytest.mark.slow
def test_search_and_ensemble_experiments_smoke_on_digits(tmp_path):
    for name, marker in (("search", "tune/trials.parquet"), ("ensemble", "ensemble/comparison.parquet")):
        result = runner.invoke(
            app,
            [
                "run",
                str(EXPERIMENTS / f"{name}.toml"),
                "--smoke",
                "--dataset",
                "digits",
                "--out",
                str(tmp_path),
            ],
        )
        assert result.exit_code == 0, result.output
        assert (tmp_path / name / marker).is_file()
        report = runner.invoke(app, ["report", str(tmp_path / name)])
        assert report.exit_code == 0, report.output
    assert "trials:" in (tmp_path / "search" / "REPORT.md").read_text()
    ensemble_report = (tmp_path / "ensemble" / "REPORT.md").read_text()
    assert "ensemble(s) of 2 members" in ensemble_report and "McNemar" in ensemble_report


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"kind": "grid"}, "kind must be one of"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "trials": 3}, "unknown key 'trials'"),
        ({"kind": "sweep", "sweep": {"learning_rate": [0.1]}}, "unknown key 'learning_rate'"),
        ({"kind": "sweep", "sweep": {"lr": []}}, "non-empty list"),
        ({"kind": "sweep", "sweep": {"lr": [-1.0]}}, "--lr must be > 0"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "seeds": "3"}, "seeds must be int"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "seeds": 0}, "seeds must be >= 1"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "fixed": {"lr": 0.2}}, "both fixed and swept"),
        ({"kind": "sweep", "sweep": {"lr": [0.1]}, "curve": "loss"}, "curve must be one of"),
        ({"kind": "data-fraction", "fractions": [0.5, 2.0]}, "fractions must be"),
        ({"kind": "tune", "space": {"lr": {"low": 1.0, "high": 0.1}}}, "range reversed"),
        ({"kind": "ensemble", "members": 0}, "members must be >= 1"),
        ({"kind": "ensemble", "resample": "jackknife"}, "unknown --resample"),
        ({"kind": "ensemble", "repeats": "3"}, "repeats must be int"),
    ],
)
def test_bad_experiment_files_are_rejected_by_name(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_experiment(raw, name="bad")


def test_bad_experiment_file_on_the_command_line(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('kind = "sweep"\nseedz = 3\n[sweep]\nlr = [0.1]\n')
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "unknown key 'seedz'" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_report_of_a_folder_without_results(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no tune, ensemble, train or experiment" in result.stderr
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "is not a results folder" in result.stderr
