"""Sharding for pods: the same training step on every mesh shape, parameter placement from the rules table,
activation constraints inside the jitted step, two processes == one, restore onto another mesh.

One tiny DriveWAM whose widths divide every mesh size used here (dim 48, heads 2, ffn 128), so no parameter
silently falls back to replication. `train.b1=0` and a huge `clip_norm` make Adam's first moment equal the
step's gradient, so the gradients are read straight out of the Trainer's own step (no second compiled program).
"""

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from wam_jax import sharding
from wam_jax.config import load_config
from wam_jax.data import SyntheticIterator, make_iterator
from wam_jax.models import wam as wam_lib
from wam_jax.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")
BASE = ["train.batch_size=8", "chunks=1", "train.steps=3", "train.warmup_steps=0", "train.lr=2e-4", "train.b1=0.0",
        "train.clip_norm=1e9", "train.log_every=100", "train.checkpoint_every=100", "data.num_clips=8"]
MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)]     # (data, fsdp, tensor)
REFERENCE = (1, 1, 1)
RTOL = 1e-5
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _config(mesh, *extra):
    data, fsdp, tensor = mesh
    return load_config(TINY, BASE + [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", *extra])


def _by_path(tree, attr=None):
    """{param key path: array} of a param tree, or of the `attr` ('mu'/'nu') sub-trees of an optimizer state."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = [getattr(k, "name", None) for k in path]
        if attr is None:
            out[jax.tree_util.keystr(path)] = leaf
        elif attr in names:
            out[jax.tree_util.keystr(path[names.index(attr) + 1:])] = leaf
    return out


def _train_on(mesh, workdir, initial):
    """Three steps of the Trainer's jitted step on `mesh` from the host state `initial`, recording each step's
    metrics and gradients. The step is compiled at LLVM -O0 (half the compile time; same program)."""
    trainer = Trainer(_config(mesh), str(workdir))
    state = jax.device_put(initial, trainer.state_shardings)
    batches = [trainer.device_batch(next(trainer.data)) for _ in range(3)]
    lowered = trainer._step_fn.lower(state, batches[0])
    step_fn = lowered.compile(FAST_COMPILE)
    metrics, grads = [], []
    for batch in batches:
        state, m = step_fn(state, batch)
        m, mu = jax.device_get((m, _by_path(state.opt_state, "mu")))   # b1=0: Adam's mu is the gradient
        metrics.append(m)
        grads.append(mu)
    return SimpleNamespace(trainer=trainer, step_fn=step_fn, batches=batches, final=state, metrics=metrics,
                           grads=grads, hlo=lowered.as_text())


@pytest.fixture(scope="module")
def fresh_init(tmp_path_factory):
    """The Trainer's initial state (host copy) on one device."""
    return jax.device_get(Trainer(_config(REFERENCE), str(tmp_path_factory.mktemp("init"))).initial_state())


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory, fresh_init):
    # Perturb the fresh init (zero output heads) so that the very first step has a gradient everywhere.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: x + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), fresh_init.params)
    initial = fresh_init.replace(params=params, ema_params=params)
    return {mesh: _train_on(mesh, tmp_path_factory.mktemp("x".join(map(str, mesh))), initial) for mesh in MESHES}


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)) if b.size else 0.0


def _assert_trees_close(got: dict, want: dict, what: str, rtol=RTOL):
    assert got.keys() == want.keys(), what
    errors = {k: _rel_err(got[k], want[k]) for k in want}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, f"{what}: {worst} differs by {errors[worst]:.2e} (relative to its scale)"


