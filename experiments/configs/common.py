"""The config every experiment starts from (``base``) and the sections the experiments share.

A dataset's config calls ``base`` and sets only what differs from it: its ``dataset.*``
fields, ``noise.gaussian`` (σ is in its label units), each network (``hidden`` or
``model``) and training schedule (``learning_rate``, ``batch_size``, ``num_steps``,
``checkpoint_every``, the teacher's ``eval_every``), and its ``:quick`` variant.
"""

import ml_collections

import kd_regression.methods
from experiments.report import paired

# Every registered method, in the registry's order. A tuple, not a list: ml_collections can
# override tuples from the command line.
METHODS = tuple(kd_regression.methods.METHODS)


def base(dataset_name: str, *, huber_delta: float) -> ml_collections.ConfigDict:
    """The keys every experiment has, with the defaults they share.

    ``huber_delta`` is in target units, so each experiment gives it.
    """
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.num_seeds = 3
    # Data-parallel devices (every batch split over them): 0 = all JAX sees, n = the first n.
    config.num_devices = 0
    # Train steps per compiled call (a lax.scan; the same numbers as single steps); logs,
    # evaluations and checkpoints cut the blocks short. 1 here: on XLA's CPU backend a scan
    # of the image CNNs' steps measured slower (experiments/bench/speed.py); try 16 on an
    # accelerator, where small steps are bound by dispatch.
    config.steps_per_call = 1

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = dataset_name

    # Label noise on the training and validation splits; the test split stays clean.
    config.noise = ml_collections.ConfigDict()
    config.noise.outliers = (0.0, 0.1, 0.2, 0.3, 0.4)  # rate p

    # The networks and schedules are each experiment's. checkpoint_every: orbax checkpoints
    # a rerun resumes from (a student checkpointed at its end is skipped by a rerun).
    config.teacher = teacher()
    config.store = store()
    config.student = ml_collections.ConfigDict()
    config.methods = METHODS
    config.loss = loss(huber_delta=huber_delta)
    # Which head of the two-head student is "the" prediction (ours; both are reported).
    config.inference_head = "label"
    # True in a `:quick` variant: summary.md then says its numbers check the plumbing only.
    config.quick = False
    # summary.md compares every student with each of these, paired by seed
    # (experiments/report/paired.py): a method of the registry, or "best_robust": in each column,
    # the one of report.robust_baselines with the lowest mean error (ours). A reference the
    # sweep did not run has no table.
    config.report = ml_collections.ConfigDict()
    config.report.paired_references = ("scratch_l2", paired.BEST_ROBUST)
    config.report.robust_baselines = paired.ROBUST
    return config


def teacher() -> ml_collections.ConfigDict:
    """The teacher options every experiment shares (its network and schedule are its own)."""
    t = ml_collections.ConfigDict()
    # A robust teacher (ours; docs/defaults.md): an L2 teacher fits the outliers it should
    # expose. scratch_l2 is the paper's reading; scratch_l1 also allowed.
    t.method = "scratch_huber"
    t.patience = 6  # evaluations without improvement on the noisy val split
    # k >= 2: k teachers on k folds, each example's stored prediction from the teacher that
    # did not see it (out-of-fold; our addition against the memorization effect). 0: off.
    t.folds = 0
    return t


def loss(*, huber_delta: float) -> ml_collections.ConfigDict:
    """Every kd_regression.methods.LossConfig field (the defaults are ours, not the paper's).

    TOR's δ: where a mixture of Student-t inliers and uniform outliers fitted to the
    teacher's training residuals puts the outlier posterior at one half
    (kd_regression.thresholds.mixture_fit).
    ``huber_delta`` is in target units, so each experiment sets it.
    """
    c = ml_collections.ConfigDict()
    # "mixture" (threshold_nu; ours: rejects almost nothing without outliers, see
    # docs/defaults.md), "mad" (threshold_k), "quantile" (threshold_q), "fixed" (threshold_value)
    c.threshold_method = "mixture"
    c.threshold_k = 3.0
    c.threshold_q = 0.9
    c.threshold_value = ml_collections.config_dict.placeholder(float)
    c.threshold_nu = 3.0  # "mixture": the inliers' Student-t degrees of freedom
    c.rejection = "drop"  # what a rejected example learns: "drop" or "teacher"
    c.multitask_weight = 1.0  # λ of the two-head student's teacher head
    c.huber_delta = huber_delta  # scratch_huber (and a Huber teacher)
    c.mix_alpha = 0.5  # kd_mix: weight of the label term
    c.bounded_margin = 0.0  # Chen et al. 2017: m
    c.bounded_weight = 1.0  # Chen et al. 2017: ν
    c.ail_alpha = 0.5  # Saputra et al. 2019: α
    c.ail_clip = True  # clip Φ to [0, 1] (ours)
    # small_loss: the fraction q of each batch dropped, fixed from the first step (ours;
    # Co-teaching ramps q up over training). small_loss_oracle uses the true outlier rate.
    c.small_loss_drop = 0.2
    return c


def image_model(trunk, widths, stem, stem_stride, blocks_per_stage) -> ml_collections.ConfigDict:
    """A kd_regression.models.image_regressor: trunk "resnet" or "mobilenet"."""
    m = ml_collections.ConfigDict()
    m.trunk = trunk
    m.widths = widths
    m.stem = stem
    m.stem_stride = stem_stride
    m.blocks_per_stage = blocks_per_stage
    return m


def store() -> ml_collections.ConfigDict:
    """The teacher prediction store (kd_regression.teacher_store)."""
    c = ml_collections.ConfigDict()
    c.chunk_rows = 8192
    c.on_mismatch = "recompute"  # or "fail": refuse a store made for other inputs
    c.parity_sample = 64  # rows recomputed and compared after writing (0: off)
    return c


def is_quick(arg: str | None) -> bool:
    """Whether ``--config FILE:arg`` asks for the ``:quick`` variant; refuses unknown args."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"unknown config argument {arg!r}; use '' or 'quick'")
    return arg == "quick"


def quick_image_parts(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int = 16,
    teacher_steps: int = 10,
    student_steps: int = 6,
) -> None:
    """A ``:quick`` variant's two seeds and tiny teacher and student, for plumbing checks.

    The teacher evaluates and checkpoints twice, so that both paths run before it ends; a
    student checkpoints once, at its end (what a rerun skips to).
    """
    config.num_seeds = 2
    config.teacher.model = image_model("resnet", (4, 8), 4, 2, 1)
    config.teacher.batch_size = batch_size
    config.teacher.num_steps = teacher_steps
    config.teacher.eval_every = teacher_steps // 2
    config.teacher.checkpoint_every = teacher_steps // 2
    config.student.model = image_model("mobilenet", (4, 8), 4, 2, 1)
    config.student.batch_size = batch_size
    config.student.num_steps = student_steps
    config.student.checkpoint_every = student_steps
