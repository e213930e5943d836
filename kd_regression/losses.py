"""Per-example regression and distillation losses, in the style of `optax.losses`.

Losses for training a small student on noisy regression labels with a teacher's help,
after Takamoto, Morishita & Imaoka, "An Efficient Method of Training Small Models for
Regression Problems with Knowledge Distillation" (arXiv 2002.12597): the teacher outlier
rejection (TOR) loss and the multi-task student loss, plus the baselines we compare with.
The paper's full text is not available to us: thresholds, rejection modes and other
hyper-parameter choices not stated in its abstract are ours, and each docstring says so.

Shapes: predictions, labels and teacher outputs are `[batch, d]` arrays (exactly 2-D,
d >= 1, floating dtype, all the same shape); every loss returns a per-example `[batch]`
array and never reduces over the batch, so the caller chooses mean, sum or a weighting.
Hyper-parameters are keyword-only. Validation reads only static shape and dtype
information, and checks a hyper-parameter's value only when it is a concrete Python
number, so every function works under `jax.jit`, `jax.grad` and `jax.vmap`, and with a
traced threshold.
"""

import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

REJECTION_MODES = ("drop", "teacher")


def _check_batch(**arrays: jax.typing.ArrayLike) -> tuple[jax.Array, ...]:
    """Returns the arrays as `jax.Array`s after checking rank, dtype and equal shapes."""
    checked = []
    first_name, first_shape = None, None
    for name, value in arrays.items():
        x = jnp.asarray(value)
        if x.ndim != 2 or x.shape[-1] < 1:
            raise ValueError(
                f"`{name}` must be a 2-D array of shape [batch, d] with d >= 1, "
                f"got shape {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"`{name}` must have a floating dtype, got {x.dtype}.")
        if first_shape is None:
            first_name, first_shape = name, x.shape
        elif x.shape != first_shape:
            raise ValueError(
                f"Shapes must match: `{first_name}` has shape {first_shape} "
                f"but `{name}` has shape {x.shape}."
            )
        checked.append(x)
    return tuple(checked)


def _check_value(name: str, value: object, ok: Callable[[float], bool], what: str) -> None:
    # Traced or array-valued hyper-parameters cannot be inspected without breaking jit and
    # vmap, so only concrete Python (and NumPy scalar) numbers are checked.
    if isinstance(value, numbers.Real) and not ok(value):
        raise ValueError(f"`{name}` must be {what}, got {value!r}.")


def _check_threshold(threshold: jax.typing.ArrayLike) -> None:
    if jnp.ndim(threshold) != 0:
        raise ValueError(f"`threshold` must be a scalar, got shape {jnp.shape(threshold)}.")
    _check_value("threshold", threshold, lambda v: v >= 0, ">= 0")


def _check_rejection(rejection: str) -> None:
    if rejection not in REJECTION_MODES:
        raise ValueError(f"`rejection` must be one of {REJECTION_MODES}, got {rejection!r}.")


def _sq_norm(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x), axis=-1)


def squared_error(pred: jax.typing.ArrayLike, target: jax.typing.ArrayLike) -> jax.Array:
    """Squared Euclidean error `||pred - target||²`, summed over d.

    Args:
      pred: predictions, `[batch, d]`.
      target: targets, `[batch, d]`.

    Returns:
      `[batch]` per-example losses.
    """
    pred, target = _check_batch(pred=pred, target=target)
    return optax.losses.squared_error(pred, target).sum(axis=-1)


def absolute_error(pred: jax.typing.ArrayLike, target: jax.typing.ArrayLike) -> jax.Array:
    """L1 error `||pred - target||₁ = Σ_d |pred - target|`.

    Args:
      pred: predictions, `[batch, d]`.
      target: targets, `[batch, d]`.

    Returns:
      `[batch]` per-example losses.
    """
    pred, target = _check_batch(pred=pred, target=target)
    return jnp.abs(pred - target).sum(axis=-1)


