"""The DriveWAM policy as a closed-loop planner ("drivewam" in `wam_jax.planners.PLANNERS`).

At each replan the last chunk of driving (frames of the past `chunk_s` seconds and the ego path over it) is the
clean context chunk; the model imagines the next chunk (video + waypoints) from noise, guided by the intent the
experiment's guidance object writes for it (scene rules in the demo, a VLM at paper scale: one code path), and
the waypoints go to the tracking controller. It reads only fair inputs: frames, its own pose history, the intent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.experiment import Experiment
from wam_jax.models import latents as latent_codecs
from wam_jax.planners.base import Observation
from wam_jax.rollout.engine import load_trained_params, run_rollout
from wam_jax.sim import highway as hw


class DriveWAMPlanner:
    name = "drivewam"

    def __init__(self, config, params, sim_cfg: hw.HighwaySimConfig):
        self.config, self.params, self.sim_cfg = config, params, sim_cfg
        self.experiment = Experiment(config)
        self.wam = self.experiment.wam
        self.engine = self.experiment.engine(chunks=2)       # every plan: the past chunk, then the next one
        self.norm = self.experiment.action_norm
        self.guidance = self.experiment.guidance
        self.frames_per_chunk = int(round(sim_cfg.chunk_s * sim_cfg.frame_hz))
        self.imagined: list[np.ndarray] = []    # latents of every imagined chunk, for videos
        self.rng = jax.random.key(0)
        self.checkpoint_step: int | None = None

    @classmethod
    def from_checkpoint(cls, checkpoint: str | None, config, sim_cfg: hw.HighwaySimConfig) -> "DriveWAMPlanner":
        if config is None:
            raise ValueError("the drivewam planner needs --config (the experiment the checkpoint was trained with)")
        if checkpoint is None:
            raise ValueError("the drivewam planner needs --checkpoint (the workdir of a `train` run)")
        params, step = load_trained_params(checkpoint, config)
        planner = cls(config, params, sim_cfg)
        planner.checkpoint_step = step
        return planner

    def reset(self, seed: int) -> None:
        self.rng = jax.random.key(seed)
        self.imagined = []

    def context(self, obs: Observation):
        """(latents [1, 1, F, h, w, z], normalised actions [1, 1, K, 3]) of the past chunk."""
        frames = obs.frames[:-1][-self.frames_per_chunk:]          # the chunk before "now" (now starts the next)
        if len(frames) < self.frames_per_chunk:
            frames = np.concatenate([np.repeat(frames[:1], self.frames_per_chunk - len(frames), 0), frames])
        lat = latent_codecs.encode_frames(frames[None], self.config)[:, None]
        waypoints = context_waypoints(obs.pose_history)
        return lat, self.norm.normalize(waypoints[None, None].astype(np.float32))

    def chunk_guidance(self, obs: Observation):
        """[1, 1, Lg, D] guidance of the chunk to imagine, or None: the intent source sees the observed frames
        and the route command (`obs.intent`)."""
        if self.guidance is None:
            return None
        return jnp.asarray(self.guidance.embed([obs.frames], {"intent": [obs.intent]})[:, None])

    def plan(self, obs: Observation) -> np.ndarray:
        lat, act = self.context(obs)
        g = self.chunk_guidance(obs)
        guidance = None if g is None else (lambda c, _: g)
        self.rng, key = jax.random.split(self.rng)
        ego = None if obs.ego_states is None else jnp.asarray(obs.ego_states, jnp.float32)[None, :, None]
        ego_fn = None if ego is None else (lambda c, _: ego[:, c])     # chunk 0: the past chunk, chunk 1: now
        result = run_rollout(self.engine, self.params, lat, act, 1, key, guidance, ego_fn=ego_fn)
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
