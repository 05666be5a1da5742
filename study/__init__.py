"""The ``study`` command: train, tune, ensemble, ... on top of ``lenet_core``."""
