"""`study report results/<name>`: REPORT.md for a writeup, every sentence computed from the numbers.

It reads what the other commands wrote (``run.json``, tables, figures) in the folder itself and
in its ``tune/``, ``ensemble/`` and ``train/`` sub-folders, and writes ``REPORT.md`` beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from lenet_core.errors import StudyError
from study.common.files import read_json, write_text

SECTIONS = ("sweep", "tune", "ensemble", "train")


def _pct(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4g")


def _figures(folder: Path, root: Path) -> list[str]:
    return [
        f"![{p.stem.replace('_', ' ')}]({p.relative_to(root).as_posix()})"
        for p in sorted(folder.glob("*.png"))
    ]


def _provenance(folder: Path) -> list[str]:
    path = folder / "run.json"
    if not path.is_file():
        return ["(no run.json recorded in this folder)"]
    run = read_json(path, what="run.json")
    versions = run.get("versions", {})
    machine = run.get("machine", {})
    lines = [
        f"- Command: `{run.get('command', 'unknown')}`",
        f"- Finished: {run.get('finished', 'unknown')}",
        f"- Data: {run.get('dataset')} from `{run.get('data_source')}`, sha256 `{run.get('data_checksum')}`",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        f"- Machine: {machine.get('platform')}, {machine.get('cpus')} CPUs, "
        f"{machine.get('memory_gb')} GiB, GPUs: {', '.join(machine.get('gpus') or []) or 'none'}",
    ]
    if run.get("file"):
        lines.append("- Experiment file (as run): `" + json.dumps(run["file"], default=str) + "`")
    return lines


# ------------------------------------------------------------------ sections


def sweep_section(folder: Path, root: Path) -> list[str]:
    runs = pd.read_parquet(folder / "runs.parquet")
    summary = pd.read_parquet(folder / "summary.parquet")
    run = read_json(folder / "run.json", what="run.json") if (folder / "run.json").is_file() else {}
    swept = [
        c for c in summary.columns if not c.endswith(("_mean", "_std")) and c not in ("runs", "diverged")
    ]
    ranked = summary.sort_values("test_error_mean")
    best, worst = ranked.iloc[0], ranked.iloc[-1]

    def name(row: pd.Series) -> str:
        return ", ".join(f"{k}={row[k]}" for k in swept)

    sentences = [
        f"{name(best)} reached the lowest mean test error, {_pct(best['test_error_mean'])} over "
        f"{int(best['runs'])} run(s); {name(worst)} the highest, {_pct(worst['test_error_mean'])}.",
    ]
    diverged = runs[runs["status"] == "diverged"]
    if len(diverged):
        labels = sorted({", ".join(f"{k}={r[k]}" for k in swept) for _, r in diverged.iterrows()})
        sentences.append(f"{len(diverged)} of {len(runs)} runs diverged: {'; '.join(labels)}.")
    else:
        sentences.append(f"None of the {len(runs)} runs diverged.")
    if "train_fraction" in swept and len(summary) > 1:
        sizes = runs.groupby("train_images")["test_error"].mean()
        slope = np.polyfit(np.log(sizes.index), np.log(sizes.clip(lower=1e-6).values), 1)[0]
        sentences.append(
            f"Test error fell from {_pct(sizes.iloc[0])} with {sizes.index[0]} training examples to "
            f"{_pct(sizes.iloc[-1])} with {sizes.index[-1]}, a log-log slope of {slope:.2f}."
        )
    title = run.get("description") or folder.name
    return [
        f"## {title}",
        "",
        *sentences,
        "",
        "### Mean and standard deviation over seeds",
        "",
        _md(summary),
        "",
        *_figures(folder, root),
        "",
    ]


def tune_section(folder: Path, root: Path) -> list[str]:
    trials = pd.read_parquet(folder / "trials.parquet")
    counts = ", ".join(f"{n} {s}" for s, n in trials["status"].value_counts().items())
    lines = ["## Hyperparameter search (Ray Tune + Optuna)", "", f"{len(trials)} trials: {counts}."]
    best_path = folder / "best.json"
    if best_path.is_file():
        best = read_json(best_path, what="best.json")
        config, metrics = best["config"], best["metrics"]
        lines.append(
            f"The best trial ({config['optimizer']}, lr {config['lr']:.3g}, {config['activation']}, "
            f"{config['pooling']} pooling, batch {config['batch_size']}) reached validation accuracy "
            f"{_pct(metrics['final_val_acc'])} and test accuracy {_pct(metrics['test_acc'])}."
        )
    for field in ("optimizer", "activation", "pooling", "batch_size"):
        if field in trials and trials["final_val_acc"].notna().any():
            means = trials.groupby(field)["final_val_acc"].mean().dropna().sort_values()
            if len(means) > 1:
                lines.append(
                    f"By {field.replace('_', ' ')}, {means.index[-1]} had the highest mean "
                    f"validation accuracy ({_pct(means.iloc[-1])}) and {means.index[0]} the "
                    f"lowest ({_pct(means.iloc[0])})."
                )
    summary = (folder / "summary.md").read_text() if (folder / "summary.md").is_file() else ""
    body = summary.split("\n", 1)[1] if summary.startswith("# ") else summary
    return [*lines, "", body.replace("\n## ", "\n### "), *_figures(folder, root), ""]


def ensemble_section(folder: Path, root: Path) -> list[str]:
    comparison = pd.read_parquet(folder / "comparison.parquet")
    diversity = read_json(folder / "diversity.json", what="diversity.json")
    verdict = (
        "beat" if diversity["hard_vote_test_acc"] > diversity["mean_member_test_acc"] else ("did not beat")
    )
    lines = [
        "## Bagged ensemble against a ResNet",
        "",
        f"The hard vote of {diversity['members']} bagged members reached "
        f"{_pct(diversity['hard_vote_test_acc'])} test accuracy and {verdict} the mean single member "
        f"({_pct(diversity['mean_member_test_acc'])}); the best member by validation accuracy reached "
        f"{_pct(diversity['best_member_test_acc'])} (McNemar p = "
        f"{diversity['mcnemar_p_hard_vote_vs_best_member']:.3g}).",
    ]
    if diversity.get("resnet_test_acc") is not None:
        better = "above" if diversity["hard_vote_test_acc"] > diversity["resnet_test_acc"] else "below"
        lines.append(
            f"The vote is {better} the ResNet baseline ({_pct(diversity['resnet_test_acc'])}, "
            f"McNemar p = {diversity['mcnemar_p_hard_vote_vs_resnet']:.3g})."
        )
    lines.append(
        f"Members disagree on {_pct(diversity['mean_pairwise_disagreement'])} of test images on "
        f"average; at least one member is right on {_pct(diversity['oracle_accuracy'])}; the "
        f"out-of-bag estimate of the vote is {_pct(diversity['ensemble_oob_acc'])}."
    )
    per_class = pd.read_csv(folder / "per_class.csv")
    worst = per_class.sort_values("hard_vote_error", ascending=False).head(2)
    lines.append(
        "The vote fails most on digits "
        + " and ".join(f"{int(r.digit)} ({_pct(r.hard_vote_error)} error)" for r in worst.itertuples())
        + "."
    )
    return [
        *lines,
        "",
        _md(comparison),
        "",
        "### Error by digit",
        "",
        _md(per_class),
        "",
        *_figures(folder, root),
        "",
    ]


def train_section(folder: Path, root: Path) -> list[str]:
    result = read_json(folder / "result.json", what="result.json")
    history = pd.read_parquet(folder / "history.parquet")
    return [
        "## Single training run",
        "",
        f"{result['status']} after {result['epochs_run']} epochs: test accuracy "
        f"{_pct(result['test_acc'])}, validation {_pct(result['val_acc'])}, "
        f"{result['images_per_s']:,.0f} training images/s.",
        "",
        _md(history),
        "",
    ]


def find_sections(root: Path) -> list[tuple[str, Path]]:
    found = []
    if (root / "runs.parquet").is_file():
        found.append(("sweep", root))
    for kind in ("tune", "ensemble", "train"):
        marker = {"tune": "trials.parquet", "ensemble": "comparison.parquet", "train": "result.json"}[kind]
        if (root / kind / marker).is_file():
            found.append((kind, root / kind))
    return found


def write_report(root: Path) -> Path:
    if not root.is_dir():
        raise StudyError(f"{root} is not a results folder")
    sections = find_sections(root)
    if not sections:
        raise StudyError(f"{root} holds no tune, ensemble, train or experiment results to report")
    builders = {
        "sweep": sweep_section,
        "tune": tune_section,
        "ensemble": ensemble_section,
        "train": train_section,
    }
    lines = [f"# Report: {root.name}", ""]
    for kind, folder in sections:
        body = builders[kind](folder, root)  # starts with its "## title" and a blank line
        lines += [
            *body[:2],
            "### What was run",
            "",
            *_provenance(folder),
            "",
            "### What it shows",
            "",
            *body[2:],
        ]
    path = root / "REPORT.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
