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
from lenet_core.names import CLASS_NAMES
from study.common.files import read_json, write_text
from study.sweep.tables import FAILED_STATUSES, label_of

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


def _run_json(folder: Path) -> dict:
    """The folder's run.json, or {} where none was recorded."""
    path = folder / "run.json"
    return read_json(path, what="run.json") if path.is_file() else {}


def _provenance(folder: Path) -> list[str]:
    run = _run_json(folder)
    if not run:
        return ["(no run.json recorded in this folder)"]
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
    """A sweep or data-fraction folder: the answer first (the selected view, each budget's view,
    or the grid), then failures, stopping, cost and any published reference, then the tables."""
    runs = pd.read_parquet(folder / "runs.parquet")
    summary = pd.read_parquet(folder / "summary.parquet")
    run = _run_json(folder)
    file = run.get("file") or {}
    swept = list(summary.columns[: list(summary.columns).index("n")])
    select = file.get("select") if (folder / "selected.parquet").is_file() else ""
    sentences: list[str] = []
    tables: list[tuple[str, pd.DataFrame]] = []
    if select:
        selection = pd.read_parquet(folder / "selection.parquet")
        selected = pd.read_parquet(folder / "selected.parquet")
        sentences += _selection_sentences(selection, selected, swept, select)
        tables.append((f"Each at its {select} chosen by validation: test error {STATS_NOTE}", selected))
    if (folder / "compare_at.parquet").is_file() and file.get("compare_at"):
        at = pd.read_parquet(folder / "compare_at.parquet")
        where = ", ".join(f"{k}={_value(v)}" for k, v in file["compare_at"].items())
        sentences.append(f"With every condition at {where}: " + _claim(at, swept))
        tables.append((f"Every condition at {where}: test error {STATS_NOTE}", at))
    if not select:
        sentences += _main_sentences(summary, swept)
    sentences.append(_failed_sentence(runs, swept))
    sentences += _fraction_sentences(runs, swept)
    sentences += _stopping_sentences(runs)
    sentences += _cost_sentences(summary, swept)
    sentences += _reference_sentences(summary, file.get("reference") or {})
    grid_heading = (
        f"Every grid point (descriptive: picking from it by test error would flatter the pick) {STATS_NOTE}"
        if select
        else f"Test error by condition {STATS_NOTE}"
    )
    tables.append((grid_heading, summary))
    if select:
        tables.append((f"The choice of {select}: mean validation accuracy of ok seeds", selection))
    title = run.get("description") or folder.name
    body = [line for heading, frame in tables for line in (f"### {heading}", "", _md(frame), "")]
    return [f"## {title}", "", *[s for s in sentences if s], "", *body, *_figures(folder, root), ""]


STATS_NOTE = "(ok runs: mean, 95% t-interval; paired t-test vs the best over seeds, Holm)"
BUDGET_NAMES = {"equal_steps": "Equal steps", "equal_epochs": "Equal epochs"}


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _claim(table: pd.DataFrame, by: list[str]) -> str:
    """best_claim's sentence about a summary-shaped table (test_error_mean, ...)."""
    from study.common.stats import best_claim

    if table.empty:
        return "No condition has a run."
    stats = table.rename(columns={"test_error_mean": "mean", "test_error_std": "std"})
    stats.attrs.update({"by": by, "metric": "test_error", "lower_is_better": True})
    return best_claim(stats)


def _main_sentences(summary: pd.DataFrame, swept: list[str]) -> list[str]:
    if "budget" in swept:  # each budget is its own comparison, with its own best
        rest = [s for s in swept if s != "budget"]
        return [
            f"{BUDGET_NAMES.get(budget, budget)}: {_claim(part, rest)}"
            for budget, part in summary.groupby("budget", sort=False)
        ]
    if len(summary) == 1:
        return [_one_condition(summary.iloc[0])]
    return [_claim(summary, swept)]


def _one_condition(row: pd.Series) -> str:
    if row["n"] == 0:
        return "No run succeeded."
    interval = (
        f" (95% t-interval {_pct(row['ci95_low'])} to {_pct(row['ci95_high'])})" if row["n"] > 1 else ""
    )
    return (
        f"Over {int(row['n'])} ok run(s), mean test error is {_pct(row['test_error_mean'])}{interval}, "
        f"a test accuracy of {_pct(1 - row['test_error_mean'])}."
    )


