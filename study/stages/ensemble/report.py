"""The ensemble stage's section of REPORT.md, computed from its ``EnsembleResults``, and the table
that places its rows among published results (an experiment's ``[[anchor]]`` rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from lenet_core.config import from_dict
from study.common.report import figure_links as _figures
from study.common.report import md as _md
from study.common.report import pct as _pct

if TYPE_CHECKING:
    from study.stages.ensemble.results import EnsembleResults


def ensemble_section(results: EnsembleResults, root: Path) -> list[str]:
    comparison, mcnemar, summary = results.comparison, results.mcnemar, results.diversity
    folder = root / "ensemble"
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
    lines += ["", *mcnemar_sentences(mcnemar, results.voting_member_names())]
    lines += _budget_sentences(results.members)
    lines += recipe_sentences(results.members)
    main = summary["diversity"][summary["main_group"]]
    oob = (
        f"; its out-of-bag estimate is {_pct(main['ensemble_oob_acc'])}" if "ensemble_oob_acc" in main else ""
    )
    lines.append(
        f"In the {summary['main_group']}, members disagree on {_pct(main['mean_pairwise_disagreement'])} of "
        f"test images on average and at least one member is right on {_pct(main['oracle_accuracy'])}{oob}"
        + (f" (means over {main['repeats']} repeats)." if main.get("repeats", 1) > 1 else ".")
    )
    per_class = results.per_class
    worst = per_class.sort_values("hard_vote_error", ascending=False).head(2)
    lines.append(
        "The vote fails most on classes " + " and ".join(map(_class_error, worst.to_dict("records"))) + "."
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


def _class_error(row: dict) -> str:
    """ "6 (Shirt): 28.4% error", or "8: 3.1% error" where the name is the digit itself."""
    label, name = int(row["class"]), str(row["class_name"])
    return f"{label}{'' if name == str(label) else f' ({name})'}: {_pct(row['hard_vote_error'])} error"


def mcnemar_sentences(mcnemar: pd.DataFrame, voting_members: set[str]) -> list[str]:
    """One line per compared pair: the exact McNemar verdict in every repeat and, with 2 or more
    repeats, a paired t-test of the accuracies over repeats. A vote's "best member" differs by
    repeat (chosen on validation), so those pairs are named by their role."""
    overall = _pair_verdicts(mcnemar, voting_members).set_index("pair")
    lines = []
    for (a, b), part in _named_pairs(mcnemar, voting_members).groupby(["a", "pair_b"], sort=False):
        verdicts = []
        for row in part.itertuples():
            winner = a if row.a_acc > row.b_acc else b
            verdict = f"{winner} better" if row.mcnemar_p < 0.05 else "no significant difference"
            scores = f"{_pct(row.a_acc)} vs {_pct(row.b_acc)}"
            verdicts.append(f"repeat {row.repeat}: {scores}, {verdict} (p = {row.mcnemar_p:.2g})")
        line = f"- {a} vs {b}, exact McNemar on the test set: " + "; ".join(verdicts)
        if len(part) >= 2:
            test = overall.loc[f"{a} vs {b}"]
            line += (
                f". Over the {len(part)} repeats: {100 * test['mean_diff']:+.2f} points on average, "
                f"paired t-test p = {test['p']:.2g}"
                + (" (significant at 0.05)" if test["p"] < 0.05 else " (not significant at 0.05)")
            )
        lines.append(line + ".")
    return lines


def _named_pairs(mcnemar: pd.DataFrame, voting_members: set[str]) -> pd.DataFrame:
    """The McNemar table with ``pair_b``: b, or "its best member" where b is one of the vote's own
    members (a different model in each repeat)."""
    member = mcnemar["b"].isin(voting_members)
    return mcnemar.assign(pair_b=mcnemar["b"].where(~member, "its best member"))


def _pair_verdicts(mcnemar: pd.DataFrame, voting_members: set[str]) -> pd.DataFrame:
    """One row per compared pair: its verdict over repeats (a paired t-test of the accuracies), as
    mcnemar_sentences states it; with one repeat, that repeat's exact McNemar verdict."""
    from study.common.stats import paired_test

    rows = []
    for (a, b), part in _named_pairs(mcnemar, voting_members).groupby(["a", "pair_b"], sort=False):
        if len(part) >= 2:
            test = paired_test(part["a_acc"].to_numpy(), part["b_acc"].to_numpy())
            diff, p, how = float(test["mean_diff"]), float(test["p_t"]), "paired t over repeats"
        else:
            row = part.iloc[0]
            diff, p, how = float(row["a_acc"] - row["b_acc"]), float(row["mcnemar_p"]), "McNemar"
        verdict = (f"{a} better" if diff > 0 else f"{b} better") if p < 0.05 else "no significant difference"
        rows.append(
            {
                "pair": f"{a} vs {b}",
                "verdict": verdict,
                "mean_diff": diff,
                "p": p,
                "n": len(part),
                "test": how,
            }
        )
    return pd.DataFrame(rows)


