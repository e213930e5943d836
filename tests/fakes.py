"""Small fake copies of MPIIGaze and Multi-PIE, in the exact on-disk layout of the real ones.

Tests build the datasets from these trees; the ``:quick`` experiment configs run on them::

    python tests/fakes.py mpiigaze DIR     # DIR/MPIIGaze/...
    python tests/fakes.py multipie DIR     # DIR/Multi-PIE/...

The contents are random (the images carry no signal), but every file is what the real
dataset has in that place: MATLAB v5 day files with the real struct layout (including a
day with a single frame), the evaluation-subset sample lists in their space-containing
folder, and Multi-PIE PNGs in their session/multiview/subject/recording/camera tree.
"""

from __future__ import annotations

import os
import sys

import numpy as np

MPII_DAYS = (("day01", 3), ("day02", 1), ("day03", 2))  # (day, frames): day02 has N = 1


def _unit_gaze(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaze vectors looking roughly at the camera (negative z), unit length."""
    v = np.stack([rng.uniform(-0.5, 0.5, n), rng.uniform(-0.4, 0.3, n), -np.ones(n)], -1)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def write_mpiigaze(manual_dir: str, *, seed: int = 0, people: int = 15) -> dict:
    """Writes ``manual_dir/MPIIGaze`` and returns the truth: per person, the day files'
    arrays and the sample-list lines written."""
    import scipy.io

    rng = np.random.default_rng(seed)
    top = os.path.join(manual_dir, "MPIIGaze")
    lists = os.path.join(top, "Evaluation Subset", "sample list for eye image")
    os.makedirs(lists, exist_ok=True)
    truth = {}
    for p in range(people):
        name = f"p{p:02d}"
        person_dir = os.path.join(top, "Data", "Normalized", name)
        os.makedirs(person_dir, exist_ok=True)
        days = {}
        lines = []
        for day, n in MPII_DAYS:
            files = [f"{int(i):04d}.jpg" for i in sorted(rng.choice(900, n, replace=False) + 1)]
            data = {}
            for side in ("left", "right"):
                image = rng.integers(0, 256, (n, 36, 60), dtype=np.uint8)
                image[:, :, :10] = 0  # a dark left edge: a flip is visible
                data[side] = {  # field order of the real files: gaze, image, pose
                    "gaze": _unit_gaze(rng, n),
                    "image": image,
                    "pose": rng.normal(0, 0.2, (n, 3)),
                }
            filenames = np.empty((n, 1), dtype=object)
            for i, f in enumerate(files):
                filenames[i, 0] = f
            scipy.io.savemat(
                os.path.join(person_dir, f"{day}.mat"), {"data": data, "filenames": filenames}
            )
            days[day] = {"filenames": files, **data}
            # Every frame's left eye, and the right eye of the first frame of each day (so
            # one frame is listed for both eyes).
            lines += [(day, f, "left") for f in files] + [(day, files[0], "right")]
        with open(os.path.join(lists, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.writelines(f"{day}/{file} {side}\n" for day, file, side in lines)
        truth[p] = {"days": days, "lines": lines}
    return truth


# Multi-PIE: subjects spread over the standard train (001-200) and test (201-346) ranges.
MULTIPIE_SUBJECTS = (1, 2, 3, 4, 5, 6, 201, 202, 203)
MULTIPIE_SESSIONS = {1: (1,), 2: (1, 2)}  # session -> recordings
MULTIPIE_SIZE = (48, 64)  # (height, width) of the fake frames (real: 480 x 640)


def write_multipie(
    manual_dir: str,
    *,
    seed: int = 0,
    cameras: tuple[str, ...] | None = None,
    illuminations: tuple[int, ...] = (0, 7),
) -> list[dict]:
    """Writes ``manual_dir/Multi-PIE`` (PNG frames) and returns one record per file."""
    from PIL import Image

    from kd_regression.datasets import multipie

    rng = np.random.default_rng(seed)
    cameras = tuple(multipie.CAMERA_YAW) if cameras is None else cameras
    records = []
    for session, recordings in MULTIPIE_SESSIONS.items():
        for subject in MULTIPIE_SUBJECTS:
            for rec in recordings:
                for cam in cameras:
                    d = os.path.join(
                        manual_dir,
                        "Multi-PIE",
                        "data",
                        f"session{session:02d}",
                        "multiview",
                        f"{subject:03d}",
                        f"{rec:02d}",
                        cam,
                    )
                    os.makedirs(d, exist_ok=True)
                    for ill in illuminations:
                        code = cam.replace("_", "")
                        name = f"{subject:03d}_{session:02d}_{rec:02d}_{code}_{ill:02d}.png"
                        pixels = rng.integers(0, 256, (*MULTIPIE_SIZE, 3), dtype=np.uint8)
                        path = os.path.join(d, name)
                        Image.fromarray(pixels).save(path)
                        records.append(
                            {
                                "path": path,
                                "subject": subject,
                                "session": session,
                                "recording": rec,
                                "camera": cam,
                                "illumination": ill,
                                "pixels": pixels,
                            }
                        )
    return records


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("mpiigaze", "multipie"):
        sys.exit("usage: python tests/fakes.py mpiigaze|multipie DIR")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    {"mpiigaze": write_mpiigaze, "multipie": write_multipie}[sys.argv[1]](sys.argv[2])
    print(f"fake {sys.argv[1]} written under {sys.argv[2]}")
