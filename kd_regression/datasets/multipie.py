"""Multi-PIE (Gross et al., 2010): head-pose yaw from face photographs, 13 cameras.

Read from the user's licensed copy (see ``MANUAL_DOWNLOAD_INSTRUCTIONS``) and converted
once by the tensorflow-datasets builder :class:`MultiPie` (``multi_pie``) into array_record
files; see :mod:`kd_regression.datasets.manual`.

The paper's exact Multi-PIE task is not known to us. Ours: regress the yaw of the head
relative to the camera from one photograph, using the 13 cameras that sit at head height
(15° apart), whose nominal angles are the labels:

====== ====== ====== ====== ====== ====== ====== ====== ====== ====== ====== ====== ======
24_0   01_0   20_0   19_0   04_1   05_0   05_1   14_0   13_0   08_0   09_0   12_0   11_0
+90°   +75°   +60°   +45°   +30°   +15°   0°     −15°   −30°   −45°   −60°   −75°   −90°
====== ====== ====== ====== ====== ====== ====== ====== ====== ====== ====== ====== ======

Sign convention: 05_1 (frontal) is 0°, the cameras 24_0 … 05_0 have positive yaw and
14_0 … 11_0 negative, 15° per step, as in the table; we do not claim which physical side
of the subject the positive cameras are on (that follows the dataset's camera numbering).

Source layout: ``Multi-PIE/data/sessionNN/multiview/SSS/RR/CC_C/SSS_NN_RR_CCC_II.png``
(subject SSS, session 01–04, recording RR, camera CC_C, written CCC in the file name,
illumination shot II 00–19; 640×480 colour). Each kept photograph is centre-cropped to a
square and resized (bilinear) to the builder config's ``image_size`` (our choice).

Splits are by subject (our choice): ``train`` holds subjects 001–200 and ``test``
201–346; the experiments take a validation set from the training subjects.

The builder configs choose the size and which illumination shots to keep: ``yaw_64``
(default: 64×64, shot 07 only), ``yaw_32``, ``yaw_64_all`` (all 20 shots);
:func:`config` makes others. Estimated counts (from the dataset's published size, over
750,000 photographs of 15 cameras × 20 shots; not counted by us): about 33 k photographs
per shot for the 13 cameras, about 650 k for all 20 shots.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from kd_regression.datasets import manual

CAMERA_YAW = {
    "24_0": 90.0,
    "01_0": 75.0,
    "20_0": 60.0,
    "19_0": 45.0,
    "04_1": 30.0,
    "05_0": 15.0,
    "05_1": 0.0,
    "14_0": -15.0,
    "13_0": -30.0,
    "08_0": -45.0,
    "09_0": -60.0,
    "12_0": -75.0,
    "11_0": -90.0,
}
CAMERAS = tuple(CAMERA_YAW)
NUM_ILLUMINATIONS = 20
TRAIN_SUBJECTS = range(1, 201)  # 001-200; the rest (201-346) are the test split
MAX_YAW = 90.0
MARKER = ("data",)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Multi-PIE: the dataset is licensed (Carnegie Mellon University; see the CMU Multi-PIE
page, "Multi-PIE", Gross et al., Image and Vision Computing 2010). Once you have a copy,
place or link its top folder in the manual directory so that these exist:
  MANUAL/Multi-PIE/data/session01/multiview/001/01/05_1/001_01_01_051_07.png
i.e. data/sessionNN/multiview/SUBJECT/RECORDING/CAMERA/SUBJECT_NN_RECORDING_CAMERA_SHOT.png
(MANUAL may also be the Multi-PIE folder itself.)"""

_SESSION = re.compile(r"^session(\d{2})$")
_FILE = re.compile(r"^(\d{3})_(\d{2})_(\d{2})_(\d{3})_(\d{2})\.png$")