def earlier_claims_section(previous: EnsembleResults, results: EnsembleResults, *, source: str) -> list[str]:
    """Each comparison's earlier verdict (read from the earlier run's stored McNemar table) beside
    this run's, and whether it survived."""
    before = _pair_verdicts(previous.mcnemar, previous.voting_member_names()).set_index("pair")
    now = _pair_verdicts(results.mcnemar, results.voting_member_names()).set_index("pair")
    rows = []
    for pair in before.index:
        old = before.loc[pair]
        new = now.loc[pair] if pair in now.index else None
        rows.append(
            {
                "comparison": pair,
                "earlier": old["verdict"],
                "now": "not compared" if new is None else new["verdict"],
                "survived": "no" if new is None or new["verdict"] != old["verdict"] else "yes",
                "earlier_diff_points": round(100 * old["mean_diff"], 2),
                "now_diff_points": None if new is None else round(100 * new["mean_diff"], 2),
                "earlier_p": old["p"],
                "now_p": None if new is None else new["p"],
                "earlier_repeats": int(old["n"]),
                "now_repeats": None if new is None else int(new["n"]),
                "earlier_test": old["test"],
                "now_test": None if new is None else new["test"],
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return []
    lost = table[table["survived"] == "no"]
    lost_text = "; ".join(f"{r.comparison}: {r.earlier} -> {r.now}" for r in lost.itertuples())
    return [
        "### Earlier claims, against this run",
        "",
        f"The earlier run ({source}): of its {len(table)} verdicts (each pair's, by a paired t-test of "
        "the accuracies over repeats, or by McNemar on the test set where a run had one repeat), "
        f"{len(table) - len(lost)} survived this run and {len(lost)} did not"
        + (f": {lost_text}." if len(lost) else "."),
        "",
        _md(table),
        "",
    ]


def _budget_sentences(members: pd.DataFrame) -> list[str]:
    """How long each kind of model trained: its epoch cap, and the epochs it ran (it stops early
    on the config's patience and keeps its best validation epoch)."""
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


# What a reader needs to retrain a model: every training field of TrialConfig but the seed.
RECIPE_FIELDS = (
    "variant",
    "activation",
    "pooling",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "lr_schedule",
    "lr_gamma",
    "lr_step_size",
    "warmup_epochs",
    "label_smoothing",
    "augment",
    "batch_size",
    "epochs",
    "patience",
    "precision",
)


def recipe_sentences(members: pd.DataFrame) -> list[str]:
    """The recipe each kind of model trained with (the fields its configs share; seeds differ), so
    the ResNet's fixed recipe stands beside the LeNets' tuned one."""
    if "config" not in members or not len(members):
        return []
    parts = []
    for model, part in members.groupby("model", sort=False):
        configs = [json.loads(c) for c in part["config"]]
        first = configs[0]
        shared = {
            key: first[key]
            for key in RECIPE_FIELDS
            if first.get(key) is not None and all(c.get(key) == first[key] for c in configs)
        }
        for key in from_dict(first).ignored_fields():  # step's gamma and size under another schedule
            shared.pop(key, None)
        if not shared.get("warmup_epochs"):
            shared.pop("warmup_epochs", None)
        name = "LeNet-5 members" if model == "lenet5" else model
        parts.append(
            f"{name}: "
            + ", ".join(
                f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                for key, value in shared.items()
            )
        )
    return ["Recipes (each model's training config; only seeds differ): " + "; ".join(parts) + "."]


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


def anchor_section(file: dict, results: EnsembleResults) -> list[str]:
    """Our ensemble rows placed among published numbers (the experiment file's [[anchor]] rows)."""
    if not file.get("anchor"):
        return []
    comparison = results.comparison
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
