"""Device mesh and the one rules table that maps logical axis names to mesh axes.

Parameters and activations carry logical names ("embed", "heads", "mlp", "layers", "activation_batch", ...);
`RULES` decides where each goes. A new parallelism layout is a change of this table or of the mesh shape in
the config, never of model code.

Mesh axes: data (pure data parallel), fsdp (data parallel + parameter/optimizer sharding), tensor (heads/MLP
split), sequence (activation length split; size 1 unless long-context training asks for it).
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

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


def initialize_distributed() -> None:
    """Starts multi-host JAX from the environment (SLURM, Kubernetes/GKE, TPU pods, or the explicit
    JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables). No-op on one process."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif any(k in os.environ for k in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")):
        jax.distributed.initialize()
