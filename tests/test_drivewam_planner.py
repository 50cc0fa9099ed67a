"""The DriveWAM planner feeds the model its context exactly as the dataset recorded it."""

import numpy as np

from wam_jax.planners.drivewam import context_waypoints
from wam_jax.sim import highway as hw


def test_context_matches_the_recorded_chunk_waypoints():
    cfg = hw.HighwaySimConfig(duration_s=20.0, perturb_steering=0.05, perturb_rate_hz=1.0)
    episode = hw.record_expert_episode(cfg, 5, steps=120, render=False)
    k = cfg.steps_per_waypoint
    for t in (60, 80, 100):
        start = t - cfg.steps_per_chunk
        recorded = episode.chunk_waypoints(start, cfg)              # what training used for this chunk
        # What closed_loop.run_episode hands the planner at time t: past poses in the current ego frame.
        hist_idx = [t - k * j for j in range(cfg.waypoints_per_chunk, 0, -1)]
        history = hw.ego_frame_waypoints(episode.poses[hist_idx], episode.poses[t])
        np.testing.assert_allclose(context_waypoints(history), recorded, atol=1e-9)
    assert np.max(np.abs(recorded[:, 1])) > 0.05      # a lateral component exists, so a sign error would show


def test_planner_guidance_comes_from_the_guidance_object_and_equals_the_training_table():
    """The planner asks the experiment's guidance object (scene rules here, a VLM at paper scale) for the chunk's
    intent; with the scene-rule source that is the row of the intent table the trainer looked up."""
    from wam_jax.config import load_config
    from wam_jax.experiment import Experiment
    from wam_jax.planners.base import Observation
    from wam_jax.planners.drivewam import DriveWAMPlanner

    config = load_config("experiments/drivewam_highway.py")
    sim_cfg = Experiment(config).sim
    planner = DriveWAMPlanner(config, None, sim_cfg)
    table = Experiment(config).intent_table
    for command in hw.INTENTS:
        obs = Observation(time_s=0.0, frames=np.zeros((3, 64, 64, 3), np.uint8), ego=None,
                          intent=hw.Intent(command, command + ", follow the car ahead"),
                          pose_history=np.zeros((8, 3)), speed_history=np.zeros(8),
                          waypoint_times=sim_cfg.waypoint_times)
        g = np.asarray(planner.chunk_guidance(obs))
        assert g.shape == (1, 1, *table.shape[1:])
        np.testing.assert_array_equal(g[0, 0], table[hw.INTENTS.index(command)])
    off = load_config("experiments/drivewam_highway.py:guidance=off")
    assert DriveWAMPlanner(off, None, sim_cfg).chunk_guidance(obs) is None
