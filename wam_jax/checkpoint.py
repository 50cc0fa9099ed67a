"""Checkpoints and the run layout: the one module that knows where a run keeps what.

A params checkpoint (`save_params` / `load_params_checkpoint`):
    DIR/params/      Orbax PyTree checkpoint of the parameter tree (arrays, f32 or bf16)
    DIR/meta.json    {"kind": ..., "config": {...}, ...}: what model the params belong to

A training run (`python -m wam_jax train --workdir WORKDIR`):
    WORKDIR/LOCK                     pid and host of the process writing the run (`WorkdirLock`)
    WORKDIR/config.json              the validated config the run trains with (written after the first restore)
    WORKDIR/checkpoints/<step>/      one Orbax step: state/ (TrainState: step, params, ema_params, opt_state),
                                     data/ (the data iterator's position), wam_checksums.json (sha256 per file)
    WORKDIR/tensorboard/

`RunCheckpoints` saves and restores training steps; a step whose files do not match its checksums (bit rot, a
truncated file, a lost item) is reported and the newest intact step is used instead. `load_params(path,
abstract_tree, subtree)` reads one subtree (e.g. "ema_params") of a training step or a params checkpoint
without building a Trainer; every mismatched parameter is named before Orbax is asked to restore anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

META_FILE = "meta.json"
PARAMS_DIR = "params"
CHECKPOINTS_DIR = "checkpoints"
CONFIG_FILE = "config.json"
LOCK_FILE = "LOCK"
CHECKSUM_FILE = "wam_checksums.json"
STATE_ITEM, DATA_ITEM = "state", "data"
PARAM_SETS = ("params", "ema_params")


class CheckpointError(FileNotFoundError):
    """A checkpoint is missing, corrupt, or does not hold what the caller needs."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----- params checkpoints ---------------------------------------------------------------------------------------

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
    write_checksums(target)
    with open(os.path.join(directory, META_FILE), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)


def load_meta(directory: str, kind: str | None = None) -> dict[str, Any]:
    """The checkpoint's meta.json; with `kind`, a checkpoint of another kind is an error."""
    path = os.path.join(directory, META_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {directory!r}: {META_FILE} is missing")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({e}); the checkpoint is damaged") from None
    if kind is not None and meta.get("kind") != kind:
        raise CheckpointError(f"{directory!r} holds a {meta.get('kind')!r} checkpoint, not {kind!r}")
    return meta


