"""``study``: the command line. Each command parses flags into a ``TrialConfig`` and hands it on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from lenet_core.data import load_dataset
from lenet_core.train import train_trial
from study.console import console, one_line_errors, print_table, progress_bar
from study.options import ConfigFileOption, resolve_config, trial_config_flags
from study.output import default_run_name, prepare_run_dir
from study.trial_files import history_frame, write_trial

app = typer.Typer(
    name="study",
    help="LeNet-5 hyperparameter and ensemble study on MNIST-style digits (Ray Tune + Optuna).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

OutOption = Annotated[Path, typer.Option("--out", help="Results root; files go to OUT/NAME/<command>/.")]
NameOption = Annotated[
    str | None,
    typer.Option("--name", help="Run name (folder under --out). Default: <command>-<dataset>-<time>."),
]


@app.callback()
def study() -> None:
    """LeNet-5 hyperparameter and ensemble study on MNIST-style digits."""


@app.command()
@one_line_errors
@trial_config_flags()
def train(
    *,
    config_file: ConfigFileOption = None,
    out: OutOption = Path("results"),
    name: NameOption = None,
    overrides: dict[str, Any],
) -> None:
    """Train one model and write its history, metrics and weights.

    Example: study train --dataset digits --epochs 3
    """
    config = resolve_config(config_file, overrides)
    data = load_dataset(config.dataset, data_dir=config.data_dir)
    folder = prepare_run_dir(out, name or default_run_name("train", config.dataset), "train")
    out_console = console()
    out_console.print(
        f"training {config.model} ({config.variant or ''}) on {data.name}: "
        f"{len(data.train_images)} train / {len(data.test_images)} test images, "
        f"sha256 {data.checksum[:12]}"
    )
    with progress_bar("epochs", config.epochs) as advance:
        result = train_trial(
            config,
            data,
            report=lambda row: advance(f"val acc {row['val_acc']:.4f}  loss {row['train_loss']:.4f}"),
        )
    write_trial(result, folder)
    print_table(history_frame(result).drop(columns=["status"]), "history")
    out_console.print(
        f"{result.status}: test accuracy {result.test_acc:.4f} (val {result.val_acc:.4f}), "
        f"{result.seconds:.1f} s, {result.images_per_s:,.0f} images/s -> {folder}"
    )


def main() -> None:
    app()
