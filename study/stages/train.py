"""`study train`: one trial outside Ray, with a progress bar, its history table, metrics and weights.

``TrainResults`` is what it leaves in OUT/NAME/train: ``history.{csv,parquet}`` (one row per
epoch), ``result.json`` (config, metrics, provenance), ``model.pt`` (the kept weights) and
``run.json``; written and read back here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lenet_core.config import TrialConfig, from_dict
from study.common.files import read_json, save_weights, write_json, write_records
from study.common.results import read_run_info, read_table, write_run_info

if TYPE_CHECKING:
    import pandas as pd

    from lenet_core.train import TrialResult
    from study.common.context import RunContext

STAGE = "train"
HISTORY = "history"  # .csv and .parquet
RESULT_FILE = "result.json"
WEIGHTS_FILE = "model.pt"


@dataclass(frozen=True)
class TrainResults:
    history: list[dict[str, Any]]  # one row per epoch run
    result: dict[str, Any]  # TrialResult.summary(): config, metrics, provenance
    run: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, compare=False)  # where it was written or read

    @property
    def config(self) -> TrialConfig:
        return from_dict(self.result["config"], source=RESULT_FILE)

    best_config = config  # one run: its own config is the best there is

    @property
    def epochs(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.history)

    def write(self, folder: Path) -> None:
        # plain rows, without pandas: a warm `study train` never imports it (write_records)
        write_records(self.history, folder / HISTORY)
        write_json(folder / RESULT_FILE, self.result)
        write_run_info(folder, self.run)

    @classmethod
    def read(cls, folder: Path) -> TrainResults:
        history = read_table(folder / f"{HISTORY}.parquet", what="train history")
        return cls(
            history=history.to_dict("records"),
            result=read_json(folder / RESULT_FILE, what="train result"),
            run=read_run_info(folder),
            folder=folder,
        )


def train_section(results: TrainResults, root: Path) -> list[str]:
    """The train stage's section of REPORT.md."""
    from study.common.report import md, pct

    result = results.result
    return [
        "## Single training run",
        "",
        f"{result['status']} after {result['epochs_run']} epochs: test accuracy "
        f"{pct(result['test_acc'])}, validation {pct(result['best_val_acc'])}, "
        f"{result['images_per_s']:,.0f} training images/s.",
        "",
        md(results.epochs),
        "",
    ]


def run_train(config: TrialConfig, *, context: RunContext) -> tuple[TrainResults, TrialResult]:
    """Train ``config`` once (no Ray) and write OUT/NAME/train/; refuses a folder holding results."""
    from lenet_core.train import train_trial
    from study.common.console import progress_bar
    from study.common.files import provenance

    data, say = context.data, context.progress
    with context.stage_folder(STAGE) as folder:
        say(
            f"training {config.model} ({config.variant or ''}) on {data.name}: "
            f"{len(data.train_images)} train / {len(data.test_images)} test images, "
            f"sha256 {data.checksum[:12]}"
        )
        with progress_bar("epochs", config.epochs) as advance:
            trained = train_trial(
                config,
                data,
                report=lambda row: advance(f"val acc {row['val_acc']:.4f}  loss {row['train_loss']:.4f}"),
            )
        results = TrainResults(
            history=[{**row, "status": str(row["status"])} for row in trained.history],
            result={**trained.summary(), "status": str(trained.status)},
            run=provenance(data, kind=STAGE),
            folder=folder,
        )
        results.write(folder)
        save_weights(trained.state_dict, folder / WEIGHTS_FILE)
    say(
        f"{trained.status}: test accuracy {trained.test_acc:.4f} (val {trained.val_acc:.4f}), "
        f"{trained.seconds:.1f} s, {trained.images_per_s:,.0f} images/s -> {folder}"
    )
    return results, trained
