r"""Multi-PIE head-pose yaw (13 cameras): every method, noise level and seed.

The sinusoid experiment's pipeline on kd_regression.datasets.multipie: regress the yaw
(−90°…+90°) of a face photograph; test subjects 201–346, validation subjects drawn from
001–200. Build the dataset once from your licensed copy (see docs/datasets.md), then:

  python -m experiments.main --config experiments/configs/multipie.py --workdir runs/pie \
      --config.dataset.data_dir=DATA [--config.dataset.manual_dir=MANUAL]

The ``:quick`` variant checks the plumbing on a small fake copy (``python tests/fakes.py
multipie DIR`` writes one) with tiny models.

Sized for a GPU (an estimated 18 k training photographs of 64×64 with shot 07); not
run at full size by us: no GPU and no copy of Multi-PIE were available, so no run time
or expected numbers are given. The paper's Multi-PIE task, network and sizes are not
known to us: the task (yaw of 13 cameras), crop, size, shots and rates are our choices.
"""

import ml_collections

from experiments.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = common.base("multipie", huber_delta=0.05)  # yaw / 90°: 4.5°

    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds default
    config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # to build it
    config.dataset.image_size = 64  # pixels; the builder config (yaw_64)
    config.dataset.illuminations = (7,)  # illumination shots kept (0-19)
    config.dataset.validation_fraction = 0.1  # of the training subjects

    # Outlier labels ~ U(-90°, 90°), at the base's rates.
    config.noise.gaussian = (0.0, 5.0, 10.0, 20.0)  # σ in degrees

    config.teacher.model = common.image_model("resnet", (32, 64, 128), 32, 2, 2)
    config.teacher.learning_rate = 1e-3
    config.teacher.batch_size = 128
    config.teacher.num_steps = 8000
    config.teacher.eval_every = 400
    config.teacher.checkpoint_every = 1000

    config.student.model = common.image_model("mobilenet", (16, 32, 64), 16, 2, 1)
    config.student.learning_rate = 1e-3
    config.student.batch_size = 128
    config.student.num_steps = 8000
    config.student.checkpoint_every = 2000

    config.quick = common.is_quick(arg)
    if config.quick:
        common.quick_image_parts(config)
        config.dataset.image_size = 16
        config.dataset.illuminations = (0, 7)
        config.dataset.validation_fraction = 0.2
        config.noise.outliers = (0.0, 0.3)
        config.noise.gaussian = (10.0,)
    return config