def _selection_sentences(
    selection: pd.DataFrame, selected: pd.DataFrame, swept: list[str], field: str
) -> list[str]:
    groups = [s for s in swept if s != field]
    chosen = selection[selection["selected"]]
    picks = "; ".join(
        f"{', '.join(_value(r[g]) for g in groups)}: {field} {_value(r[field])} "
        f"(validation {_pct(r['val_acc_mean'])}, n={int(r['n'])})"
        for _, r in chosen.iterrows()
    )
    lines = [
        f"Each {' x '.join(groups)} was run over its own {field} grid and its {field} chosen by the "
        f"highest mean validation accuracy over ok seeds (failed runs left out; test error plays no "
        f"part in the choice): {picks}."
    ]
    unchosen = selection.groupby(groups, sort=False, dropna=False)["selected"].any() if groups else None
    if unchosen is not None and not unchosen.all():
        lines.append(
            "Every run failed for " + ", ".join(str(k) for k, v in unchosen.items() if not v) + "; left out."
        )
    lines.append("At the chosen values: " + _claim(selected, swept))
    return lines


def _failed_sentence(runs: pd.DataFrame, swept: list[str]) -> str:
    failed = runs[runs["status"].isin(FAILED_STATUSES)]
    if not len(failed):
        return f"None of the {len(runs)} runs diverged or collapsed."
    labels = sorted(
        {", ".join(f"{k}={r[k]}" for k in swept) + f" ({r['status']})" for _, r in failed.iterrows()}
    )
    return f"{len(failed)} of {len(runs)} runs failed and are left out of every mean: {'; '.join(labels)}."


def _fraction_sentences(runs: pd.DataFrame, swept: list[str]) -> list[str]:
    """The log-log slope of test error against training examples, per budget."""
    if "train_fraction" not in swept:
        return []
    ok = runs[~runs["status"].isin(FAILED_STATUSES)]
    views = ok.groupby("budget", sort=False) if "budget" in ok.columns else [(None, ok)]
    lines = []
    for budget, part in views:
        sizes = part.groupby("train_images")["test_error"].mean()
        if len(sizes) < 2:
            continue
        slope = np.polyfit(np.log(sizes.index), np.log(sizes.clip(lower=1e-6).values), 1)[0]
        epochs = part.groupby("train_images")["epochs"].max() if "epochs" in part.columns else None
        trained = (
            f" (an epoch budget of {int(epochs.iloc[0])} at {sizes.index[0]:,} examples and "
            f"{int(epochs.iloc[-1])} at {sizes.index[-1]:,})"
            if epochs is not None
            else ""
        )
        view = f"{BUDGET_NAMES.get(budget, budget)}: m" if budget is not None else "M"
        lines.append(
            f"{view}ean test error fell from {_pct(sizes.iloc[0])} with {sizes.index[0]:,} training "
            f"examples to {_pct(sizes.iloc[-1])} with {sizes.index[-1]:,}, a log-log slope of "
            f"{slope:.2f}{trained}."
        )
    return lines


def _stopping_sentences(runs: pd.DataFrame) -> list[str]:
    if "stopped_early" not in runs.columns or not runs["stopped_early"].any():
        return []
    stopped = runs.drop_duplicates("run")
    return [
        f"{int(stopped['stopped_early'].sum())} of {len(stopped)} runs stopped early when validation "
        f"accuracy stopped improving; runs lasted {stopped['epochs_run'].mean():.1f} epochs on average "
        f"and kept their best validation epoch ({stopped['best_epoch'].mean():.1f} on average)."
    ]


def _cost_sentences(summary: pd.DataFrame, swept: list[str]) -> list[str]:
    """Parameters and wall time per condition, where the conditions are different models."""
    if "parameters" not in summary.columns or summary["parameters"].nunique() < 2:
        return []
    parts = [
        f"{label_of(r, swept)}: {r['parameters']:,.0f} parameters, {r['seconds_mean']:,.0f} s per run"
        + (f" ({r['epochs_run_mean']:.1f} epochs)" if "epochs_run_mean" in r else "")
        for _, r in summary.iterrows()
        if r["n"] > 0
    ]
    return ["Size and cost (wall time: mean of ok runs, where they ran): " + "; ".join(parts) + "."]


