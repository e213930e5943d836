"""Verified orbax checkpoints: every checkpoint is checked against digests when restored.

A flipped bit on disk either breaks a checksum tensorstore keeps (the restore fails with
``DATA_LOSS``, a JSON or a tree-structure error) or, in bytes no checksum covers, restores
other numbers without a word. So each checkpoint gets two digests:

- of its arrays: the sha256 of each item's leaves, in orbax's step metadata, committed
  with the checkpoint itself; compared with the arrays restored;
- of its files: the sha256 of every file of the step directory, written beside it
  (``<step>.files.json``) once the save is committed; compared before orbax reads
  anything, so a damaged file is found without orbax's errors (and the pages its
  threads log after a failed read).

A checkpoint that fails either check, or fails to restore, is never used: it is set aside
(moved to ``<directory>.damaged/<step>``, not deleted), one warning names it, and the next
older one is tried; with none left, training starts from the beginning. Either way the run
ends with the numbers of one never damaged, since training from a checkpoint is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from kd_regression import interrupts, sharding
from kd_regression.fileio import atomic_write_text, error_code

DIGEST_KEY = "kd_regression_sha256"  # in each step's custom metadata: item -> sha256
FILES_SUFFIX = ".files.json"  # <step>.files.json: file (relative path) -> sha256
DAMAGED_SUFFIX = ".damaged"

# What a failed write raises: the OS's errors, TensorStore's (ValueError), orbax's wrappers
# (RuntimeError). Anything else (a wrong tree, a bug) propagates as it is.
_WRITE_ERRORS = (OSError, ValueError, RuntimeError)
_TENSORSTORE_SPEC = re.compile(r" \[tensorstore_spec(\[\d+\])?='.*?'\]")


def checkpoint_words(checkpoint_dir: str | None, checkpoint_step: int | None) -> str:
    if checkpoint_dir is None:
        return "no checkpoint (no checkpoint_dir)"
    if checkpoint_step is None:
        return f"no checkpoint in {checkpoint_dir}"
    return f"step {checkpoint_step} in {checkpoint_dir}"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full).

    The orbax error is the ``__cause__``; ``errno`` is its errno where it has one. The
    step being saved was not made a checkpoint (orbax writes a temporary directory and
    renames it only once complete); the previous checkpoint is kept, and a rerun of
    :func:`kd_regression.loop.fit` with the same ``checkpoint_dir`` resumes from it.

    Attributes:
      name: ``fit``'s ``name``.
      step: the step whose checkpoint failed.
      checkpoint_dir: the checkpoint directory (absolute).
      checkpoint_step: the previous checkpoint's step (kept), or None if none.
    """

    def __init__(
        self,
        name: str,
        step: int,
        checkpoint_dir: str,
        checkpoint_step: int | None,
        error: BaseException,
    ):
        self.name, self.step = name, step
        self.checkpoint_dir, self.checkpoint_step = checkpoint_dir, checkpoint_step
        self._error = error
        # TensorStore (orbax's array writer) raises ValueErrors that carry the OS error
        # code and a long JSON spec of the array: the code is kept, the spec left out.
        code, text = error_code(error), _short(error)
        message = (
            f"{name}: could not write the checkpoint of step {step} to {checkpoint_dir}: "
            f"{type(error).__name__}: {text}; last good checkpoint: "
            f"{checkpoint_words(checkpoint_dir, checkpoint_step)}"
        )
        if code is not None:
            super().__init__(code, message)
        else:
            super().__init__(message)

    def __reduce__(self):
        args = (self.name, self.step, self.checkpoint_dir, self.checkpoint_step, self._error)
        return type(self), args


def _short(error: BaseException) -> str:
    return _TENSORSTORE_SPEC.sub("", str(error))


def _local(leaf: Any) -> Any:
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable:  # replicated over processes: this one's copy
            leaf = leaf.addressable_data(0)
    return leaf


def tree_digest(tree: Any) -> str:
    """sha256 of a pytree's leaves: each one's path, dtype, shape and bytes, in order."""
    with_path = jax.tree_util.tree_leaves_with_path(tree)
    host = jax.device_get([_local(leaf) for _, leaf in with_path])  # one transfer
    h = hashlib.sha256()
    for (path, _), leaf in zip(with_path, host, strict=True):
        a = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _file_digests(directory: str) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.file_digest(f, "sha256").hexdigest()
    return dict(sorted(out.items()))


