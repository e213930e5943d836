"""MPIIGaze (Zhang et al., CVPR 2015): gaze direction from 36×60 normalized eye images.

Read from the user's copy of the released archive (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``)
and converted once by the tensorflow-datasets builder :class:`MpiiGaze` (``mpii_gaze``)
into array_record files; see :mod:`kd_regression.datasets.manual`.

Source files (the archive's ``MPIIGaze/`` folder):

- ``Data/Normalized/pXX/dayYY.mat`` (people p00–p14), MATLAB v5: a struct ``data`` with
  fields ``left`` and ``right``, each a struct of ``gaze`` (N×3 unit gaze vectors in the
  normalized camera frame), ``image`` (N×36×60 uint8 grey eye images) and ``pose`` (N×3
  head rotation vectors); and ``filenames``, an N×1 cell of the frames' names
  (``NNNN.jpg``). Some days hold a single frame (N = 1).
- ``Evaluation Subset/sample list for eye image/pXX.txt``: lines ``dayYY/NNNN.jpg left``
  or ``... right``, the standard evaluation subset of 1500 left and 1500 right eyes per
  person.

One example per line of the sample lists:

- ``image`` ``[36, 60, 1]`` uint8; ``gaze`` and ``head_pose`` ``(pitch, yaw)`` float32
  radians; ``person`` (0–14), ``day``, ``side`` (0 left, 1 right), ``file`` and ``index``
  (``person * 10000 + line``, stable across builds).
- Gaze (pitch, yaw) = (asin(−y), atan2(−x, −z)) of the 3-D vector; head pose: the third
  column ``r`` of the rotation matrix of the rotation vector, (asin(r_y), atan2(r_x, r_z)),
  the conversion common MPIIGaze preprocessing code uses.
- Right eyes are mirrored to look like left eyes (the standard protocol): the image is
  flipped horizontally and the yaws of gaze and head pose are negated.

Evaluation is leave-one-person-out (15 folds: train on 14 people, test on the 15th); the
error is the mean angle in degrees between the predicted and true 3-D gaze vectors
(:func:`angular_error`). One tfds split per person (``p00`` … ``p14``) makes a fold's
training set a split expression such as ``p00+p02+…``.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from kd_regression.datasets import manual

NUM_PEOPLE = 15
IMAGE_SHAPE = (36, 60, 1)
SIDES = ("left", "right")
PER_PERSON_INDEX = 10_000  # index = person * PER_PERSON_INDEX + line of the sample list
NORMALIZED = ("Data", "Normalized")
SAMPLE_LISTS = ("Evaluation Subset", "sample list for eye image")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
MPIIGaze: download MPIIGaze.tar.gz from the dataset's page at the Max Planck
Institute for Informatics ("Appearance-based Gaze Estimation in the Wild", Zhang et al.,
CVPR 2015), extract it into the manual directory, and check that these exist:
  MANUAL/MPIIGaze/Data/Normalized/p00/day01.mat   (people p00 ... p14)
  MANUAL/MPIIGaze/Evaluation Subset/sample list for eye image/p00.txt
(MANUAL may also be the MPIIGaze folder itself.)"""

_LINE = re.compile(r"^(day\d+)/(\S+)\s+(left|right)$")


def person_name(person: int) -> str:
    return f"p{person:02d}"


# --- angles ------------------------------------------------------------------------------


def gaze_to_pitchyaw(vectors: np.ndarray) -> np.ndarray:
    """``[..., 3]`` gaze vectors -> ``[..., 2]`` (pitch, yaw) radians (asin(−y), atan2(−x, −z))."""
    v = np.asarray(vectors, np.float64)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True)
    pitch = np.arcsin(np.clip(-v[..., 1], -1.0, 1.0))
    yaw = np.arctan2(-v[..., 0], -v[..., 2])
    return np.stack([pitch, yaw], -1)


def pitchyaw_to_gaze(pitchyaw: np.ndarray) -> np.ndarray:
    """``[..., 2]`` (pitch, yaw) radians -> ``[..., 3]`` unit gaze vectors; inverts the above."""
    p = np.asarray(pitchyaw, np.float64)
    pitch, yaw = p[..., 0], p[..., 1]
    return np.stack(
        [-np.cos(pitch) * np.sin(yaw), -np.sin(pitch), -np.cos(pitch) * np.cos(yaw)], -1
    )


def pose_to_pitchyaw(rotvecs: np.ndarray) -> np.ndarray:
    """``[..., 3]`` head rotation vectors -> ``[..., 2]`` (pitch, yaw) radians."""
    from scipy.spatial.transform import Rotation

    r = np.asarray(rotvecs, np.float64)
    z = Rotation.from_rotvec(r.reshape(-1, 3)).as_matrix()[:, :, 2].reshape(*r.shape[:-1], 3)
    pitch = np.arcsin(np.clip(z[..., 1], -1.0, 1.0))
    return np.stack([pitch, np.arctan2(z[..., 0], z[..., 2])], -1)