# ----- one step, every mesh ----------------------------------------------------------------------------------
def test_loss_and_gradients_equal_on_every_mesh(mesh_runs):
    """Loss and every gradient of each of three steps equal to 1e-5 (relative to each leaf's scale) on all meshes;
    the parameters after the three Adam steps to 1e-4 (Adam divides each gradient element by its own RMS, which
    magnifies rounding differences of elements whose gradient is ~0, e.g. key biases)."""
    ref = mesh_runs[REFERENCE]
    assert len(ref.metrics) == 3
    # Non-vacuous: the first step has a gradient in every block.
    assert np.max(np.abs(ref.grads[0]["['blocks']['blocks']['ffn']['fc_in']['kernel']"])) > 1e-4
    for mesh in MESHES:
        run = mesh_runs[mesh]
        for step in range(3):
            for key in ("loss", "loss_video", "loss_action", "grad_norm"):
                err = _rel_err(run.metrics[step][key], ref.metrics[step][key])
                assert err <= RTOL, f"mesh {mesh} step {step + 1}: {key} differs by {err:.2e}"
            _assert_trees_close(run.grads[step], ref.grads[step], f"mesh {mesh} step {step + 1} gradients")
        _assert_trees_close(_by_path(jax.device_get(run.final.params)), _by_path(jax.device_get(ref.final.params)),
                            f"mesh {mesh} params after 3 steps", rtol=10 * RTOL)


# ----- parameter placement -----------------------------------------------------------------------------------
def _expected_spec(names, mesh) -> PartitionSpec:
    """Logical names → mesh axes by the first matching rule, mesh axes of size 1 dropped."""
    table = {}
    for name, axes in sharding.RULES:
        table.setdefault(name, axes)
    spec = []
    for name in names:
        if name is None:
            spec.append(None)
            continue
        assert name in table, f"logical axis {name!r} has no rule in wam_jax.sharding.RULES"
        axes = table[name]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def _normalized(spec: PartitionSpec, ndim: int):
    entries = list(spec) + [None] * (ndim - len(spec))
    return tuple(e[0] if isinstance(e, tuple) and len(e) == 1 else (None if e == () else e) for e in entries)


def test_param_and_optimizer_shardings_follow_rules_table(mesh_runs):
    for mesh_shape, run in mesh_runs.items():
        trainer, state = run.trainer, run.final
        boxed = wam_lib.abstract_params(trainer.wan, trainer.wam)
        logical = {jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(
            boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))}
        untagged = [p for p, leaf in logical.items() if not isinstance(leaf, nn.LogicallyPartitioned)]
        assert not untagged, f"parameters without logical axis names: {untagged}"
        trees = {"params": _by_path(state.params), "ema_params": _by_path(state.ema_params),
                 "adam mu": _by_path(state.opt_state, "mu"), "adam nu": _by_path(state.opt_state, "nu")}
        used = set()
        for path, leaf in logical.items():
            expected = NamedSharding(trainer.mesh, _expected_spec(leaf.names, trainer.mesh))
            for what, tree in trees.items():
                arr = tree[path]
                assert arr.sharding.mesh == trainer.mesh, f"{mesh_shape} {what}{path} is not on the mesh"
                assert _normalized(arr.sharding.spec, arr.ndim) == _normalized(expected.spec, arr.ndim), \
                    f"mesh {mesh_shape}: {what}{path} {leaf.names} has {arr.sharding.spec}, rules say {expected.spec}"
                assert arr.addressable_shards[0].data.shape == expected.shard_shape(arr.shape), (what, path)
            used.update(a for e in expected.spec if e for a in (e if isinstance(e, tuple) else (e,)))
        # The layouts are real: parameters are split wherever the mesh has more than one fsdp/tensor device.
        for axis in ("fsdp", "tensor"):
            assert (axis in used) == (trainer.mesh.shape[axis] > 1), (mesh_shape, axis, used)
        counters = [x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state) if x.ndim == 0]
        assert counters and all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == trainer.mesh.size
                                for x in counters + [state.step])


def test_activation_constraints_apply_inside_the_jitted_step(mesh_runs):
    text = mesh_runs[(2, 2, 2)].hlo
    constraints = re.findall(r"sdy\.sharding_constraint .*", text)
    # WanBlock's output [B, L, D] → ("activation_batch", "activation_length", "activation_embed") → rules.
    wanted = [c for c in constraints if '[{"data", "fsdp"}, {"sequence"}, {}]' in c and "tensor<8x32x48xf32>" in c]
    assert wanted, f"no activation constraint in the lowered step (flax skips them without rules + mesh): " \
                   f"{constraints}"


