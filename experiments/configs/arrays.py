r"""The whole method on your own data: a file, every method, seeds, results and figures.

  python -m experiments.main --config experiments/configs/arrays.py \
      --config.dataset.path=data.npz --workdir runs/mine
  python -m experiments.main --config experiments/configs/arrays.py \
      --config.dataset.path=data.csv --config.dataset.inputs=a,b,c \
      --config.dataset.targets=y1,y2 --workdir runs/mine
  python -m experiments.main --config experiments/configs/arrays.py \
      --config.dataset.path=tfds:my_set --config.dataset.data_dir=DIR \
      --config.dataset.inputs=image --config.dataset.targets=angle \
      --config.dataset.tfds_splits=train,test --workdir runs/mine

``.npz``: arrays ``x`` ``[n, ...]`` and ``y`` ``[n]`` or ``[n, k]``, and optionally
``x_val``/``y_val`` and ``x_test``/``y_test``; the splits a file lacks are drawn from its
rows by ``dataset.seed`` (fractions ``dataset.validation_fraction``, ``test_fraction``).
Vectors ``[n, d]`` get MLPs, images ``[n, H, W(, C)]`` the ResNet / MobileNet-like pair.

A teacher trained elsewhere: ``--config.teacher.predictions=FILE`` (``.npy`` or ``.npz``
array ``train``, one row per row of ``x`` / of the table, in the labels' units; see
docs/own_data.md). Then no teacher is trained.

Noise: ``noise.none`` runs the labels as they are (the real case); ``noise.outliers`` and
``noise.gaussian`` inject more, in standard deviations of each output, for studies
(``'()'``: not run). The sizes and schedules are our defaults for small tabular data.
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import common

_model = common.image_model


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    # Targets are standardised, so huber_delta is in standard deviations of each output.
    config = common.base("arrays", huber_delta=0.5)

    ds = config.dataset
    ds.path = ""  # .npz, .csv, .parquet, or tfds:NAME
    ds.inputs = ""  # CSV/Parquet columns (a,b,c) or the tfds input feature
    ds.targets = ""  # CSV/Parquet columns or tfds features of the outputs
    ds.data_dir = config_dict.placeholder(str)  # tfds: the data directory
    ds.tfds_splits = "train"  # tfds: role=split, e.g. train,test or train=train[:90%],test=test
    ds.seed = 0  # draws the splits the file lacks (the same for every seed of the sweep)
    ds.validation_fraction = 0.15
    ds.test_fraction = 0.2
    # Whether the test labels are clean: say so only if they are (the summary says which).
    ds.test_labels_clean = False

    # Every method but the oracle, which needs the true corruption rate: unknown here.
    config.methods = tuple(m for m in common.METHODS if m != "small_loss_oracle")
    config.noise.none = (0.0,)  # the labels as they are
    config.noise.outliers = (0.2, 0.4)  # rate p; outlier labels ~ U(training labels' range)
    config.noise.gaussian = ()  # σ in standard deviations

    t = config.teacher
    t.predictions = ""  # a predictions file: no teacher is trained
    t.columns = ""  # its columns, for a table (default: dataset.targets)
    t.fold_key = ""  # its array / column of each row's fold id (out-of-fold predictions)
    t.hidden = config_dict.placeholder(tuple)  # vectors; None: 3 x 16·d units (64..512)
    t.model = _model("resnet", (16, 32, 64), 16, 2, 1)  # images
    t.learning_rate = 3e-3
    t.batch_size = 64
    t.num_steps = 3000  # at least; 40 passes over a large file (early stopping still on)
    t.passes = 40.0
    t.eval_every = 100
    t.checkpoint_every = 1000

    s = config.student
    s.hidden = config_dict.placeholder(tuple)  # vectors; None: 2 x 2·d units (8..64)
    s.model = _model("mobilenet", (8, 16, 32), 8, 2, 1)  # images
    s.learning_rate = 3e-3
    s.batch_size = 64
    # The student trains max(num_steps, passes x training rows / batch_size) steps (ours):
    # 2000 on a small file, 40 passes over a large one (2000 steps are 3.7 passes over
    # 35,000 rows, far from converged; docs/defaults.md).
    s.num_steps = 2000
    s.passes = 40.0
    s.checkpoint_every = 2000

    config.quick = common.is_quick(arg)
    if config.quick:
        config.num_seeds = 2
        config.noise.outliers = (0.3,)
        config.methods = ("scratch_l2", "scratch_huber", "tor", "tor_multitask")
        t.num_steps = 60
        t.eval_every = 30
        t.checkpoint_every = 30
        s.num_steps = 40
        t.passes = s.passes = 0.0  # num_steps alone
        s.checkpoint_every = 40
        t.batch_size = s.batch_size = 32
    return config
