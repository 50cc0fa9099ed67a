"""Closed-loop evaluation in highway-env: planners drive through waypoints, scored PDMS-style.

A planner sees an `Observation` every `replan_s` seconds and returns ego-frame waypoints for the next chunk
(`[N, 3]` x forward, y left, heading, at `sim_cfg.waypoint_times`); the `WaypointTracker` turns them into
continuous actions at the control rate. The built-in expert is the reference: it drives with its own IDM + MOBIL
actions, and its progress on the same seed normalises everyone's EP.

Per-episode score (NAVSIM v1 PDMS shape, computed from highway-env geometry):
  PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12
  NC   0 if the ego collided (highway-env `crashed`), else 1;
  DAC  0 if any ego corner left the lanes at any step, else 1;
  TTC  0 if at any step the ego box, moved forward at constant velocity by 0.3/0.6/0.9 s, overlaps a vehicle
       ahead of it moved the same way, else 1;
  EP   progress / expert progress on the same seed, clipped to [0, 1] (1 when the expert made < 5 m);
  C    1 if longitudinal acceleration, |lateral acceleration|, |jerk| and |yaw rate| stayed within the NAVSIM
       bounds over the whole episode (Savitzky-Golay derivatives), else 0.
ADE is the mean over replans of the mean L2 distance between the plan and the expert's own future from the
same state (obtained by rolling the expert on a copy of the env).

Register more planners in `PLANNERS` (name -> factory(sim_cfg, checkpoint, config) -> Planner): the DriveWAM
policy registers itself there as "drivewam".
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from wam_jax.sim import highway as hw

# ----------------------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class ClosedLoopConfig:
    episode_s: float = 20.0  # scored seconds per episode (stops early on a collision)
    warmup_s: float = 2.0  # the expert drives this long first (unscored): settles the spawn, fills the history
    replan_s: float = 1.0  # a new plan every replan_s; must be a multiple of the control period
    history_frames: int = 4  # frames (at sim frame_hz) in each observation, the last one is "now"
    history_poses: int = 4  # past ego poses (at waypoint_hz) in each observation
    intent_source: str = "expert"  # "expert": from the expert's future (a route command); "scene": scene rules
    expert_ade: bool = True  # roll the expert out from every replan state for ADE (costs one chunk of sim)
    video: bool = True
    plots: bool = True
    video_scale: int = 4  # nearest-neighbour upscaling of the frames in the mp4
    ttc_offsets_s: tuple[float, ...] = (0.0, 0.3, 0.6, 0.9)
    ttc_range_m: float = 60.0  # vehicles further than this are ignored by the TTC check
    lon_accel_bounds: tuple[float, float] = (-4.05, 2.40)  # [m/s^2], NAVSIM/nuPlan comfort
    max_lat_accel: float = 4.89  # [m/s^2]
    max_jerk: float = 8.37  # [m/s^3]
    max_yaw_rate: float = 0.95  # [rad/s]
    min_expert_progress_m: float = 5.0  # EP = 1 when the expert moved less than this

    def __post_init__(self):
        if self.intent_source not in ("expert", "scene"):
            raise ValueError(f"ClosedLoopConfig.intent_source must be 'expert' or 'scene', got {self.intent_source!r}")
        if self.replan_s <= 0 or self.episode_s <= 0 or self.warmup_s < 0:
            raise ValueError("ClosedLoopConfig: replan_s and episode_s must be positive, warmup_s >= 0")


# ----------------------------------------------------------------------------------------------------------------
# Planner interface


@dataclasses.dataclass
class Observation:
    """What a planner sees at a replan step.

    Fair inputs: `frames`, `ego`, `intent`, `pose_history`, `speed_history`. The last two fields are
    privileged simulator access for baselines only; a learned planner must not read them.
    """

    time_s: float
    frames: np.ndarray  # [F, H, W, 3] uint8, oldest first, frames[-1] is now (padded with the first frame)
    ego: hw.EgoState  # current state, world frame
    intent: hw.Intent
    pose_history: np.ndarray  # [K, 3] past poses in the CURRENT ego frame, oldest first, at waypoint_hz
    speed_history: np.ndarray  # [K] speeds at those poses
    waypoint_times: np.ndarray  # [N] seconds ahead at which the plan's waypoints are expected
    sim: Any = None  # privileged: the live env (do not step it)
    expert_future: np.ndarray | None = None  # privileged: [N, 3] the expert's future in the ego frame


class Planner(Protocol):
    """Returns ego-frame waypoints [N, 3] (x forward, y left, heading) at `obs.waypoint_times`."""

    name: str

    def reset(self, seed: int) -> None: ...

    def plan(self, obs: Observation) -> np.ndarray: ...


class ExpertPlanner:
    """highway-env's IDM + MOBIL expert. Drives with its own actions (`drives_directly`); its plan (used for
    plots and as the ADE sanity check, 0 by construction) is its own future from a copy of the env."""

    name = "expert"
    drives_directly = True

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

    def reset(self, seed: int) -> None:
        pass

    def plan(self, obs: Observation) -> np.ndarray:
        t = np.asarray(obs.waypoint_times, dtype=np.float64)
        return np.stack([obs.ego.speed * t, np.zeros_like(t), np.zeros_like(t)], axis=1)


class IDMLaneKeepPlanner:
    """IDM car following in the current lane, no lane changes: the expert's rollout on a copy of the env with
    MOBIL switched off, read out as waypoints (privileged: uses `obs.sim`)."""

    name = "idm_lane_keep"

    def __init__(self, sim_cfg: hw.HighwaySimConfig):
        self.sim_cfg = sim_cfg

    def reset(self, seed: int) -> None:
        pass

    def plan(self, obs: Observation) -> np.ndarray:
        import copy

        sim = copy.deepcopy(obs.sim.unwrapped)
        ego = sim.vehicle
        ego.enable_lane_change = False
        ego.target_lane_index = ego.lane_index
        future = hw.expert_future(sim, self.sim_cfg)
        k = self.sim_cfg.steps_per_waypoint
        return hw.ego_frame_waypoints(future[k - 1 :: k], obs.ego.pose)


PlannerFactory = Callable[[hw.HighwaySimConfig, "str | None", Any], Planner]

PLANNERS: dict[str, PlannerFactory] = {
    "expert": lambda sim_cfg, checkpoint, config: ExpertPlanner(sim_cfg),
    "constant_velocity": lambda sim_cfg, checkpoint, config: ConstantVelocityPlanner(),
    "idm_lane_keep": lambda sim_cfg, checkpoint, config: IDMLaneKeepPlanner(sim_cfg),
    # "drivewam": registered by the model code with register_planner("drivewam", factory); the factory receives
    # (sim_cfg, checkpoint_dir, experiment ConfigDict or None) and returns a Planner.
}
"""Planner factories by name: factory(sim_cfg, checkpoint_dir_or_None, experiment_config_or_None) -> Planner."""

LEARNED_PLANNER = "drivewam"

PLANNER_PLUGINS = ("wam_jax.planners.drivewam",)
"""Modules imported (if they exist) before planners are looked up; a plugin calls `register_planner` at import."""


def register_planner(name: str, factory: PlannerFactory) -> None:
    """Adds (or replaces) a planner factory under `name` (the hook for the DriveWAM policy)."""
    PLANNERS[name] = factory


def load_planner_plugins() -> None:
    """Imports every module of `PLANNER_PLUGINS` that exists; a missing plugin module is not an error."""
    import importlib
    import importlib.util

    for module in PLANNER_PLUGINS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            importlib.import_module(module)


# ----------------------------------------------------------------------------------------------------------------
# Metrics (pure functions)


def _box_polygon(x, y, heading, length, width):
    from shapely.geometry import Polygon

    return Polygon(hw.box_corners((x, y), heading, length, width))


def ttc_violation(ego: np.ndarray, others: np.ndarray, offsets_s: Sequence[float], range_m: float = 60.0,
                  length: float = 5.0, width: float = 2.0) -> bool:
    """Whether the ego box `ego` = [x, y, heading, speed] (world frame) moved forward at constant velocity by any
    of `offsets_s` overlaps a vehicle ahead of it (`others` [M, 6] rows as `hw.VEHICLE_COLUMNS`) moved the same
    way. "Ahead" = the other centre lies in front of the ego centre along the ego heading."""
    if len(others) == 0:
        return False
    x, y, h, v = (float(a) for a in ego[:4])
    d = others[:, :2] - np.array([x, y])
    ahead = (d @ np.array([math.cos(h), math.sin(h)]) > 0) & (np.hypot(d[:, 0], d[:, 1]) < range_m)
    for row in others[ahead]:
        ox, oy, oh, ov, ol, ow = (float(a) for a in row)
        for tau in offsets_s:
            ego_box = _box_polygon(x + v * tau * math.cos(h), y + v * tau * math.sin(h), h, length, width)
            other_box = _box_polygon(ox + ov * tau * math.cos(oh), oy + ov * tau * math.sin(oh), oh, ol, ow)
            if ego_box.intersects(other_box):
                return True
    return False


def comfort_signals(poses: np.ndarray, speeds: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Savitzky-Golay (poly 2) derivatives of a driven trajectory: poses [T, 3] world, speeds [T], step dt.

    Returns lon_accel, lat_accel (= v * yaw rate), jerk (magnitude of d/dt of (lon, lat) accel) and yaw_rate,
    each [T]. Windows follow NAVSIM: 8 for accelerations, 15 for jerk, 5 for yaw rate (shrunk to fit short T).
    Sign of lat_accel/yaw_rate follows highway-env (positive = turning right); bounds are symmetric.
    """
    from scipy.signal import savgol_filter

    n = len(speeds)
    if n < 3:
        zero = np.zeros(n)
        return {"lon_accel": zero, "lat_accel": zero, "jerk": zero, "yaw_rate": zero}

    def deriv(y, window):
        return savgol_filter(y, window_length=min(window, n), polyorder=2, deriv=1, delta=dt, mode="interp")

    heading = np.unwrap(np.asarray(poses)[:, 2])
    yaw_rate = deriv(heading, 5)
    lon_accel = deriv(np.asarray(speeds, dtype=np.float64), 8)
    lat_accel = np.asarray(speeds) * yaw_rate
    jerk = np.hypot(deriv(lon_accel, 15), deriv(lat_accel, 15))
    return {"lon_accel": lon_accel, "lat_accel": lat_accel, "jerk": jerk, "yaw_rate": yaw_rate}


