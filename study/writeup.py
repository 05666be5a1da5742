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
from study.sweep.tables import FAILED_STATUSES

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
    from study.common.stats import best_claim

    runs = pd.read_parquet(folder / "runs.parquet")
    summary = pd.read_parquet(folder / "summary.parquet")
    run = read_json(folder / "run.json", what="run.json") if (folder / "run.json").is_file() else {}
    swept = list(summary.columns[: list(summary.columns).index("n")])
    stats = summary.rename(columns={"test_error_mean": "mean", "test_error_std": "std"})
    stats.attrs.update({"by": swept, "metric": "test_error", "lower_is_better": True})
    sentences = [best_claim(stats)]
    failed = runs[runs["status"].isin(FAILED_STATUSES)]
    if len(failed):
        labels = sorted(
            {", ".join(f"{k}={r[k]}" for k in swept) + f" ({r['status']})" for _, r in failed.iterrows()}
        )
        sentences.append(
            f"{len(failed)} of {len(runs)} runs failed and are left out of every mean: {'; '.join(labels)}."
        )
    else:
        sentences.append(f"None of the {len(runs)} runs diverged or collapsed.")
    ok = runs[~runs["status"].isin(FAILED_STATUSES)]
    if "train_fraction" in swept and ok["train_images"].nunique() > 1:
        sizes = ok.groupby("train_images")["test_error"].mean()
        slope = np.polyfit(np.log(sizes.index), np.log(sizes.clip(lower=1e-6).values), 1)[0]
        sentences.append(
            f"Mean test error fell from {_pct(sizes.iloc[0])} with {sizes.index[0]} training examples to "
            f"{_pct(sizes.iloc[-1])} with {sizes.index[-1]}, a log-log slope of {slope:.2f}."
        )
    title = run.get("description") or folder.name
    return [
        f"## {title}",
        "",
        *sentences,
        "",
        "### Test error by condition (ok runs: mean, 95% t-interval; paired t-test vs the best, Holm)",
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
        setting = (
            f"{config['optimizer']}, lr {config['lr']:.3g}, {config['activation']}, "
            f"{config['pooling']} pooling, batch {config['batch_size']}"
        )
        lines.append(
            f"The best completed trial by validation accuracy ({setting}) reached validation accuracy "
            f"{_pct(metrics['best_val_acc'])} and test accuracy {_pct(metrics['test_acc'])}; one search "
            "run selects it, so its margin over the runner-up is not a tested difference."
        )
    done = trials[trials["status"] == "completed"]
    for field in ("optimizer", "activation", "pooling", "batch_size"):
        if field in done and done["best_val_acc"].notna().any():
            means = done.groupby(field)["best_val_acc"].agg(["mean", "count"]).sort_values("mean")
            if len(means) > 1:
                top, bottom = means.iloc[-1], means.iloc[0]
                lines.append(
                    f"Among completed trials, by {field.replace('_', ' ')}: {means.index[-1]} had the "
                    f"highest mean validation accuracy ({_pct(top['mean'])}, {int(top['count'])} trials) "
                    f"and {means.index[0]} the lowest ({_pct(bottom['mean'])}, {int(bottom['count'])} "
                    "trials); the searcher chose these trials, so this describes the search, not a "
                    "controlled comparison."
                )
    summary = (folder / "summary.md").read_text() if (folder / "summary.md").is_file() else ""
    body = summary.split("\n", 1)[1] if summary.startswith("# ") else summary
    return [*lines, "", body.replace("\n## ", "\n### "), *_figures(folder, root), ""]


def ensemble_section(folder: Path, root: Path) -> list[str]:
    comparison = pd.read_parquet(folder / "comparison.parquet")
    mcnemar = pd.read_parquet(folder / "mcnemar.parquet")
    summary = read_json(folder / "diversity.json", what="diversity.json")
    lines = [
        "## LeNet-5 ensembles against a single model and a ResNet",
        "",
        f"{summary['repeats']} independent ensemble(s) of {summary['members']} members, all on one "
        "train/validation split; intervals are t-intervals over repeats (over seeds for the single "
        "model), or Wilson's on the one test set when there is a single repeat.",
    ]
    for row in comparison.itertuples():
        interval = f"[{_pct(row.ci95_low)}, {_pct(row.ci95_high)}]"
        lines.append(
            f"- {row.model}: {_pct(row.test_acc)} test accuracy {interval} (n={row.n}, {row.interval}), "
            f"ECE {row.ece:.3f}, {row.training_seconds:.0f} s of training."
        )
    lines.append("")
    for repeat, part in mcnemar.groupby("repeat"):
        if repeat != mcnemar["repeat"].min():
            break
        for row in part.itertuples():
            better = row.a if row.a_acc > row.b_acc else row.b
            verdict = (
                f"{better} is better (exact McNemar p = {row.mcnemar_p:.3g})"
                if row.mcnemar_p < 0.05
                else f"no significant difference (exact McNemar p = {row.mcnemar_p:.3g})"
            )
            lines.append(f"- {row.a} ({_pct(row.a_acc)}) vs {row.b} ({_pct(row.b_acc)}): {verdict}.")
    main = summary["diversity"][summary["main_group"]]
    oob = (
        f"; its out-of-bag estimate is {_pct(main['ensemble_oob_acc'])}" if "ensemble_oob_acc" in main else ""
    )
    lines.append(
        f"In the {summary['main_group']}, members disagree on {_pct(main['mean_pairwise_disagreement'])} of "
        f"test images on average and at least one member is right on {_pct(main['oracle_accuracy'])}{oob}."
    )
    per_class = pd.read_csv(folder / "per_class.csv")
    worst = per_class.sort_values("hard_vote_error", ascending=False).head(2)
    lines.append(
        "The vote fails most on classes "
        + " and ".join(f"{int(r.digit)} ({_pct(r.hard_vote_error)} error)" for r in worst.itertuples())
        + "."
    )
    return [
        *lines,
        "",
        _md(comparison),
        "",
        "### Exact McNemar tests on the test set (every repeat)",
        "",
        _md(mcnemar),
        "",
        "### Error by class",
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
