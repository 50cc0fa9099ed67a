"""Shared pieces of the open-loop benchmark evals (`eval-navsim`, `eval-physicalai`): what a planner sees, the
planners, and the per-scene CSV + summary table writer.

A benchmark planner gets a `BenchInput` (fair inputs only: history poses, current velocity, driving command,
and camera frames when it asks for them) and returns ego-frame waypoints `[T, 3]` (x forward, y left, heading)
at `inp.times_s`, or `[K, T, 3]` samples (the first sample is the one scored by single-trajectory metrics).

Planners:
  expert             oracle: replays the logged future (`inp.logged_future`; privileged, for tests and ceilings)
  constant_velocity  straight ahead at the current speed
  drivewam           a trained DriveWAM checkpoint (`--checkpoint DIR`, its saved config or `--config`) through
                     `wam_jax.planners.drivewam.DriveWAMPlanner`; its chunk of waypoints is interpolated to the
                     benchmark's times (it cannot plan past its own chunk horizon).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np


@dataclasses.dataclass
class BenchInput:
    """One scene as a planner sees it (ego frame at "now": x forward, y left, counter-clockwise heading)."""

    scene_id: str
    times_s: np.ndarray  # [T] seconds ahead at which waypoints are wanted
    history: np.ndarray  # [H, 3] past poses ending with "now" (the origin), oldest first
    history_dt: float  # seconds between history poses
    velocity: np.ndarray  # [2] current (forward, left) velocity [m/s]
    command: int  # data_pipelines.schema command: 0 left, 1 straight, 2 right, 3 unknown
    frames: Optional[np.ndarray] = None  # [F, H, W, 3] uint8 up to "now", only for planners with needs_frames
    frame_dt: float = 0.0  # seconds between those frames
    logged_future: Optional[np.ndarray] = None  # privileged: [T, 3] the logged future at times_s (oracle only)


class ExpertReplay:
    """Oracle: the logged future itself (scores the benchmark's ceiling and checks the plumbing)."""

    name = "expert"
    needs_frames = False

    def plan(self, inp: BenchInput) -> np.ndarray:
        if inp.logged_future is None:
            raise ValueError(f"scene {inp.scene_id}: the expert planner needs the logged future")
        return np.asarray(inp.logged_future, np.float64)


class ConstantVelocity:
    """Keeps the current heading and speed."""

    name = "constant_velocity"
    needs_frames = False

    def plan(self, inp: BenchInput) -> np.ndarray:
        t = np.asarray(inp.times_s, np.float64)
        speed = float(np.hypot(*inp.velocity))
        return np.stack([speed * t, np.zeros_like(t), np.zeros_like(t)], axis=-1)


# data_pipelines.schema command index -> highway intent (the DriveWAM guidance vocabulary, wam_jax.sim.highway)
COMMAND_TO_INTENT = {0: "change lane left", 1: "keep lane", 2: "change lane right", 3: "keep lane"}


class DriveWAMBench:
    """A trained DriveWAM checkpoint as a benchmark planner, through the closed-loop DriveWAMPlanner.

    The model was trained on chunks of `sim.chunk_s` seconds: frames at `sim.frame_hz` and poses at
    `sim.waypoint_hz`. Benchmarks give less history (NAVSIM: 4 frames and poses at 2 Hz = 1.5 s), so the context is
    resampled to the model's times: each frame slot takes the latest benchmark frame at or before it (the oldest
    one before the history starts), each pose is interpolated linearly in time and extrapolated backwards at the
    oldest velocity before the history starts. Frames are resized to the model's size; the route command becomes
    the intent. The model's waypoints are interpolated linearly to the benchmark's times from the origin at t = 0.
    """

    name = "drivewam"
    needs_frames = True

    def __init__(self, checkpoint: str, config):
        from wam_jax import planners
        from wam_jax.experiment import Experiment

        self.sim_cfg = Experiment(config).sim
        self.planner = planners.build_planner(planners.LEARNED_PLANNER, self.sim_cfg, checkpoint, config)
        self.planner.reset(0)

    def observation(self, inp: BenchInput):
        """The closed-loop Observation the DriveWAM planner reads, built from the benchmark's fair inputs."""
        from wam_jax.planners.base import Observation
        from wam_jax.sim import highway as hw

        if inp.frames is None or len(inp.frames) == 0 or inp.frame_dt <= 0:
            raise ValueError(f"scene {inp.scene_id}: drivewam needs camera frames and their spacing")
        cfg = self.sim_cfg
        n_frames = int(round(cfg.chunk_s * cfg.frame_hz)) + 1  # one chunk before "now", plus "now"
        frame_times = (np.arange(n_frames) - (n_frames - 1)) / cfg.frame_hz
        have_times = (np.arange(len(inp.frames)) - (len(inp.frames) - 1)) * inp.frame_dt
        pick = np.clip(np.searchsorted(have_times, frame_times + 1e-9, side="right") - 1, 0, len(inp.frames) - 1)
        frames = np.stack([_resize(inp.frames[i], tuple(cfg.image_size)) for i in pick])
        n_poses = cfg.waypoints_per_chunk
        pose_times = (np.arange(n_poses) - n_poses) / cfg.waypoint_hz  # -chunk_s ... -1/hz
        history = history_at(inp.history, inp.history_dt, pose_times)
        speed = float(np.hypot(*inp.velocity))
        intent = COMMAND_TO_INTENT.get(int(inp.command), "keep lane")
        return Observation(
            time_s=0.0, frames=frames,
            ego=hw.EgoState(x=0.0, y=0.0, heading=0.0, speed=speed, lane=-1, on_road=True, crashed=False),
            intent=hw.Intent(intent, intent), pose_history=history, speed_history=np.full(n_poses, speed),
            waypoint_times=cfg.waypoint_times)

    def plan(self, inp: BenchInput) -> np.ndarray:
        times = np.asarray(inp.times_s, np.float64)
        horizon = float(self.sim_cfg.waypoint_times[-1])
        if times[-1] > horizon + 1e-9:
            raise ValueError(f"drivewam plans {horizon:g} s ahead; the benchmark asks for {times[-1]:g} s "
                             "(evaluate a shorter horizon)")
        self.planner.reset(0)  # the same sampling noise for every scene: a scene's score does not depend on order
        plan = np.asarray(self.planner.plan(self.observation(inp)), np.float64)
        return interpolate_waypoints(self.sim_cfg.waypoint_times, plan, times)


def history_at(history: np.ndarray, dt: float, times: np.ndarray) -> np.ndarray:
    """Past poses [H, 3] (oldest first, the last at t = 0, spaced dt) -> poses at `times` (<= 0): linear in time
    inside the history, extrapolated at the oldest step's velocity before it."""
    history = np.asarray(history, np.float64)
    t = (np.arange(len(history)) - (len(history) - 1)) * dt
    if len(history) < 2:
        return np.repeat(history[:1], len(times), axis=0)
    heading = np.unwrap(history[:, 2])
    out = np.stack([np.interp(times, t, history[:, 0]), np.interp(times, t, history[:, 1]),
                    np.interp(times, t, heading)], -1)
    before = times < t[0]
    rate = (np.stack([history[1, 0], history[1, 1], heading[1]]) - np.stack([history[0, 0], history[0, 1], heading[0]])) / dt
    out[before] = np.stack([history[0, 0], history[0, 1], heading[0]]) + (times[before] - t[0])[:, None] * rate
    out[:, 2] = np.arctan2(np.sin(out[:, 2]), np.cos(out[:, 2]))
    return out


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def interpolate_waypoints(src_times: np.ndarray, waypoints: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Waypoints [N, 3] at src_times (> 0) -> [len(times), 3], linear from the origin (0, 0, 0) at t = 0;
    heading interpolated unwrapped."""
    t = np.concatenate([[0.0], np.asarray(src_times, np.float64)])
    wp = np.concatenate([np.zeros((1, 3)), np.asarray(waypoints, np.float64)], axis=0)
    heading = np.unwrap(wp[:, 2])
    out = np.stack([np.interp(times, t, wp[:, 0]), np.interp(times, t, wp[:, 1]), np.interp(times, t, heading)], -1)
    out[:, 2] = np.arctan2(np.sin(out[:, 2]), np.cos(out[:, 2]))
    return out


PLANNERS: dict[str, Callable[..., Any]] = {
    "expert": lambda **_: ExpertReplay(),
    "constant_velocity": lambda **_: ConstantVelocity(),
    "drivewam": lambda checkpoint=None, config=None, **_: DriveWAMBench(checkpoint, config),
}


def build_planners(names: Sequence[str], checkpoint: Optional[str] = None, config: Any = None) -> dict[str, Any]:
    """Benchmark planners by name; `config` is the experiment ConfigDict the checkpoint was trained with."""
    out = {}
    for name in names:
        if name not in PLANNERS:
            raise KeyError(f"unknown benchmark planner {name!r}; known: {sorted(PLANNERS)}")
        if name == "drivewam" and (not checkpoint or config is None):
            raise ValueError("the drivewam planner needs --checkpoint DIR and its experiment config (--config FILE, "
                             "or the run's saved config.json)")
        out[name] = PLANNERS[name](checkpoint=checkpoint, config=config)
    return out


def plan_samples(planner, inp: BenchInput) -> np.ndarray:
    """The planner's output as finite samples [K, T, 3] at inp.times_s (one line of error otherwise)."""
    plan = np.asarray(planner.plan(inp), np.float64)
    if plan.ndim == 2:
        plan = plan[None]
    n_t = len(inp.times_s)
    if plan.ndim != 3 or plan.shape[1:] != (n_t, 3) or not np.all(np.isfinite(plan)):
        raise ValueError(f"planner {planner.name!r} returned shape {plan.shape} for scene {inp.scene_id}; "
                         f"expected finite [{n_t}, 3] or [K, {n_t}, 3]")
    return plan


# ----------------------------------------------------------------------------------------------------------------
# Outputs: per-scene CSV, summary table (txt + json)


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, (float, np.floating)):
        return "-" if math.isnan(value) else f"{float(value):.{digits}f}"
    return str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str], digits: int = 4) -> str:
    """The summary rows as the project's plain-text table (wam_jax.tools.tables)."""
    from wam_jax.tools import tables
    return tables.format_table(columns, [[_fmt(r.get(c, float("nan")), digits) for c in columns] for r in rows])


def write_outputs(out_dir: str, scene_rows: Sequence[dict], scene_columns: Sequence[str],
                  summary_rows: Sequence[dict], summary_columns: Sequence[str], meta: dict) -> str:
    """Writes scenes.csv (one row per planner and scene, full float precision), summary.txt (the table) and
    summary.json; returns the table text."""
    from wam_jax.tools import tables
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "scenes.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(scene_columns), extrasaction="ignore")
        writer.writeheader()
        for row in scene_rows:
            writer.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()})
    table = format_table(summary_rows, summary_columns)
    with open(os.path.join(out_dir, "summary.txt"), "w") as f:
        f.write(table + "\n")
    tables.write_json(os.path.join(out_dir, "summary.json"), {"meta": meta, "summary": list(summary_rows)})
    return table


def mean_rows(planner: str, rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """{"planner", "scenes", key: mean over rows} (nan-free keys only; a key missing everywhere gives nan)."""
    out: dict[str, Any] = {"planner": planner, "scenes": len(rows)}
    for k in keys:
        vals = [float(r[k]) for r in rows if k in r and not math.isnan(float(r[k]))]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out
