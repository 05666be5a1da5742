"""One training run against the usual DataLoader way: whole processes, and the loop in process."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lenet_core.allocator import MMAP_THRESHOLD_BYTES, OPT_OUT_VARIABLE, TRIM_THRESHOLD_BYTES
from lenet_core.config import TrialConfig
from lenet_core.data import IDX_FILES, ImageData, as_tensor, find_idx_files
from lenet_core.errors import StudyError
from lenet_core.train import (
    build_trial_model,
    make_optimizer,
    resolve_device,
    torch_threads,
    train_one_epoch,
    trial_split,
)
from study.bench.processes import (
    alternate,
    last_json,
    median,
    rotated_round,
    run_process,
    steps_per_epoch,
    study_command,
)
from study.bench.settings import FASHION_SYSTEM_COPY, REFERENCE_SCRIPT, TRAIN_BATCH, WORK_KEYS, BenchSettings

# ------------------------------------------------------------------ data for torchvision


def fashion_idx_files(data_dir: Path | None) -> dict[str, Path]:
    """Fashion-MNIST's four IDX files: in ``data_dir``, else Debian's copy."""
    source = find_idx_files("fashion-mnist", data_dir, required=True) if data_dir else None
    if source is None:
        source = find_idx_files("fashion-mnist", FASHION_SYSTEM_COPY, required=False)
    if source is None:
        raise StudyError(
            "bench needs Fashion-MNIST: apt-get install dataset-fashion-mnist, or "
            "pass --data-dir with its four IDX files"
        )
    return source


def extract_for_torchvision(data_dir: Path | None, into: Path) -> Path:
    """torchvision's FashionMNIST wants uncompressed files under ROOT/FashionMNIST/raw: a root
    the usual scripts can read (what their download would have left)."""
    source = fashion_idx_files(data_dir)
    raw = into / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        path = source[key]
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as src, open(raw / stem, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return into


# ------------------------------------------------------------------ 1. whole processes

# Run in a fresh interpreter: what `study train` spends before and around train_trial.
IMPORT_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import study.cli
t1 = time.perf_counter()
import lenet_core.train
t2 = time.perf_counter()
from lenet_core.data import load_dataset
data = load_dataset("fashion-mnist", data_dir=sys.argv[1])
t3 = time.perf_counter()
from lenet_core.config import TrialConfig
from lenet_core.train import trial_split
# the train/validation split as train_trial draws it: from the split cache the runs above warmed
# (a cold cache adds scikit-learn's import, a second or more, once)
trial_split(data, TrialConfig(dataset="fashion-mnist"))
t4 = time.perf_counter()
import torch._dynamo  # what the first torch.optim optimizer imports (torch._disable_dynamo)
t5 = time.perf_counter()
print(json.dumps({"import_study_cli": t1 - t0, "import_study_train": t2 - t1, "load_dataset": t3 - t2,
                  "split": t4 - t3, "import_torch_dynamo": t5 - t4}))
"""


def train_commands(
    *, data_dir: Path, tv_root: Path, out: Path, name: str, threads: int
) -> tuple[list[str], list[str]]:
    """(study train, the reference script): 1 epoch of LeNet-5 modern, Adam 1e-3, batch 64."""
    shared = f"--epochs 1 --batch-size {TRAIN_BATCH} --threads {threads}".split()
    ours = [
        *study_command(),
        *"train --dataset fashion-mnist --device cpu".split(),
        *shared,
        *["--data-dir", str(data_dir), "--out", str(out / "ours"), "--name", name],
    ]
    reference = [
        sys.executable,
        str(REFERENCE_SCRIPT),
        *shared,
        *["--root", str(tv_root), "--out", str(out / "reference" / name)],
    ]
    return ours, reference


def ours_train_run(command: list[str], folder: Path, *, env: dict[str, str] | None = None) -> dict[str, Any]:
    """One `study train` process: wall time and what its result.json and history say."""
    import pandas as pd

    run = run_process(command, env=env)
    result = json.loads((folder / "result.json").read_text())
    history = pd.read_csv(folder / "history.csv").to_dict(orient="records")
    return {
        "wall_s": run["wall_s"],
        "train_trial_s": result["seconds"],
        "training_s": sum(row["seconds"] for row in history),
        "train_images_reported": round(sum(row["images_per_s"] * row["seconds"] for row in history)),
        "test_acc": result["test_acc"],
        "parameters": result["parameters"],
    }


def reference_train_run(command: list[str], *, env: dict[str, str] | None = None) -> dict[str, Any]:
    run = run_process(command, env=env)
    return {"wall_s": run["wall_s"], **last_json(run["stdout"])}


def allocator_envs() -> dict[str, dict[str, str]]:
    """Environments that move one process to the other side of lenet_core.allocator: the
    reference script with glibc's malloc set as ``study`` sets its own, and ``study`` left with
    glibc's defaults. Together they say what the allocator alone is worth."""
    return {
        "study_settings": {
            **os.environ,
            "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
            "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES),
        },
        "glibc_defaults": {**os.environ, OPT_OUT_VARIABLE: "0"},
    }