# ----- data and multi-process --------------------------------------------------------------------------------
def test_synthetic_process_slices_make_the_single_process_batch():
    kw = dict(num_clips=5, batch_size=4, chunks=2, waypoints=8, chunk_seconds=4.0, latent_shape=(2, 4, 4, 8))
    single = SyntheticIterator(**kw)
    parts = [SyntheticIterator(**kw, process_index=i, process_count=2) for i in range(2)]
    for _ in range(3):      # crosses an epoch boundary (5 clips, batches of 4)
        whole = next(single)
        halves = [next(p) for p in parts]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])
    assert not np.array_equal(halves[0]["latents"], halves[1]["latents"])
    with pytest.raises(ValueError, match="split evenly"):
        SyntheticIterator(**kw, process_index=0, process_count=3)


def test_distributed_init_args_from_environment():
    def args(env):
        out = sharding.distributed_init_args(env)
        return out if out is None else {k: v for k, v in out.items() if k != "cluster_detection_method"}

    explicit = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "2",
                "JAX_LOCAL_DEVICE_IDS": "0,1"}
    assert args(explicit) == dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=2,
                                  local_device_ids=[0, 1])
    # Explicit variables win over a surrounding SLURM allocation (JAX's detection would pin one device).
    inside_slurm = dict(explicit, SLURM_JOB_ID="7", SLURM_NTASKS="4", SLURM_STEP_NODELIST="n1")
    assert sharding.distributed_init_args(inside_slurm).get("cluster_detection_method") in (None, "deactivate")
    k8s = {"JAX_COORDINATOR_ADDRESS": "train-0.train:1234", "JAX_NUM_PROCESSES": "2", "JOB_COMPLETION_INDEX": "1"}
    assert args(k8s)["process_id"] == 1
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        args({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="outside"):
        args({**explicit, "JAX_PROCESS_ID": "4"})
    slurm = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "16", "SLURM_STEP_NODELIST": "node[1-2]", "SLURM_PROCID": "3",
             "SLURM_LOCALID": "3", "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}
    assert args(slurm) == {}                                     # one task per GPU: JAX's own detection
    per_node = dict(slurm, SLURM_NTASKS="2", SLURM_STEP_TASKS_PER_NODE="1(x2)", CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert args(per_node) == {"local_device_ids": [0, 1, 2, 3]}  # one task per node: all of its GPUs
    assert args(dict(slurm, CUDA_VISIBLE_DEVICES="5")) == {"local_device_ids": [0]}    # --gpus-per-task=1
    assert args({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "1"}) is None
    with pytest.raises(ValueError, match="srun"):
        args({"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4"})
    assert args({"TPU_WORKER_HOSTNAMES": "t0,t1"}) == {}
    assert args({"WAM_DISTRIBUTED": "auto"}) == {}
    assert args({**explicit, "WAM_DISTRIBUTED": "off"}) is None
    assert args({}) is None
    assert sharding.initialize_distributed({}) is False      # single process: nothing started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one(mesh_runs, fresh_init, tmp_path):
    """2 processes × 4 CPU devices (gloo collectives) train 3 steps on data=2,fsdp=2,tensor=2 and write one
    checkpoint together; it equals the single-process 8-device run."""
    mesh = (2, 2, 2)
    data, fsdp, tensor = mesh
    overrides = BASE + [f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"]
    workdir = tmp_path / "mp"
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}",
               JAX_NUM_PROCESSES="2",
               # The compile options of the single-process runs (FAST_COMPILE), as flags.
               XLA_FLAGS=" ".join(flags + ["--xla_force_host_platform_device_count=4"] +
                                  [f"--{k}={str(v).lower()}" for k, v in FAST_COMPILE.items()]),
               JAX_COMPILATION_CACHE_DIR=os.path.join(tempfile.gettempdir(), "wam_jax_test_jit_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "multiprocess_worker.py"), str(workdir),
                               json.dumps(overrides)], env=dict(env, JAX_PROCESS_ID=str(i)), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    results = [json.loads(re.search(r"^RESULT (.*)$", out, re.M).group(1)) for out in outputs]
    for i, r in enumerate(results):
        assert (r["process_index"], r["process_count"], r["device_count"], r["local_device_count"]) == (i, 2, 8, 4)
        assert r["step"] == 3 and r["checkpoints"] == [3]
        assert r["data"] == r["resumed_data"] == {"position": 3, "process": i}     # per-process data positions
    # Each process read its half of the global batch the single-process run reads.
    single = make_iterator(_config(mesh))
    assert results[0]["first_rows"] + results[1]["first_rows"] == single._indices(0).tolist()

    # The single-process run: the Trainer's init (checked equal to the 1-device init) and 3 steps of its step.
    run = mesh_runs[mesh]
    state = jax.device_put(fresh_init, run.trainer.state_shardings)
    metrics = []
    for batch in run.batches:
        state, m = run.step_fn(state, batch)
        metrics.append(jax.device_get(m))
    for step, (got, want) in enumerate(zip(results[0]["metrics"], metrics)):
        for key in ("loss", "loss_video", "loss_action", "grad_norm"):
            err = _rel_err(got[key], want[key])
            assert err <= RTOL, f"2-process step {step + 1}: {key} differs by {err:.2e}"
    # The cooperatively written checkpoint, restored in this one process onto the same mesh shape.
    reader = Trainer(_config(mesh), str(workdir))
    restored = reader.checkpoints.restore(3, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(reader.abstract_state)))["state"]
    assert int(restored.step) == 3
    host, want = jax.device_get(restored), jax.device_get(state)
    for what in ("params", "ema_params"):
        got_tree, want_tree = _by_path(getattr(host, what)), _by_path(getattr(want, what))
        # Equal within 1e-5 in absolute terms (the weights are O(0.01..1)) ...
        worst = max(float(np.max(np.abs(got_tree[k] - want_tree[k]))) for k in want_tree)
        assert worst <= RTOL, f"2-process {what} differ by up to {worst:.2e}"
        # ... and every leaf to 1e-3 of its own scale: from this fresh init (zero output heads) the near-zero
        # leaves, such as key biases, take Adam steps driven by rounding noise (seen: 1e-4 on attn1.to_k.bias).
        _assert_trees_close(got_tree, want_tree, f"2-process {what}", rtol=100 * RTOL)


# ----- checkpoints across mesh shapes ------------------------------------------------------------------------
def test_restore_onto_a_different_mesh(tmp_path, fresh_init):
    """Saved with fsdp=8, restored as data=2,fsdp=2,tensor=2: same values, the new mesh's shardings."""
    saver = Trainer(_config((1, 8, 1)), str(tmp_path))
    rng = np.random.default_rng(3)      # every leaf distinct and non-zero (fresh Adam moments are zeros)
    state = jax.tree.map(lambda x: x + (1 if x.ndim == 0 else rng.standard_normal(x.shape).astype(x.dtype)),
                         fresh_init)
    state = jax.device_put(state, saver.state_shardings)
    assert any("fsdp" in str(x.sharding.spec) for x in jax.tree.leaves(state.params))
    saver.data.set_state({"position": 5})
    saver.save(state, force=True)
    saver.checkpoints.wait_until_finished()
    saved = jax.device_get(state)

    loader = Trainer(_config((2, 2, 2)), str(tmp_path))
    restored = loader.restore_or_init()
    assert loader.data.get_state() == {"position": 5}
    assert int(restored.step) == 1
    for (path, got), want, target in zip(jax.tree_util.tree_leaves_with_path(restored), jax.tree.leaves(saved),
                                         jax.tree.leaves(loader.state_shardings)):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=jax.tree_util.keystr(path))
        assert got.sharding == target, (jax.tree_util.keystr(path), got.sharding, target)
    specs = {str(x.sharding.spec) for x in jax.tree.leaves(restored.params)}
    assert any("tensor" in s for s in specs), specs     # really re-laid out, not the saved layout