def comfort_ok(signals: dict[str, np.ndarray], cfg: ClosedLoopConfig) -> dict[str, bool]:
    """Per-bound pass/fail over the whole episode."""
    lo, hi = cfg.lon_accel_bounds
    la = signals["lon_accel"]
    return {
        "lon_accel": bool(np.all((la > lo) & (la < hi))),
        "lat_accel": bool(np.all(np.abs(signals["lat_accel"]) < cfg.max_lat_accel)),
        "jerk": bool(np.all(np.abs(signals["jerk"]) < cfg.max_jerk)),
        "yaw_rate": bool(np.all(np.abs(signals["yaw_rate"]) < cfg.max_yaw_rate)),
    }


def pdms(nc: float, dac: float, ttc: float, ep: float, c: float) -> float:
    """NAVSIM v1 combination: NC * DAC * (5 TTC + 5 EP + 2 C) / 12."""
    return float(nc * dac * (5 * ttc + 5 * ep + 2 * c) / 12)


def ego_progress(ep_progress: float, expert_progress: float | None, min_expert_m: float) -> float:
    """EP: progress over the expert's progress on the same seed, clipped to [0, 1]."""
    if expert_progress is None or expert_progress < min_expert_m:
        return 1.0
    return float(np.clip(ep_progress / expert_progress, 0.0, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# Episode runner


@dataclasses.dataclass
class EpisodeResult:
    planner: str
    seed: int
    steps: int
    crashed: bool
    off_road: bool
    progress_m: float
    expert_progress_m: float | None
    nc: float
    dac: float
    ttc: float
    ep: float
    comfort: float
    pdms: float
    ade_m: float  # nan when no expert future was computed
    comfort_checks: dict[str, bool]
    poses: np.ndarray  # [T, 3] world, driven (T = steps + 1)
    plans: list[tuple[float, np.ndarray]]  # (time_s, world waypoints [N, 3]) per replan
    video: str | None = None
    plot: str | None = None

    @property
    def progress_ratio(self) -> float:
        if not self.expert_progress_m:
            return float("nan")
        return self.progress_m / self.expert_progress_m

    def summary(self) -> dict[str, Any]:
        """JSON-friendly scalars."""
        keys = ("planner", "seed", "steps", "crashed", "off_road", "progress_m", "expert_progress_m", "nc", "dac",
                "ttc", "ep", "comfort", "pdms", "ade_m", "comfort_checks", "video", "plot")
        out = {k: getattr(self, k) for k in keys}
        out["progress_ratio"] = self.progress_ratio
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def _history(buffer: Sequence[np.ndarray], n: int) -> list:
    items = list(buffer)[-n:]
    return [items[0]] * (n - len(items)) + items


def run_episode(planner: Planner, seed: int, sim_cfg: hw.HighwaySimConfig, cfg: ClosedLoopConfig,
                expert_progress_m: float | None = None, out_dir: str | None = None, env=None) -> EpisodeResult:
    """Drives one seeded episode with `planner`; writes `<out_dir>/<planner>_seed<seed>.{mp4,png}` if asked.

    The expert drives the first `cfg.warmup_s` seconds for every planner (unscored; it settles the spawn state and
    fills the frame and pose history), then the planner drives for `cfg.episode_s` seconds or until a collision.
    """
    dt = sim_cfg.dt
    steps = int(round(cfg.episode_s * sim_cfg.control_hz))
    warmup = int(round(cfg.warmup_s * sim_cfg.control_hz))
    replan_every = int(round(cfg.replan_s * sim_cfg.control_hz))
    if abs(replan_every * dt - cfg.replan_s) > 1e-9 or replan_every < 1:
        raise ValueError(f"replan_s={cfg.replan_s} must be a positive multiple of the control period {dt} s")
    k_wp = sim_cfg.steps_per_waypoint
    drives_directly = bool(getattr(planner, "drives_directly", False))
    need_future = cfg.expert_ade or cfg.intent_source == "expert"
    record_video = cfg.video and out_dir is not None

    if env is None:
        env = hw.make_env(sim_cfg, seed)
    else:
        hw.reset_env(env, seed)
    planner.reset(seed)
    tracker = hw.WaypointTracker(sim_cfg)

    state = hw.ego_state(env)
    poses, speeds = [state.pose], [state.speed]
    frames = collections.deque(maxlen=cfg.history_frames)
    video_frames = []
    plans: list[tuple[float, np.ndarray]] = []
    ades: list[float] = []
    plan_world = None
    plan_step = 0
    progress = 0.0
    off_road = ttc_bad = crashed = False
    for t in range(warmup + steps):
        scored = t >= warmup
        if scored and t == warmup:
            off_road = not state.on_road
        frame = None
        if t % sim_cfg.steps_per_frame == 0:
            frame = hw.render_frame(env, sim_cfg)
            frames.append(frame)
        if record_video:
            frame = hw.render_frame(env, sim_cfg) if frame is None else frame
        if scored and (t - warmup) % replan_every == 0:
            pose = state.pose
            future = future_ego = None
            if need_future:
                future = hw.expert_future(env, sim_cfg)[k_wp - 1 :: k_wp]
                future_ego = hw.ego_frame_waypoints(future, pose)
            intent = hw.scene_intent(env, sim_cfg, future if cfg.intent_source == "expert" else None)
            hist_idx = [max(t - k_wp * j, 0) for j in range(cfg.history_poses, 0, -1)]
            obs = Observation(
                time_s=(t - warmup) * dt, frames=np.stack(_history(frames, cfg.history_frames)), ego=state,
                intent=intent, pose_history=hw.ego_frame_waypoints(np.array([poses[i] for i in hist_idx]), pose),
                speed_history=np.array([speeds[i] for i in hist_idx]), waypoint_times=sim_cfg.waypoint_times,
                sim=env, expert_future=future_ego)
            plan = np.asarray(planner.plan(obs), dtype=np.float64)
            if plan.shape != (sim_cfg.waypoints_per_chunk, 3) or not np.all(np.isfinite(plan)):
                raise ValueError(f"planner {planner.name!r} returned waypoints of shape {plan.shape} (finite: "
                                 f"{np.all(np.isfinite(plan))}); expected finite [{sim_cfg.waypoints_per_chunk}, 3]")
            if future_ego is not None and cfg.expert_ade:
                ades.append(float(np.mean(np.linalg.norm(plan[:, :2] - future_ego[:, :2], axis=1))))
            plan_world = hw.world_from_ego(plan, pose)
            plans.append(((t - warmup) * dt, plan_world))
            tracker.set_plan(plan, sim_cfg.waypoint_times, pose, state.speed)
            plan_step = t
        if record_video:
            video_frames.append(_overlay(frame, plan_world, state.pose, sim_cfg, cfg.video_scale))

        if drives_directly or not scored:
            action = hw.expert_action(env, sim_cfg)
        else:
            action = tracker(state.pose, state.speed, (t - plan_step) * dt)
        direction = hw.lane_progress_direction(env)
        env.step(action)
        new = hw.ego_state(env)
        if scored:
            progress += float(np.dot(new.pose[:2] - state.pose[:2], direction))
        state = new
        poses.append(state.pose)
        speeds.append(state.speed)
        if scored:
            off_road |= not state.on_road
            if not ttc_bad:
                others = hw.other_vehicles(env, cfg.ttc_range_m + 10)
                ttc_bad = ttc_violation(np.array([*state.pose, state.speed]), others, cfg.ttc_offsets_s,
                                        cfg.ttc_range_m)
        if state.crashed:
            crashed = True
            break
    poses_arr, speeds_arr = np.array(poses[warmup:]), np.array(speeds[warmup:])
    checks = comfort_ok(comfort_signals(poses_arr, speeds_arr, dt), cfg)
    nc, dac, ttc = float(not crashed), float(not off_road), float(not ttc_bad)
    c = float(all(checks.values()))
    ep = ego_progress(progress, expert_progress_m, cfg.min_expert_progress_m)
    result = EpisodeResult(
        planner=planner.name, seed=int(seed), steps=max(len(poses_arr) - 1, 0), crashed=crashed, off_road=off_road,
        progress_m=progress, expert_progress_m=expert_progress_m, nc=nc, dac=dac, ttc=ttc, ep=ep, comfort=c,
        pdms=pdms(nc, dac, ttc, ep, c), ade_m=float(np.mean(ades)) if ades else float("nan"), comfort_checks=checks,
        poses=poses_arr, plans=plans)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"{planner.name}_seed{seed}")
        if record_video and video_frames:
            if crashed:  # show the crash itself
                video_frames.append(_overlay(hw.render_frame(env, sim_cfg), plan_world, state.pose, sim_cfg,
                                             cfg.video_scale))
            result.video = write_video(stem + ".mp4", video_frames, fps=sim_cfg.control_hz)
        if cfg.plots:
            result.plot = plot_episode(stem + ".png", result, env)
    return result


# ----------------------------------------------------------------------------------------------------------------
# Outputs


def _overlay(frame: np.ndarray, plan_world: np.ndarray | None, ego_pose: np.ndarray, sim_cfg: hw.HighwaySimConfig,
             scale: int) -> np.ndarray:
    """Upscales a frame by `scale` (nearest) to even size and draws the current plan's waypoints in red."""
    img = np.repeat(np.repeat(frame, scale, axis=0), scale, axis=1)
    h, w = img.shape[:2]
    img = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)))
    if plan_world is not None:
        px = hw.world_to_pixel(plan_world[:, :2], ego_pose[:2], sim_cfg) * scale
        r = max(1, scale // 2)
        for col, row in np.round(px).astype(int):
            if 0 <= row < h and 0 <= col < w:
                img[max(row - r, 0) : row + r + 1, max(col - r, 0) : col + r + 1] = (230, 30, 30)
    return img


def write_video(path: str, frames: Sequence[np.ndarray], fps: float) -> str:
    """Writes uint8 [H, W, 3] frames (even H, W) as H.264 mp4 with imageio's pyav plugin."""
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), plugin="pyav", fps=fps, codec="libx264")
    return path