def train_round(
    i: int, *, data_dir: Path, tv_root: Path, work: Path, threads: int, envs: dict[str, dict[str, str]]
) -> dict[str, dict[str, Any]]:
    """Round ``i`` of the whole-process A/B: every side once, its results by the side's name."""
    ours, reference = train_commands(
        data_dir=data_dir, tv_root=tv_root, out=work, name=f"round{i}", threads=threads
    )
    glibc, _ = train_commands(
        data_dir=data_dir, tv_root=tv_root, out=work, name=f"round{i}-glibc", threads=threads
    )
    runs = {
        "ours": lambda: ours_train_run(ours, work / "ours" / f"round{i}" / "train"),
        "reference": lambda: reference_train_run(reference),
        "reference_same_allocator": lambda: reference_train_run(reference, env=envs["study_settings"]),
        "ours_default_allocator": lambda: ours_train_run(
            glibc, work / "ours" / f"round{i}-glibc" / "train", env=envs["glibc_defaults"]
        ),
    }
    return dict(zip(runs, rotated_round(i, list(runs.values())), strict=True))


def whole_process_train(
    data: ImageData, *, data_dir: Path, tv_root: Path, settings: BenchSettings, work: Path
) -> dict[str, Any]:
    """`study train` 1 epoch against the reference script; and each with the other's allocator
    (the reference under study's settings, study under glibc's defaults). The four rotate which
    runs first; medians of the rounds."""
    train_idx, val_idx = trial_split(data, TrialConfig(dataset=data.name, batch_size=TRAIN_BATCH))
    envs = allocator_envs()
    rounds = [
        train_round(i, data_dir=data_dir, tv_root=tv_root, work=work, threads=settings.threads, envs=envs)
        for i in range(settings.train_rounds)
    ]
    root = Path(__file__).resolve().parents[2]
    probe = last_json(run_process([sys.executable, "-c", IMPORT_PROBE, str(data_dir)], cwd=root)["stdout"])
    python_start = run_process([sys.executable, "-c", "pass"])["wall_s"]
    by_side = {side: [r[side] for r in rounds] for side in rounds[0]}
    wall = {side: median([r["wall_s"] for r in runs]) for side, runs in by_side.items()}
    ours_runs, ref_runs = by_side["ours"], by_side["reference"]
    return {
        "rounds": len(rounds),
        "threads": settings.threads,
        "batch_size": TRAIN_BATCH,
        "ours_wall_s": wall["ours"],
        "reference_wall_s": wall["reference"],
        "speedup": wall["reference"] / wall["ours"],
        "reference_same_allocator_wall_s": wall["reference_same_allocator"],
        "speedup_same_allocator": wall["reference_same_allocator"] / wall["ours"],
        "ours_default_allocator_wall_s": wall["ours_default_allocator"],
        "allocator_speedup": wall["ours_default_allocator"] / wall["ours"],
        "ours_work": {
            "train_images": len(train_idx),
            "steps": steps_per_epoch(len(train_idx), TRAIN_BATCH),
            "val_images": len(val_idx),
            "test_images": len(data.test_images),
            "parameters": ours_runs[-1]["parameters"],
            "train_images_reported": ours_runs[-1]["train_images_reported"],
        },
        "reference_work": {key: ref_runs[-1][key] for key in WORK_KEYS},
        "ours_test_acc": [r["test_acc"] for r in ours_runs],
        "reference_test_acc": [r["test_acc"] for r in ref_runs],
        "ours_walls_s": [r["wall_s"] for r in ours_runs],
        "reference_walls_s": [r["wall_s"] for r in ref_runs],
        "reference_same_allocator_walls_s": [r["wall_s"] for r in by_side["reference_same_allocator"]],
        "reference_same_allocator_test_acc": [r["test_acc"] for r in by_side["reference_same_allocator"]],
        "ours_default_allocator_walls_s": [r["wall_s"] for r in by_side["ours_default_allocator"]],
        "ours_default_allocator_test_acc": [r["test_acc"] for r in by_side["ours_default_allocator"]],
        "ours_breakdown_s": ours_breakdown(ours_runs, probe, python_start),
        "reference_breakdown_s": reference_breakdown(ref_runs, python_start),
    }


