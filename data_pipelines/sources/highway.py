"""highway-env expert driving → clip records (through `wam_jax.sim.highway`, the one module that knows the sim).

Clip i is one expert episode (IDM + MOBIL ego, `record_expert_episode`) from seed `seed + i` (a seed whose
episode crashes or ends early is replaced by `seed + num_clips + RETRIES·i + j` for its j-th retry: each clip's
seeds depend on i alone, so the dataset is the same whichever process builds which clip; clips are simulated in
parallel, one process per CPU). After `warmup_s` seconds the clip records `num_chunks` chunks of `chunk_s` seconds:

    frames         ego-centred BEV renders at `frame_hz` (T = num_chunks * chunk_s * frame_hz), chunk n's
                   frames are the chunk_s seconds after its start (chunk_start[n] = n * frames per chunk)
    waypoints      the expert's next `waypoints_per_chunk` poses at `waypoint_hz` in the ego frame at the chunk
                   start (x forward, y left), the episode's own future
    intent         the chunk's scene-rule intent (`intent_from_future`), one of `sim.highway.INTENTS`; the
                   dataset metadata carries that tuple as its `intent_vocab`; the phrases are in meta
    command        left for "change lane left", right for "change lane right", straight otherwise
    actions        the normalised (acceleration, steering) action applied at each frame's state
    ego_pose       poses of the frames in the first frame's ego frame; ego_velocity by forward difference
    ego_state      (speed, acceleration, curvature) at each chunk start from the simulator's speed and heading
                   (`episode_ego_state`: backward differences over one control step)
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from typing import Any, Iterator

import numpy as np

from data_pipelines import builders, schema

log = logging.getLogger(__name__)

INTENT_TO_COMMAND = {"change lane left": 0, "change lane right": 2}


def _default_sim():
    from wam_jax.sim import highway as sim

    return sim.HighwaySimConfig()


@dataclasses.dataclass(eq=False)
class HighwayConfig(builders.ClipBuilderConfig):
    """`sim` is the simulator's own config (the same object evaluation drives with), so data and closed loop
    cannot drift apart; `duration_s` and `seed` are set per clip. Noise injection (`sim.perturb_*`) applies to
    the recorded demonstrations only."""
    num_clips: int = 8
    num_chunks: int = 3
    warmup_s: float = 0.0
    seed: int = 0
    sim: Any = dataclasses.field(default_factory=_default_sim)   # wam_jax.sim.highway.HighwaySimConfig
    frame_codec: str = "png"


def sim_config(config: HighwayConfig, seed: int):
    """The simulator config of the clip driven from `seed`."""
    return dataclasses.replace(config.sim, duration_s=config.warmup_s + config.num_chunks * config.sim.chunk_s + 1.0,
                               seed=seed)


def make_clip(config: HighwayConfig, seed: int, env=None) -> schema.ClipRecord | None:
    """The clip driven from `seed`, or None when the expert crashed or the episode ended early."""
    from wam_jax.sim import highway as sim

    cfg = sim_config(config, seed)
    warmup = int(round(config.warmup_s * cfg.control_hz))
    if warmup % cfg.steps_per_frame:
        raise ValueError(f"warmup_s={config.warmup_s} must be a multiple of the frame period 1/{cfg.frame_hz} s")
    spc = cfg.steps_per_chunk
    steps = warmup + config.num_chunks * spc
    episode = sim.record_expert_episode(cfg, seed, steps=steps, env=env)
    if len(episode.poses) < steps + 1 or bool(np.any(episode.crashed)):
        return None
    keep = (episode.frame_steps >= warmup) & (episode.frame_steps < steps)
    frame_steps = episode.frame_steps[keep]
    frames = episode.frames[keep]
    starts = warmup + np.arange(config.num_chunks) * spc
    waypoints = np.stack([episode.chunk_waypoints(int(s), cfg) for s in starts])
    intents = [episode.chunk_intent(int(s), cfg) for s in starts]
    poses = episode.poses
    ego_pose = sim.ego_frame_waypoints(poses[frame_steps], poses[frame_steps[0]])
    velocity = np.stack([sim.ego_frame_waypoints(poses[t + 1][None], poses[t])[0, :2] / cfg.dt for t in frame_steps])
    frames_per_chunk = spc // cfg.steps_per_frame
    return schema.ClipRecord(
        source="highway",
        clip_id=f"{cfg.env_id}-seed{seed}",
        timestamps_us=np.round((frame_steps - warmup) * cfg.dt * 1e6).astype(np.int64),
        ego_pose=ego_pose.astype(np.float32),
        ego_velocity=velocity.astype(np.float32),
        chunk_start=(np.arange(config.num_chunks) * frames_per_chunk).astype(np.int32),
        waypoints=waypoints.astype(np.float32),
        waypoint_dt=1.0 / cfg.waypoint_hz,
        command=np.asarray([INTENT_TO_COMMAND.get(i.command, 1) for i in intents], np.int32),
        frames=frames,
        intent=[i.command for i in intents],
        actions=episode.actions[frame_steps].astype(np.float32),
        camera_names=["bev"],
        ego_state=episode_ego_state(episode.speeds, poses, starts, cfg.dt),
        meta={"seed": int(seed), "intent_text": [i.text for i in intents], "sim": _jsonable(sim.describe_config(cfg)),
              "lanes": episode.lanes[frame_steps].tolist(), "warmup_steps": warmup},
    )


def episode_ego_state(speeds: np.ndarray, poses: np.ndarray, steps: np.ndarray, dt: float) -> np.ndarray:
    """(speed, acceleration, curvature) [len(steps), 3] at control steps `steps` from the simulator's speed [T]
    and world poses [T, 3]: acceleration and yaw rate by backward difference over one step (forward at step 0)."""
    steps = np.asarray(steps)
    prev = np.where(steps > 0, steps - 1, steps + 1)
    sign = np.where(steps > 0, 1.0, -1.0)
    accel = sign * (speeds[steps] - speeds[prev]) / dt
    yaw_rate = sign * schema.wrap_angle(poses[steps, 2] - poses[prev, 2]) / dt
    return schema.ego_state(speeds[steps], accel, yaw_rate)


def _jsonable(d):
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


RETRIES = 10             # seeds tried per clip before the build fails
MAX_WORKERS = 8          # simulation processes (at most one per CPU)


def clip_seeds(config: HighwayConfig, i: int) -> list[int]:
    """The seeds clip i tries, in order: its own, then its reserved replacements."""
    spare = config.seed + max(config.num_clips, 1) + (RETRIES - 1) * i
    return [config.seed + i] + list(range(spare, spare + RETRIES - 1))


_WORKER_ENV = None       # one env per simulation process, reused across its clips (make_clip reseeds it)


def _clip(args) -> schema.ClipRecord:
    config, i = args
    global _WORKER_ENV
    from wam_jax.sim import highway as sim

    if _WORKER_ENV is None:
        _WORKER_ENV = sim.make_env(sim_config(config, config.seed), config.seed)
    seeds = clip_seeds(config, i)
    for n, seed in enumerate(seeds):
        clip = make_clip(config, seed, _WORKER_ENV)
        if clip is not None:
            return clip
        if n + 1 < len(seeds):
            log.info("highway seed %d crashed or ended early; clip %d uses seed %d instead", seed, i, seeds[n + 1])
    raise RuntimeError(f"highway clip {i}: seeds {seeds} all crashed or ended early; check the sim config")


def _worker_init() -> None:
    # SDL (under pygame) turns SIGTERM into a quit event by default, so Pool.terminate could wait forever.
    os.environ["SDL_NO_SIGNAL_HANDLERS"] = "1"


def simulation_workers(num_clips: int) -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, num_clips, MAX_WORKERS))


def iter_clips(config: HighwayConfig, workers: int | None = None) -> Iterator[tuple[str, schema.ClipRecord]]:
    """(key, clip) for clips 0 … num_clips − 1 in order; `workers` processes simulate them (default one per
    CPU; 1 runs in this process). Fresh "spawn" processes: the caller may hold JAX or pygame state."""
    global _WORKER_ENV
    workers = simulation_workers(config.num_clips) if workers is None else workers
    jobs = [(config, i) for i in range(config.num_clips)]
    if workers <= 1:
        try:
            for i, job in enumerate(jobs):
                yield f"{i:06d}", _clip(job)
        finally:
            if _WORKER_ENV is not None:
                _WORKER_ENV.close()
                _WORKER_ENV = None
        return
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=_worker_init)
    results = pool.imap(_clip, jobs)
    pool.close()              # no more jobs: once they are done the workers exit by themselves
    done = 0
    try:
        for i, clip in enumerate(results):
            done += 1         # counted before the yield: a consumer may stop right after the last clip
            yield f"{i:06d}", clip
    finally:
        if done < len(jobs):  # stopped early (or failed): drop the clips still being simulated
            pool.terminate()
        pool.join()


def intent_vocab() -> tuple[str, ...]:
    from wam_jax.sim import highway as sim

    return tuple(sim.INTENTS)


class WamHighway(builders.ClipDatasetBuilder):
    """highway-env expert clips as clip records (BEV frames, waypoints, intents per chunk)."""

    def _generate_clips(self):
        return iter_clips(self.builder_config)

    def default_intent_vocab(self):
        return intent_vocab()
