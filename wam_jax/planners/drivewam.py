"""The DriveWAM policy as a closed-loop planner ("drivewam" in wam_jax.evaluation.closed_loop.PLANNERS).

At each replan the last chunk of driving (frames of the past `chunk_s` seconds and the ego path over it) is the
clean context chunk; the model imagines the next chunk (video + waypoints) from noise, with the scene-rule
intent as guidance, and the waypoints go to the tracking controller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.evaluation import closed_loop as cl
from wam_jax.rollout import kv_memory
from wam_jax.models import latents as latent_codecs
from wam_jax.data import ActionNorm
from wam_jax.models import wam as wam_lib
from wam_jax.rollout.engine import RolloutEngine, SamplerConfig, load_trained_params, run_rollout
from wam_jax.sim import highway as hw


class DriveWAMPlanner:
    name = cl.LEARNED_PLANNER

    def __init__(self, config, params, sim_cfg: hw.HighwaySimConfig):
        self.config, self.params, self.sim_cfg = config, params, sim_cfg
        wan, self.wam = wam_lib.build_configs(config)
        self.engine = RolloutEngine(wan, self.wam, SamplerConfig.from_config(config.sampler),
                                    kv_memory.MemoryConfig.from_config(config.memory))
        self.norm = ActionNorm.from_config(config.action_norm)
        self.frames_per_chunk = int(round(sim_cfg.chunk_s * sim_cfg.frame_hz))
        self.table = None
        if config.guidance.enabled:
            from wam_jax import guidance
            self.table = jnp.asarray(guidance.intent_table(config))
        self.imagined: list[np.ndarray] = []    # latents of every imagined chunk, for videos
        self.rng = jax.random.key(0)

    def reset(self, seed: int) -> None:
        self.rng = jax.random.key(seed)
        self.imagined = []

    def context(self, obs: cl.Observation):
        """(latents [1, 1, F, h, w, z], normalised actions [1, 1, K, 3]) of the past chunk."""
        frames = obs.frames[:-1][-self.frames_per_chunk:]          # the chunk before "now" (now starts the next)
        if len(frames) < self.frames_per_chunk:
            frames = np.concatenate([np.repeat(frames[:1], self.frames_per_chunk - len(frames), 0), frames])
        lat = latent_codecs.encode_frames(frames[None], self.config)[:, None]
        waypoints = context_waypoints(obs.pose_history)
        return lat, self.norm.normalize(waypoints[None, None].astype(np.float32))

    def plan(self, obs: cl.Observation) -> np.ndarray:
        lat, act = self.context(obs)
        guidance = None
        if self.table is not None:
            g = self.table[obs.intent.index][None, None]
            guidance = lambda c, _: g
        self.rng, key = jax.random.split(self.rng)
        result = run_rollout(self.engine, self.params, lat, act, 1, key, guidance)
        self.imagined.append(result.video[0, -1])
        return self.norm.denormalize(result.actions[0, -1])


def context_waypoints(pose_history: np.ndarray) -> np.ndarray:
    """The past chunk as training saw it: poses at t − K·dt … t − dt (ego frame at t: x forward, y left,
    counter-clockwise heading) and "now" (the origin), re-expressed in the frame of the oldest one, where
    that chunk started. [K, 3]."""
    poses = np.concatenate([pose_history, np.zeros((1, 3))], axis=0)
    x0, y0, h0 = poses[0]
    dx, dy = poses[1:, 0] - x0, poses[1:, 1] - y0
    c, s = np.cos(h0), np.sin(h0)
    heading = np.angle(np.exp(1j * (poses[1:, 2] - h0)))
    return np.stack([c * dx + s * dy, -s * dx + c * dy, heading], axis=-1)


def _factory(sim_cfg, checkpoint, config):
    if config is None:
        raise ValueError("the drivewam planner needs --config (the experiment the checkpoint was trained with)")
    params, _ = load_trained_params(checkpoint, config)
    return DriveWAMPlanner(config, params, sim_cfg)


cl.register_planner(cl.LEARNED_PLANNER, _factory)
