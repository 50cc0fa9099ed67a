"""Flow-matching samplers over DriveWAM tokens."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wam_jax import flow_matching as fm


def sample_teacher_forced(apply_fn, params, clean_video, clean_actions, guidance, rng, steps: int = 20,
                          solver: str = "euler", shift: float = 1.0):
    """Samples every chunk's video and actions from noise, chunk n conditioned on the *given* clean chunks < n
    (open-loop, one pass per step: the teacher-forcing layout of training).

    clean_video: [B, N, F, h, w, z]; clean_actions: [B, N, K, A]. Returns (video [B, N, F, h, w, z],
    actions [B, N, K, A]) sampled with `steps` solver steps from t = 1 to 0."""
    b, n = clean_actions.shape[:2]
    k_v, k_a = jax.random.split(rng)
    x_v = jax.random.normal(k_v, clean_video.shape)
    x_a = jax.random.normal(k_a, clean_actions.shape)
    split = clean_video[0].size // n

    def velocity(x, t):
        xv, xa = x[:, :split * n].reshape(clean_video.shape), x[:, split * n:].reshape(clean_actions.shape)
        tt = jnp.full((b, n), t)
        zeros = jnp.zeros((b, n))
        pv, pa, _ = apply_fn(params, jnp.stack([clean_video, xv], 1), jnp.stack([clean_actions, xa], 1),
                             jnp.stack([zeros, tt], 1), jnp.stack([zeros, tt], 1), guidance)
        return jnp.concatenate([pv[:, 1].reshape(b, -1), pa[:, 1].reshape(b, -1)], axis=1)

    x = jnp.concatenate([x_v.reshape(b, -1), x_a.reshape(b, -1)], axis=1)
    x = fm.integrate(velocity, x, fm.sampling_schedule(steps, shift), solver)
    return x[:, :split * n].reshape(clean_video.shape), x[:, split * n:].reshape(clean_actions.shape)
