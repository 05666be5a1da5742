"""`study train`: one trial outside Ray, with a progress bar, its history table, metrics and weights."""

from __future__ import annotations

from pathlib import Path

from lenet_core.config import TrialConfig
from lenet_core.data import load_dataset
from lenet_core.train import TrialResult, train_trial
from study.common.console import console, print_table, progress_bar
from study.common.files import run_folder, save_weights, write_json, write_provenance, write_records


def write_trial(result: TrialResult, folder: Path) -> None:
    """``history.{csv,parquet}``, ``result.json`` (config, metrics, provenance), ``model.pt``."""
    write_records(result.history, folder / "history")
    save_weights(result.state_dict, folder / "model.pt")
    write_json(folder / "result.json", result.summary())


def run_train(config: TrialConfig, *, out: Path, name: str, overwrite: bool = False) -> TrialResult:
    """Train ``config`` once and write OUT/NAME/train/; refuses a folder holding results."""
    data = load_dataset(config.dataset, data_dir=config.data_dir)
    say = console().print
    with run_folder(out, name, "train", overwrite=overwrite) as folder:
        say(
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
        write_provenance(folder, data=data, extra={"kind": "train"})
    print_table([{k: v for k, v in row.items() if k != "status"} for row in result.history], "history")
    say(
        f"{result.status}: test accuracy {result.test_acc:.4f} (val {result.val_acc:.4f}), "
        f"{result.seconds:.1f} s, {result.images_per_s:,.0f} images/s -> {folder}"
    )
    return result
