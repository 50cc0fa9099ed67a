"""Planners: a policy maps an `Observation` to an ego-frame plan. `PLANNERS` is the one table of them.

To add a planner, write a class with `name`, `reset(seed)` and `plan(obs)` (see `base.Planner`) and add a factory
`(sim_cfg, checkpoint_dir | None, experiment_config | None) -> Planner` to `PLANNERS`.
"""

from __future__ import annotations

from typing import Any, Callable

from wam_jax.planners.base import Observation, Planner
from wam_jax.planners.baselines import ConstantVelocityPlanner, ExpertPlanner, IDMLaneKeepPlanner
from wam_jax.sim import highway as hw

LEARNED_PLANNER = "drivewam"


def _drivewam(sim_cfg: hw.HighwaySimConfig, checkpoint: str | None, config: Any) -> Planner:
    from wam_jax.planners.drivewam import DriveWAMPlanner   # JAX and the model load only when asked for
    return DriveWAMPlanner.from_checkpoint(checkpoint, config, sim_cfg)


PlannerFactory = Callable[[hw.HighwaySimConfig, "str | None", Any], Planner]

PLANNERS: dict[str, PlannerFactory] = {
    "expert": lambda sim_cfg, checkpoint, config: ExpertPlanner(sim_cfg),
    "constant_velocity": lambda sim_cfg, checkpoint, config: ConstantVelocityPlanner(),
    "idm_lane_keep": lambda sim_cfg, checkpoint, config: IDMLaneKeepPlanner(sim_cfg),
    LEARNED_PLANNER: _drivewam,
}


def build_planner(name: str, sim_cfg: hw.HighwaySimConfig, checkpoint: str | None = None,
                  config: Any = None) -> Planner:
    if name not in PLANNERS:
        raise KeyError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}")
    return PLANNERS[name](sim_cfg, checkpoint, config)


__all__ = ["LEARNED_PLANNER", "PLANNERS", "ConstantVelocityPlanner", "ExpertPlanner", "IDMLaneKeepPlanner",
           "Observation", "Planner", "build_planner"]
