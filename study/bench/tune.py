"""A whole study against the Ray-docs way (both as processes), and Tune's overhead in process."""

from __future__ import annotations

import contextlib
import io
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData
from lenet_core.train import trial_split
from study.bench.processes import (
    ab_round,
    free_port,
    last_json,
    median,
    private_ray_env,
    run_process,
    steps_per_epoch,
    study_command,
)
from study.bench.settings import PEER_SCRIPT, STUDY_SPACE_TOML, TRAIN_BATCH, BenchSettings

# What both sides report, and the phases of their wall time
STUDY_WORK_KEYS = ("trials", "errors", "epochs", "train_images", "steps", "val_images")


def study_commands(
    *, data_dir: Path, tv_root: Path, out: Path, name: str, settings: BenchSettings, train_images: int
) -> tuple[list[str], list[str]]:
    """(study tune, the peer script): the same trials, epochs, batch, optimizer and space."""
    space = out / "space.toml"
    space.parent.mkdir(parents=True, exist_ok=True)
    space.write_text(STUDY_SPACE_TOML)
    shared = f"--trials {settings.study_trials} --epochs {settings.study_epochs} --batch-size {TRAIN_BATCH}"
    ours = [
        *study_command(),
        # --dashboard: the peer starts Ray's dashboard too, whatever STUDY_DASHBOARD says
        *"tune --dataset fashion-mnist --optimizer adam --scheduler none --gpus 0 --dashboard".split(),
        *shared.split(),
        *["--train-fraction", f"{settings.study_train_fraction:g}", "--space", str(space)],
        *["--data-dir", str(data_dir), "--out", str(out / "ours"), "--name", name],
    ]
    peer = [
        sys.executable,
        str(PEER_SCRIPT),
        *shared.split(),
        *["--root", str(tv_root), "--out", str(out / "peer" / name), "--dashboard-port", str(free_port())],
    ]
    if settings.study_train_fraction < 1.0:
        peer += ["--train-images", str(train_images)]
    return ours, peer


def ours_study_run(command: list[str], folder: Path, *, train_images: int, val_images: int) -> dict[str, Any]:
    """One `study tune` process: wall time, the work its tables show, where the time went."""
    import pandas as pd

    with private_ray_env() as env:
        run = run_process(command, env=env)
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    first_start, last_end = float(trials["start_time"].min()), float(trials["end_time"].max())
    return {
        "wall_s": run["wall_s"],
        "trials": len(trials),
        "errors": int((trials["status"] == "errored").sum()),
        "epochs": len(epochs),
        "train_images": len(epochs) * train_images,
        "steps": len(epochs) * steps_per_epoch(train_images, TRAIN_BATCH),
        "val_images": len(epochs) * val_images,
        "best_val_acc": float(trials["best_val_acc"].max()),
        "launch_to_first_trial_s": first_start - run["launched"],
        "trials_span_s": last_end - first_start,
        "last_trial_to_exit_s": run["exited"] - last_end,
        "summed_epoch_training_s": float(epochs["seconds"].sum()),
    }


def peer_study_run(command: list[str]) -> dict[str, Any]:
    """One peer-script process: wall time, the work it reports, where the time went."""
    with private_ray_env() as env:
        run = run_process(command, env=env)
    report = last_json(run["stdout"])
    seconds = report["seconds"]
    script_start = run["exited"] - seconds["in_script"]  # ~ when its first line ran
    fit_start = script_start + seconds["imports"] + seconds["ray_start"]
    first_start = fit_start + seconds["first_trial_start_after_fit"]
    last_report = fit_start + seconds["fit"] - seconds["last_report_to_fit_end"]
    return {
        "wall_s": run["wall_s"],
        **{key: report[key] for key in STUDY_WORK_KEYS},
        "best_val_acc": report["best_val_acc"],
        "launch_to_first_trial_s": first_start - run["launched"],
        "trials_span_s": last_report - first_start,
        "last_trial_to_exit_s": run["exited"] - last_report,
        "script_seconds": seconds,
    }


