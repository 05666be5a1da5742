"""The whole bench: every section in order, the JSON and the tables."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lenet_core.errors import StudyError
from study.bench.processes import load_average, section
from study.bench.settings import SHARED_MNIST, BenchSettings


def mnist_folder(settings: BenchSettings) -> Path:
    """MNIST for --ensemble and --accuracy: --mnist-dir, else the 5k subset beside the checkout."""
    from lenet_core.data import find_idx_files

    folder = settings.mnist_dir or SHARED_MNIST
    if find_idx_files("mnist", folder, required=False) is None:
        raise StudyError(
            f"--ensemble and --accuracy need MNIST (the 5k subset): no MNIST IDX files in {folder}; "
            "pass --mnist-dir"
        )
    return folder


def run_bench(
    *, settings: BenchSettings, data_dir: Path | None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every figure of the benchmark, as one JSON-ready dict (one key per section)."""
    from lenet_core.data import load_dataset
    from lenet_core.train import library_versions
    from study.bench.precision import accuracy_ab, precision_ab
    from study.bench.train import (
        extract_for_torchvision,
        fashion_idx_files,
        loop_throughput,
        whole_process_train,
    )

    fashion_dir = fashion_idx_files(data_dir)["train_images"].parent
    mnist_dir = mnist_folder(settings) if (settings.ensemble or settings.accuracy) else None
    data = load_dataset("fashion-mnist", data_dir=fashion_dir)  # and warm the decoded cache for the children
    figures: dict[str, Any] = {
        "quick": settings.quick,
        "device": settings.device,
        "threads": settings.threads,
        "precision_threads": settings.precision_threads,
        "cpus": os.cpu_count(),
        "dataset": data.name,
        "data_checksum": data.checksum,
        "versions": library_versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_at_start": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="study-bench-") as tmp:
        work = Path(tmp)
        tv_root = extract_for_torchvision(fashion_dir, work / "torchvision")
        if settings.core:
            with section(figures, "train", say, "1/3 whole-process study train vs the DataLoader script"):
                figures["train"].update(
                    whole_process_train(
                        data, data_dir=fashion_dir, tv_root=tv_root, settings=settings, work=work / "train"
                    )
                )
            with section(figures, "precision", say, "2/3 bf16 vs fp32 training on the CPU"):
                figures["precision"]["cases"] = precision_ab(data, settings)
            with section(figures, "loop", say, "3/3 training loop vs DataLoader loop, in process"):
                figures["loop"]["rows"] = loop_throughput(data, tv_root, settings)
        if settings.study:
            from study.bench.tune import tune_overhead, whole_study

            with section(figures, "study", say, "--study: study tune vs the Ray-docs-style peer script"):
                figures["study"].update(
                    whole_study(
                        data, data_dir=fashion_dir, tv_root=tv_root, settings=settings, work=work / "study"
                    )
                )
                figures["study"]["tune_overhead"] = tune_overhead(data, settings)
        if settings.ensemble:
            from study.bench.ensemble import ensemble_ab

            with section(figures, "ensemble", say, "--ensemble: study ensemble, ResNet-18 fp32 then bf16"):
                figures["ensemble"].update(
                    ensemble_ab(settings=settings, work=work / "ensemble", data_dir=mnist_dir)
                )
        if settings.accuracy:
            with section(figures, "accuracy", say, "--accuracy: ResNet-18 test accuracy, bf16 vs fp32"):
                mnist = load_dataset("mnist", data_dir=mnist_dir)
                figures["accuracy"].update(accuracy_ab(mnist, settings=settings, say=say))
        if settings.pack:
            from study.bench.pack import pack_throughput

            with section(figures, "pack", say, "--pack: K LeNet-5s packed in one step vs one after another"):
                figures["pack"].update(pack_throughput(data, settings, say))
    figures["load_at_end"] = load_average()
    return figures


def bench_command(
    *,
    quick: bool,
    device: str = "cpu",
    threads: int = 1,
    data_dir: Path | None = None,
    out: Path,
    core: bool = True,
    study: bool = False,
    ensemble: bool = False,
    accuracy: bool = False,
    pack: bool = False,
    mnist_dir: Path | None = None,
    rounds: int | None = None,
    epochs: int = 10,
    seeds: int = 3,
    say: Callable[[str], None] | None = None,
) -> Path:
    """What `study bench` does: measure, print the tables, write OUT/bench/<time>.json; its path."""
    from study.bench.report import print_report
    from study.common.console import console
    from study.common.files import prepare_run_dir, write_json

    settings = BenchSettings(
        quick=quick,
        device=device,
        threads=threads,
        core=core,
        study=study,
        ensemble=ensemble,
        accuracy=accuracy,
        pack=pack,
        mnist_dir=mnist_dir,
        rounds=rounds,
        epochs=epochs,
        seeds=seeds,
    )
    if ensemble or accuracy:
        mnist_folder(settings)  # a missing MNIST fails now, not after minutes of measuring
    folder = prepare_run_dir(out, "bench", ".")
    say = say or console().print
    figures = run_bench(settings=settings, data_dir=data_dir, say=say)
    print_report(figures)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, figures)
    say(f"-> {path}")
    return path
