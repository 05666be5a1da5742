"""What the bench measures and for how long, and the constants both sides of an A/B share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lenet_core.errors import StudyError

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REFERENCE_SCRIPT = SCRIPTS / "reference_train.py"
PEER_SCRIPT = SCRIPTS / "peer_tune.py"
FASHION_SYSTEM_COPY = Path("/usr/share/datasets/fashion-mnist")
# MNIST-5k beside the checkout (../shared/data/mnist-5k): --ensemble's and --accuracy's default
SHARED_MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist-5k"
TRAIN_BATCH = 64  # the batch size of the train, precision and study comparisons
WORK_KEYS = ("train_images", "steps", "val_images", "test_images", "parameters")  # what both sides report
REFERENCE_EVAL_BATCH = 1000  # what the PyTorch MNIST example uses for its test loader
# The study's search, the same on both sides (Adam fixed, no scheduler)
STUDY_SPACE_TOML = """\
[space]
lr = { low = 1e-4, high = 1e-2, log = true }
activation = { choices = ["relu", "tanh", "sigmoid"] }
pooling = { choices = ["max", "avg"] }
"""
# What the fp32 ensemble (5 LeNets + ResNet-18, 10 epochs, MNIST-5k) took before bf16: its
# training, of which 648 s were the ResNet's. The goal is bf16 in at most half of it.
PREVIOUS_ENSEMBLE_TRAINING_S = 690.0
ACCURACY_TOLERANCE_POINTS = 0.5  # bf16 mean test accuracy within this of fp32's, in points
# Goals of the issue, printed beside the measured ratios
GOAL_TRAIN_SPEEDUP = 2.0
GOAL_RESNET_BF16_SPEEDUP = 1.5
GOAL_STUDY_SPEEDUP = 2.2
GOAL_ENSEMBLE_RATIO = 0.5
GOAL_PACK_SPEEDUP = 1.3  # K = 5 LeNet-5s trained as one pack, against one after another
PACK_GOAL_K = 5
PACK_SIZES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)  # K of --pack


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long; ``quick`` cuts every size, the opt-in sections add minutes."""

    quick: bool
    device: str = "cpu"  # the in-process loop section's device; every other section runs on the CPU
    batch_sizes: tuple[int, ...] = (32, 64, 256)
    threads: int = 1  # torch threads of the train and loop sections (both sides)
    precision_threads: int = 2  # torch threads of the ResNet-18 precision A/B and of --accuracy
    core: bool = True  # the train, precision and loop sections (minutes); False: only the opt-in ones
    study: bool = False
    ensemble: bool = False
    accuracy: bool = False
    pack: bool = False  # K LeNet-5s as one pack against one after another (study/bench/pack.py)
    pack_sizes: tuple[int, ...] = PACK_SIZES
    mnist_dir: Path | None = None  # MNIST for --ensemble and --accuracy; default SHARED_MNIST
    rounds: int | None = None  # overrides the rounds of every section
    epochs: int = 10  # of --ensemble and --accuracy
    seeds: int = 3  # of --accuracy

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise StudyError(f"--device must be cpu or cuda, got {self.device!r}")
        for name in ("threads", "precision_threads", "epochs", "seeds"):
            if getattr(self, name) < 1:
                raise StudyError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.rounds is not None and self.rounds < 1:
            raise StudyError(f"--rounds must be >= 1, got {self.rounds}")
        if not (self.core or self.study or self.ensemble or self.accuracy or self.pack):
            raise StudyError(
                "--no-core leaves nothing to measure; add --study, --ensemble, --accuracy or --pack"
            )

    def _rounds(self, quick: int, full: int) -> int:
        return self.rounds or (quick if self.quick else full)

    @property
    def train_rounds(self) -> int:  # whole-process study train vs the reference script
        return self._rounds(1, 3)

    @property
    def precision_rounds(self) -> int:
        return self._rounds(2, 5)

    @property
    def resnet_images(self) -> int:  # per precision round: a few hundred (ResNet-18 is slow)
        return 128 if self.quick else 384

    @property
    def lenet_images(self) -> int:
        return 2048 if self.quick else 8192

    @property
    def loop_rounds(self) -> int:
        return self._rounds(3, 5)

    @property
    def images_per_round(self) -> int:  # training images per loop measurement
        return 2048 if self.quick else 16384

    @property
    def study_trials(self) -> int:
        return 2 if self.quick else 8

    @property
    def study_epochs(self) -> int:
        return 1 if self.quick else 2

    @property
    def study_train_fraction(self) -> float:
        return 0.05 if self.quick else 1.0

    @property
    def study_rounds(self) -> int:  # a full study takes minutes: one round unless asked
        return self.rounds or 1

    @property
    def overhead_trials(self) -> int:  # the in-process Tune overhead probe of --study
        return 2 if self.quick else 8

    @property
    def pack_rounds(self) -> int:
        return self._rounds(3, 5)

    @property
    def pack_images(self) -> int:  # training images per model per --pack measurement
        return 512 if self.quick else 2048