def whole_study(
    data: ImageData, *, data_dir: Path, tv_root: Path, settings: BenchSettings, work: Path
) -> dict[str, Any]:
    """`study tune` against the peer script: same trials, epochs and images, alternated rounds."""
    train_idx, val_idx = trial_split(
        data, TrialConfig(dataset=data.name, train_fraction=settings.study_train_fraction)
    )
    rounds = []
    for i in range(settings.study_rounds):
        name = f"round{i}"
        ours, peer = study_commands(
            data_dir=data_dir,
            tv_root=tv_root,
            out=work,
            name=name,
            settings=settings,
            train_images=len(train_idx),
        )
        folder = work / "ours" / name / "tune"

        def run_ours(command: list[str] = ours, folder: Path = folder) -> dict[str, Any]:
            return ours_study_run(command, folder, train_images=len(train_idx), val_images=len(val_idx))

        rounds.append(ab_round(i, run_ours, lambda command=peer: peer_study_run(command)))
    ours_wall = median([a["wall_s"] for a, _ in rounds])
    peer_wall = median([b["wall_s"] for _, b in rounds])
    return {
        "rounds": len(rounds),
        "trials": settings.study_trials,
        "epochs": settings.study_epochs,
        "train_fraction": settings.study_train_fraction,
        "ours_wall_s": ours_wall,
        "peer_wall_s": peer_wall,
        "speedup": peer_wall / ours_wall,
        "ours": rounds[-1][0],
        "peer": rounds[-1][1],
        "ours_walls_s": [a["wall_s"] for a, _ in rounds],
        "peer_walls_s": [b["wall_s"] for _, b in rounds],
    }


class CpuSampler:
    """Samples system-wide CPU use every ``interval`` seconds in a background thread."""

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._psutil = psutil
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self._psutil.cpu_percent(interval=None)
        while not self._stop.wait(self.interval):
            self.samples.append((time.time(), self._psutil.cpu_percent(interval=None)))

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mean_between(self, start: float, end: float) -> float:
        inside = [p for t, p in self.samples if start + self.interval <= t <= end]
        return float(np.mean(inside)) if inside else float("nan")


def tune_overhead(data: ImageData, settings: BenchSettings) -> dict[str, Any]:
    """A real 2-at-a-time study in this process: overhead per trial, time to first step, CPU
    use, memory, and whether every trial read the dataset zero-copy."""
    from study.common.cluster import ClusterOptions
    from study.common.context import RunContext
    from study.stages.tune.run import TuneSettings, run_study
    from study.stages.tune.space import parse_space

    space = parse_space(
        {
            "space": {
                "optimizer": {"choices": ["adam", "sgd"]},
                "lr": {"low": 1e-3, "high": 1e-1, "log": True},
            }
        },
        source="bench space",
    )
    base = TrialConfig(
        dataset=data.name,
        epochs=1,
        train_fraction=0.05 if settings.quick else 0.25,
        threads=1,
        seed=0,
        device=settings.device,
    )
    cluster = ClusterOptions(
        cpus_per_trial=1,
        max_concurrent=2,
        gpus=1 if settings.device == "cuda" else 0,
        gpus_per_trial=0.5 if settings.device == "cuda" else None,
    )
    quiet = contextlib.redirect_stdout(io.StringIO())  # the study's own progress lines
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp, CpuSampler() as cpu, quiet:
        wall_start = time.time()
        results = run_study(
            base=base,
            space=space,
            settings=TuneSettings(trials=settings.overhead_trials, scheduler="none"),
            context=RunContext(
                data=data, out=Path(tmp), name="bench", cluster=cluster, progress=lambda _: None
            ),
            probe_memory=True,
        )
        trials, epochs = results.trials, results.epochs
        wall = time.time() - wall_start
    first, last = trials["start_time"].min(), trials["end_time"].max()
    busy = last - first
    in_trial = float((trials["end_time"] - trials["start_time"]).sum())  # inside the trial function
    training = float(epochs["seconds"].sum())
    concurrency = 2
    return {
        "trials": len(trials),
        "concurrency": concurrency,
        "trials_wall_s": busy,
        "summed_training_s": training,
        "summed_in_trial_s": in_trial,
        "overhead_per_trial_s": (busy * concurrency - in_trial) / len(trials),
        "overhead_incl_evaluation_per_trial_s": (busy * concurrency - training) / len(trials),
        "study_start_to_first_step_s": first - wall_start,
        "study_wall_s_with_ray_start": wall,
        "cpu_busy_percent_during_trials": cpu.mean_between(first, last),
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": float(trials["worker_rss_mb"].max()),
        "worker_uss_mb_mean": float(trials["worker_uss_mb"].mean()),
        "data_private_mb_per_trial_max": float(trials["data_private_mb"].max()),
        "data_zero_copy_all_trials": bool(trials["data_zero_copy"].all()),
        "dataset_mb": (data.train_images.nbytes + data.test_images.nbytes) / 2**20,
    }
