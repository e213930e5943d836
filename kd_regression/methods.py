"""Training methods by name: which model heads a method needs and the loss it minimises.

A config picks a method with one string (``config.method = "tor_multitask"``). Each method
maps the model's heads, the batch and the per-dataset constants (δ, η: computed once over
the whole training split by :func:`loss_constants`, never per batch) to a per-example loss.

Hyper-parameter defaults in :class:`LossConfig` are our choices; the paper (Takamoto et al.
2020, arXiv 2002.12597) text available to us does not give them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from kd_regression import losses, thresholds
from kd_regression.models import LABEL_HEAD, MAIN_HEAD, TEACHER_HEAD

Batch = Mapping[str, jax.Array]
Constants = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of every method's loss (all defaults are ours)."""

    huber_delta: float = 1.0
    mix_alpha: float = 0.5  # kd_mix: weight of the label term
    bounded_margin: float = 0.0  # Chen et al. 2017, m
    bounded_weight: float = 1.0  # Chen et al. 2017, ν: weight of the bounded term
    ail_alpha: float = 0.5  # Saputra et al. 2019, α
    ail_clip: bool = True  # clip Φ to [0, 1]; see losses.attentive_imitation
    threshold_method: str = "mixture"  # TOR δ: one of thresholds.THRESHOLD_METHODS
    threshold_k: float = 3.0
    threshold_q: float = 0.9
    threshold_value: float | None = None
    threshold_nu: float = 3.0  # 'mixture': the inliers' Student-t degrees of freedom
    rejection: str = "drop"  # TOR: what a rejected example learns; losses.REJECTION_MODES
    multitask_weight: float = 1.0  # λ of the teacher head
    small_loss_drop: float = 0.2  # small_loss: the fraction q of each batch dropped

    def __post_init__(self):
        checks = {  # field: (valid, what is allowed)
            "huber_delta": (self.huber_delta > 0, "> 0"),
            "mix_alpha": (0.0 <= self.mix_alpha <= 1.0, "in [0, 1]"),
            "bounded_margin": (math.isfinite(self.bounded_margin), "finite"),
            "bounded_weight": (self.bounded_weight >= 0, ">= 0"),
            "ail_alpha": (0.0 <= self.ail_alpha <= 1.0, "in [0, 1]"),
            "threshold_k": (self.threshold_k > 0, "> 0"),
            "threshold_q": (0.0 <= self.threshold_q <= 1.0, "in [0, 1]"),
            "threshold_value": (self.threshold_value is None or self.threshold_value >= 0, ">= 0"),
            "threshold_nu": (self.threshold_nu > 0, "> 0"),
            "multitask_weight": (self.multitask_weight >= 0, ">= 0"),
            "small_loss_drop": (0.0 <= self.small_loss_drop < 1.0, "in [0, 1)"),
        }
        # `not (x > 0)` also refuses NaN.
        bad = [
            f"{k}={getattr(self, k)} (must be {allowed})"
            for k, (ok, allowed) in checks.items()
            if not ok
        ]
        if bad:
            raise ValueError(f"loss config: invalid {'; '.join(bad)}")
        if self.threshold_method not in thresholds.THRESHOLD_METHODS:
            raise ValueError(
                f"loss config: threshold_method={self.threshold_method!r} is not one of "
                f"{thresholds.THRESHOLD_METHODS}"
            )
        if self.threshold_method == "fixed" and self.threshold_value is None:
            raise ValueError("loss config: threshold_method='fixed' needs threshold_value")
        if self.rejection not in losses.REJECTION_MODES:
            raise ValueError(
                f"loss config: rejection={self.rejection!r} is not one of {losses.REJECTION_MODES}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LossConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"loss config: unknown keys {unknown}; allowed: {sorted(known)}")
        return cls(**dict(values))


LossFn = Callable[
    [Mapping[str, jax.Array], Batch, Constants, LossConfig],
    tuple[jax.Array, dict[str, jax.Array]],
]


class Method(NamedTuple):
    name: str
    two_heads: bool  # needs the TwoHeadStudent
    needs_teacher: bool  # the batch must carry "teacher"
    loss: LossFn  # (heads, batch, constants, cfg) -> ([batch] loss, batch metrics)
    description: str
    rejects: bool = False  # drops the labels the teacher calls outliers (TOR's δ)
    selects: bool = False  # drops each batch's examples of largest own loss (small-loss)
    # Per-dataset constants it needs beyond δ and η, given by the caller (train_student).
    constants: tuple[str, ...] = ()


def _rejected_fraction(batch: Batch, constants: Constants) -> dict[str, jax.Array]:
    rejected = losses.outlier_mask(batch["y"], batch["teacher"], threshold=constants["threshold"])
    return {"rejected_fraction": jnp.mean(rejected.astype(jnp.float32))}


def _scratch(fn):
    def loss(heads, batch, constants, cfg):
        return fn(heads[MAIN_HEAD], batch["y"], cfg), {}

    return loss


def _kd_mix(heads, batch, constants, cfg):
    s, y, t = heads[MAIN_HEAD], batch["y"], batch["teacher"]
    return losses.mixed_distillation(s, y, t, alpha=cfg.mix_alpha), {}


def _kd_l2(heads, batch, constants, cfg):
    return losses.squared_error(heads[MAIN_HEAD], batch["teacher"]), {}


def _bounded(heads, batch, constants, cfg):
    s, y, t = heads[MAIN_HEAD], batch["y"], batch["teacher"]
    bound = losses.teacher_bounded_regression(s, y, t, margin=cfg.bounded_margin)
    return losses.squared_error(s, y) + cfg.bounded_weight * bound, {}


def _ail(heads, batch, constants, cfg):
    s, y, t = heads[MAIN_HEAD], batch["y"], batch["teacher"]
    loss = losses.attentive_imitation(
        s, y, t, eta=constants["eta"], alpha=cfg.ail_alpha, clip=cfg.ail_clip
    )
    return loss, {}


def _tor(heads, batch, constants, cfg):
    s, y, t = heads[MAIN_HEAD], batch["y"], batch["teacher"]
    loss = losses.teacher_outlier_rejection(
        s, y, t, threshold=constants["threshold"], rejection=cfg.rejection
    )
    return loss, _rejected_fraction(batch, constants)


def _tor_multitask(heads, batch, constants, cfg):
    loss = losses.multitask_distillation(
        heads[LABEL_HEAD],
        heads[TEACHER_HEAD],
        batch["y"],
        batch["teacher"],
        threshold=constants["threshold"],
        weight=cfg.multitask_weight,
        rejection=cfg.rejection,
    )
    return loss, _rejected_fraction(batch, constants)


def _small_loss(drop_fraction):
    def loss(heads, batch, constants, cfg):
        q = drop_fraction(constants, cfg)
        per_example = losses.squared_error(heads[MAIN_HEAD], batch["y"])
        dropped = losses.small_loss_mask(per_example, drop_fraction=q)
        kept = jnp.where(dropped, jnp.zeros_like(per_example), per_example)
        return kept, {"rejected_fraction": jnp.mean(dropped.astype(jnp.float32))}

    return loss


# The fraction of labels the experiment corrupted, when it knows it (an oracle's q).
NOISE_RATE = "noise_rate"

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "scratch_l2",
            False,
            False,
            _scratch(lambda s, y, c: losses.squared_error(s, y)),
            "no teacher; L2 on the noisy labels",
        ),
        Method(
            "scratch_l1",
            False,
            False,
            _scratch(lambda s, y, c: losses.absolute_error(s, y)),
            "no teacher; L1 on the noisy labels (robust baseline)",
        ),
        Method(
            "scratch_huber",
            False,
            False,
            _scratch(lambda s, y, c: losses.huber(s, y, delta=c.huber_delta)),
            "no teacher; Huber on the noisy labels (robust baseline)",
        ),
        Method("kd_l2", False, True, _kd_l2, "L2 to the teacher only"),
        Method("kd_mix", False, True, _kd_mix, "α·label L2 + (1-α)·teacher L2"),
        Method("bounded", False, True, _bounded, "Chen et al. 2017 teacher-bounded loss"),
        Method("ail", False, True, _ail, "Saputra et al. 2019 attentive imitation loss"),
        Method("tor", False, True, _tor, "teacher outlier rejection, one head", rejects=True),
        Method(
            "tor_multitask",
            True,
            True,
            _tor_multitask,
            "TOR on head A + λ·L2 of head B to the teacher (Takamoto et al. 2020)",
            rejects=True,
        ),
        Method(
            "small_loss",
            False,
            False,
            _small_loss(lambda c, cfg: cfg.small_loss_drop),
            "no teacher; L2, each batch's fraction q of largest losses dropped (small-loss)",
            selects=True,
        ),
        Method(
            "small_loss_oracle",
            False,
            False,
            _small_loss(lambda c, cfg: c[NOISE_RATE]),
            "small_loss with q the known noise rate (an oracle: a real data set has none)",
            selects=True,
            constants=(NOISE_RATE,),
        ),
    ]
}


