"""The sinusoid ``:quick`` sweep cut to one cell and two methods: real runs in a few seconds
for the tests of crashes, locks and damage (``--config tests/tiny_config.py``)."""

import ml_collections

from experiments.configs import sinusoid


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = sinusoid.get_config("quick")
    config.noise = ml_collections.ConfigDict({"outliers": (0.3,)})
    config.methods = ("scratch_l2", "tor_multitask")
    config.student.checkpoint_every = 50  # saves during training, to interrupt one
    return config
