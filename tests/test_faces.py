"""kd_regression.datasets.faces: determinism, face-disjoint splits, labels that undo the
rotation, masked corners, angle conversions, and clear errors when the data is missing."""

import sys

import numpy as np
import pytest

from kd_regression.datasets import faces


@pytest.fixture(scope="module")
def train():
    return faces.load("train", seed=0, rotations_per_face=3)


def test_photographs():
    photos = faces.photographs()
    assert photos.shape == (100, 25, 25) and photos.dtype == np.float32
    assert 0 <= photos.min() and photos.max() <= 1 and photos.std() > 0.1


def test_deterministic_and_seed_dependent(train):
    again = faces.load("train", seed=0, rotations_per_face=3)
    for a, b in zip(train, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = faces.load("train", seed=1, rotations_per_face=3)
    assert not np.array_equal(train.angle, other.angle)


def test_shapes_and_ranges(train):
    n = 70 * 3
    assert train.x.shape == (n, 25, 25, 1) and train.x.dtype == np.float32
    assert train.angle.shape == (n,) and np.abs(train.angle).max() <= 60
    np.testing.assert_array_equal(train.index, np.arange(n))
    assert np.all(np.bincount(train.face, minlength=100)[np.unique(train.face)] == 3)


@pytest.mark.parametrize("seed", [0, 5])
def test_splits_are_disjoint_by_face(seed):
    ids = faces.face_split(seed)
    sets = [set(ids[s].tolist()) for s in faces.SPLITS]
    assert [len(s) for s in sets] == [70, 15, 15]
    assert set().union(*sets) == set(range(100))
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    test = faces.load("test", seed=seed, rotations_per_face=1)
    assert set(test.face.tolist()) == sets[2]


def test_rotating_back_by_the_label_realigns_the_face(train):
    photos, mask = faces.photographs(), faces.disc_mask()
    # Compare inside a smaller disc: interpolation blurs the rim.
    inner = np.hypot(*(np.mgrid[:25, :25] - 12)) < 10
    for i in range(0, len(train.angle), 17):
        upright = (photos[train.face[i]] * mask)[inner]
        back = faces.rotate(train.x[i, ..., 0], -train.angle[i])[inner]
        wrong = faces.rotate(train.x[i, ..., 0], train.angle[i])[inner]  # turned further
        good = np.corrcoef(back, upright)[0, 1]
        assert good > 0.9, (i, good)
        if abs(train.angle[i]) > 15:
            assert good > np.corrcoef(wrong, upright)[0, 1] + 0.1


def test_corners_are_masked_so_they_do_not_leak_the_angle(train):
    outside = ~faces.disc_mask()
    assert outside.sum() > 100 and np.all(train.x[:, outside, 0] == 0)


def test_angle_conversions_and_errors():
    angles = np.array([-179.0, -60.0, 0.0, 45.0, 90.0, 179.5])
    target = faces.angle_to_target(angles)
    assert target.shape == (6, 2)
    np.testing.assert_allclose(faces.target_to_angle(target), angles, atol=1e-4)
    np.testing.assert_allclose(faces.target_to_angle(3 * target), angles, atol=1e-4)
    np.testing.assert_allclose(
        faces.angular_error(np.array([179.0, -170.0, 10.0]), np.array([-179.0, 170.0, -20.0])),
        [2.0, 20.0, 30.0],
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "dev"}, "split"),
        ({"rotations_per_face": 0}, "rotations_per_face"),
        ({"max_angle": 0.0}, "max_angle"),
        ({"fractions": (0.5, 0.5, 0.0)}, "fractions"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"split": "train", "seed": 0, "rotations_per_face": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        faces.load(**args)


def test_clear_error_without_the_package_data(monkeypatch):
    from skimage import data

    def missing():
        raise FileNotFoundError("lfw_subset.npy")

    monkeypatch.setattr(data, "lfw_subset", missing)
    with pytest.raises(RuntimeError, match="lfw_subset"):
        faces.photographs()
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(RuntimeError, match="scikit-image"):
        faces.photographs()
