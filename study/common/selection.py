"""The one selection metric: what ASHA, Optuna, ``best.json``, ``--top-k`` and every table rank by.

``best_val_acc`` is the validation accuracy of a run's best validation epoch, whose weights are
the ones kept and tested. Before, ``best.json`` ranked by it, ``--top-k`` by the last epoch's
accuracy, and ASHA/Optuna by each epoch's own accuracy, so ``--top-k 1`` could pick another
config than ``best.json``. Test accuracy is never used to select.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

SELECTION_METRIC = "best_val_acc"
SELECTION_MODE = "max"


def running_best(val_accs: Iterable[float]) -> float:
    """The selection metric after some epochs: the best finite validation accuracy so far, or
    0.0 when there is none (a run that diverged to NaN scores 0, so a searcher learns that region
    is bad rather than dropping the trial)."""
    finite = [v for v in val_accs if v is not None and math.isfinite(v)]
    return max(finite, default=0.0)
