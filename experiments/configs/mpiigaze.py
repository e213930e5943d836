r"""MPIIGaze gaze estimation, leave one person out: every method, noise level, seed and fold.

The sinusoid experiment's pipeline (teacher, store, every method, noise levels, seeds) on
kd_regression.datasets.mpiigaze, run once per test person (15 folds by default). Build
the dataset once from your copy (see the README), then:

  python -m experiments.main --config experiments/configs/mpiigaze.py --workdir /tmp/gaze \
      --config.dataset.data_dir=DATA [--config.dataset.manual_dir=MANUAL]

With ``manual_dir`` set, a dataset not yet built in ``data_dir`` is built first. The
``:quick`` variant checks the plumbing on a small fake copy (``python tests/fakes.py
mpiigaze DIR`` writes one) with tiny models and two folds.

Sized for a GPU (37.8 k training eye images per fold: 14 people × 3,000, less 10 % for
validation; batch 256); not run at full size by us: no GPU and no copy of MPIIGaze were
available, so no run time or expected numbers are given. Labels are gaze (pitch, yaw) in
degrees; Gaussian noise σ is in degrees; outlier labels are uniform over the span of the
fold's training labels; the reported error is the mean angular error in degrees. Sizes,
steps and rates are ours; the paper's gaze network is not known to us.
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
    config.dataset.name = "mpiigaze"
    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds default
    config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # to build it
    config.dataset.test_people = tuple(range(15))  # one fold per test person
    config.dataset.validation_fraction = 0.1  # of the 14 training people's examples

    config.noise = ml_collections.ConfigDict()
    config.noise.outliers = (0.0, 0.1, 0.2, 0.3, 0.4)  # rate p
    config.noise.gaussian = (0.0, 2.5, 5.0, 10.0)  # σ in degrees, on pitch and yaw

    config.teacher = ml_collections.ConfigDict()
    config.teacher.method = "scratch_l2"
    config.teacher.model = common.image_model("resnet", (32, 64, 128), 32, 1, 2)
    config.teacher.learning_rate = 1e-3
    config.teacher.batch_size = 256
    config.teacher.num_steps = 10_000
    config.teacher.eval_every = 500
    config.teacher.patience = 6
    config.teacher.checkpoint_every = 1000
    config.teacher.folds = 0

    config.store = common.store()

    config.student = ml_collections.ConfigDict()
    config.student.model = common.image_model("mobilenet", (16, 32, 64), 16, 1, 1)
    config.student.learning_rate = 1e-3
    config.student.batch_size = 256
    config.student.num_steps = 10_000
    config.student.checkpoint_every = 2000

    config.methods = common.METHODS
    config.loss = common.loss(huber_delta=0.05)  # radians: about 3°
    config.inference_head = "label"
    config.fits_noise = "outliers"  # image tasks draw no fits.png; kept for a uniform config
    config.fits_level = 0.4

    if arg == "quick":
        common.quick_image_parts(config)
        config.dataset.test_people = (0, 1)
        config.noise.outliers = (0.0, 0.3)
        config.noise.gaussian = (5.0,)
    elif arg not in (None, ""):
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'quick'")
    return config
