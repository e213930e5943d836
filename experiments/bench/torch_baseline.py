"""The obvious PyTorch alternative, for the speed benchmarks: same models, losses, optimiser.

What a user would write without this library: the student MLP and the MobileNet-like CNN
of :mod:`kd_regression.models` as ``torch.nn`` modules (weights copied from the Flax ones,
so both start equal), every method's loss of :mod:`kd_regression.methods`, ``torch.optim.Adam``
with the same defaults as ``optax.adam``, and an eager training loop over in-memory
tensors. ``tests/test_torch_baseline.py`` checks that a few steps of each give the same
losses and parameters as ours, so the benchmark compares equal work.

PyTorch is a benchmark-only dependency (``requirements-bench.txt``), imported here only.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from kd_regression.methods import LossConfig

# ---------------------------------------------------------------------------------- models


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of one spatial axis: (before, after)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Flax ``_ConvBN``: conv (no bias, 'SAME' padding), batch norm, optional ReLU (NCHW)."""

    def __init__(self, cin, cout, *, kernel=3, stride=1, groups=1, act=True):
        super().__init__()
        self.kernel, self.stride, self.act = kernel, stride, act
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)
        # Flax's momentum 0.9 (weight of the old value) is torch's momentum 0.1.
        self.norm = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)

    def forward(self, x):
        (top, bottom), (left, right) = (
            _same_pad(x.shape[i], self.kernel, self.stride) for i in (2, 3)
        )
        if top == bottom and left == right:
            x = F.conv2d(x, self.conv.weight, None, self.stride, (top, left), 1, self.conv.groups)
        else:
            x = self.conv(F.pad(x, (left, right, top, bottom)))
        x = self.norm(x)
        return F.relu(x) if self.act else x


class SeparableBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.depthwise = ConvBN(cin, cin, stride=stride, groups=cin)
        self.pointwise = ConvBN(cin, cout, kernel=1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class _Heads(nn.Module):
    def __init__(self, features: int, out: int, two_heads: bool):
        super().__init__()
        self.two_heads = two_heads
        if two_heads:
            self.label_head, self.teacher_head = nn.Linear(features, out), nn.Linear(features, out)
        else:
            self.head = nn.Linear(features, out)

    def heads(self, h) -> dict[str, torch.Tensor]:
        if self.two_heads:
            return {"label": self.label_head(h), "teacher": self.teacher_head(h)}
        return {"main": self.head(h)}


class MLP(_Heads):
    """:func:`kd_regression.models.mlp` (ReLU, no dropout)."""

    def __init__(self, in_features, hidden, out, *, two_heads=False):
        super().__init__(hidden[-1], out, two_heads)
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.heads(x)


class MobileNet(_Heads):
    """:func:`kd_regression.models.image_regressor` with trunk ``'mobilenet'`` (NCHW)."""

    def __init__(
        self, in_channels, widths, out, *, stem, stem_stride, blocks_per_stage=1, two_heads=False
    ):
        super().__init__(widths[-1], out, two_heads)
        self.stem = ConvBN(in_channels, stem, stride=stem_stride)
        blocks, cin = [], stem
        for i, width in enumerate(widths):
            for j in range(blocks_per_stage):
                blocks.append(SeparableBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.heads(x.mean(dim=(2, 3)))


def load_flax(module: nn.Module, params: nnx.State, model_state: nnx.State | None = None):
    """Copies Flax parameters (and batch statistics) into the matching torch module."""
    flat = {}
    for tree in (params, model_state):
        if tree is not None:
            for path, value in nnx.to_flat_state(tree):
                flat[".".join(map(str, path))] = np.asarray(value.get_value())
    renames = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
    loaded = set()
    with torch.no_grad():
        for name, tensor in {
            **dict(module.named_parameters()),
            **dict(module.named_buffers()),
        }.items():
            if name.endswith("num_batches_tracked"):
                continue
            stem, leaf = name.rsplit(".", 1)
            match = [k for k, v in renames.items() if v == leaf] + [leaf]
            key = next((f"trunk.{stem}.{m}" for m in match if f"trunk.{stem}.{m}" in flat), None)
            key = key or next((f"{stem}.{m}" for m in match if f"{stem}.{m}" in flat), None)
            if key is None:
                raise KeyError(f"no Flax value for torch {name}")
            value = flat[key]
            if value.ndim == 2:  # Linear: [in, out] -> [out, in]
                value = value.T
            elif value.ndim == 4:  # Conv: [kh, kw, in/groups, out] -> [out, in/groups, kh, kw]
                value = value.transpose(3, 2, 0, 1)
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{name}: Flax {value.shape} vs torch {tuple(tensor.shape)}")
            tensor.copy_(torch.from_numpy(np.array(value)))
            loaded.add(key)
    missing = sorted(set(flat) - loaded)
    if missing:
        raise KeyError(f"Flax values without a torch counterpart: {missing}")


# ---------------------------------------------------------------------------------- losses


def _sq(a):
    return a.square().sum(-1)


def method_loss(method: str, heads, y, t, constants: Mapping[str, float], cfg: LossConfig):
    """Per-example loss ``[batch]`` of :mod:`kd_regression.methods`'s ``method``."""
    s = heads.get("main")
    if method == "scratch_l2":
        return _sq(s - y)
    if method == "scratch_l1":
        return (s - y).abs().sum(-1)
    if method == "scratch_huber":
        return F.huber_loss(s, y, reduction="none", delta=cfg.huber_delta).sum(-1)
    if method == "kd_l2":
        return _sq(s - t)
    if method == "kd_mix":
        return cfg.mix_alpha * _sq(s - y) + (1 - cfg.mix_alpha) * _sq(s - t)
    if method == "bounded":
        err = _sq(s - y)
        bound = torch.where(err + cfg.bounded_margin > _sq(t - y), err, torch.zeros_like(err))
        return err + cfg.bounded_weight * bound
    if method == "ail":
        phi = 1.0 - _sq(t - y) / constants["eta"]
        phi = phi.clamp(0.0, 1.0) if cfg.ail_clip else phi
        return cfg.ail_alpha * _sq(s - y) + (1 - cfg.ail_alpha) * phi * _sq(s - t)
    if method in ("tor", "tor_multitask"):
        label = heads["label"] if method == "tor_multitask" else s
        rejected = _sq(t - y).sqrt() > constants["threshold"]
        err = _sq(label - y)
        other = torch.zeros_like(err) if cfg.rejection == "drop" else _sq(label - t)
        loss = torch.where(rejected, other, err)
        if method == "tor_multitask":
            loss = loss + cfg.multitask_weight * _sq(heads["teacher"] - t)
        return loss
    if method in ("small_loss", "small_loss_oracle"):
        q = cfg.small_loss_drop if method == "small_loss" else float(constants["noise_rate"])
        err = _sq(s - y)
        dropped = torch.zeros_like(err, dtype=torch.bool)
        dropped[torch.argsort(-err.detach(), stable=True)[: math.floor(q * len(err) + 1e-4)]] = True
        return torch.where(dropped, torch.zeros_like(err), err)
    raise ValueError(f"method={method!r} has no PyTorch baseline")


# ------------------------------------------------------------------------------- training


def train_step(model, opt, method, batch, constants, cfg) -> torch.Tensor:
    """One eager step: forward, mean loss, backward, Adam update; returns the loss."""
    heads = model(batch["x"])
    loss = method_loss(method, heads, batch["y"], batch.get("teacher"), constants, cfg).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def shuffled_batches(
    arrays: Mapping[str, torch.Tensor], batch_size: int, seed: int
) -> Iterator[dict[str, torch.Tensor]]:
    """The usual loop's batches: a fresh ``torch.randperm`` per epoch, rows gathered."""
    n = next(iter(arrays.values())).shape[0]
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(n // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            yield {k: v[idx] for k, v in arrays.items()}


def fit(
    model,
    method,
    arrays,
    *,
    steps,
    batch_size,
    learning_rate,
    constants,
    cfg,
    seed=0,
    eval_every=None,
    eval_fn=None,
) -> float:
    """Trains ``model`` for ``steps`` Adam steps; returns the wall time in seconds.

    ``eval_fn(model)`` (under ``torch.no_grad`` and ``model.eval()``) runs every
    ``eval_every`` steps, as our teacher's early-stopping evaluation does.
    """
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    batches = shuffled_batches(arrays, batch_size, seed)
    model.train()
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        train_step(model, opt, method, next(batches), constants, cfg)
        if eval_every and step % eval_every == 0:
            model.eval()
            with torch.no_grad():
                eval_fn(model)
            model.train()
    return time.perf_counter() - t0
