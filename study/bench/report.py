"""The bench's tables: each A/B with the reference side by side with ours, its ratio and goal."""

from __future__ import annotations

from typing import Any

from study.bench.settings import (
    GOAL_ENSEMBLE_RATIO,
    GOAL_PACK_SPEEDUP,
    GOAL_RESNET_BF16_SPEEDUP,
    GOAL_STUDY_SPEEDUP,
    GOAL_TRAIN_SPEEDUP,
    PACK_GOAL_K,
    WORK_KEYS,
)

Table = tuple[str, list[dict[str, Any]]]
STUDY_COLUMNS = (
    "wall_s",
    "trials",
    "epochs",
    "train_images",
    "steps",
    "best_val_acc",
    "launch_to_first_trial_s",
    "trials_span_s",
    "last_trial_to_exit_s",
)
ENSEMBLE_COLUMNS = (
    "wall_s",
    "resnet_training_s",
    "resnet_test_acc",
    "lenet_training_s_sum",
    "lenet_test_acc_mean",
)


def _load(figures: dict[str, Any]) -> str:
    return f"load {figures['load_before']:.2f} -> {figures['load_after']:.2f}"


def train_tables(train: dict[str, Any]) -> list[Table]:
    title = (
        f"1. whole-process study train, 1 epoch, median of {train['rounds']} ({_load(train)}): "
        f"{train['speedup']:.2f}x the reference script (goal {GOAL_TRAIN_SPEEDUP:.1f}x)"
    )
    # each side's wall time, and how many times the reference script's that is
    sides = [
        ("study train", train["ours_wall_s"], train["ours_work"]),
        ("reference script", train["reference_wall_s"], train["reference_work"]),
        (
            "reference script, study's allocator settings",
            train["reference_same_allocator_wall_s"],
            train["reference_work"],
        ),
        (
            "study train, glibc's default allocator",
            train["ours_default_allocator_wall_s"],
            train["ours_work"],
        ),
    ]
    rows = [
        {"side": side, "wall_s": wall, "reference_over_wall": train["reference_wall_s"] / wall, **_work(work)}
        for side, wall, work in sides
    ]
    ours, reference = train["ours_breakdown_s"], train["reference_breakdown_s"]
    return [
        (title, rows),
        ("study train: where the time goes (s; imports timed in a fresh interpreter)", _pairs(ours)),
        ("reference script: where the time goes (s, as it reports them)", _pairs(reference)),
    ]


def _work(work: dict[str, Any]) -> dict[str, Any]:
    return {key: work[key] for key in WORK_KEYS}


def _pairs(values: dict[str, float]) -> list[dict[str, Any]]:
    total = values["total"]
    return [{"phase": k, "seconds": v, "share": v / total if total else 0.0} for k, v in values.items()]


def precision_table(precision: dict[str, Any]) -> Table:
    return (
        f"2. bf16 autocast vs fp32 training on the CPU, images/s ({_load(precision)}; ResNet-18 "
        f"batch 64 goal {GOAL_RESNET_BF16_SPEEDUP:.1f}x)",
        precision["cases"],
    )


def loop_table(loop: dict[str, Any]) -> Table:
    return (f"3. training loop in process, images/s ({_load(loop)})", loop["rows"])


def study_tables(study: dict[str, Any]) -> list[Table]:
    title = (
        f"4. whole study, {study['trials']} trials x {study['epochs']} epochs ({_load(study)}): "
        f"{study['speedup']:.2f}x the peer script (goal {GOAL_STUDY_SPEEDUP:.1f}x)"
    )
    rows = [
        {"side": "study tune", **{k: study["ours"][k] for k in STUDY_COLUMNS}},
        {"side": "peer script", **{k: study["peer"][k] for k in STUDY_COLUMNS}},
    ]
    overhead = [{"figure": k, "value": v} for k, v in study["tune_overhead"].items()]
    return [(title, rows), ("Ray Tune overhead in process (2 trials at a time)", overhead)]


def ensemble_table(ens: dict[str, Any]) -> Table:
    title = (
        f"5. study ensemble, {ens['epochs']} epochs ({_load(ens)}): bf16/fp32 wall "
        f"{ens['wall_ratio_bf16_to_fp32']:.2f}, ResNet {ens['resnet_bf16_speedup']:.2f}x; bf16 wall / "
        f"previous {ens['previous_training_s']:.0f} s = {ens['bf16_wall_to_previous_training']:.2f} "
        f"(goal <= {GOAL_ENSEMBLE_RATIO})"
    )
    return title, [{"resnet": p, **{k: ens[p][k] for k in ENSEMBLE_COLUMNS}} for p in ("fp32", "bf16")]


def accuracy_table(acc: dict[str, Any]) -> Table:
    # an equivalence claim rests on the paired TOST, not on the point estimate (older JSONs: within)
    verdict = (
        f"{acc['equivalence']}, TOST p = {acc['tost_p']:.2g}"
        if "tost_p" in acc
        else ("within" if acc["within_tolerance"] else "OUTSIDE") + f" {acc['tolerance_points']}"
    )
    title = (
        f"6. {acc['model']} test accuracy, {acc['seeds']} seeds x {acc['epochs']} epochs ({_load(acc)}): "
        f"bf16 - fp32 = {acc['difference_points']:+.2f} points ({verdict})"
    )
    rows = [
        {
            "precision": p,
            "mean": acc[f"{p}_mean"],
            "per_seed": " ".join(f"{a:.4f}" for a in acc[f"{p}_test_acc"]),
            "training_s_mean": acc[f"{p}_training_s_mean"],
        }
        for p in ("fp32", "bf16")
    ]
    return title, rows


PACK_COLUMNS = ("k", "separate_images_per_s", "packed_images_per_s", "speedup", "speedup_cpu_time", "rounds")


def pack_table(pack: dict[str, Any]) -> Table:
    at_goal = [row["speedup"] for row in pack["rows"] if row["k"] == PACK_GOAL_K]
    goal = f"{at_goal[0]:.2f}x at K = {PACK_GOAL_K}" if at_goal else f"K = {PACK_GOAL_K} not measured"
    title = (
        f"7. K LeNet-5s packed in one step vs one after another, {pack['device']}, {pack['threads']} "
        f"thread(s), batch {pack['batch_size']}, training images/s over the K models ({_load(pack)}): "
        f"{goal} (goal {GOAL_PACK_SPEEDUP:.1f}x)"
    )
    return title, [{key: row[key] for key in PACK_COLUMNS} for row in pack["rows"]]


def report_tables(figures: dict[str, Any]) -> list[Table]:
    """(title, rows) of every table, in section order."""
    tables = []
    if "train" in figures:
        tables += train_tables(figures["train"])
    if "precision" in figures:
        tables.append(precision_table(figures["precision"]))
    if "loop" in figures:
        tables.append(loop_table(figures["loop"]))
    if "study" in figures:
        tables += study_tables(figures["study"])
    if "ensemble" in figures:
        tables.append(ensemble_table(figures["ensemble"]))
    if "accuracy" in figures:
        tables.append(accuracy_table(figures["accuracy"]))
    if "pack" in figures:
        tables.append(pack_table(figures["pack"]))
    return tables


def print_report(figures: dict[str, Any]) -> None:
    import pandas as pd

    from study.common.console import print_table

    for title, rows in report_tables(figures):
        print_table(pd.DataFrame(rows), title, float_format="{:,.3f}")
