"""The tune stage's section of REPORT.md, computed from its ``TuneResults``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from study.common.report import figure_links, pct
from study.stages.tune.tables import (
    GROUP_BY,
    group_table,
    searched_setting,
    status_counts,
    summary_markdown,
    validation_gap_sentence,
)

if TYPE_CHECKING:
    from study.stages.tune.results import TuneResults


def tune_section(results: TuneResults, root: Path) -> list[str]:
    trials = results.trials
    lines = [
        "## Hyperparameter search (Ray Tune + Optuna)",
        "",
        f"{len(trials)} trials: {status_counts(trials)}. Study ended: {results.end.reason}.",
    ]
    best, config = results.best, results.best_config
    if best is not None and config is not None:
        setting = searched_setting(config, list(results.space.params))
        seeds = int(results.identity.get("seeds_per_trial", 1) or 1)
        spread = (
            f" (means over its {seeds} seeds, std {pct(best['best_val_acc_std'])} and "
            f"{pct(best['test_acc_std'])})"
            if seeds > 1 and "best_val_acc_std" in best.index
            else ""
        )
        lines.append(
            f"The best completed trial by validation accuracy ({setting}) reached validation accuracy "
            f"{pct(best['best_val_acc'])} and test accuracy {pct(best['test_acc'])}{spread}; one search "
            "run selects it, so its margin over the runner-up is not a tested difference."
        )
    gap = validation_gap_sentence(trials)
    if gap:
        lines.append(gap)
    params = list(results.space.params)
    for name in [g for g in GROUP_BY if g in params]:
        means = group_table(trials, name)
        if len(means) > 1:
            top, bottom = means.iloc[0], means.iloc[-1]
            lines.append(
                f"Among completed trials, by {name.replace('_', ' ')}: {means.index[0]} had the "
                f"highest mean validation accuracy ({pct(top['mean_val_acc'])}, {int(top['trials'])} "
                f"trials) and {means.index[-1]} the lowest ({pct(bottom['mean_val_acc'])}, "
                f"{int(bottom['trials'])} trials); the searcher chose these trials, so this describes "
                "the search, not a controlled comparison."
            )
    summary = summary_markdown(trials, params)
    body = summary.split("\n", 1)[1]  # below its "# Tune summary" title
    folder = root / "tune"
    return [*lines, "", body.replace("\n## ", "\n### "), *figure_links(folder, root), ""]
