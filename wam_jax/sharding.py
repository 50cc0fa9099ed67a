"""Device mesh and the one rules table that maps logical axis names to mesh axes.

Parameters and activations carry logical names ("embed", "heads", "mlp", "layers", "activation_batch", ...);
`RULES` decides where each goes. A new parallelism layout is a change of this table or of the mesh shape in
the config, never of model code.

Mesh axes: data (pure data parallel), fsdp (data parallel + parameter/optimizer sharding), tensor (heads/MLP
split), sequence (activation length split; size 1 unless long-context training asks for it).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# logical axis → mesh axis (or tuple of mesh axes, or None = replicated). First match wins.
RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", "sequence"),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("text_embed", None),
    ("patch", None),
    ("layers", None),
)


def make_mesh(shape: Sequence[int] | dict, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh from (data, fsdp, tensor[, sequence]) sizes; a -1 entry takes the remaining devices. A fully
    specified mesh smaller than the device count uses the first devices (e.g. a 1-device run on a test host
    that fakes 8)."""
    if isinstance(shape, dict):
        shape = [int(shape.get(a, 1)) for a in MESH_AXES]
    shape = list(shape) + [1] * (len(MESH_AXES) - len(shape))
    devices = list(devices if devices is not None else jax.devices())
    if shape.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        shape[shape.index(-1)] = len(devices) // known
    if -1 not in shape and math.prod(shape) < len(devices):
        devices = devices[:math.prod(shape)]
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, shape))} needs {math.prod(shape)} devices, "
                         f"{len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_specs(boxed_tree) -> Any:
    """PartitionSpecs of logical names for a boxed (nn.LogicallyPartitioned) tree."""
    return nn.get_partition_spec(boxed_tree)


@contextlib.contextmanager
def activation_context(mesh: Mesh, rules=RULES) -> Iterator[None]:
    """Makes `nn.with_logical_constraint` in model code real: the rules table plus `mesh` as the ambient mesh.

    Without both, flax silently skips activation constraints (no rules → no-op; no ambient mesh → no-op). Enter it
    around `model.apply` inside the jitted function, as `Trainer.apply` does (there it sets the abstract mesh;
    around eager code, where `jax.set_mesh` is allowed, the concrete one)."""
    try:
        mesh_context = jax.set_mesh(mesh)
    except ValueError:      # inside jit, where set_mesh is refused
        mesh_context = jax.sharding.use_abstract_mesh(mesh.abstract_mesh)
    with mesh_context, nn.logical_axis_rules(rules):
        yield


