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