def teacher_methods() -> list[str]:
    """The methods a teacher can train with: labels only (no teacher), one head, a plain
    per-example loss (no selection within the batch)."""
    return sorted(n for n, m in METHODS.items() if not _why_not_teacher(m))


def _why_not_teacher(m: Method) -> str | None:
    if m.needs_teacher:
        return "needs a teacher"
    if m.two_heads:
        return "two heads"
    if m.selects:  # ours: the teacher trains on a plain per-example loss
        return "selects examples per batch"
    return None


def check_teacher_method(name: str, where: str = "teacher method") -> None:
    """A ValueError unless ``name`` is one of :func:`teacher_methods`, saying why not."""
    if name not in teacher_methods():
        m = METHODS.get(name)
        why = "not a method" if m is None else _why_not_teacher(m)
        allowed = teacher_methods()
        raise ValueError(f"{where}={name!r}: {why}; a teacher trains with one of {allowed}")


def get_method(name: str) -> Method:
    """The registered method ``name``; a ValueError lists the registry otherwise."""
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not one of {sorted(METHODS)}")
    return METHODS[name]


def loss_constants(labels: jax.Array, teacher: jax.Array, cfg: LossConfig) -> dict[str, jax.Array]:
    """δ and η from a whole training split's labels ``[n, d]`` and teacher outputs ``[n, d]``.

    ``threshold`` is TOR's δ over the teacher residuals ||t - y||₂ (``cfg.threshold_*``);
    ``eta`` is max - min of the teacher's squared errors (Saputra et al.'s normaliser),
    floored at a tiny positive value so a perfect teacher gives a finite Φ.
    """
    residuals = losses.teacher_residual(labels, teacher)
    threshold = thresholds.rejection_threshold(
        residuals,
        method=cfg.threshold_method,
        k=cfg.threshold_k,
        q=cfg.threshold_q,
        value=cfg.threshold_value,
        nu=cfg.threshold_nu,
        dim=labels.shape[-1],
    )
    sq = jnp.square(residuals)
    eta = jnp.maximum(jnp.max(sq) - jnp.min(sq), jnp.finfo(sq.dtype).tiny)
    return {"threshold": threshold, "eta": eta}
