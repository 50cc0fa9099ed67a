"""What every planner sees and returns.

A planner sees an `Observation` every replan and returns ego-frame waypoints [N, 3] (x forward, y left,
heading) at `obs.waypoint_times`; the closed loop's tracking controller drives through them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np

from wam_jax.sim import highway as hw


@dataclasses.dataclass
class Observation:
    """What a planner sees at a replan step.

    Fair inputs: `frames`, `ego`, `intent`, `pose_history`, `speed_history`, `ego_states`. The last two fields are
    privileged simulator access for baselines only; a learned planner must not read them.
    """

    time_s: float
    frames: np.ndarray  # [F, H, W, 3] uint8, oldest first, frames[-1] is now (padded with the first frame);
    #                     F = 0 for a planner whose `reads_frames` is False (nothing is rendered for it)
    ego: hw.EgoState  # current state, world frame
    intent: hw.Intent
    pose_history: np.ndarray  # [K, 3] past poses in the CURRENT ego frame, oldest first, at waypoint_hz
    speed_history: np.ndarray  # [K] speeds at those poses
    waypoint_times: np.ndarray  # [N] seconds ahead at which the plan's waypoints are expected
    sim: Any = None  # privileged: the live env (do not step it)
    expert_future: np.ndarray | None = None  # privileged: [N, 3] the expert's future in the ego frame
    # [2, 3] (speed m/s, acceleration m/s², curvature 1/m) at the start of the past chunk and now, computed as
    # the data sources record a chunk's ego state (data_pipelines.sources.highway.episode_ego_state).
    ego_states: np.ndarray | None = None


class Planner(Protocol):
    """Returns ego-frame waypoints [N, 3] (x forward, y left, heading) at `obs.waypoint_times`."""

    name: str
    # Optional class attributes: `reads_frames = False` (no rendering for it), `drives_directly = True` (it
    # drives with the expert's own actions; its plan is only shown).

    def reset(self, seed: int) -> None: ...

    def plan(self, obs: Observation) -> np.ndarray: ...