def plot_episode(path: str, result: EpisodeResult, env=None) -> str:
    """PNG of the driven path (black), each replan's waypoints (colour by time) and the lane edges.

    Drawn in highway-env's frame with the y axis flipped so that the left lanes are on top, as on screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    poses = result.poses
    fig, ax = plt.subplots(figsize=(12, 3.2), dpi=100)
    if env is not None:
        xs = np.linspace(poses[:, 0].min() - 10, poses[:, 0].max() + 60, 50)
        for lane in env.unwrapped.road.network.lanes_list():
            for side in (-1, 1):
                pts = []
                for x in xs:
                    s, _ = lane.local_coordinates(np.array([x, poses[0, 1]]))
                    pts.append(lane.position(s, side * lane.width_at(s) / 2))
                pts = np.array(pts)
                ax.plot(pts[:, 0], pts[:, 1], color="0.75", lw=0.8, zorder=0)
    cmap = plt.get_cmap("viridis")
    t_max = max(result.plans[-1][0], 1e-6) if result.plans else 1.0
    for t, wp in result.plans:
        ax.plot(wp[:, 0], wp[:, 1], ".-", color=cmap(t / t_max), lw=0.8, ms=3, alpha=0.8)
    ax.plot(poses[:, 0], poses[:, 1], "k-", lw=1.5, label="driven")
    if result.crashed:
        ax.plot(poses[-1, 0], poses[-1, 1], "rx", ms=12, mew=3, label="collision")
    ax.plot([], [], ".-", color=cmap(0.5), label="plans (colour = time)")
    ax.invert_yaxis()
    ax.set_xlabel("x along road [m]")
    ax.set_ylabel("y [m] (down = right)")
    ax.set_title(f"{result.planner} seed {result.seed}: progress {result.progress_m:.0f} m, "
                 f"PDMS {result.pdms:.2f}, crashed={result.crashed}, off-road={result.off_road}")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Evaluation over planners and seeds


def build_planner(name: str, sim_cfg: hw.HighwaySimConfig, checkpoint: str | None = None, config: Any = None) -> Planner:
    if name not in PLANNERS:
        load_planner_plugins()
    if name not in PLANNERS:
        hint = (" The DriveWAM planner is not registered yet: the model code must call "
                "wam_jax.evaluation.closed_loop.register_planner('drivewam', factory), e.g. from a module listed in "
                f"wam_jax.evaluation.closed_loop.PLANNER_PLUGINS {PLANNER_PLUGINS}." if name == LEARNED_PLANNER else "")
        raise KeyError(f"unknown planner {name!r}; known: {sorted(PLANNERS)}.{hint}")
    return PLANNERS[name](sim_cfg, checkpoint, config)


def evaluate(planners: Sequence[str] | dict[str, Planner], episodes: int, seed: int, sim_cfg: hw.HighwaySimConfig,
             cfg: ClosedLoopConfig, out_dir: str | None = None, checkpoint: str | None = None, config: Any = None,
             log: Callable[[str], None] | None = None) -> dict[str, list[EpisodeResult]]:
    """Runs every planner (names, or already-built planners by name) on seeds seed, ..., seed+episodes-1.

    The expert runs first on each seed (its progress is the EP reference) and is reported only if asked for.
    """
    if not isinstance(planners, dict):
        planners = {name: build_planner(name, sim_cfg, checkpoint, config) for name in planners}
    env = hw.make_env(sim_cfg, seed)
    results: dict[str, list[EpisodeResult]] = {name: [] for name in planners}
    for i in range(episodes):
        s = seed + i
        expert_cfg = cfg if "expert" in planners else dataclasses.replace(cfg, expert_ade=False, video=False,
                                                                          plots=False, intent_source="scene")
        expert = planners.get("expert") or ExpertPlanner(sim_cfg)
        ref = run_episode(expert, s, sim_cfg, expert_cfg, None, out_dir if "expert" in planners else None, env)
        ref_progress = ref.progress_m
        for name, planner in planners.items():
            if name == "expert":
                ref.expert_progress_m = ref_progress
                ref.ep = ego_progress(ref_progress, ref_progress, cfg.min_expert_progress_m)
                ref.pdms = pdms(ref.nc, ref.dac, ref.ttc, ref.ep, ref.comfort)
                res = ref
            else:
                res = run_episode(planner, s, sim_cfg, cfg, ref_progress, out_dir, env)
            results[name].append(res)
            if log:
                log(f"  {name:<18} seed {s}: steps {res.steps:4d} crashed={res.crashed!s:<5} "
                    f"progress {res.progress_m:7.1f} m  PDMS {res.pdms:.3f}")
    env.close()
    return results


def aggregate(results: Sequence[EpisodeResult]) -> dict[str, float]:
    """Means over episodes (rates in [0, 1])."""
    def mean(key):
        vals = [getattr(r, key) for r in results]
        vals = [float(v) for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "episodes": len(results),
        "collision_rate": float(np.mean([r.crashed for r in results])),
        "off_road_rate": float(np.mean([r.off_road for r in results])),
        "progress_m": mean("progress_m"),
        "progress_ratio": mean("progress_ratio"),
        "ttc": mean("ttc"),
        "ep": mean("ep"),
        "comfort": mean("comfort"),
        "pdms": mean("pdms"),
        "ade_m": mean("ade_m"),
    }


_COLUMNS = (
    ("planner", "planner", "{}"), ("episodes", "episodes", "{:d}"), ("collision", "collision_rate", "{:.2f}"),
    ("off-road", "off_road_rate", "{:.2f}"), ("progress m", "progress_m", "{:.1f}"),
    ("progress/expert", "progress_ratio", "{:.2f}"), ("TTC", "ttc", "{:.2f}"), ("EP", "ep", "{:.2f}"),
    ("C", "comfort", "{:.2f}"), ("PDMS", "pdms", "{:.3f}"), ("ADE m", "ade_m", "{:.2f}"),
)


def format_table(results: dict[str, list[EpisodeResult]]) -> str:
    """Plain-text table, one row per planner, columns aligned."""
    rows = [[c[0] for c in _COLUMNS]]
    for name, episodes in results.items():
        agg = {"planner": name, **aggregate(episodes)}
        row = []
        for _, key, fmt in _COLUMNS:
            v = agg[key]
            row.append("-" if isinstance(v, float) and math.isnan(v) else fmt.format(v))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(out_dir: str, results: dict[str, list[EpisodeResult]], meta: dict[str, Any]) -> str:
    """Writes results.txt (the table) and results.json (per-episode scalars + aggregates + meta)."""
    os.makedirs(out_dir, exist_ok=True)
    table = format_table(results)
    with open(os.path.join(out_dir, "results.txt"), "w") as f:
        f.write(table + "\n")
    payload = _clean({
        "meta": meta,
        "planners": {name: {"aggregate": aggregate(eps), "episodes": [e.summary() for e in eps]}
                     for name, eps in results.items()},
    })
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=_json_default, allow_nan=False)
    return table


def _clean(obj):
    """NaN -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    raise TypeError(f"not JSON serialisable: {type(obj)}")