class Checkpoints:
    """An orbax ``CheckpointManager`` for one training run, with verified restores.

    ``save`` is asynchronous (orbax); ``finish`` waits for the save in flight. Keeps the
    ``max_to_keep`` latest checkpoints (two by default, so a damaged latest one falls back
    to the one before instead of to the beginning).
    """

    def __init__(self, directory: str, *, name: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
        self.name = name
        self._max_to_keep = max_to_keep
        # The latest complete checkpoint, and a save that may still be in flight. Tracked
        # here: orbax's own list forgets the older step as soon as a newer save starts,
        # though it deletes it from disk only once that save is complete.
        self.good_step: int | None = None
        self._saving: int | None = None
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            # cleanup_tmp_directories: a save that failed part way (a full disk, a crash)
            # leaves only a temporary directory, never a step; it is removed here.
            options=ocp.CheckpointManagerOptions(
                max_to_keep=self._max_to_keep, cleanup_tmp_directories=True
            ),
        )

    def restore(
        self, template: Mapping[str, Any], *, set_aside: bool = True
    ) -> tuple[int, dict] | None:
        """The latest checkpoint that restores and matches its digest, as ``(step, items)``
        shaped like ``template``; None if there is none. Damaged ones are set aside
        (``set_aside=False``, a reader's: left where they are, with the same warning)."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        for i, step in enumerate(steps):
            with interrupts.deferred():  # a signal must not pass for damage
                items = None
                try:
                    problem = self._files_problem(step)
                    if problem is None:
                        args = ocp.args.StandardRestore(template)
                        items = self._manager.restore(step, args=args)
                        problem = self._arrays_problem(step, items)
                except Exception as e:  # any error of a damaged checkpoint: see the module
                    problem = f"does not restore ({type(e).__name__}: {_short(e)})"
            # Every process must take the same decision (the same files, on a shared disk).
            outcome = "usable" if problem is None else "damaged"
            sharding.check_agreement(outcome, f"checkpoint {step} of {self.directory}")
            if problem is None:
                self.good_step = step
                return step, items
            older = steps[i + 1] if i + 1 < len(steps) else None
            if set_aside:
                self._set_aside(step, problem, older)
            else:
                then = f"trying step {older}" if older is not None else "none left"
                logging.warning("%s: checkpoint %s %s; %s", self.name, step, problem, then)
        return None

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _files_problem(self, step: int) -> str | None:
        """Which files differ from those committed, or None (also if no record was written:
        a run killed between the commit and the record; the arrays are checked then)."""
        record = self._step_dir(step) + FILES_SUFFIX
        try:
            with open(record, encoding="utf-8") as f:
                expected = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as e:
            return f"has a damaged record of its files ({record}: {e})"
        found = _file_digests(self._step_dir(step))
        bad = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
        if not bad:
            return None
        what = [f"{k} ({'missing' if k not in found else 'changed'})" for k in bad[:3]]
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return f"has files that differ from those written: {', '.join(what)}{more}"

    def _arrays_problem(self, step: int, items: Mapping[str, Any]) -> str | None:
        """Why the restored ``items`` cannot be used, or None."""
        custom = self._manager.metadata(step).custom_metadata or {}
        digests = custom.get(DIGEST_KEY)
        if not isinstance(digests, dict):
            return "has no digest of its arrays to verify them by"
        differ = [k for k in items if digests.get(k) != tree_digest(items[k])]
        if differ:
            one = len(differ) == 1
            entries = f"entr{'y' if one else 'ies'} {', '.join(differ)} differ{'s' if one else ''}"
            return f"does not match its digest (its {entries} from what was saved)"
        return None

    def _set_aside(self, step: int, problem: str, older: int | None) -> None:
        source = self._step_dir(step)
        aside = os.path.join(self.directory + DAMAGED_SUFFIX, str(step))
        n = 1
        while os.path.exists(aside):  # damaged at the same step before
            n += 1
            aside = os.path.join(self.directory + DAMAGED_SUFFIX, f"{step}-{n}")
        self._manager.close()
        if sharding.is_primary():
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.rename(source, aside)
            if os.path.exists(source + FILES_SUFFIX):
                os.rename(source + FILES_SUFFIX, aside + FILES_SUFFIX)
        sharding.barrier(f"set-aside:{source}")
        then = f"falling back to step {older}" if older is not None else "training from the start"
        logging.warning(
            "%s: checkpoint %s %s: set aside as %s; %s", self.name, source, problem, aside, then
        )
        self._manager = self._open()

    def save(self, step: int, items: Mapping[str, Any]) -> None:
        """Starts saving ``items`` (a dict of pytrees) as checkpoint ``step``."""
        self.finish()
        digests = {k: tree_digest(v) for k, v in items.items()}
        with interrupts.deferred():
            try:
                self._manager.save(
                    step,
                    args=ocp.args.StandardSave(dict(items)),
                    custom_metadata={DIGEST_KEY: digests},
                )
            except _WRITE_ERRORS as e:
                raise CheckpointWriteError(
                    self.name, step, self.directory, self.good_step, e
                ) from e
            self._saving = step  # before a signal that waited is raised: close() finishes it

    def finish(self) -> None:
        """Waits for the save in flight; its failure is raised as a CheckpointWriteError."""
        if self._saving is None:
            return
        saved, self._saving = self._saving, None
        with interrupts.deferred():
            try:
                self._manager.wait_until_finished()
            except _WRITE_ERRORS as e:
                raise CheckpointWriteError(
                    self.name, saved, self.directory, self.good_step, e
                ) from e
        self.good_step = saved
        if sharding.is_primary():
            self._record_files(saved)

    def _record_files(self, step: int) -> None:
        """Writes the digests of committed step ``step``'s files beside it, and removes
        the records of steps orbax has deleted since (``max_to_keep``)."""
        record = self._step_dir(step) + FILES_SUFFIX
        try:
            atomic_write_text(record, json.dumps(_file_digests(self._step_dir(step)), indent=1))
        except OSError as e:
            raise CheckpointWriteError(self.name, step, self.directory, step, e) from e
        for name in os.listdir(self.directory):
            step_dir = os.path.join(self.directory, name[: -len(FILES_SUFFIX)])
            if name.endswith(FILES_SUFFIX) and not os.path.isdir(step_dir):
                os.remove(step_dir + FILES_SUFFIX)

    def close(self, failed: bool) -> None:
        """Finishes the save in flight and closes the manager; a failure is raised unless
        another error is on its way out already (``failed``; then it is logged)."""
        with interrupts.deferred():
            try:
                self.finish()
            except CheckpointWriteError as e:
                if not failed:
                    failed = True
                    raise
                logging.warning("%s: the last checkpoint save failed too: %s", self.name, e)
            finally:
                try:
                    self._manager.close()
                except Exception as e:
                    if not failed:
                        raise
                    # The error on its way out says what went wrong; orbax may raise the
                    # failed save's errors more than once.
                    logging.warning("%s: closing the checkpoints after an error: %s", self.name, e)
