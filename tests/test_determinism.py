"""Same seed, same machine (same CPU set) -> bit-identical results.

The `make demo` path at toy size, run twice in fresh folders: a highway-env dataset through TFDS -> ArrayRecord ->
Grain, action statistics and the PCA latent codec fit on it, training with (async) checkpoints, then closed-loop
evaluation of expert, constant velocity and the trained DriveWAM planner. The table, every per-episode float and
every array of the trained state must match exactly. (The held-out imagination step of the demo is left out
to keep this under a minute; it runs the same rollout code as the planner.)

XLA:CPU's dot products depend on how many CPUs the process may use (its thread pool is sized from the affinity
mask): runs with different CPU sets are *not* bit-identical (see docs/PERFORMANCE.md, determinism).
"""

import json
import os

import jax
import numpy as np

from wam_jax import demo
from wam_jax.config import dataclass_from_config, load_config

SPEC = "experiments/drivewam_highway.py:clips=2,steps=4,layers=1"
OVERRIDES = ["train.batch_size=2", "train.log_every=2", "train.checkpoint_every=2", "dataset.num_chunks=2",
             "sim.vehicles=8", "closed_loop.episode_s=2", "closed_loop.warmup_s=1",
             "closed_loop.video=False", "closed_loop.plots=False"]


def small_run(out):
    """demo.run's steps (without the held-out imagination) -> (table, aggregates, per-episode scalars)."""
    from data_pipelines import builders
    from data_pipelines.sources.highway import HighwayConfig, WamHighway
    from wam_jax.evaluation import closed_loop as cl
    from wam_jax.planners.drivewam import DriveWAMPlanner
    from wam_jax.rollout.engine import load_trained_params
    from wam_jax.sim import highway as hw
    from wam_jax.training.trainer import Trainer

    config = load_config(f"{SPEC},data_dir={os.path.join(out, 'data')}", OVERRIDES)
    sim, ds = config.sim, config.dataset
    data_cfg = HighwayConfig(name="det", num_clips=ds.num_clips, seed=ds.seed, num_chunks=ds.num_chunks,
                             vehicles=sim.vehicles, image_size=tuple(sim.image_size), heading_up=sim.heading_up,
                             perturb_steering=ds.perturb_steering, perturb_rate_hz=ds.perturb_rate_hz,
                             perturb_s=ds.perturb_s, frame_hz=sim.frame_hz, chunk_s=sim.chunk_s,
                             waypoints_per_chunk=sim.waypoints_per_chunk, waypoint_hz=sim.waypoint_hz)
    train_dir = builders.build(WamHighway, data_cfg, os.path.join(out, "data"))
    norm = demo.fit_action_norm(train_dir)
    with config.unlocked():
        config.data.data_dir = train_dir
        config.action_norm.mean = norm.mean.tolist()
        config.action_norm.std = norm.std.tolist()
        config.latent.pca_path = os.path.join(train_dir, "pca_latents.npz")
    demo.fit_latent_pca(config, train_dir)
    workdir = os.path.join(out, "run")
    Trainer(config, workdir).run()

    sim_cfg = dataclass_from_config(hw.HighwaySimConfig, config.sim, "sim")
    cl_cfg = dataclass_from_config(cl.ClosedLoopConfig, config.closed_loop, "closed_loop")
    params, _ = load_trained_params(workdir, config)
    planners = {"expert": cl.ExpertPlanner(sim_cfg), "constant_velocity": cl.ConstantVelocityPlanner(),
                "drivewam": DriveWAMPlanner(config, params, sim_cfg)}
    results = cl.evaluate(planners, 1, demo.EVAL_SEED, sim_cfg, cl_cfg, os.path.join(out, "eval"))
    table = cl.write_results(os.path.join(out, "eval"), results, {})
    with open(os.path.join(out, "eval", "results.json")) as f:
        episodes = {name: p["episodes"] for name, p in json.load(f)["planners"].items()}
    return table, {n: cl.aggregate(r) for n, r in results.items()}, episodes


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
    assert first[1] == second[1]        # aggregates, float ==
    assert first[2] == second[2]        # every per-episode scalar
    assert first[1]["drivewam"]["episodes"] == 1 and "drivewam" in first[0]
    # the trained state itself, bit for bit (the table alone could hide a small difference)
    a, b = final_state(str(tmp_path / "a")), final_state(str(tmp_path / "b"))
    assert len(a) == len(b) > 0
    assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))
