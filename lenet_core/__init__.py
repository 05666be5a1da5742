"""lenet_core: in-memory datasets, LeNet-5 and ResNet models, and the one train function.

Names are imported on first use (PEP 562), so ``import lenet_core.config`` stays free of torch:
``study --help`` and config parsing never pay for it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "lenet_core.errors",
    "DataError": "lenet_core.errors",
    "StudyError": "lenet_core.errors",
    "TrialConfig": "lenet_core.config",
    "ImageData": "lenet_core.data",
    "load_dataset": "lenet_core.data",
    "build_model": "lenet_core.models",
    "count_parameters": "lenet_core.models",
    "TrialResult": "lenet_core.train",
    "evaluate": "lenet_core.train",
    "predict_proba": "lenet_core.train",
    "train_trial": "lenet_core.train",
    "train_packed": "lenet_core.packed",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lenet_core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