def mesh_shardings(boxed_tree, mesh: Mesh, rules=RULES) -> Any:
    """NamedShardings for every leaf of a boxed tree under the rules table."""
    specs = nn.logical_to_mesh(logical_specs(boxed_tree), rules)
    return jax.tree.map(lambda s: NamedSharding(mesh, _drop_trivial(s, mesh)), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def _drop_trivial(spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """Removes mesh axes of size 1 so specs read simply and stay valid on any mesh shape."""
    def keep(entry):
        if entry is None:
            return None
        axes = entry if isinstance(entry, tuple) else (entry,)
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        return None if not axes else (axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*(keep(e) for e in spec))


def follow_params(tree, param_shapes, param_shardings, mesh: Mesh) -> Any:
    """Shardings for a tree that holds copies of the parameters somewhere inside (optimizer moments, EMA): a leaf
    whose key path ends with a parameter's key path and has that parameter's shape gets its sharding, every other
    leaf (step counters, scalars) is replicated.

    Optimizer state is never left to the compiler: `optimizer.init` builds moments with `zeros_like`, which does
    not depend on the parameter values, so XLA has no sharding to propagate and would place them on one device."""
    by_path = {}
    for path, shape in jax.tree_util.tree_leaves_with_path(param_shapes):
        by_path[tuple(path)] = (shape.shape, None)
    for path, sh in jax.tree_util.tree_leaves_with_path(param_shardings):
        by_path[tuple(path)] = (by_path[tuple(path)][0], sh)
    depths = sorted({len(p) for p in by_path}, reverse=True)
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        for depth in depths:
            hit = by_path.get(tuple(path[-depth:])) if len(path) >= depth else None
            if hit is not None and tuple(hit[0]) == tuple(leaf.shape):
                return hit[1]
        return replicated
    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, rank: int) -> NamedSharding:
    """Batch arrays: leading axis split over data × fsdp, the rest replicated."""
    spec = nn.logical_to_mesh_axes(("activation_batch",) + (None,) * (rank - 1), RULES)
    return NamedSharding(mesh, _drop_trivial(spec, mesh))


def fit_shardings(shardings, shapes):
    """Replaces a sharding that does not divide its array's shape by replication on that axis (tiny test models
    have dims smaller than the mesh)."""
    def fit(sharding, shape):
        spec = list(sharding.spec) + [None] * (len(shape.shape) - len(sharding.spec))
        for i, entry in enumerate(spec):
            if entry is None:
                continue
            axes = entry if isinstance(entry, tuple) else (entry,)
            if shape.shape[i] % math.prod(sharding.mesh.shape[a] for a in axes):
                spec[i] = None
        return NamedSharding(sharding.mesh, PartitionSpec(*spec))
    return jax.tree.map(fit, shardings, shapes)


def abstract_params(boxed_tree, mesh: Mesh) -> Any:
    """ShapeDtypeStructs of a boxed parameter tree (`wam_jax.models.wam.abstract_params`) carrying their mesh
    shardings: what a checkpoint restore needs to place every parameter, with no model initialised."""
    shapes = nn.unbox(boxed_tree)
    shardings = fit_shardings(mesh_shardings(boxed_tree, mesh), shapes)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def gather_host_states(state: Any) -> Any:
    """A JSON-able per-process state (a data iterator's position) → what to checkpoint. One process: the state
    itself. Several: {"per_process": [state of process 0, 1, ...]}, all-gathered so that process 0, which writes
    JSON checkpoint items for everyone, has them all. Collective: every process must call it."""
    if jax.process_count() == 1:
        return state
    from jax.experimental import multihost_utils
    blob = np.frombuffer(json.dumps(state, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([blob.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:blob.size] = blob
    blobs = np.asarray(multihost_utils.process_allgather(padded))
    return {"per_process": [json.loads(bytes(blobs[i, :sizes[i]]).decode()) for i in range(len(sizes))]}


def pick_host_state(saved: Any) -> Any:
    """This process's state from what `gather_host_states` saved (a single-process state is everyone's)."""
    if not (isinstance(saved, Mapping) and "per_process" in saved):
        return saved
    states = saved["per_process"]
    if len(states) == jax.process_count():
        return states[jax.process_index()]
    if all(st == states[0] for st in states):
        return states[0]
    raise ValueError(f"the checkpoint's data position was saved by {len(states)} processes with different "
                     f"per-process states; it cannot be resumed by {jax.process_count()} processes. Resume with "
                     f"{len(states)} processes, or use a data source whose position does not depend on the "
                     "process count (data.source='synthetic')")


def distributed_init_args(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """How this process should join a multi-process run, read from the environment:

    - explicit: JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES, JAX_PROCESS_ID (or, in a
      Kubernetes indexed Job, JOB_COMPLETION_INDEX); JAX's own cluster detection is then switched off so that
      nothing else (e.g. SLURM variables) changes these;
    - SLURM: a job step with several tasks (`srun`) → JAX's SLURM detection. JAX binds each process to one
      device (SLURM_LOCALID), right for one task per GPU (or the one GPU in CUDA_VISIBLE_DEVICES, as with
      --gpus-per-task=1); with one task per node the process gets all its node's GPUs (CUDA_VISIBLE_DEVICES or
      SLURM_GPUS_ON_NODE);
    - TPU pods / GKE TPU / multislice: TPU_WORKER_HOSTNAMES or MEGASCALE_COORDINATOR_ADDRESS → JAX's detection;
    - WAM_DISTRIBUTED=auto forces `jax.distributed.initialize()` auto-detection (Cloud TPU VMs, Open MPI);
      WAM_DISTRIBUTED=off forces a single process.
    JAX_LOCAL_DEVICE_IDS ("0,1,2,3") overrides which local devices the process uses, in every mode.

    Returns keyword arguments for `jax.distributed.initialize` ({} = auto-detect) or None for a single process."""
    env = os.environ if env is None else env
    mode = env.get("WAM_DISTRIBUTED", "").lower()
    if mode in ("off", "0", "false", "no"):
        return None
    args: dict[str, Any] | None = None
    if env.get("JAX_COORDINATOR_ADDRESS"):
        process_id = env.get("JAX_PROCESS_ID", env.get("JOB_COMPLETION_INDEX"))
        missing = [name for name, value in (("JAX_NUM_PROCESSES", env.get("JAX_NUM_PROCESSES")),
                                            ("JAX_PROCESS_ID", process_id)) if value in (None, "")]
        if missing:
            raise ValueError(f"JAX_COORDINATOR_ADDRESS={env['JAX_COORDINATOR_ADDRESS']} is set but {missing} "
                             "are not; set all three (JAX_PROCESS_ID may come from JOB_COMPLETION_INDEX on "
                             "Kubernetes), or unset JAX_COORDINATOR_ADDRESS for a single-process run")
        args = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(process_id))
        if not 0 <= args["process_id"] < args["num_processes"]:
            raise ValueError(f"JAX_PROCESS_ID={args['process_id']} is outside [0, JAX_NUM_PROCESSES="
                             f"{args['num_processes']})")
        if _has_cluster_detection():
            args["cluster_detection_method"] = "deactivate"
    elif mode == "auto":
        args = {}
    elif env.get("SLURM_JOB_ID") and _first_int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
                                                or env.get("SLURM_NPROCS") or "1") > 1:
        if "SLURM_STEP_NODELIST" not in env:
            raise ValueError("SLURM job with several tasks but no job step: launch training with `srun` (one task "
                             "per node or per GPU) so each process gets SLURM_PROCID/SLURM_STEP_NODELIST")
        args = {"cluster_detection_method": "slurm"} if _has_cluster_detection() else {}
        per_node = _first_int(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE")
                              or env.get("SLURM_TASKS_PER_NODE") or "0")
        visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        if per_node == 1:
            count = len(visible) or _first_int(env.get("SLURM_GPUS_ON_NODE") or "0")
            if count:
                args["local_device_ids"] = list(range(count))
        elif len(visible) == 1:         # --gpus-per-task=1: the one visible GPU, whatever SLURM_LOCALID says
            args["local_device_ids"] = [0]
    elif env.get("TPU_WORKER_HOSTNAMES") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        args = {}
    if args is not None and env.get("JAX_LOCAL_DEVICE_IDS"):
        args["local_device_ids"] = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    return args


def _first_int(text: str) -> int:
    """SLURM counts may read "8", "8(x2)" or "4,2": the first number."""
    digits = re.match(r"\d+", text.strip())
    return int(digits.group()) if digits else 0


def _has_cluster_detection() -> bool:
    import inspect
    return "cluster_detection_method" in inspect.signature(jax.distributed.initialize).parameters


def initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Starts multi-process JAX from the environment (see `distributed_init_args`); call it first, before anything
    touches a device. No-op for a single process or when JAX is already initialised. Returns whether this is a
    multi-process run."""
    args = distributed_init_args(env)
    if args is None or jax.distributed.is_initialized():
        return jax.distributed.is_initialized()
    jax.distributed.initialize(**args)
    if jax.process_index() == 0:
        print(f"distributed: {jax.process_count()} processes, {jax.device_count()} devices "
              f"({jax.local_device_count()} per process, {jax.devices()[0].platform})", flush=True)
    return True
