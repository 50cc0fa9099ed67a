"""Same seed, same machine (same CPU set) -> bit-identical results.

The `make demo` path at toy size, run twice in fresh folders: a highway-env dataset through TFDS -> ArrayRecord ->
Grain, action statistics and the PCA latent codec fit on it, training with (async) checkpoints, then closed-loop
evaluation of expert, constant velocity and the trained DriveWAM planner. The table, every per-episode float and
every array of the trained state must match exactly. (The demo's held-out imagination is left out to keep
this under a minute; it runs the same rollout code as the planner.)

XLA:CPU's dot products depend on how many CPUs the process may use (its thread pool is sized from the affinity
mask): runs with different CPU sets are *not* bit-identical (see docs/PERFORMANCE.md, determinism).
"""

import json
import os

import jax
import numpy as np

from wam_jax import demo
from wam_jax.config import load_config

SPEC = "experiments/drivewam_highway.py:clips=2,steps=4,layers=1"
OVERRIDES = ["train.batch_size=2", "train.log_every=2", "train.checkpoint_every=2", "dataset.num_chunks=2",
             "sim.vehicles=8", "closed_loop.episode_s=2", "closed_loop.warmup_s=1",
             "closed_loop.video=False", "closed_loop.plots=False"]


def small_run(out):
    """`demo.run` (dataset, statistics, PCA codec, training, closed loop; no imagination) ->
    (table, aggregates, per-episode scalars)."""
    config = load_config(f"{SPEC},data_dir={os.path.join(out, 'data')}", OVERRIDES)
    summary = demo.run(config, out, episodes=1, imagine=False, config_name=SPEC, overrides=OVERRIDES)
    with open(os.path.join(out, "eval", "results.json")) as f:
        episodes = {name: p["episodes"] for name, p in json.load(f)["planners"].items()}
    return summary["table"], summary["aggregates"], episodes


def final_state(out):
    """Every array of the last training checkpoint (params, EMA, optimizer state), as numpy."""
    import orbax.checkpoint as ocp
    path = os.path.join(out, "run", "checkpoints")
    step = ocp.CheckpointManager(path).latest_step()
    state = ocp.PyTreeCheckpointer().restore(os.path.join(path, str(step), "state"))
    return [np.asarray(x) for x in jax.tree.leaves(state)]


def test_same_seed_gives_bit_identical_table(tmp_path):
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    first = small_run(str(tmp_path / "a"))
    second = small_run(str(tmp_path / "b"))
    assert first[0] == second[0], f"tables differ:\n{first[0]}\n---\n{second[0]}"
    # aggregates, float == (json text: NaN, e.g. the ADE of a run without expert roll-outs, equals itself)
    assert json.dumps(first[1], sort_keys=True) == json.dumps(second[1], sort_keys=True)
    assert first[2] == second[2]        # every per-episode scalar
    assert first[1]["drivewam"]["episodes"] == 1 and "drivewam" in first[0]
    # the trained state itself, bit for bit (the table alone could hide a small difference)
    a, b = final_state(str(tmp_path / "a")), final_state(str(tmp_path / "b"))
    assert len(a) == len(b) > 0
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
