"""The ``study`` command and its Python API: train, tune and ensemble studies on ``lenet_core``.

    import study
    study.tune(...), study.ensemble(...), study.run_experiment(...)   # run, return typed results
    study.load("results/NAME")                                         # read a study back

Names are imported on first use (PEP 562): ``import study`` and ``study --help`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tune": "study.api",
    "ensemble": "study.api",
    "run_experiment": "study.api",
    "load": "study.reader",
    "StudyResults": "study.reader",
    "TuneResults": "study.stages.tune.results",
    "EnsembleResults": "study.stages.ensemble.results",
    "SweepResults": "study.stages.sweep.results",
    "TrainResults": "study.stages.train",
    "RunContext": "study.common.context",
    "ClusterOptions": "study.common.cluster",
    "SELECTION_METRIC": "study.common.selection",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'study' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
