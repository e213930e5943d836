r"""Multi-PIE head-pose yaw (13 cameras): every method, noise level and seed.

The sinusoid experiment's pipeline on kd_regression.datasets.multipie: regress the yaw
(−90°…+90°) of a face photograph; test subjects 201–346, validation subjects drawn from
001–200. Build the dataset once from your licensed copy (see the README), then:

  python -m experiments.main --config experiments/configs/multipie.py --workdir /tmp/pie \
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
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    # Data-parallel devices (every batch split over them): 0 = all JAX sees, n = the first n.
    config.num_devices = 0
    # Train steps per compiled call (a lax.scan; the same numbers as single steps). 1 here:
    # on XLA's CPU backend a scan of this CNN's steps measured slower (bench_speed); try
    # 16 on an accelerator, where small steps are bound by dispatch.
    config.steps_per_call = 1

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "multipie"
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds default
    config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # to build it
    config.dataset.image_size = 64  # pixels; the builder config (yaw_64)
    config.dataset.illuminations = (7,)  # illumination shots kept (0-19)
    config.dataset.validation_fraction = 0.1  # of the training subjects

    config.noise = ml_collections.ConfigDict()
    config.noise.outliers = (0.0, 0.1, 0.2, 0.3, 0.4)  # rate p; outliers U(-90°, 90°)
    config.noise.gaussian = (0.0, 5.0, 10.0, 20.0)  # σ in degrees

    config.teacher = ml_collections.ConfigDict()
    config.teacher.method = "scratch_l2"
    config.teacher.model = common.image_model("resnet", (32, 64, 128), 32, 2, 2)
    config.teacher.learning_rate = 1e-3
    config.teacher.batch_size = 128
    config.teacher.num_steps = 8000
    config.teacher.eval_every = 400
    config.teacher.patience = 6
    config.teacher.checkpoint_every = 1000
    config.teacher.folds = 0

    config.store = common.store()

    config.student = ml_collections.ConfigDict()
    config.student.model = common.image_model("mobilenet", (16, 32, 64), 16, 2, 1)
    config.student.learning_rate = 1e-3
    config.student.batch_size = 128
    config.student.num_steps = 8000
    config.student.checkpoint_every = 2000

    config.methods = common.METHODS
    config.loss = common.loss(huber_delta=0.05)  # yaw / 90°: 4.5°
    config.inference_head = "label"
    config.fits_noise = "outliers"  # image tasks draw no fits.png; kept for a uniform config
    config.fits_level = 0.4

    if arg == "quick":
        common.quick_image_parts(config)
        config.dataset.image_size = 16
        config.dataset.illuminations = (0, 7)
        config.dataset.validation_fraction = 0.2
        config.noise.outliers = (0.0, 0.3)
        config.noise.gaussian = (10.0,)
    elif arg not in (None, ""):
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'quick'")
    return config
