"""Face roll: regress the in-plane rotation of real face photographs, with nothing to download.

The photographs are the 100 face crops (25×25 grey) of scikit-image's
``skimage.data.lfw_subset()`` (Labeled Faces in the Wild; the package ships them, its
other 100 images are non-faces and are not used). Each example is one face rotated by an
angle θ drawn uniformly in ``[-max_angle, max_angle]`` degrees; the target is θ. Several
rotations per face give tens of thousands of examples from 100 photographs.

- Rotation: ``scipy.ndimage.rotate(face, θ, reshape=False)`` (bilinear), i.e. the content
  turns θ degrees counter-clockwise as displayed (row 0 at the top); rotating the example
  by −θ realigns it with the upright face.
- Corners would leak θ (a rotated square leaves angle-shaped blank corners), so every
  image, upright or rotated, is multiplied by the same disc mask: the disc inscribed in the
  square, which any rotation maps onto itself.
- Splits are by face: train, validation and test faces are disjoint, so test faces were
  never seen in training.
- Regression targets are ``(sin θ, cos θ)`` (no wrap-around at ±180°); errors are reported
  in degrees (:func:`angular_error`). Label noise is applied to θ in degrees by the
  experiment, before the conversion.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

SPLITS = ("train", "validation", "test")
# Bumped whenever the generated data change, so stored teacher predictions are recomputed.
VERSION = "1"
NUM_FACES = 100  # the first 100 images of lfw_subset are faces
SIZE = 25


class Split(NamedTuple):
    x: np.ndarray  # [n, 25, 25, 1] float32 in [0, 1], disc-masked
    angle: np.ndarray  # [n] float32, the rotation θ in degrees (clean)
    face: np.ndarray  # [n] int64, which photograph (0..99)
    index: np.ndarray  # [n] int64 stable example index (the row)


def photographs() -> np.ndarray:
    """The 100 upright face crops ``[100, 25, 25]`` float32 in [0, 1]."""
    try:
        from skimage import data
    except ImportError as e:
        raise RuntimeError(
            "the faces dataset needs scikit-image (pip install scikit-image): its "
            "skimage.data.lfw_subset() ships the photographs"
        ) from e
    try:
        images = np.asarray(data.lfw_subset())
    except Exception as e:  # a stripped install without the bundled data file
        raise RuntimeError(
            f"skimage.data.lfw_subset() could not load its bundled file ({e}); reinstall "
            "scikit-image with its data"
        ) from e
    if images.shape != (2 * NUM_FACES, SIZE, SIZE):
        raise RuntimeError(
            f"skimage.data.lfw_subset() returned shape {images.shape}, expected "
            f"{(2 * NUM_FACES, SIZE, SIZE)}"
        )
    faces = images[:NUM_FACES].astype(np.float32)
    return faces / 255.0 if images.dtype == np.uint8 else faces


def disc_mask(size: int = SIZE) -> np.ndarray:
    """Bool ``[size, size]``: the disc inscribed in the square (invariant under rotation)."""
    centre = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    return (yy - centre) ** 2 + (xx - centre) ** 2 <= (size / 2 - 0.5) ** 2


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """``image`` ``[H, W]`` turned ``angle`` degrees counter-clockwise, disc-masked."""
    from scipy import ndimage

    turned = ndimage.rotate(image, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return (turned * disc_mask(image.shape[0])).astype(np.float32)


def face_split(seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> dict:
    """Face ids of each split: a seeded permutation of the 100 photographs, cut by fractions."""
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 positive numbers summing to 1, got {fractions}")
    order = np.random.default_rng([seed, 7]).permutation(NUM_FACES)
    n_train = round(fractions[0] * NUM_FACES)
    n_val = round(fractions[1] * NUM_FACES)
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }


def load(
    split: str,
    *,
    seed: int,
    rotations_per_face: int,
    max_angle: float = 60.0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> Split:
    """All rotated examples of ``split`` for ``seed`` (deterministic: same seed, same arrays).

    The face split and the angles both come from ``seed``; angles are drawn independently
    per split, uniformly in ``[-max_angle, max_angle]``.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if rotations_per_face < 1:
        raise ValueError(f"rotations_per_face must be >= 1, got {rotations_per_face}")
    if not 0 < max_angle <= 180:
        raise ValueError(f"max_angle must be in (0, 180] degrees, got {max_angle}")
    ids = face_split(seed, fractions)[split]
    photos = photographs()
    rng = np.random.default_rng([seed, SPLITS.index(split), 11])
    angles = rng.uniform(-max_angle, max_angle, size=(len(ids), rotations_per_face))
    faces = np.repeat(ids, rotations_per_face)
    angle = angles.reshape(-1).astype(np.float32)
    x = np.stack([rotate(photos[f], a) for f, a in zip(faces, angle, strict=True)])
    return Split(
        x=x[..., None],
        angle=angle,
        face=faces.astype(np.int64),
        index=np.arange(len(faces), dtype=np.int64),
    )


def angle_to_target(angle: np.ndarray) -> np.ndarray:
    """Degrees ``[n]`` or ``[n, 1]`` -> ``[n, 2]`` targets ``(sin θ, cos θ)``."""
    rad = np.deg2rad(np.asarray(angle, np.float64).reshape(-1))
    return np.stack([np.sin(rad), np.cos(rad)], axis=-1).astype(np.float32)


def target_to_angle(target: np.ndarray) -> np.ndarray:
    """``[..., 2]`` (sin, cos) predictions -> degrees ``[...]`` (any scale of the vector)."""
    target = np.asarray(target, np.float64)
    return np.rad2deg(np.arctan2(target[..., 0], target[..., 1]))


def angular_error(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Absolute difference of two angles in degrees, wrapped to [0, 180]."""
    diff = (np.asarray(predicted, np.float64) - np.asarray(true, np.float64) + 180.0) % 360.0
    return np.abs(diff - 180.0)
