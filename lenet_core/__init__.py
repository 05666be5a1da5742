"""lenet_core: in-memory datasets, LeNet-5 and ResNet models, and the one train function."""

from lenet_core.config import TrialConfig
from lenet_core.data import ImageData, load_dataset
from lenet_core.errors import ConfigError, DataError, StudyError
from lenet_core.models import build_model, count_parameters
from lenet_core.train import TrialResult, evaluate, predict_proba, train_trial

__all__ = [
    "ConfigError",
    "DataError",
    "ImageData",
    "StudyError",
    "TrialConfig",
    "TrialResult",
    "build_model",
    "count_parameters",
    "evaluate",
    "load_dataset",
    "predict_proba",
    "train_trial",
]