def load_params_checkpoint(directory: str, target: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """Reads a params checkpoint. With `target` (a tree of arrays or ShapeDtypeStructs, possibly sharded)
    the arrays are restored with its shapes, dtypes and shardings."""
    directory = os.path.abspath(directory)
    meta = load_meta(directory)
    path = os.path.join(directory, PARAMS_DIR)
    if not os.path.isdir(path):
        raise CheckpointError(f"no parameters at {path!r}")
    verify_checksums(path)
    if target is None:
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(path), meta
    return _restore_tree(path, (), _abstract(target)), meta


# ----- integrity ----------------------------------------------------------------------------------------------

def _files(directory: str) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(directory):
        for name in names:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, directory)
            if rel != CHECKSUM_FILE:
                out[rel] = full
    return out


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_checksums(directory: str) -> None:
    """sha256 of every file under `directory` into directory/wam_checksums.json (written atomically)."""
    sums = {rel: _digest(full) for rel, full in sorted(_files(directory).items())}
    tmp = os.path.join(directory, CHECKSUM_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump({"sha256": sums}, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(directory, CHECKSUM_FILE))


def verify_checksums(directory: str) -> bool:
    """True when every file matches; False when the directory has no checksums (written before a kill);
    CheckpointError naming the damaged files otherwise."""
    path = os.path.join(directory, CHECKSUM_FILE)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            want = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{directory} is corrupt: its {CHECKSUM_FILE} is unreadable ({e})") from None
    have = _files(directory)
    bad = [f"missing {rel}" for rel in sorted(set(want) - set(have))]
    bad += [f"changed {rel}" for rel in sorted(set(want) & set(have)) if _digest(have[rel]) != want[rel]]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(f"{directory} is corrupt ({shown}: the files no longer match their checksums)")
    return True


# ----- run layout ---------------------------------------------------------------------------------------------

def step_dir(root: str, step: int) -> str:
    return os.path.join(root, str(step))


def list_steps(root: str) -> list[int]:
    """Finished steps in a checkpoints folder (Orbax renames a step into place only once it is complete)."""
    if not os.path.isdir(root):
        return []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(int(d) for d in names if re.fullmatch(r"\d+", d) and os.path.isdir(os.path.join(root, d, STATE_ITEM)))


@dataclasses.dataclass(frozen=True)
class RunPath:
    """What a user's path names: a training run (`workdir`, `root` = its checkpoints folder, optional `step`
    fixed by a step folder) or a params checkpoint (`params_dir`)."""
    workdir: str | None = None
    root: str | None = None
    step: int | None = None
    params_dir: str | None = None


_EXPECTED = ("expected a training workdir (WORKDIR with checkpoints/<step>/state), its checkpoints/ folder, "
             "one step folder, or a params checkpoint folder (meta.json + params/)")


def resolve(path: str) -> RunPath:
    """Resolves a workdir, its checkpoints folder, one step folder or a params checkpoint folder."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path!r}: the path does not exist; {_EXPECTED}")
    if os.path.exists(os.path.join(path, META_FILE)):
        return RunPath(params_dir=path)
    if os.path.isdir(os.path.join(path, STATE_ITEM)) and os.path.basename(path).isdigit():
        root = os.path.dirname(path)
        return RunPath(os.path.dirname(root), root, int(os.path.basename(path)))
    if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        return RunPath(path, os.path.join(path, CHECKPOINTS_DIR))
    if list_steps(path):
        return RunPath(os.path.dirname(path), path)
    raise CheckpointError(f"no checkpoint at {path!r}: it holds no finished training steps; {_EXPECTED}")


def run_config_path(path: str) -> str:
    """WORKDIR/config.json of the run that `path` (workdir, checkpoints folder or step folder) belongs to."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, CONFIG_FILE)):
        try:
            run = resolve(path)
        except CheckpointError:
            run = None
        if run is not None and run.workdir:
            return os.path.join(run.workdir, CONFIG_FILE)
    return os.path.join(path, CONFIG_FILE)


def write_run_config(workdir: str, config) -> None:
    """WORKDIR/config.json, atomically (a run killed mid-write keeps the previous file)."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def candidate_steps(root: str, step: int | None = None) -> list[int]:
    steps = list_steps(root)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"step {step} is not in {root}; available steps: {steps}")
        return [step]
    return steps[::-1]


def first_intact(root: str, attempt: Callable[[int], Any], step: int | None = None) -> tuple[int, Any]:
    """Runs `attempt(step)` on the newest step whose checksums hold (or, with `step`, on that one only).
    A corrupt step, or one that vanished (a training run's cleanup), is reported and the next older one tried."""
    tried: list[str] = []
    candidates = candidate_steps(root, step)
    if not candidates:
        raise CheckpointError(f"no checkpoint at {root!r}: it holds no finished training steps (folders "
                              f"<step>/state); {_EXPECTED}")
    for s in candidates:
        folder = step_dir(root, s)
        try:
            if not verify_checksums(folder):
                _say(f"checkpoint step {s} has no checksums (the run stopped before writing them); using it unverified")
            return s, attempt(s)
        except CheckpointError as e:
            if not os.path.isdir(folder):
                tried.append(f"step {s} was removed while reading it")
                _say(f"checkpoint step {s} was removed while reading it (a training run cleans up old steps); "
                     "trying the newest remaining step")
                return first_intact(root, attempt, step)
            if step is not None or isinstance(e, ShapeMismatchError):
                raise
            tried.append(str(e))
            _say(f"warning: {e}; falling back to the previous step")
        except (ValueError, OSError, KeyError, TypeError) as e:     # what Orbax / TensorStore raise on bad files
            if not os.path.isdir(folder):
                _say(f"checkpoint step {s} was removed while reading it; trying the newest remaining step")
                return first_intact(root, attempt, step)
            message = f"checkpoint step {s} in {root} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
            if step is not None:
                raise CheckpointError(message) from None
            tried.append(message)
            _say(f"warning: {message}; falling back to the previous step")
    detail = "; ".join(tried) if tried else "it holds no finished steps"
    raise CheckpointError(f"no intact checkpoint in {root}: {detail}")


# ----- restoring trees ----------------------------------------------------------------------------------------

class ShapeMismatchError(CheckpointError):
    """The checkpoint's parameters do not fit the model config."""


def _abstract(tree):
    return jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def _flat(tree, prefix=()) -> dict[str, tuple[int, ...]]:
    from flax import traverse_util
    if not isinstance(tree, Mapping):
        return {"/".join(prefix) or "<root>": tuple(tree.shape)}
    return {"/".join(prefix + k): tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def shape_problems(stored, expected) -> list[str]:
    """Every missing, unexpected and mis-shaped leaf of `stored` against `expected` (trees of shaped things)."""
    got, want = _flat(stored), _flat(expected)
    problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
    problems += [f"unexpected {k} {got[k]}" for k in sorted(set(got) - set(want))]
    problems += [f"{k}: checkpoint {got[k]} vs config {want[k]}" for k in sorted(set(got) & set(want))
                 if got[k] != want[k]]
    return problems


def check_shapes(stored, expected, where: str, error=None) -> None:
    problems = shape_problems(stored, expected)
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise (error or ShapeMismatchError)(
            f"the parameters in {where} do not fit the model config (wrong --config?): {shown}")


def stored_tree(directory: str, prefix: Sequence[str] = ()):
    """Shapes (ArrayMetadata tree) of an Orbax PyTree directory, at `prefix`."""
    import logging
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)     # an item of a step has no _CHECKPOINT_METADATA of its own: Orbax warns
    try:
        tree = ocp.PyTreeCheckpointer().metadata(directory).item_metadata.tree
    finally:
        absl.setLevel(level)
    for key in prefix:
        if not isinstance(tree, Mapping) or key not in tree:
            raise CheckpointError(f"{directory} holds no {'/'.join(prefix)!r} parameters")
        tree = tree[key]
    return tree


def _restore_tree(directory: str, prefix: Sequence[str], abstract):
    check_shapes(stored_tree(directory, prefix), abstract, directory)

    def nest(value):
        for key in reversed(tuple(prefix)):
            value = {key: value}
        return value

    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    restored = ocp.PyTreeCheckpointer().restore(directory, args=ocp.args.PyTreeRestore(
        item=nest(abstract), restore_args=nest(restore_args), partial_restore=bool(prefix)))
    for key in prefix:
        restored = restored[key]
    return restored


def load_params(path: str, abstract_tree, subtree: str = "ema_params", step: int | None = None
                ) -> tuple[Any, int | None]:
    """Parameters without a Trainer: `subtree` ("params" or "ema_params") of a training step (the newest intact
    one unless `step`), or the parameters of a params checkpoint. `abstract_tree`: ShapeDtypeStructs (with
    shardings) of the parameters, e.g. from `wam_jax.sharding.abstract_sharded_params`. Returns (params, step)."""
    if subtree not in PARAM_SETS:
        raise CheckpointError(f"unknown parameter set {subtree!r}; choose one of {PARAM_SETS}")
    run = resolve(path)
    abstract = _abstract(abstract_tree)
    if run.params_dir:
        params, _ = load_params_checkpoint(run.params_dir, abstract)
        return params, None
    step = run.step if run.step is not None else step
    return first_intact(run.root, lambda s: _restore_tree(os.path.join(step_dir(run.root, s), STATE_ITEM),
                                                           (subtree,), abstract), step)[::-1]


# ----- training runs ------------------------------------------------------------------------------------------

class RunCheckpoints:
    """Training steps of one run: TrainState + data position per step, checksummed once Orbax has finished
    writing them; restore picks the newest intact step."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, primary: bool = True):
        self.root = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
        self.primary = primary
        self.manager = ocp.CheckpointManager(self.root, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save))
        self._unsummed: list[int] = []

    def latest_step(self) -> int | None:
        steps = list_steps(self.root)
        return steps[-1] if steps else None

    def save_step(self, step: int, state, data_state: Mapping[str, Any], force: bool = False) -> None:
        self.finish()          # the previous save must be complete (Orbax waits anyway) before it is summed
        self.manager.save(step, args=ocp.args.Composite(**{
            STATE_ITEM: ocp.args.StandardSave(state), DATA_ITEM: ocp.args.JsonSave(data_state)}), force=force)
        self._unsummed.append(step)

    def check_for_errors(self) -> None:
        """Raises what a background save failed with (a full disk), instead of training on to the next save."""
        try:
            self.manager.check_for_errors()
        except Exception as e:       # noqa: BLE001 - Orbax re-raises the writer's error, of any type
            raise CheckpointError(f"writing a checkpoint in {self.root} failed: {type(e).__name__}: {e}") from None

    def finish(self) -> None:
        """Waits for pending saves and writes their checksums."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:       # noqa: BLE001
            raise CheckpointError(f"writing a checkpoint in {self.root} failed: {type(e).__name__}: {e}") from None
        if self.primary:
            for s in self._unsummed:
                if os.path.isdir(step_dir(self.root, s)):
                    write_checksums(step_dir(self.root, s))
        self._unsummed = []

    wait_until_finished = finish

    def all_steps(self) -> list[int]:
        return list_steps(self.root)

    def restore(self, step: int, args):
        """Orbax's restore of one step (no integrity check): for tests that read a step's raw items."""
        return self.manager.restore(step, args=args)

    def restore_latest(self, abstract_state, data: bool = True) -> tuple[int, Any, Any] | None:
        """(step, state, data position) of the newest intact step, or None when the run has no steps."""
        if not list_steps(self.root):
            return None

        def attempt(s):
            check_shapes(stored_tree(os.path.join(step_dir(self.root, s), STATE_ITEM), ("params",)),
                         abstract_state.params, f"{self.root}/{s}")
            items = {STATE_ITEM: ocp.args.StandardRestore(abstract_state)}
            if data:
                items[DATA_ITEM] = ocp.args.JsonRestore()
            restored = self.manager.restore(s, args=ocp.args.Composite(**items))
            return restored[STATE_ITEM], restored[DATA_ITEM] if data else None

        step, (state, position) = first_intact(self.root, attempt)
        return step, state, position

    def close(self) -> None:
        try:
            self.finish()
        finally:
            self.manager.close()


# ----- one writer per workdir ---------------------------------------------------------------------------------

class WorkdirLock:
    """WORKDIR/LOCK held with flock for the life of a training process: a second writer is refused with the
    holder's pid and host; the kernel drops the lock of a dead process, so a stale LOCK file is taken over."""

    def __init__(self, workdir: str):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        import fcntl
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CheckpointError(
                f"{os.path.dirname(self.path)} is in use by another training run (pid {holder.get('pid', '?')} on "
                f"host {holder.get('host', '?')}, since {holder.get('since', '?')}); stop it or choose another "
                "--workdir") from None
        previous = _read_holder(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            _say(f"taking over the stale lock of {os.path.dirname(self.path)} (pid {previous['pid']} on host "
                 f"{previous.get('host', '?')} is gone)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)          # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
