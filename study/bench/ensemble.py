"""`study ensemble` (5 LeNets + ResNet-18) with its ResNet in fp32, then in bf16: many minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from study.bench.processes import private_ray_env, run_process, study_command
from study.bench.settings import PREVIOUS_ENSEMBLE_TRAINING_S, BenchSettings

ENSEMBLE_PRECISIONS = ("fp32", "bf16")


def ensemble_command(
    *,
    precision: str,
    out: Path,
    name: str,
    epochs: int,
    dataset: str,
    data_dir: Path | None,
    train_fraction: float = 1.0,
) -> list[str]:
    """`study ensemble --members 5 --epochs E --resnet resnet18 --resnet-precision P --resample
    none --dataset D --train-fraction F --data-dir DIR`, into OUT/NAME."""
    command = [
        *study_command(),
        *f"ensemble --members 5 --epochs {epochs} --resnet resnet18 --resnet-precision {precision}".split(),
        *f"--resample none --dataset {dataset} --train-fraction {train_fraction:g} --gpus 0".split(),
        *["--out", str(out), "--name", name],
    ]
    return command + (["--data-dir", str(data_dir)] if data_dir is not None else [])


def ensemble_run(command: list[str], folder: Path) -> dict[str, Any]:
    """One `study ensemble` process: wall time, the ResNet's and the LeNets' training seconds."""
    import pandas as pd

    with private_ray_env() as env:
        run = run_process(command, env=env)
    members = pd.read_csv(folder / "members.csv")
    resnet = members[members["model"] == "resnet18"]
    lenets = members[members["model"] == "lenet5"]
    return {
        "wall_s": run["wall_s"],
        "models": len(members),
        "lenets": len(lenets),
        "resnet_training_s": float(resnet["training_seconds"].sum()),
        "resnet_test_acc": float(resnet["test_acc"].mean()),
        "lenet_training_s_sum": float(lenets["training_seconds"].sum()),
        "lenet_test_acc_mean": float(lenets["test_acc"].mean()),
    }


def ensemble_ab(
    *,
    settings: BenchSettings,
    work: Path,
    dataset: str = "mnist",
    data_dir: Path | None,
    train_fraction: float = 1.0,
) -> dict[str, Any]:
    """The whole ensemble with its ResNet in fp32, then in bf16; one run each. ``train_fraction``
    < 1 trains every model on a part of the training split (a test of the plumbing, not a figure)."""
    runs = {}
    for precision in ENSEMBLE_PRECISIONS:
        name = f"ensemble-{precision}"
        command = ensemble_command(
            precision=precision,
            out=work,
            name=name,
            epochs=settings.epochs,
            dataset=dataset,
            data_dir=data_dir,
            train_fraction=train_fraction,
        )
        runs[precision] = {
            "command": "study " + " ".join(command[len(study_command()) :]),
            **ensemble_run(command, work / name / "ensemble"),
        }
    fp32, bf16 = runs["fp32"], runs["bf16"]
    return {
        "epochs": settings.epochs,
        "dataset": dataset,
        "fp32": fp32,
        "bf16": bf16,
        "wall_ratio_bf16_to_fp32": bf16["wall_s"] / fp32["wall_s"],
        "resnet_bf16_speedup": fp32["resnet_training_s"] / bf16["resnet_training_s"],
        "previous_training_s": PREVIOUS_ENSEMBLE_TRAINING_S,
        "bf16_wall_to_previous_training": bf16["wall_s"] / PREVIOUS_ENSEMBLE_TRAINING_S,
    }