def root(manual_dir: str) -> str:
    """The ``Multi-PIE`` folder in ``manual_dir`` (checked: it exists, has ``data``)."""
    path = manual.check_manual_dir(manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
    return manual.find_root(path, "Multi-PIE", MARKER, MANUAL_DOWNLOAD_INSTRUCTIONS)


def _sorted_dirs(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


def photographs(manual_dir: str, illuminations, subjects=None) -> list[dict]:
    """Every photograph of the 13 cameras and the given shots: path and labels, sorted.

    Raises ManualDataError for a file name that does not match its folders, and when no
    photograph is found at all.
    """
    top = root(manual_dir)
    data = os.path.join(top, *MARKER)
    keep = set(int(i) for i in illuminations)
    subjects = None if subjects is None else set(subjects)
    out = []
    sessions = [d for d in _sorted_dirs(data) if _SESSION.match(d)]
    if not sessions:
        raise manual.ManualDataError(
            f"{data} has no sessionNN folders.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    for session_name in sessions:
        session = int(_SESSION.match(session_name).group(1))
        multiview = os.path.join(data, session_name, "multiview")
        if not os.path.isdir(multiview):
            raise manual.ManualDataError(f"missing folder {multiview}")
        for subject_name in _sorted_dirs(multiview):
            if not re.fullmatch(r"\d{3}", subject_name):
                continue
            subject = int(subject_name)
            if subjects is not None and subject not in subjects:
                continue
            for rec_name in _sorted_dirs(os.path.join(multiview, subject_name)):
                for camera in CAMERAS:
                    cam_dir = os.path.join(multiview, subject_name, rec_name, camera)
                    if not os.path.isdir(cam_dir):
                        continue
                    for file in sorted(os.listdir(cam_dir)):
                        m = _FILE.match(file)
                        path = os.path.join(cam_dir, file)
                        cam = camera.replace("_", "")
                        expected = (subject_name, f"{session:02d}", rec_name, cam)
                        if m is None or m.groups()[:4] != expected:
                            raise manual.ManualDataError(
                                f"{path}: expected a file named "
                                f"{'_'.join(expected)}_II.png (shot II 00-19) in this folder"
                            )
                        shot = int(m.group(5))
                        if shot not in keep:
                            continue
                        out.append(
                            {
                                "path": path,
                                "subject": subject,
                                "session": session,
                                "recording": int(rec_name),
                                "camera": camera,
                                "illumination": shot,
                            }
                        )
    if not out:
        raise manual.ManualDataError(
            f"no photograph of the 13 cameras {CAMERAS} with shots {sorted(keep)} under "
            f"{data}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    return out


def read_image(path: str, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8: the photograph centre-cropped to a square, resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise manual.ManualDataError(f"{path} is not a readable PNG image ({e})") from e
    w, h = rgb.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def index_of(p: dict) -> int:
    """A stable example index from the photograph's identity."""
    i = ((p["subject"] * 10 + p["session"]) * 100 + p["recording"]) * len(CAMERAS)
    return (i + CAMERAS.index(p["camera"])) * NUM_ILLUMINATIONS + p["illumination"]


@dataclasses.dataclass(eq=False)
class MultiPieConfig(tfds.core.BuilderConfig):
    """``image_size`` (pixels, square) and the illumination shots kept."""

    image_size: int = 64
    illuminations: tuple[int, ...] = (7,)


class MultiPie(tfds.core.GeneratorBasedBuilder):
    """Multi-PIE photographs of the 13 head-height cameras, labelled with their yaw."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "13 cameras, centre crop, bilinear resize, raw uint8."
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS: ClassVar[list] = [
        MultiPieConfig(name="yaw_64", description="64×64, shot 07", image_size=64),
        MultiPieConfig(name="yaw_32", description="32×32, shot 07", image_size=32),
        MultiPieConfig(
            name="yaw_64_all",
            description="64×64, all 20 shots",
            image_size=64,
            illuminations=tuple(range(NUM_ILLUMINATIONS)),
        ),
    ]
    DEFAULT_CONFIG_NAME = "yaw_64"

    def _info(self):
        f = tfds.features
        s = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=f.FeaturesDict(
                {
                    "image": f.Tensor(shape=(s, s, 3), dtype=np.uint8),
                    "yaw": np.float32,
                    "camera": np.int32,  # position in CAMERAS
                    "subject": np.int32,
                    "session": np.int32,
                    "recording": np.int32,
                    "illumination": np.int32,
                    "file": f.Text(),
                    "index": np.int64,
                }
            ),
            homepage="https://www.cs.cmu.edu/afs/cs/project/PIE/MultiPie/Multi-Pie/Home.html",
            citation="Gross, Matthews, Cohn, Kanade, Baker. Multi-PIE. Image and Vision "
            "Computing 28(5), 2010.",
        )

    def _split_generators(self, dl_manager):
        path = os.fspath(dl_manager.manual_dir)
        found = photographs(path, self.builder_config.illuminations)  # checks, early
        train = [p for p in found if p["subject"] in TRAIN_SUBJECTS]
        test = [p for p in found if p["subject"] not in TRAIN_SUBJECTS]
        splits = {}
        for name, part in (("train", train), ("test", test)):
            if part:
                splits[name] = self._generate_examples(path, part)
        return splits

    def _generate_examples(self, manual_dir, part):
        top = os.path.dirname(os.path.join(root(manual_dir), *MARKER))
        for p in part:
            file = os.path.relpath(p["path"], top)
            yield (
                file,
                {
                    "image": read_image(p["path"], self.builder_config.image_size),
                    "yaw": CAMERA_YAW[p["camera"]],
                    "camera": CAMERAS.index(p["camera"]),
                    "subject": p["subject"],
                    "session": p["session"],
                    "recording": p["recording"],
                    "illumination": p["illumination"],
                    "file": file,
                    "index": index_of(p),
                },
            )


def config(image_size: int = 64, illuminations=(7,)):
    """The builder config for a size and shots: a predefined one, or a new one."""
    image_size, illuminations = int(image_size), tuple(sorted(int(i) for i in illuminations))
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 pixels, got {image_size}")
    if not illuminations or any(not 0 <= i < NUM_ILLUMINATIONS for i in illuminations):
        raise ValueError(f"illuminations must be a non-empty subset of 0..19, got {illuminations}")
    for c in MultiPie.BUILDER_CONFIGS:
        if (c.image_size, tuple(c.illuminations)) == (image_size, illuminations):
            return c
    shots = "-".join(f"{i:02d}" for i in illuminations)
    if len(illuminations) == NUM_ILLUMINATIONS:
        shots = "all"
    return MultiPieConfig(
        name=f"yaw_{image_size}_shots{shots}",
        description=f"{image_size}×{image_size}, shots {shots}",
        image_size=image_size,
        illuminations=illuminations,
    )


def prepare(data_dir=None, manual_dir=None, *, image_size=64, illuminations=(7,)):
    """The built ``multi_pie`` config in ``data_dir``; built from ``manual_dir`` if needed."""
    cfg = config(image_size, illuminations)
    return manual.prepare(MultiPie, data_dir=data_dir, manual_dir=manual_dir, config=cfg)


def load(data_dir=None, manual_dir=None, split="train", *, image_size=64, illuminations=(7,)):
    """A split as NumPy arrays in index order (builds the dataset first if needed)."""
    b = prepare(data_dir, manual_dir, image_size=image_size, illuminations=illuminations)
    return manual.read_split(b, split)
