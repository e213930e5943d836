"""Config sections every experiment shares: the methods, the loss options, the store."""

import ml_collections

# Tuples, not lists: ml_collections can override tuples from the command line.
METHODS = (
    "scratch_l2",
    "scratch_l1",
    "scratch_huber",
    "kd_l2",
    "kd_mix",
    "bounded",
    "ail",
    "tor",
    "tor_multitask",
)


def loss(*, huber_delta: float) -> ml_collections.ConfigDict:
    """Every kd_regression.methods.LossConfig field (the defaults are ours, not the paper's).

    TOR's δ: median + k·1.4826·MAD of the teacher's training residuals. ``huber_delta`` is
    in target units, so each experiment sets it.
    """
    c = ml_collections.ConfigDict()
    c.threshold_method = "mad"  # "mad", "quantile" (threshold_q), "fixed" (threshold_value)
    c.threshold_k = 3.0
    c.threshold_q = 0.9
    c.threshold_value = ml_collections.config_dict.placeholder(float)
    c.rejection = "drop"  # what a rejected example learns: "drop" or "teacher"
    c.multitask_weight = 1.0  # λ of the two-head student's teacher head
    c.huber_delta = huber_delta  # scratch_huber (and a Huber teacher)
    c.mix_alpha = 0.5  # kd_mix: weight of the label term
    c.bounded_margin = 0.0  # Chen et al. 2017: m
    c.bounded_weight = 1.0  # Chen et al. 2017: ν
    c.ail_alpha = 0.5  # Saputra et al. 2019: α
    c.ail_clip = True  # clip Φ to [0, 1] (ours)
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


def quick_image_parts(config: ml_collections.ConfigDict) -> None:
    """A ``:quick`` variant's tiny teacher and student, for plumbing checks on fake data."""
    config.num_seeds = 2
    config.teacher.model = image_model("resnet", (4, 8), 4, 2, 1)
    config.teacher.batch_size = 16
    config.teacher.num_steps = 10
    config.teacher.eval_every = 5
    config.teacher.checkpoint_every = 5
    config.student.model = image_model("mobilenet", (4, 8), 4, 2, 1)
    config.student.batch_size = 16
    config.student.num_steps = 6
    config.student.checkpoint_every = 6
