"""Closed-loop evaluation in highway-env: planners drive through their waypoints, scored PDMS-style.

A planner (`wam_jax.planners`) sees an `Observation` every `replan_s` seconds and returns ego-frame waypoints for
the next chunk (`[N, 3]` x forward, y left, heading, at `sim_cfg.waypoint_times`); the `WaypointTracker` turns
them into continuous actions at the control rate. The built-in expert is the reference: it drives with its own
IDM + MOBIL actions, and its progress on the same seed normalises everyone's EP.

The episode score (NC, DAC, TTC, EP, C, PDMS) and the plan ADE come from `wam_jax.metrics.highway`, which
builds them from the NAVSIM scorer's own sub-metrics (aggregation, comfort bounds, EP rule, TTC look-ahead).
ADE is the mean over replans of the plan's ADE against the expert's own future from the same state (obtained
by rolling the expert on a copy of the env).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from typing import Any, Callable, Sequence

import numpy as np

from wam_jax.metrics import highway as scores
from wam_jax.planners import ExpertPlanner, Observation, Planner, build_planner
from wam_jax.sim import highway as hw
from wam_jax.tools import tables, video_io

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
    video_episodes: int | None = None  # write videos / plots for the first N seeds only (None: every seed)
    video_scale: int = 4  # nearest-neighbour upscaling of the frames in the mp4
    ttc_range_m: float = 60.0  # vehicles further than this are ignored by the TTC check
    # Processes that share the seeds when planners are given by name: 0 = one per CPU this process may use.
    workers: int = 1

    def __post_init__(self):
        if self.intent_source not in ("expert", "scene"):
            raise ValueError(f"ClosedLoopConfig.intent_source must be 'expert' or 'scene', got {self.intent_source!r}")
        if self.video_episodes is not None and self.video_episodes < 0:
            raise ValueError(f"ClosedLoopConfig.video_episodes must be >= 0 or None, got {self.video_episodes}")
        if self.workers < 0:
            raise ValueError(f"ClosedLoopConfig.workers must be >= 0 (0: one per CPU), got {self.workers}")
        if self.replan_s <= 0 or self.episode_s <= 0 or self.warmup_s < 0:
            raise ValueError("ClosedLoopConfig: replan_s and episode_s must be positive, warmup_s >= 0")


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
    # Rendering costs more than a sim step: only for planners that read frames, or for the video.
    reads_frames = bool(getattr(planner, "reads_frames", True))
    # A planner that drives with its own actions is asked for a plan only when something shows or scores it.
    wants_plan = not drives_directly or record_video or (cfg.plots and out_dir is not None) or cfg.expert_ade
    # ... and when only shown, its plan at a replan is its own driven future: read from the poses after the
    # episode (driven one chunk further, unscored) instead of simulating each future on a copy of the env.
    driven_plans = drives_directly and wants_plan and not need_future

    if env is None:
        env = hw.make_env(sim_cfg, seed)
    else:
        hw.reset_env(env, seed)
    planner.reset(seed)
    tracker = hw.WaypointTracker(sim_cfg)

    state = hw.ego_state(env)
    poses, speeds = [state.pose], [state.speed]
    frames = collections.deque(maxlen=cfg.history_frames)
    video_frames = []                  # (frame, ego pose, index of the plan in force or -1)
    plans: list[tuple[float, np.ndarray]] = []
    replans: list[int] = []            # the steps at which driven_plans are read out
    ades: list[float] = []
    plan_step = 0
    progress = 0.0
    off_road = ttc_bad = crashed = False
    for t in range(warmup + steps):
        scored = t >= warmup
        if scored and t == warmup:
            off_road = not state.on_road
        frame = None
        if reads_frames and t % sim_cfg.steps_per_frame == 0:
            frame = hw.render_frame(env, sim_cfg)
            frames.append(frame)
        if record_video:
            frame = hw.render_frame(env, sim_cfg) if frame is None else frame
        replan = scored and wants_plan and (t - warmup) % replan_every == 0
        if replan and driven_plans:
            replans.append(t)
        elif replan:
            pose = state.pose
            future = future_ego = None
            if need_future:
                future = hw.expert_future(env, sim_cfg)[k_wp - 1 :: k_wp]
                future_ego = hw.ego_frame_waypoints(future, pose)
            intent = hw.scene_intent(env, sim_cfg, future if cfg.intent_source == "expert" else None)
            hist_idx = [max(t - k_wp * j, 0) for j in range(cfg.history_poses, 0, -1)]
            from data_pipelines.sources.highway import episode_ego_state
            ego_states = episode_ego_state(np.asarray(speeds), np.asarray(poses), np.array([hist_idx[0], t]), dt)
            obs = Observation(
                time_s=(t - warmup) * dt, ego=state,
                frames=(np.stack(_history(frames, cfg.history_frames)) if reads_frames
                        else np.zeros((0, *sim_cfg.image_size, 3), np.uint8)),
                intent=intent, pose_history=hw.ego_frame_waypoints(np.array([poses[i] for i in hist_idx]), pose),
                speed_history=np.array([speeds[i] for i in hist_idx]), waypoint_times=sim_cfg.waypoint_times,
                sim=env, expert_future=future_ego, ego_states=ego_states)
            plan = np.asarray(planner.plan(obs), dtype=np.float64)
            if plan.shape != (sim_cfg.waypoints_per_chunk, 3) or not np.all(np.isfinite(plan)):
                raise ValueError(f"planner {planner.name!r} returned waypoints of shape {plan.shape} (finite: "
                                 f"{np.all(np.isfinite(plan))}); expected finite [{sim_cfg.waypoints_per_chunk}, 3]")
            if future_ego is not None and cfg.expert_ade:
                ades.append(scores.plan_ade(plan, future_ego))
            plans.append(((t - warmup) * dt, hw.world_from_ego(plan, pose)))
            tracker.set_plan(plan, sim_cfg.waypoint_times, pose, state.speed)
            plan_step = t
        if record_video:
            video_frames.append((frame, state.pose, max(len(plans), len(replans)) - 1))

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
                ttc_bad = scores.ttc_violation(np.array([*state.pose, state.speed]), others,
                                               range_m=cfg.ttc_range_m)
        if state.crashed:
            crashed = True
            break
    if replans:
        plans = _driven_plans(env, sim_cfg, poses, replans, warmup, crashed)
    poses_arr, speeds_arr = np.array(poses[warmup:]), np.array(speeds[warmup:])
    checks = scores.comfort_ok(scores.comfort_signals(poses_arr, speeds_arr, dt))
    result = EpisodeResult(
        planner=planner.name, seed=int(seed), steps=max(len(poses_arr) - 1, 0), crashed=crashed, off_road=off_road,
        progress_m=progress, expert_progress_m=expert_progress_m,
        **scores.episode_scores(crashed, off_road, ttc_bad, progress, expert_progress_m, checks),
        ade_m=float(np.mean(ades)) if ades else float("nan"), comfort_checks=checks, poses=poses_arr, plans=plans)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        stem = os.path.join(out_dir, f"{planner.name}_seed{seed}")
        if record_video and video_frames:
            if crashed:  # show the crash itself (the env has not moved on: a crashed episode is not extended)
                video_frames.append((hw.render_frame(env, sim_cfg), state.pose, video_frames[-1][2]))
            video_io.write_video(stem + ".mp4", np.stack([
                _overlay(f, plans[i][1] if i >= 0 else None, p, sim_cfg, cfg.video_scale)
                for f, p, i in video_frames]), fps=sim_cfg.control_hz)
            result.video = stem + ".mp4"
        if cfg.plots:
            result.plot = plot_episode(stem + ".png", result, env)
    return result


def _driven_plans(env, sim_cfg: hw.HighwaySimConfig, poses: list, replans: list[int], warmup: int,
                  crashed: bool) -> list[tuple[float, np.ndarray]]:
    """The plans of an expert-driven episode: at each replan step its own next waypoints (world poses), as
    `hw.expert_future` would simulate them on a copy of the env. Drives the expert one chunk past the end
    (unless it crashed; a terminated future holds its last pose, as `expert_future` does)."""
    future = list(poses)
    if not crashed:
        for _ in range(sim_cfg.steps_per_chunk):
            _, _, terminated, _, _ = env.step(hw.expert_action(env, sim_cfg))
            future.append(hw.ego_pose(env))
            if terminated:
                break
    k = sim_cfg.steps_per_waypoint
    offsets = k * np.arange(1, sim_cfg.waypoints_per_chunk + 1)
    return [((t - warmup) * sim_cfg.dt, np.array([future[min(t + o, len(future) - 1)] for o in offsets]))
            for t in replans]


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


def evaluate(planners: Sequence[str] | dict[str, Planner], episodes: int, seed: int, sim_cfg: hw.HighwaySimConfig,
             cfg: ClosedLoopConfig, out_dir: str | None = None, checkpoint: str | None = None, config: Any = None,
             log: Callable[[str], None] | None = None) -> dict[str, list[EpisodeResult]]:
    """Runs every planner (names, or already-built planners by name) on seeds seed, ..., seed+episodes-1.

    The expert runs first on each seed (its progress is the EP reference) and is reported only if asked for.
    Planners given by name with `cfg.workers` != 1: the seeds are split over that many processes (0: one per
    CPU), each pinned to one CPU and building its own planners; results come back in seed order. Built planners
    run here, one seed after another.
    """
    workers = cfg.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if workers > 1 and episodes > 1 and not isinstance(planners, dict):
        return _evaluate_in_processes(list(planners), episodes, seed, sim_cfg, cfg, out_dir, checkpoint, config,
                                      log, workers)
    if not isinstance(planners, dict):
        planners = {name: build_planner(name, sim_cfg, checkpoint, config) for name in planners}
    return _evaluate_seeds(planners, range(episodes), seed, sim_cfg, cfg, out_dir, log)


def _evaluate_seeds(planners: dict[str, Planner], indices, seed: int, sim_cfg, cfg, out_dir, log):
    """Episodes seed + i for i in `indices` (i also decides whether the episode writes videos and plots)."""
    env = hw.make_env(sim_cfg, seed)
    results: dict[str, list[EpisodeResult]] = {name: [] for name in planners}
    for i in indices:
        s = seed + i
        episode_cfg = (cfg if cfg.video_episodes is None or i < cfg.video_episodes
                       else dataclasses.replace(cfg, video=False, plots=False))
        expert_cfg = episode_cfg if "expert" in planners else dataclasses.replace(
            episode_cfg, expert_ade=False, video=False, plots=False, intent_source="scene")
        expert = planners.get("expert") or ExpertPlanner(sim_cfg)
        ref = run_episode(expert, s, sim_cfg, expert_cfg, None, out_dir if "expert" in planners else None, env)
        ref_progress = ref.progress_m
        for name, planner in planners.items():
            if name == "expert":
                ref.expert_progress_m = ref_progress
                rescored = scores.episode_scores(ref.crashed, ref.off_road, not ref.ttc, ref.progress_m,
                                                 ref_progress, ref.comfort_checks)
                ref.ep, ref.pdms = rescored["ep"], rescored["pdms"]
                res = ref
            else:
                res = run_episode(planner, s, sim_cfg, episode_cfg, ref_progress, out_dir, env)
            results[name].append(res)
            if log:
                log(f"  {name:<18} seed {s}: steps {res.steps:4d} crashed={res.crashed!s:<5} "
                    f"progress {res.progress_m:7.1f} m  PDMS {res.pdms:.3f}")
    env.close()
    return results


def _evaluate_shard(names, indices, seed, sim_cfg, cfg, out_dir, checkpoint, config_dict, cpu):
    """One worker process: pinned to `cpu` before JAX starts its CPU client, then `_evaluate_seeds`."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    config = None
    if config_dict is not None:
        import ml_collections
        config = ml_collections.ConfigDict(config_dict)
    planners = {name: build_planner(name, sim_cfg, checkpoint, config) for name in names}
    return _evaluate_seeds(planners, indices, seed, sim_cfg, cfg, out_dir, lambda m: print(m, flush=True))