def _reference_sentences(summary: pd.DataFrame, reference: dict) -> list[str]:
    """Our test accuracy next to a published one, and what differs between the two setups."""
    if not reference:
        return []
    ok = summary[summary["n"] > 0]
    published = f"{reference['source']} reports {_pct(reference['test_acc'])} test accuracy."
    if ok.empty:
        return [published + " No run of ours succeeded to compare with it."]
    row = ok.iloc[0]  # the only condition, or the best one
    ours = 1 - row["test_error_mean"]
    interval = (
        f", 95% t-interval {_pct(1 - row['ci95_high'])} to {_pct(1 - row['ci95_low'])}"
        if row["n"] > 1
        else ""
    )
    which = "" if len(summary) == 1 else f" ({_condition(row, summary)})"
    line = (
        f"{published} Ours{which}: {_pct(ours)} mean test accuracy over {int(row['n'])} seed(s){interval}, "
        f"{100 * (ours - reference['test_acc']):+.2f} percentage points."
    )
    note = reference.get("note")
    return [line + (f" What differs: {note}" if note else "")]


def _condition(row: pd.Series, summary: pd.DataFrame) -> str:
    return label_of(row, list(summary.columns[: list(summary.columns).index("n")]))


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
            f"{config['pooling']} pooling, batch {config['batch_size']}, "
            f"{config['lr_schedule']} lr schedule, patience {config['patience']}, "
            f"augmentation {config['augment']}"
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
    lines += ["", *mcnemar_sentences(mcnemar)]
    lines += _budget_sentences(folder)
    main = summary["diversity"][summary["main_group"]]
    oob = (
        f"; its out-of-bag estimate is {_pct(main['ensemble_oob_acc'])}" if "ensemble_oob_acc" in main else ""
    )
    lines.append(
        f"In the {summary['main_group']}, members disagree on {_pct(main['mean_pairwise_disagreement'])} of "
        f"test images on average and at least one member is right on {_pct(main['oracle_accuracy'])}{oob}"
        + (f" (means over {main['repeats']} repeats)." if main.get("repeats", 1) > 1 else ".")
    )
    per_class = pd.read_csv(folder / "per_class.csv")
    worst = per_class.sort_values("hard_vote_error", ascending=False).head(2)
    names = CLASS_NAMES.get(_run_json(folder).get("dataset", ""))
    lines.append(
        "The vote fails most on classes "
        + " and ".join(
            f"{int(r.digit)}{f' ({names[int(r.digit)]})' if names else ''}: {_pct(r.hard_vote_error)} error"
            for r in worst.itertuples()
        )
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


def mcnemar_sentences(mcnemar: pd.DataFrame) -> list[str]:
    """One line per compared pair: the exact McNemar verdict in every repeat and, with 2 or more
    repeats, a paired t-test of the accuracies over repeats. A vote's "best member" differs by
    repeat (chosen on validation), so those pairs are named by their role."""
    from study.common.stats import paired_test

    member = mcnemar["b"].str.fullmatch(r"r\d+_(seed|bagged)_\d+")  # e.g. r0_seed_00
    table = mcnemar.assign(pair_b=mcnemar["b"].where(~member, "its best member"))
    lines = []
    for (a, b), part in table.groupby(["a", "pair_b"], sort=False):
        verdicts = []
        for row in part.itertuples():
            winner = a if row.a_acc > row.b_acc else b
            verdict = f"{winner} better" if row.mcnemar_p < 0.05 else "no significant difference"
            scores = f"{_pct(row.a_acc)} vs {_pct(row.b_acc)}"
            verdicts.append(f"repeat {row.repeat}: {scores}, {verdict} (p = {row.mcnemar_p:.2g})")
        line = f"- {a} vs {b}, exact McNemar on the test set: " + "; ".join(verdicts)
        if len(part) >= 2:
            test = paired_test(part["a_acc"].to_numpy(), part["b_acc"].to_numpy())
            line += (
                f". Over the {test['n_pairs']} repeats: {100 * test['mean_diff']:+.2f} points on average, "
                f"paired t-test p = {test['p_t']:.2g}"
                + (" (significant at 0.05)" if test["p_t"] < 0.05 else " (not significant at 0.05)")
            )
        lines.append(line + ".")
    return lines


def _budget_sentences(folder: Path) -> list[str]:
    """How long each kind of model trained: its epoch cap, and the epochs it ran (it stops early
    on the config's patience and keeps its best validation epoch)."""
    members_path = folder / "members.parquet"
    if not members_path.is_file():
        return []
    members = pd.read_parquet(members_path)
    if "epochs_run" not in members:  # tables from before the budget columns
        return []
    parts = []
    for model, part in members.groupby("model", sort=False):
        name = "LeNet-5 members" if model == "lenet5" else model
        parts.append(
            f"{name} at most {int(part['max_epochs'].max())} epochs, ran {part['epochs_run'].min():.0f}-"
            f"{part['epochs_run'].max():.0f} (best validation epoch {part['best_epoch'].min():.0f}-"
            f"{part['best_epoch'].max():.0f})"
        )
    at_cap = sorted(set(members.loc[members["best_epoch"] >= members["max_epochs"], "model"]))
    capped = (
        [
            f"Still improving at the cap (best validation epoch = last): {', '.join(at_cap)}; "
            "more epochs may raise it."
        ]
        if at_cap
        else []
    )
    return ["Budget: " + "; ".join(parts) + ".", *capped]


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


def _anchor_accuracy(test_acc: float | list[float]) -> tuple[float, str]:
    """(the value a published row sorts by: its range's midpoint, the text shown)."""
    if isinstance(test_acc, list) and len(test_acc) == 2:
        return sum(test_acc) / 2, f"{100 * test_acc[0]:.1f}-{100 * test_acc[1]:.1f}%"
    value = test_acc[0] if isinstance(test_acc, list) else test_acc
    return value, f"{100 * value:.1f}%"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def anchor_rows(anchors: list[dict], comparison: pd.DataFrame) -> pd.DataFrame:
    """Published rows and ours (in bold, with an interval, parameters and training time) in one
    table, by test accuracy (a published range at its midpoint), best first."""
    rows = []
    for anchor in anchors:
        value, shown = _anchor_accuracy(anchor["test_acc"])
        rows.append((value, anchor["model"], shown, anchor.get("parameters", "") or "", "", "published"))
    for r in comparison.itertuples():
        name = r.model if r.model.startswith("resnet") else f"LeNet-5 {r.model}"
        shown = f"**{_pct(r.test_acc)}** [{_pct(r.ci95_low)}, {_pct(r.ci95_high)}]"
        time = _duration(r.training_seconds) + (f" for {r.models} models" if r.models > 1 else "")
        rows.append((r.test_acc, f"**{name}** (ours)", shown, f"{r.parameters:,}", time, f"ours, n={r.n}"))
    rows.sort(key=lambda row: -row[0])
    columns = ["model", "test accuracy", "parameters", "training time", "source"]
    return pd.DataFrame([row[1:] for row in rows], columns=columns)


def anchor_section(root: Path) -> list[str]:
    """Our ensemble rows placed among published numbers (the experiment file's [[anchor]] rows)."""
    file = _run_json(root).get("file") or {}
    comparison_path = root / "ensemble" / "comparison.parquet"
    if not file.get("anchor") or not comparison_path.is_file():
        return []
    comparison = pd.read_parquet(comparison_path)
    table = anchor_rows(file["anchor"], comparison)
    published = [_anchor_accuracy(a["test_acc"]) for a in file["anchor"]]
    sentences = []
    for model in ("single model", "seed ensemble, hard vote", "bagged, hard vote"):
        row = comparison[comparison["model"] == model]
        if row.empty:
            continue
        r = row.iloc[0]
        below = sum(r["ci95_high"] < value for value, _ in published)
        above = sum(r["ci95_low"] > value for value, _ in published)
        sentences.append(
            f"LeNet-5 {model}: {_pct(r['test_acc'])} [{_pct(r['ci95_low'])}, {_pct(r['ci95_high'])}], "
            f"n={r['n']}; its interval lies wholly above {above} of the {len(published)} published rows "
            f"(a range at its midpoint) and wholly below {below}"
            + (f", and overlaps {len(published) - above - below}." if above + below < len(published) else ".")
        )
    return [
        "## Placed among published results",
        "",
        f"Published numbers: {file.get('anchor_source', '')}. Ours are in bold: mean test accuracy and "
        "95% interval (over seeds for the single model, over repeats or Wilson's for votes), "
        "parameters (a vote counts all its members), training time on the machine under "
        '"What was run". The published rows come from other setups (epochs, augmentation, data '
        "handling) and carry no intervals.",
        "",
        *sentences,
        "",
        _md(table),
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
    lines = [f"# Report: {root.name}", "", *anchor_section(root)]
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
