"""Orbax checkpoints of a run: a pytree of arrays plus a JSON record of where the run stands.

Each save is a numbered orbax step holding two items, `state` (arrays, restored into the exact
structure of a template) and `meta` (JSON: progress counters, results so far). Saves are
finished before `save` returns, so a run killed at any point resumes from the last complete step.

Multi-process runs (`jax.process_count() > 1`): every process calls `save` and `restore` with the
same values, and orbax writes ONE set of files (a multi-host checkpoint: the state is saved as
arrays replicated over all devices of all processes, which orbax writes from the primary process).
The directory must be the same path on every process (one machine, or a shared file system).
`restore` hands back host-local numpy arrays there, so callers treat them as in a one-process run.

Damage: `restore_newest` tries the steps newest first; a step that cannot be read (truncated or
corrupted data, unreadable metadata, a meta record the caller's parser refuses) is reported,
skipped and, once an older step restores, moved to `DIRECTORY/unreadable/` (its number is then
free again for the resumed run's next save). A step that holds arrays of other shapes is a
checkpoint of another configuration and stops the resume at once. On opening, the primary
process removes what a killed run can leave: orbax's temporary `*.orbax-checkpoint-tmp*` folders
of an unfinished save, and steps older than the newest whose files are incomplete (a deletion of
an old step, `max_to_keep`, cut short). A failed save (a full disk) removes its temporary folder
and raises `files.WriteError` naming the directory.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from uticket_jax import files

_TMP = ".orbax-checkpoint-tmp"
# The files every committed step has; a step older than the newest that lacks one was being
# deleted (`max_to_keep`) when its run was killed.
_REQUIRED = ("_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/manifest.ocdbt")
UNREADABLE = "unreadable"


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (corrupt, or from a different configuration)."""


class _Foreign(CheckpointError):
    """A checkpoint of another configuration (arrays of other shapes): no older step will fit."""