def angular_error(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Angle in degrees between the gaze directions of two ``[..., 2]`` (pitch, yaw) arrays."""
    a, b = pitchyaw_to_gaze(pred), pitchyaw_to_gaze(true)
    cos = np.sum(a * b, axis=-1)  # both unit vectors
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


# --- source files ------------------------------------------------------------------------


def root(manual_dir: str) -> str:
    """The ``MPIIGaze`` folder in ``manual_dir`` (checked: it exists, has Data/Normalized)."""
    path = manual.check_manual_dir(manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
    return manual.find_root(path, "MPIIGaze", NORMALIZED, MANUAL_DOWNLOAD_INSTRUCTIONS)


def read_sample_list(path: str) -> list[tuple[str, str, str]]:
    """``(day, file, side)`` for each line of an evaluation-subset sample list."""
    if not os.path.isfile(path):
        raise manual.ManualDataError(
            f"missing sample list {path}: expected one per person, lines "
            f"'dayYY/NNNN.jpg left|right'.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            m = _LINE.match(line)
            if m is None:
                raise manual.ManualDataError(
                    f"{path}, line {number}: {line!r} is not 'dayYY/NNNN.jpg left|right'"
                )
            out.append(m.groups())
    if not out:
        raise manual.ManualDataError(f"sample list {path} lists no eye images")
    return out


def _field(struct, name: str, path: str, where: str):
    try:
        return getattr(struct, name)
    except AttributeError:
        raise manual.ManualDataError(
            f"{path}: {where} has no field {name!r}; expected a MPIIGaze normalized day file "
            "(data.left/data.right with gaze, image, pose; and filenames)"
        ) from None


def read_day(path: str) -> dict:
    """One ``dayYY.mat``: ``{'filenames': [N] str, 'left'|'right': {gaze, image, pose}}``.

    Arrays: ``gaze`` ``[N, 3]`` float64, ``image`` ``[N, 36, 60]`` uint8, ``pose``
    ``[N, 3]`` float64. Raises ManualDataError naming the file and what was expected.
    """
    import scipy.io

    if not os.path.isfile(path):
        raise manual.ManualDataError(f"missing day file {path}")
    try:
        major, _ = scipy.io.matlab.matfile_version(path)
    except Exception as e:  # empty, truncated header, not a MAT-file at all
        raise manual.ManualDataError(
            f"{path} is not a MATLAB file ({e}); expected a MATLAB v5 MAT-file"
        ) from e
    if major != 1:
        found = {0: "MATLAB v4", 2: "MATLAB v7.3 (HDF5)"}.get(major, f"version {major}")
        raise manual.ManualDataError(
            f"{path} is a {found} file; expected MATLAB v5 as in the released archive "
            "(re-extract the original file, or save it with save(..., '-v7'))"
        )
    try:
        mat = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
    except Exception as e:
        raise manual.ManualDataError(
            f"{path} is a corrupt MATLAB v5 file ({type(e).__name__}: {e})"
        ) from e
    for key in ("data", "filenames"):
        if key not in mat:
            raise manual.ManualDataError(
                f"{path} has no variable {key!r} (found {sorted(k for k in mat if k[0] != '_')}); "
                "expected a MPIIGaze normalized day file with 'data' and 'filenames'"
            )
    try:
        names = [str(np.asarray(c).reshape(-1)[0]) for c in np.asarray(mat["filenames"]).ravel()]
    except Exception as e:
        raise manual.ManualDataError(
            f"{path}: filenames is not an N×1 cell of strings ({e})"
        ) from e
    n = len(names)
    data = np.asarray(mat["data"]).ravel()[0]
    out: dict = {"filenames": names}
    for side in SIDES:
        eye = np.asarray(_field(data, side, path, "data")).ravel()[0]
        arrays = {}
        for name, width in (("gaze", 3), ("pose", 3), ("image", None)):
            a = np.asarray(_field(eye, name, path, f"data.{side}"))
            expected = (n, 36, 60) if width is None else (n, width)
            if a.size != int(np.prod(expected)):
                raise manual.ManualDataError(
                    f"{path}: data.{side}.{name} has shape {a.shape}, expected {expected} "
                    f"({n} filenames)"
                )
            if width is None and a.dtype != np.uint8:
                raise manual.ManualDataError(
                    f"{path}: data.{side}.image has dtype {a.dtype}, expected uint8"
                )
            arrays[name] = a.reshape(expected)  # N = 1 may be stored without its leading 1
        out[side] = arrays
    return out


def _check_row(value, field, person_dir, day, side, row, file, name, line) -> None:
    """A ManualDataError for a gaze or pose that is not finite, or a zero gaze vector
    (no direction): it names the day file, field, row, frame and sample-list line.

    Only the frames the sample lists use are checked: a day file may hold others.
    """
    if not np.isfinite(value).all():
        problem = "is not finite"
    elif field == "gaze" and not np.any(value):
        problem = "is a zero vector (no direction)"
    else:
        return
    raise manual.ManualDataError(
        f"{os.path.join(person_dir, day + '.mat')}: data.{side}.{field} row {row} (frame "
        f"{file}, listed in {name}.txt, line {line + 1}) {problem}: {value.tolist()}"
    )


def examples(manual_dir: str, person: int):
    """Yields ``(key, example)`` for every line of person ``person``'s sample list."""
    top = root(manual_dir)
    name = person_name(person)
    lines = read_sample_list(os.path.join(top, *SAMPLE_LISTS, f"{name}.txt"))
    person_dir = os.path.join(top, *NORMALIZED, name)
    if not os.path.isdir(person_dir):
        raise manual.ManualDataError(f"missing person directory {person_dir}")
    days: dict[str, tuple[dict, dict[str, int]]] = {}
    for line, (day, file, side) in enumerate(lines):
        if day not in days:
            content = read_day(os.path.join(person_dir, f"{day}.mat"))
            days[day] = content, {f: i for i, f in enumerate(content["filenames"])}
        content, position = days[day]
        if file not in position:
            raise manual.ManualDataError(
                f"{os.path.join(person_dir, day + '.mat')}: {file} (listed in {name}.txt, "
                f"line {line + 1}) is not in its filenames"
            )
        i = position[file]
        eye = content[side]
        for field in ("gaze", "pose"):
            _check_row(eye[field][i], field, person_dir, day, side, i, file, name, line)
        image = eye["image"][i]
        gaze = gaze_to_pitchyaw(eye["gaze"][i])
        pose = pose_to_pitchyaw(eye["pose"][i])
        if side == "right":  # mirror right eyes into left eyes
            image = image[:, ::-1]
            gaze = gaze * np.array([1.0, -1.0])
            pose = pose * np.array([1.0, -1.0])
        yield (
            f"{name}-{line:05d}",
            {
                "image": np.ascontiguousarray(image)[..., None],
                "gaze": gaze.astype(np.float32),
                "head_pose": pose.astype(np.float32),
                "person": person,
                "day": int(day[3:]),
                "side": SIDES.index(side),
                "file": f"{name}/{day}/{file}",
                "index": person * PER_PERSON_INDEX + line,
            },
        )


# --- tensorflow-datasets builder ----------------------------------------------------------


class MpiiGaze(tfds.core.GeneratorBasedBuilder):
    """MPIIGaze's evaluation subset: 3000 eye images per person, one split per person."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Evaluation subset, right eyes mirrored, raw uint8 images."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self):
        f = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=f.FeaturesDict(
                {
                    "image": f.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "gaze": f.Tensor(shape=(2,), dtype=np.float32),
                    "head_pose": f.Tensor(shape=(2,), dtype=np.float32),
                    "person": np.int32,
                    "day": np.int32,
                    "side": np.int32,
                    "file": f.Text(),
                    "index": np.int64,
                }
            ),
            homepage="https://www.mpi-inf.mpg.de/departments/computer-vision-and-machine-learning/research/gaze-based-human-computer-interaction/appearance-based-gaze-estimation-in-the-wild",
            citation="Zhang, Sugano, Fritz, Bulling. Appearance-based Gaze Estimation in "
            "the Wild. CVPR 2015.",
        )

    def _split_generators(self, dl_manager):
        root(os.fspath(dl_manager.manual_dir))  # checked before any split is written
        return {
            person_name(p): self._generate_examples(os.fspath(dl_manager.manual_dir), p)
            for p in range(NUM_PEOPLE)
        }

    def _generate_examples(self, manual_dir, person):
        yield from examples(manual_dir, person)


def prepare(data_dir=None, manual_dir=None):
    """The built ``mpii_gaze`` dataset in ``data_dir``; built from ``manual_dir`` if needed."""
    return manual.prepare(MpiiGaze, data_dir=data_dir, manual_dir=manual_dir)


def load(data_dir=None, manual_dir=None, people=range(NUM_PEOPLE)) -> dict[str, np.ndarray]:
    """The examples of ``people`` as NumPy arrays in index order (builds first if needed)."""
    people = list(people)
    if not people or any(not 0 <= p < NUM_PEOPLE for p in people):
        raise ValueError(f"people must be a non-empty subset of 0..{NUM_PEOPLE - 1}, got {people}")
    b = prepare(data_dir, manual_dir)
    return manual.read_split(b, "+".join(person_name(p) for p in people))


def leave_one_out(test_person: int) -> tuple[list[int], list[int]]:
    """The standard fold: (training people, [test person])."""
    if not 0 <= test_person < NUM_PEOPLE:
        raise ValueError(f"test person must be in 0..{NUM_PEOPLE - 1}, got {test_person}")
    return [p for p in range(NUM_PEOPLE) if p != test_person], [test_person]
