"""Parameter checkpoints (Orbax) with a small JSON sidecar describing what they hold.

Layout of a params checkpoint directory:
    DIR/params/      Orbax PyTree checkpoint of the parameter tree (arrays, f32 or bf16)
    DIR/meta.json    {"kind": ..., "config": {...}, ...}: what model the params belong to
Training checkpoints (optimizer state, step, data position) are managed by the trainer on top of Orbax.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

META_FILE = "meta.json"
PARAMS_DIR = "params"


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing or does not hold what the caller needs."""


def save_params(directory: str, params: Any, meta: dict[str, Any]) -> None:
    """Writes `params` and `meta` under `directory` (created; an existing params dir is an error)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, PARAMS_DIR)
    if os.path.exists(target):
        raise CheckpointError(f"{target} already exists; choose a new --out directory or remove it")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, params)
        checkpointer.wait_until_finished()
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_meta(directory: str, kind: str | None = None) -> dict[str, Any]:
    """The checkpoint's meta.json; with `kind`, a checkpoint of another kind is an error."""
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {directory!r}: {META_FILE} is missing")
    with open(path) as f:
        meta = json.load(f)
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{directory!r} holds a {meta.get('kind')!r} checkpoint, not {kind!r}")
    return meta


def load_params(directory: str, target: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Reads a params checkpoint. With `target` (a tree of arrays or ShapeDtypeStructs, possibly sharded)
    the arrays are restored with its shapes, dtypes and shardings."""
    directory = os.path.abspath(directory)
    meta = load_meta(directory)
    path = os.path.join(directory, PARAMS_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no parameters at {path!r}")
    with ocp.StandardCheckpointer() as checkpointer:
        if target is None:
            params = checkpointer.restore(path)
        else:
            abstract = jax.tree.map(
                lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(x.shape, x.dtype,
                    sharding=getattr(x, "sharding", None)), target)
            params = checkpointer.restore(path, abstract)
    return params, meta