def huber(
    pred: jax.typing.ArrayLike, target: jax.typing.ArrayLike, *, delta: float = 1.0
) -> jax.Array:
    """Huber loss per element, summed over d.

    With x = pred - target: `0.5 x²` if `|x| <= delta`, else `delta (|x| - 0.5 delta)`.

    Args:
      pred: predictions, `[batch, d]`.
      target: targets, `[batch, d]`.
      delta: where the loss turns from quadratic to linear; must be > 0.

    Returns:
      `[batch]` per-example losses.
    """
    pred, target = _check_batch(pred=pred, target=target)
    _check_value("delta", delta, lambda v: v > 0, "> 0")
    return optax.losses.huber_loss(pred, target, delta=delta).sum(axis=-1)


def teacher_residual(labels: jax.typing.ArrayLike, teacher: jax.typing.ArrayLike) -> jax.Array:
    """Euclidean distance of the teacher from the label, `r = ||teacher - labels||₂`.

    The gradient is finite (zero) where teacher == labels: the square root only ever sees
    a strictly positive value, unlike `jnp.linalg.norm`, whose gradient is NaN at 0.

    Args:
      labels: training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.

    Returns:
      `[batch]` residuals, >= 0.
    """
    labels, teacher = _check_batch(labels=labels, teacher=teacher)
    sq = _sq_norm(teacher - labels)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def outlier_mask(
    labels: jax.typing.ArrayLike,
    teacher: jax.typing.ArrayLike,
    *,
    threshold: jax.typing.ArrayLike,
) -> jax.Array:
    """Which examples the teacher flags as label outliers: `teacher_residual > threshold`.

    A residual exactly at the threshold is kept, so `threshold=0` with a perfect teacher
    rejects nothing.

    Args:
      labels: training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.
      threshold: δ >= 0, a Python number or a 0-d (possibly traced) array.

    Returns:
      `[batch]` bool, True where the example is rejected.
    """
    _check_threshold(threshold)
    return teacher_residual(labels, teacher) > threshold


def teacher_outlier_rejection(
    student: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    teacher: jax.typing.ArrayLike,
    *,
    threshold: jax.typing.ArrayLike,
    rejection: str = "drop",
) -> jax.Array:
    """Teacher outlier rejection (TOR) loss, our reading of Takamoto et al. 2020.

    With r = ||teacher - labels||₂ and keep = r <= threshold:
    kept examples give `||student - labels||²`; rejected ones give 0 (`'drop'`) or
    `||student - teacher||²` (`'teacher'`, our option: the teacher replaces the label).

    Args:
      student: student predictions, `[batch, d]`.
      labels: noisy training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.
      threshold: δ >= 0, see `thresholds.rejection_threshold`.
      rejection: one of `REJECTION_MODES`.

    Returns:
      `[batch]` per-example losses.
    """
    student, labels, teacher = _check_batch(student=student, labels=labels, teacher=teacher)
    _check_rejection(rejection)
    rejected = outlier_mask(labels, teacher, threshold=threshold)
    label_loss = squared_error(student, labels)
    # Both branches are finite everywhere, so `where` passes finite (zero) gradients to
    # the branch it does not select.
    if rejection == "drop":
        return jnp.where(rejected, jnp.zeros_like(label_loss), label_loss)
    return jnp.where(rejected, squared_error(student, teacher), label_loss)


