"""Baseline planners: the simulator's expert, constant velocity and IDM lane keeping.

The expert and IDM lane keeping read the live simulator (privileged); constant velocity reads only the ego state.
"""

from __future__ import annotations

import copy

import numpy as np

from wam_jax.planners.base import Observation
from wam_jax.sim import highway as hw


class ExpertPlanner:
    """highway-env's IDM + MOBIL expert. Drives with its own actions (`drives_directly`); its plan (used for
    plots and as the ADE sanity check, 0 by construction) is its own future from a copy of the env."""

    name = "expert"
    drives_directly = True
    reads_frames = False

    def __init__(self, sim_cfg: hw.HighwaySimConfig):
        self.sim_cfg = sim_cfg

    def reset(self, seed: int) -> None:
        pass

    def plan(self, obs: Observation) -> np.ndarray:
        if obs.expert_future is not None:
            return obs.expert_future
        future = hw.expert_future(obs.sim, self.sim_cfg)[self.sim_cfg.steps_per_waypoint - 1 :: self.sim_cfg.steps_per_waypoint]
        return hw.ego_frame_waypoints(future, obs.ego.pose)


class ConstantVelocityPlanner:
    """Keeps the current heading and speed: waypoints straight ahead at v * t."""

    name = "constant_velocity"
    reads_frames = False

    def reset(self, seed: int) -> None:
        pass

    def plan(self, obs: Observation) -> np.ndarray:
        t = np.asarray(obs.waypoint_times, dtype=np.float64)
        return np.stack([obs.ego.speed * t, np.zeros_like(t), np.zeros_like(t)], axis=1)


class IDMLaneKeepPlanner:
    """IDM car following in the current lane, no lane changes: the expert's rollout on a copy of the env with
    MOBIL switched off, read out as waypoints (privileged: uses `obs.sim`)."""

    name = "idm_lane_keep"
    reads_frames = False

    def __init__(self, sim_cfg: hw.HighwaySimConfig):
        self.sim_cfg = sim_cfg

    def reset(self, seed: int) -> None:
        pass

    def plan(self, obs: Observation) -> np.ndarray:
        sim = copy.deepcopy(obs.sim.unwrapped)
        ego = sim.vehicle
        ego.enable_lane_change = False
        ego.target_lane_index = ego.lane_index
        future = hw.expert_future(sim, self.sim_cfg)
        k = self.sim_cfg.steps_per_waypoint
        return hw.ego_frame_waypoints(future[k - 1 :: k], obs.ego.pose)
