"""Flax NNX models: MLPs for teachers and students, and the two-head multi-task student.

Every model maps ``x: [batch, in_features]`` to a dict of named heads, each ``[batch, d]``.
A plain regressor has the single head ``"main"``; the two-head student of Takamoto et al.
(2020) has ``"label"`` (head A, fit to the noisy labels) and ``"teacher"`` (head B, fit to the
teacher's outputs) on one shared trunk. One output type for all models keeps the train step,
the losses registry and the evaluation code free of special cases.

Models are built once, then trained functionally: ``nnx.split`` gives a static graph and a
pytree of parameters that ``jax.jit`` and ``jax.vmap`` (one student per seed) work on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import jax
from flax import nnx

Heads = dict[str, jax.Array]

MAIN_HEAD = "main"
LABEL_HEAD = "label"
TEACHER_HEAD = "teacher"

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nnx.relu,
    "gelu": nnx.gelu,
    "tanh": nnx.tanh,
    "silu": nnx.silu,
}


def _activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class MLPTrunk(nnx.Module):
    """Hidden layers only: ``[batch, in_features] -> [batch, hidden[-1]]``.

    Dropout (rate ``dropout``) follows every hidden layer; it is active only when the caller
    passes ``deterministic=False`` and an ``rngs`` with a ``dropout`` stream, which the train
    step derives from its per-step key.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        if in_features < 1 or not hidden or min(hidden) < 1:
            raise ValueError(
                f"MLPTrunk needs in_features >= 1 and a non-empty list of positive hidden "
                f"sizes, got in_features={in_features}, hidden={list(hidden)}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        sizes = [in_features, *hidden]
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.activation = _activation(activation)
        self.dropout = nnx.Dropout(dropout) if dropout > 0 else None
        self.out_features = sizes[-1]

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        for layer in self.layers:
            x = self.activation(layer(x))
            if self.dropout is not None:
                x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return x


class ConvTrunk(nnx.Module):
    """A plain CNN: per stage a stride-2 3×3 convolution and the activation, then global
    average pooling: ``[batch, H, W, C] -> [batch, channels[-1]]``.

    The simple image trunk of the store benchmark; the face and gaze experiments' ResNet
    teacher and MobileNet-like student come with their issue.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        *,
        activation: str = "relu",
        rngs: nnx.Rngs,
    ):
        if in_channels < 1 or not channels or min(channels) < 1:
            raise ValueError(
                f"ConvTrunk needs in_channels >= 1 and positive channels, got "
                f"in_channels={in_channels}, channels={list(channels)}"
            )
        sizes = [in_channels, *channels]
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
                for a, b in itertools.pairwise(sizes)
            ]
        )
        self.activation = _activation(activation)
        self.out_features = sizes[-1]

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"ConvTrunk expects [batch, H, W, C] inputs, got shape {x.shape}")
        for conv in self.convs:
            x = self.activation(conv(x))
        return x.mean(axis=(1, 2))


class Regressor(nnx.Module):
    """A trunk followed by one linear output head named ``"main"``."""

    def __init__(self, trunk: nnx.Module, out_features: int, *, rngs: nnx.Rngs):
        self.trunk = trunk
        self.head = nnx.Linear(trunk.out_features, out_features, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> Heads:
        h = self.trunk(x, deterministic=deterministic, rngs=rngs)
        return {MAIN_HEAD: self.head(h)}


class TwoHeadStudent(nnx.Module):
    """Shared trunk, head A ``"label"`` for the labels, head B ``"teacher"`` for the teacher.

    Wraps any trunk module that has an ``out_features`` attribute and accepts
    ``(x, *, deterministic, rngs)``. Which head serves predictions at inference is a config
    choice of ours (the paper's text available to us does not say); both are evaluated.
    """

    def __init__(self, trunk: nnx.Module, out_features: int, *, rngs: nnx.Rngs):
        self.trunk = trunk
        self.label_head = nnx.Linear(trunk.out_features, out_features, rngs=rngs)
        self.teacher_head = nnx.Linear(trunk.out_features, out_features, rngs=rngs)

    def __call__(
        self, x: jax.Array, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> Heads:
        h = self.trunk(x, deterministic=deterministic, rngs=rngs)
        return {LABEL_HEAD: self.label_head(h), TEACHER_HEAD: self.teacher_head(h)}


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int,
    *,
    two_heads: bool = False,
    activation: str = "relu",
    dropout: float = 0.0,
    rngs: nnx.Rngs,
) -> Regressor | TwoHeadStudent:
    """An MLP regressor (teacher or student); ``two_heads`` gives the multi-task student."""
    trunk = MLPTrunk(in_features, hidden, activation=activation, dropout=dropout, rngs=rngs)
    head_cls = TwoHeadStudent if two_heads else Regressor
    return head_cls(trunk, out_features, rngs=rngs)


def cnn(
    in_channels: int,
    channels: Sequence[int],
    out_features: int,
    *,
    two_heads: bool = False,
    activation: str = "relu",
    rngs: nnx.Rngs,
) -> Regressor | TwoHeadStudent:
    """A CNN regressor on ``[batch, H, W, in_channels]`` images (see :class:`ConvTrunk`)."""
    trunk = ConvTrunk(in_channels, channels, activation=activation, rngs=rngs)
    head_cls = TwoHeadStudent if two_heads else Regressor
    return head_cls(trunk, out_features, rngs=rngs)


def param_count(params: nnx.State) -> int:
    """Number of scalar parameters in a parameter pytree."""
    return sum(int(x.size) for x in jax.tree.leaves(params))
