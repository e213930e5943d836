"""Datasets read from a directory the user provides, the tensorflow-datasets way.

MPIIGaze and Multi-PIE cannot be downloaded by a program (Multi-PIE needs a licence), so,
as in tensorflow-datasets, the user places the released files in a *manual directory*
and a :class:`tfds.core.GeneratorBasedBuilder` (with ``MANUAL_DOWNLOAD_INSTRUCTIONS``)
converts them once into array_record files under a *data directory*::

    python -m kd_regression.datasets.build mpiigaze --manual_dir=MANUAL --data_dir=DATA

or, from Python, :func:`prepare`. Examples are stored as raw tensors (no PNG encoding)
and read back with tfds data sources, so neither building nor reading imports TensorFlow.
tfds writes into a temporary directory and renames it when complete, so an interrupted
build leaves nothing that a later read would take for a dataset (only that temporary
``incomplete.*`` folder, which the "not built" error names).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

FILE_FORMAT = "array_record"


class ManualDataError(ValueError):
    """The manual directory is missing or empty, laid out wrongly, or holds a bad file."""


def check_manual_dir(manual_dir: str | os.PathLike | None, instructions: str) -> str:
    """``manual_dir`` as a string; a ManualDataError if it is unset, missing or empty."""
    if manual_dir is None or str(manual_dir) == "":
        raise ManualDataError(f"no manual directory given.\n{instructions}")
    path = os.fspath(manual_dir)
    if not os.path.isdir(path):
        raise ManualDataError(f"manual directory {path} does not exist.\n{instructions}")
    if not os.listdir(path):
        raise ManualDataError(f"manual directory {path} is empty.\n{instructions}")
    return path


def find_root(manual_dir: str, name: str, marker: Sequence[str], instructions: str) -> str:
    """The dataset's top folder: ``manual_dir/name`` or ``manual_dir`` itself.

    Either must contain the path ``marker`` (e.g. ``Data/Normalized``), else a
    ManualDataError names both places looked at.
    """
    tried = []
    for root in (os.path.join(manual_dir, name), manual_dir):
        probe = os.path.join(root, *marker)
        if os.path.isdir(probe):
            return root
        tried.append(probe)
    raise ManualDataError(
        f"{manual_dir} does not have the {name} layout: expected the directory "
        f"{tried[0]} (or {tried[1]}).\n{instructions}"
    )


def builder(cls, *, data_dir: str | os.PathLike | None = None, config=None):
    """A builder of ``cls`` that writes array_record files under ``data_dir``."""
    kwargs = {"data_dir": None if data_dir is None else os.fspath(data_dir)}
    if config is not None:
        kwargs["config"] = config
    return cls(file_format=FILE_FORMAT, **kwargs)


def prepare(
    cls,
    *,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    config=None,
):
    """The built dataset ``cls`` in ``data_dir``, building it from ``manual_dir`` if needed.

    Raises ManualDataError when the dataset is not built and ``manual_dir`` is unset,
    missing, empty or wrong.
    """
    import tensorflow_datasets as tfds

    b = builder(cls, data_dir=data_dir, config=config)
    if b.is_prepared():
        return b
    if os.path.exists(b.data_dir):
        # tfds would take any folder there for a built dataset ("reusing") and read nothing.
        raise ManualDataError(
            f"{b.data_dir} is not a complete {b.name} build (no dataset_info.json): a copy "
            "cut short, or files removed. Delete it and build again."
        )
    if manual_dir is None:
        raise ManualDataError(
            f"{b.name} is not built in {b.data_dir}: build it once with\n"
            f"  python -m kd_regression.datasets.build {cls.__module__.rsplit('.', 1)[-1]} "
            "--manual_dir=MANUAL --data_dir=DATA\n"
            "or give the manual directory (dataset.manual_dir).\n"
            f"{_leftovers(b.data_dir)}{cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    path = check_manual_dir(manual_dir, cls.MANUAL_DOWNLOAD_INSTRUCTIONS)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=path))
    return b


def _leftovers(data_path: str) -> str:
    """Names the ``incomplete.*`` folders that killed builds of ``data_path`` left behind.

    tfds builds into ``<parent>/incomplete.XXXXXX_<version>`` and renames it when done; a
    killed build leaves it, never read, never reused, never removed (a build may still be
    running there, so we do not remove it either).
    """
    parent, version = os.path.split(os.path.normpath(data_path))
    version = "_" + version
    try:
        entries = os.listdir(parent)
        found = sorted(e for e in entries if e.startswith("incomplete.") and e.endswith(version))
    except OSError:
        return ""
    if not found:
        return ""
    paths = ", ".join(os.path.join(parent, e) for e in found)
    return f"Builds that did not finish left {paths} (never read; delete once none runs).\n"


def read_split(b, split: str) -> dict[str, np.ndarray]:
    """Every example of ``split`` as stacked NumPy arrays, ordered by the ``index`` feature.

    tfds stores a split's examples in the order of a hash of their keys; sorting by the
    dataset's stable index gives the order of the source files back.
    """
    known = set(b.info.splits)
    missing = [s for s in split.split("+") if s not in known]
    if missing:
        raise ManualDataError(
            f"{b.name} in {b.data_dir} has no split {missing} (it has {sorted(known)}): the "
            "manual directory it was built from held no example for it"
        )
    source = b.as_data_source(split=split)
    examples = source.__getitems__(list(range(len(source))))
    if not examples:
        raise ManualDataError(f"{b.name} split {split!r} in {b.data_dir} has no examples")
    features = b.info.features
    out = {}
    for k in examples[0]:
        dtype = getattr(features[k], "np_dtype", None)
        dtype = dtype if dtype is not None and dtype != np.object_ else None
        out[k] = np.stack([np.asarray(e[k], dtype) for e in examples])
    order = np.argsort(out["index"], kind="stable")
    return {k: v[order] for k, v in out.items()}