def ours_breakdown(runs: list[dict[str, Any]], probe: dict[str, float], python_start: float) -> dict:
    """Median whole-process seconds of `study train` by phase.

    Inside train_trial: epoch training (its history), the train/validation split (read from the
    split cache), the lazy torch._dynamo import (first optimizer), and the rest (evaluation,
    model, copies). Outside: interpreter, imports and data (measured in a fresh interpreter), and
    the remainder (writing, tables, exit).
    """
    wall = median([r["wall_s"] for r in runs])
    trial = median([r["train_trial_s"] for r in runs])
    training = median([r["training_s"] for r in runs])
    lazy = probe["split"] + probe["import_torch_dynamo"]
    before = python_start + probe["import_study_cli"] + probe["import_study_train"] + probe["load_dataset"]
    return {
        "python start": python_start,
        "import study.cli (typer, rich)": probe["import_study_cli"],
        "import lenet_core.train (torch)": probe["import_study_train"],
        "load_dataset (decoded cache)": probe["load_dataset"],
        "train_trial: split (split cache)": probe["split"],
        "train_trial: import torch._dynamo (Adam)": probe["import_torch_dynamo"],
        "train_trial: epoch training": training,
        "train_trial: evaluation and the rest": max(trial - training - lazy, 0.0),
        "writing, tables, exit (remainder)": max(wall - before - trial, 0.0),
        "total": wall,
    }


def reference_breakdown(runs: list[dict[str, Any]], python_start: float) -> dict:
    """Median whole-process seconds of the reference script by phase, as it reports them."""
    wall = median([r["wall_s"] for r in runs])
    phases = {key: median([r["seconds"][key] for r in runs]) for key in runs[0]["seconds"]}
    return {
        "python start": python_start,
        "imports (torch, torchvision, dynamo)": phases["imports"],
        "datasets, loaders, model": phases["data_and_model"],
        "epoch training": phases["training"],
        "evaluation": phases["evaluation"],
        "writing": phases["writing"],
        "exit (remainder)": max(wall - python_start - phases["in_script"], 0.0),
        "total": wall,
    }


# ------------------------------------------------------------------ 3. the loop, in process


def reference_loader(
    root: Path, *, indices: np.ndarray, batch_size: int, mean: float, std: float, seed: int
) -> torch.utils.data.DataLoader:
    """The tutorial's loader: torchvision dataset, per-sample ToTensor + Normalize, shuffled."""
    import torchvision
    from torchvision import transforms

    dataset = torchvision.datasets.FashionMNIST(
        str(root),
        train=True,
        download=False,
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))]),
    )
    subset = torch.utils.data.Subset(dataset, indices.tolist())
    return torch.utils.data.DataLoader(
        subset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def reference_model(
    config: TrialConfig, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The same LeNet-5 and optimizer, built the usual way: NCHW layout, default optimizer."""
    from lenet_core.models import build_model

    torch.manual_seed(config.seed)
    model = build_model(config.model, **config.model_options()).to(device)
    optimizers = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
    return model, optimizers[config.optimizer](model.parameters(), lr=config.lr)


def reference_train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
) -> tuple[int, int]:
    """The tutorial loop: DataLoader batches, loss.item() every step. (images, optimizer steps)."""
    model.train()
    seen = steps = 0
    running_loss = 0.0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(y)
        seen += len(y)
        steps += 1
    return seen, steps


def loop_row(data: ImageData, root: Path, settings: BenchSettings, batch_size: int) -> dict[str, Any]:
    """Training images/s of lenet_core's loop and the DataLoader loop at one batch size."""
    device = resolve_device(settings.device)
    config = TrialConfig(dataset=data.name, batch_size=batch_size, device=settings.device)
    train_idx, _ = trial_split(data, config)
    subset = train_idx[: settings.images_per_round]
    images = as_tensor(data.train_images).to(device)
    labels = as_tensor(data.train_labels).to(device)
    subset_t = torch.from_numpy(subset.astype(np.int64)).to(device)
    loader = reference_loader(
        root, indices=subset, batch_size=batch_size, mean=data.mean, std=data.std, seed=0
    )

    def run_ours() -> float:
        model = build_trial_model(config).to(device)
        opt = make_optimizer(config, model.parameters())
        gen = torch.Generator().manual_seed(0)
        start = time.perf_counter()
        train_one_epoch(model, opt, images, labels, subset_t, config=config, data=data, generator=gen)
        return len(subset_t) / (time.perf_counter() - start)

    def run_reference() -> tuple[float, tuple[int, int]]:
        model, opt = reference_model(config, device)
        start = time.perf_counter()
        work = reference_train(model, opt, loader, device)
        return work[0] / (time.perf_counter() - start), work

    rounds = alternate(settings.loop_rounds, run_ours, run_reference)
    ours = median([a for a, _ in rounds])
    reference = median([b[0] for _, b in rounds])
    return {
        "batch_size": batch_size,
        "images": len(subset),
        "steps": steps_per_epoch(len(subset), batch_size),
        "reference_images": rounds[-1][1][1][0],
        "reference_steps": rounds[-1][1][1][1],
        "lenet_core_images_per_s": ours,
        "reference_images_per_s": reference,
        "speedup": ours / reference,
        "rounds": settings.loop_rounds,
    }


def loop_throughput(data: ImageData, root: Path, settings: BenchSettings) -> list[dict[str, Any]]:
    """lenet_core's loop against the DataLoader loop in this process, per batch size."""
    with torch_threads(settings.threads):
        return [loop_row(data, root, settings, batch_size) for batch_size in settings.batch_sizes]
