"""Orbax checkpoints of a run: a pytree of arrays plus a JSON record of where the run stands.

Each save is a numbered orbax step holding two items, `state` (arrays, restored into the exact
structure of a template) and `meta` (JSON: progress counters, results so far). Saves are
finished before `save` returns, so a run killed at any point resumes from the last complete step.

Multi-process runs (`jax.process_count() > 1`): every process calls `save` and `restore` with the
same values, and orbax writes ONE set of files (a multi-host checkpoint: the state is saved as
arrays replicated over all devices of all processes, which orbax writes from the primary process).
The directory must be the same path on every process (one machine, or a shared file system).
`restore` hands back host-local numpy arrays there, so callers treat them as in a one-process run.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec


class CheckpointError(ValueError):
    """A checkpoint that cannot be restored (corrupt, or from a different configuration)."""


class Checkpointer:
    """Numbered checkpoints under `directory`, keeping the newest `max_to_keep`."""

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.directory = os.path.abspath(directory)
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
        """Saves `state` (a pytree of arrays) and `meta` (JSON-able) as `step`, synchronously."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_global(state)), meta=ocp.args.JsonSave(meta)
            ),
        )
        self._manager.wait_until_finished()

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
                f"--resume: checkpoint step {step} under {self.directory} cannot be restored"
                f" into this run's configuration ({first})"
            ) from None
        state = restored.state
        if jax.process_count() > 1:  # fully replicated global arrays -> host-local values
            state = jax.tree.map(np.asarray, state)
        return state, restored.meta

    def _stored_leaves(self, step: int) -> Any:
        """The saved arrays' metadata (shape and dtype per leaf), without reading the arrays."""
        try:
            tree = self._manager.item_metadata(step)["state"]
            return getattr(tree, "tree", tree)
        except Exception as e:  # unreadable metadata: a damaged checkpoint
            raise CheckpointError(
                f"--resume: checkpoint step {step} under {self.directory} cannot be restored"
                f" (unreadable metadata: {type(e).__name__})"
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
    if stored is None or _signature(template) != _signature(stored):
        raise CheckpointError(
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