def _evaluate_in_processes(names, episodes, seed, sim_cfg, cfg, out_dir, checkpoint, config, log, workers):
    import concurrent.futures
    import multiprocessing

    workers = min(workers, episodes)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    config_dict = None if config is None else config.to_dict()
    shards = [list(range(w, episodes, workers)) for w in range(workers)]
    if log:
        log(f"  closed loop: {episodes} seeds over {workers} processes")
    # spawn: a forked child would inherit this process's JAX runtime threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_shard, names, shard, seed, sim_cfg, cfg, out_dir, checkpoint, config_dict,
                               cpus[w % len(cpus)] if cpus else None) for w, shard in enumerate(shards)]
        parts = [f.result() for f in futures]
    by_index = {}
    for shard, part in zip(shards, parts):
        for j, i in enumerate(shard):
            by_index[i] = {name: part[name][j] for name in names}
    return {name: [by_index[i][name] for i in range(episodes)] for name in names}


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
    """Plain-text table, one row per planner."""
    rows = []
    for name, episodes in results.items():
        agg = {"planner": name, **aggregate(episodes)}
        rows.append(["-" if isinstance(agg[key], float) and math.isnan(agg[key]) else fmt.format(agg[key])
                     for _, key, fmt in _COLUMNS])
    return tables.format_table([c[0] for c in _COLUMNS], rows)


def write_results(out_dir: str, results: dict[str, list[EpisodeResult]], meta: dict[str, Any]) -> str:
    """Writes results.txt (the table) and results.json (per-episode scalars + aggregates + meta)."""
    os.makedirs(out_dir, exist_ok=True)
    table = format_table(results)
    with open(os.path.join(out_dir, "results.txt"), "w") as f:
        f.write(table + "\n")
    tables.write_json(os.path.join(out_dir, "results.json"), {
        "meta": meta,
        "planners": {name: {"aggregate": aggregate(eps), "episodes": [e.summary() for e in eps]}
                     for name, eps in results.items()},
    })
    return table
