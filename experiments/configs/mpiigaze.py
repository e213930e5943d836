r"""MPIIGaze gaze estimation, leave one person out: every method, noise level, seed and fold.

The sinusoid experiment's pipeline (teacher, store, every method, noise levels, seeds) on
kd_regression.datasets.mpiigaze, run once per test person (15 folds by default). Build
the dataset once from your copy (see docs/datasets.md), then:

  python -m experiments.main --config experiments/configs/mpiigaze.py --workdir runs/gaze \
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
    config = common.base("mpiigaze", huber_delta=0.05)  # radians: about 3°

    config.dataset.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds default
    config.dataset.manual_dir = ml_collections.config_dict.placeholder(str)  # to build it
    config.dataset.test_people = tuple(range(15))  # one fold per test person
    config.dataset.validation_fraction = 0.1  # of the 14 training people's examples

    config.noise.gaussian = (0.0, 2.5, 5.0, 10.0)  # σ in degrees, on pitch and yaw

    config.teacher.model = common.image_model("resnet", (32, 64, 128), 32, 1, 2)
    config.teacher.learning_rate = 1e-3
    config.teacher.batch_size = 256
    config.teacher.num_steps = 10_000
    config.teacher.eval_every = 500
    config.teacher.checkpoint_every = 1000

    config.student.model = common.image_model("mobilenet", (16, 32, 64), 16, 1, 1)
    config.student.learning_rate = 1e-3
    config.student.batch_size = 256
    config.student.num_steps = 10_000
    config.student.checkpoint_every = 2000

    config.quick = common.is_quick(arg)
    if config.quick:
        common.quick_image_parts(config)
        config.dataset.test_people = (0, 1)
        config.noise.outliers = (0.0, 0.3)
        config.noise.gaussian = (5.0,)
    return config
