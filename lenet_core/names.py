"""The names a user can type, without importing torch.

``TrialConfig`` (and so every ``study --help``) needs the choices of each field; the tables that
build the things named here live beside their code (``models.MODELS``, ``models.ACTIVATIONS``,
``models.POOLINGS``, ``data.AUGMENTATION_STEPS``) and a test checks that both sides list the same names.
"""

from __future__ import annotations

from lenet_core.status import Status  # torch-free too: an enum and nothing else

# Names the user types, mapped to the torchvision class name, which is also the folder name
# torchvision uses under its root (<root>/MNIST/raw/...).
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
DATASETS = (*TORCHVISION_CLASSES, "digits")
# What each label means where it is not the digit itself (torchvision's FashionMNIST.classes).
CLASS_NAMES = {
    "fashion-mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
}
# flip suits clothes, not digits; shift (up to 2 px) and crop (pad 2, random 28x28 window) translate
AUGMENTATIONS = ("none", "blur", "rotate", "both", "flip", "shift", "crop", "flip_shift")

MODEL_NAMES = ("lenet5", "resnet18", "resnet34", "resnet50")
ACTIVATION_NAMES = ("relu", "tanh", "sigmoid", "gelu", "elu", "leaky_relu", "scaled_tanh")
POOLING_NAMES = ("max", "avg", "subsample")
# LeCun et al. 1998 squashed with 1.7159 tanh(2x/3) and subsampled with a trainable coefficient and
# bias per map; the common modern rewrite uses ReLU and max pooling. Activation and pooling
# override these defaults (the skeleton, e.g. classic's partial C3 table, stays).
LENET_VARIANTS = {
    "classic": {"activation": "scaled_tanh", "pooling": "subsample"},
    "modern": {"activation": "relu", "pooling": "max"},
}
OPTIMIZERS = ("sgd", "adadelta", "adagrad", "rmsprop", "adam", "adamax", "adamw")
DEVICES = ("cpu", "cuda", "auto")
# Statuses of a trial that ran to its end but learned nothing usable (lenet_core.train sets them:
# the loss blew up, or validation accuracy stayed near guessing the majority class). Never
# averaged in with the others, and named wherever results are summarized. Derived from the one
# Status enum, as plain strings in its order ("diverged", "collapsed") for Series.isin and tables.
FAILED_STATUSES: tuple[str, ...] = tuple(str(status) for status in Status if status.failed)