def _sharded_over_batch(x: jax.Array):
    """The explicit sharding of ``x`` if its axis 0 is split over a device mesh, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if sharding is None or sharding.mesh.empty or all(a is None for a in sharding.spec):
        return None
    return sharding


def small_loss_mask(
    loss: jax.typing.ArrayLike, *, drop_fraction: jax.typing.ArrayLike
) -> jax.Array:
    """Small-loss selection: which examples of a batch to drop, those of largest own loss.

    The floor(q · batch) examples with the largest `loss` are dropped (q = `drop_fraction`;
    of equal losses, the earlier index first), as in the sample selection of Co-teaching
    (Han et al. 2018) and trimmed least squares: a network fits clean labels before noisy
    ones, so the examples it fits worst are the likeliest to be mislabelled. The ranking sees no
    gradient. q may be traced (one compiled step for every rate); without a ramp-up of q
    over training (Co-teaching has one), ours.

    Args:
      loss: `[batch]` per-example losses, floating.
      drop_fraction: q in [0, 1), a Python number or a 0-d (possibly traced) array.

    Returns:
      `[batch]` bool, True where the example is dropped.
    """
    loss = jnp.asarray(loss)
    if loss.ndim != 1 or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise ValueError(
            f"`loss` must be a 1-D float array [batch], got {loss.dtype} {loss.shape}."
        )
    if jnp.ndim(drop_fraction) != 0:
        raise ValueError(f"`drop_fraction` must be a scalar, got shape {jnp.shape(drop_fraction)}.")
    _check_value("drop_fraction", drop_fraction, lambda v: 0 <= v < 1, "in [0, 1)")
    # 1e-4 of an example: 0.3 · 10 is 3 examples, not float32's 2.9999998 rounded down.
    n_drop = jnp.floor(jnp.asarray(drop_fraction, jnp.float32) * loss.shape[0] + 1e-4)
    ranked = jax.lax.stop_gradient(loss)
    # Under jax.set_mesh with the batch split over 'data', a sort refuses a split axis: the
    # [batch] losses are gathered on every device (a few hundred floats), ranked there, and
    # the mask split back as the losses were, so 1 and N devices drop the same examples.
    split = _sharded_over_batch(ranked)
    if split is not None:
        whole = jax.sharding.NamedSharding(split.mesh, jax.sharding.PartitionSpec())
        ranked = jax.sharding.reshard(ranked, whole)
    order = jnp.argsort(-ranked, stable=True)  # largest first
    rank = jnp.zeros(loss.shape, jnp.int32).at[order].set(jnp.arange(loss.shape[0]))
    dropped = rank < n_drop
    return dropped if split is None else jax.sharding.reshard(dropped, split)


def small_loss(
    pred: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    drop_fraction: jax.typing.ArrayLike,
) -> jax.Array:
    """Squared error on the labels with the batch's largest losses dropped (teacher-free).

    `||pred - labels||²` for the examples `small_loss_mask` keeps, 0 for the floor(q · batch)
    it drops: the batch mean then divides by the whole batch, as TOR's `'drop'` does.

    Args:
      pred: predictions, `[batch, d]`.
      labels: noisy training labels, `[batch, d]`.
      drop_fraction: q in [0, 1), see `small_loss_mask`.

    Returns:
      `[batch]` per-example losses.
    """
    pred, labels = _check_batch(pred=pred, labels=labels)
    loss = squared_error(pred, labels)
    dropped = small_loss_mask(loss, drop_fraction=drop_fraction)
    return jnp.where(dropped, jnp.zeros_like(loss), loss)


def teacher_bounded_regression(
    student: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    teacher: jax.typing.ArrayLike,
    *,
    margin: float = 0.0,
) -> jax.Array:
    """Teacher-bounded regression loss (Chen et al. 2017).

    From "Learning efficient object detection models with knowledge distillation":
    `||s - y||²` where `||s - y||² + margin > ||t - y||²`, else 0. The student is only
    pushed toward the label while it is not better than the teacher by the margin. The
    paper adds it to a label loss with a weight; that sum is the caller's.

    Args:
      student: student predictions, `[batch, d]`.
      labels: training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.
      margin: m in the condition above.

    Returns:
      `[batch]` per-example losses.
    """
    student, labels, teacher = _check_batch(student=student, labels=labels, teacher=teacher)
    student_err = _sq_norm(student - labels)
    active = student_err + margin > _sq_norm(teacher - labels)
    return jnp.where(active, student_err, jnp.zeros_like(student_err))


def attentive_imitation(
    student: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    teacher: jax.typing.ArrayLike,
    *,
    eta: jax.typing.ArrayLike,
    alpha: float = 0.5,
    clip: bool = True,
) -> jax.Array:
    """Attentive imitation loss (Saputra et al. 2019).

    From "Distilling knowledge from a deep pose regressor network":
    `alpha ||s - y||² + (1 - alpha) Φ ||s - t||²` with `Φ = 1 - ||t - y||² / eta`,
    so the student imitates the teacher less where the teacher is far from the label.
    `eta` is the max - min of the teacher's squared errors `||t - y||²` over the whole
    training set; the caller computes it once, since a batch's range would make Φ depend
    on the batch.

    `clip=True` is our choice, not the paper's: Φ is clipped to [0, 1]. Without it Φ < 0
    for examples whose teacher error exceeds eta (any held-out example can), which rewards
    moving away from the teacher and makes the loss unbounded below.

    Args:
      student: student predictions, `[batch, d]`.
      labels: training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.
      eta: normaliser of the teacher's squared error; must be > 0.
      alpha: weight of the label term, in [0, 1].
      clip: whether to clip Φ to [0, 1].

    Returns:
      `[batch]` per-example losses.
    """
    student, labels, teacher = _check_batch(student=student, labels=labels, teacher=teacher)
    _check_value("eta", eta, lambda v: v > 0, "> 0")
    _check_value("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]")
    phi = 1.0 - _sq_norm(teacher - labels) / eta
    if clip:
        phi = jnp.clip(phi, 0.0, 1.0)
    return alpha * _sq_norm(student - labels) + (1.0 - alpha) * phi * _sq_norm(student - teacher)


def mixed_distillation(
    student: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    teacher: jax.typing.ArrayLike,
    *,
    alpha: float = 0.5,
) -> jax.Array:
    """Label/teacher mixture `alpha ||s - y||² + (1 - alpha) ||s - t||²`.

    `alpha=0` is plain distillation to the teacher, `alpha=1` training from scratch.

    Args:
      student: student predictions, `[batch, d]`.
      labels: training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.
      alpha: weight of the label term, in [0, 1].

    Returns:
      `[batch]` per-example losses.
    """
    student, labels, teacher = _check_batch(student=student, labels=labels, teacher=teacher)
    _check_value("alpha", alpha, lambda v: 0 <= v <= 1, "in [0, 1]")
    return alpha * _sq_norm(student - labels) + (1.0 - alpha) * _sq_norm(student - teacher)


def multitask_distillation(
    label_head: jax.typing.ArrayLike,
    teacher_head: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    teacher: jax.typing.ArrayLike,
    *,
    threshold: jax.typing.ArrayLike,
    weight: float = 1.0,
    rejection: str = "drop",
) -> jax.Array:
    """Multi-task student loss, our reading of Takamoto et al. 2020.

    `TOR(label_head, labels, teacher) + weight ||teacher_head - teacher||²`: one head
    learns the labels with teacher outlier rejection, the other learns the teacher's
    outputs, and both shape the shared features. `weight` and its default are ours.

    Args:
      label_head: student head trained on labels, `[batch, d]`.
      teacher_head: student head trained on the teacher, `[batch, d]`.
      labels: noisy training labels, `[batch, d]`.
      teacher: teacher predictions, `[batch, d]`.
      threshold: δ >= 0 for the TOR term, see `thresholds.rejection_threshold`.
      weight: λ >= 0, weight of the teacher-head term.
      rejection: one of `REJECTION_MODES`, for the TOR term.

    Returns:
      `[batch]` per-example losses.
    """
    _check_batch(label_head=label_head, teacher_head=teacher_head, labels=labels, teacher=teacher)
    _check_value("weight", weight, lambda v: v >= 0, ">= 0")
    tor = teacher_outlier_rejection(
        label_head, labels, teacher, threshold=threshold, rejection=rejection
    )
    return tor + weight * squared_error(teacher_head, teacher)