class Checkpointer:
    """Numbered checkpoints under `directory`, keeping the newest `max_to_keep`."""

    def __init__(
        self,
        directory: str,
        max_to_keep: int = 2,
        guard: Callable[[], AbstractContextManager] | None = None,
    ):
        """Opens (creating) `directory`; removes a killed run's leftovers (see the module doc).

        Args:
          directory: where the numbered steps go.
          max_to_keep: the newest steps kept.
          guard: a context manager factory every save runs inside (a launcher defers SIGINT /
            SIGTERM there, so a save is never cut in half); None: none.
        """
        self.directory = os.path.abspath(directory)
        self._guard = guard or nullcontext
        self.last_meta: dict[str, Any] | None = None  # of the last save or restore
        if jax.process_index() == 0 and os.path.isdir(self.directory):
            tidy(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest complete step, or None when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves `state` (a pytree of arrays) and `meta` (JSON-able) as `step`, synchronously.

        Raises:
          files.WriteError: the step could not be written (its temporary folder is removed).
        """
        with self._guard():
            try:
                self._manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(_global(state)), meta=ocp.args.JsonSave(meta)
                    ),
                )
                self._manager.wait_until_finished()
            except Exception as e:  # tensorstore reports a full disk as ValueError
                if jax.process_index() == 0:
                    _remove_tmp(self.directory, step)
                raise _save_error(self.directory, step, e) from None
            self.last_meta = meta  # inside the guard: a deferred signal sees this save

    def restore(self, template: Any = None, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores `(state, meta)` of `step` (default: the newest) into `template`'s structure.

        Without a template the arrays come back as saved, in nested dicts and lists (for
        inspecting a run); with one, NamedTuples and shapes are checked and rebuilt.

        Raises:
          CheckpointError: no checkpoint, unreadable files, or arrays that do not match the
            template (a checkpoint of another model or configuration).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"--resume: no checkpoint found under {self.directory}")
        abstract = None
        if template is not None:
            # Compare shapes from the metadata first: a foreign checkpoint is refused before
            # orbax starts its asynchronous array reads (which leave debris when they fail).
            _check_shapes(template, self._stored_leaves(step), step, self.directory)
            abstract = jax.tree.map(_abstract, template)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"--resume: checkpoint step {step} under {self.directory} cannot be read ({first})"
            ) from None
        state = restored.state
        if jax.process_count() > 1:  # fully replicated global arrays -> host-local values
            state = jax.tree.map(np.asarray, state)
        self.last_meta = restored.meta
        return state, restored.meta

    def restore_newest(
        self,
        template: Any,
        *,
        check_meta: Callable[[dict[str, Any]], Any] | None = None,
        log: Callable[[str], None] = print,
    ) -> tuple[Any, dict[str, Any]]:
        """`restore(template)` of the newest step that can be restored; damaged newer ones skipped.

        Each skipped step is named in `log` with the reason; once an older step restores, the
        skipped ones move to `DIRECTORY/unreadable/` (primary process), so the run's next saves
        reuse their numbers.

        Args:
          template: as for `restore`.
          check_meta: called on each step's meta record; an exception means "unreadable".
          log: where the skipped steps are reported.

        Raises:
          CheckpointError: no step at all, no step that can be restored (naming the newest's
            reason), or a step of another configuration (arrays of other shapes).
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"--resume: no checkpoint found under {self.directory}")
        skipped: list[tuple[int, str]] = []
        for step in steps:
            try:
                state, meta = self.restore(template, step=step)
                if check_meta is not None:
                    check_meta(meta)
            except _Foreign:
                raise
            except Exception as e:  # a damaged step: try the one before
                reason = _first_line(e).removeprefix(
                    f"--resume: checkpoint step {step} under {self.directory} "
                )
                log(f"--resume: skipping checkpoint step {step}: {reason}")
                skipped.append((step, reason))
                continue
            self._set_aside(skipped, log)
            if skipped:
                log(f"--resume: resuming from checkpoint step {step}, the newest intact one")
            return state, meta
        raise CheckpointError(
            f"--resume: no checkpoint under {self.directory} can be restored (newest, step"
            f" {skipped[0][0]}: {skipped[0][1]})"
        )

    def _set_aside(self, skipped: list[tuple[int, str]], log: Callable[[str], None]) -> None:
        """Moves the skipped steps to `unreadable/` (primary process) and reloads the manager."""
        if not skipped:
            return
        if jax.process_index() == 0:
            dest_root = os.path.join(self.directory, UNREADABLE)
            os.makedirs(dest_root, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            for step, _ in skipped:
                dest = os.path.join(dest_root, f"step{step}-{stamp}")
                shutil.move(os.path.join(self.directory, str(step)), dest)
                log(f"--resume: moved the unreadable checkpoint step {step} to {dest}")
        self._manager.reload()

    def _stored_leaves(self, step: int) -> Any:
        """The saved arrays' metadata (shape and dtype per leaf), without reading the arrays."""
        try:
            tree = self._manager.item_metadata(step)["state"]
            return getattr(tree, "tree", tree)
        except Exception as e:  # unreadable metadata: a damaged checkpoint
            raise CheckpointError(
                f"--resume: checkpoint step {step} under {self.directory} cannot be restored"
                f" (unreadable metadata: {_first_line(e)[:160]})"
            ) from None

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _signature(tree: Any) -> list[tuple[tuple[int, ...], str]]:
    """Sorted (shape, dtype) of every leaf: comparable across tuple/list/dict containers."""
    leaves = jax.tree.leaves(tree)
    return sorted((tuple(int(d) for d in x.shape), str(x.dtype)) for x in leaves)


def _check_shapes(template: Any, stored: Any, step: int, directory: str) -> None:
    if stored is None:
        raise CheckpointError(
            f"--resume: checkpoint step {step} under {directory} cannot be restored (no array"
            " metadata)"
        )
    if _signature(template) != _signature(stored):
        raise _Foreign(
            f"--resume: checkpoint step {step} under {directory} holds arrays of other shapes"
            " than this run's model and flags"
        )


def _replicated() -> NamedSharding:
    """Replicated over every device of every process."""
    return NamedSharding(Mesh(np.asarray(jax.devices()), ("all",)), PartitionSpec())


def _global(tree: Any) -> Any:
    """`tree` as orbax can save it: unchanged in one process; with several processes, every
    leaf that is not already a global array becomes one, replicated over all devices (each
    process holds the same value: the run is computed identically on every process)."""
    if jax.process_count() == 1:
        return tree
    repl = _replicated()

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x  # already global (the replicated train state)
        return jax.make_array_from_process_local_data(repl, np.asarray(x))

    return jax.tree.map(one, tree)


def _abstract(x: Any) -> jax.ShapeDtypeStruct:
    """The restore target of one template leaf (replicated over all devices with several
    processes, so every process reads the whole array)."""
    if jax.process_count() == 1:
        return ocp.utils.to_shape_dtype_struct(x)
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    return jax.ShapeDtypeStruct(np.shape(x), dtype, sharding=_replicated())


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:240] if text else type(e).__name__


def _save_error(directory: str, step: int, e: Exception) -> files.WriteError:
    """A one-line `WriteError` for a failed save (tensorstore says RESOURCE_EXHAUSTED when full)."""
    text = _first_line(e)
    full = "RESOURCE_EXHAUSTED" in text or "No space left" in text
    code = errno.ENOSPC if full else getattr(e, "errno", None) or errno.EIO
    why = "no space left on the device" if full else text
    return files.WriteError(code, f"cannot write checkpoint step {step} under {directory}: {why}")


def _entries(directory: str) -> Iterator[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            yield from list(it)
    except OSError:
        return


def _remove_tmp(directory: str, step: int | None = None) -> None:
    """Removes orbax's temporary folders (of `step`, or of every step) under `directory`."""
    for entry in _entries(directory):
        name = entry.name
        if _TMP in name and (step is None or name.split(".", 1)[0] == str(step)):
            shutil.rmtree(entry.path, ignore_errors=True)


def tidy(directory: str) -> list[str]:
    """Removes a killed run's leftovers under `directory`; returns what it removed.

    Orbax's temporary folders (a save that never finished), and numbered steps older than the
    newest that lack one of the files every committed step has (a deletion cut short).
    """
    removed = [e.path for e in _entries(directory) if _TMP in e.name]
    _remove_tmp(directory)
    steps = sorted(int(e.name) for e in _entries(directory) if e.name.isdigit() and e.is_dir())
    for step in steps[:-1]:
        path = os.path.join(directory, str(step))
        if not all(os.path.exists(os.path.join(path, f)) for f in _REQUIRED):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
