"""Teacher-forced sampling over DriveWAM tokens: every chunk at once, chunk n given the *given* clean chunks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from wam_jax import flow_matching as fm


def sample_teacher_forced(apply_fn, params, clean_video, clean_actions, guidance, rng, stages, solver: str = "euler",
                          ego=None):
    """Samples every chunk's video and actions from noise in the teacher-forcing layout of training (one pass per
    evaluation, open loop): the noisy stream of chunk n sees the given clean chunks < n; with the
    inverse-dynamics layout its actions are decoded from the given clean video of chunk n itself.

    clean_video: [B, N, F, h, w, z]; clean_actions: [B, N, K, A]; stages: `rollout.engine.stage_grids(sampler)`
    (per stage a video and an action grid of (from, to) steps); ego: [B, N, 3] or None.
    Returns (video [B, N, F, h, w, z] at the video grid's last time, actions [B, N, K, A])."""
    b, n = clean_actions.shape[:2]
    k_v, k_a = jax.random.split(rng)
    x = (jax.random.normal(k_v, clean_video.shape), jax.random.normal(k_a, clean_actions.shape))
    zeros = jnp.zeros((b, n))

    def velocity(x, t):
        tv, ta = jnp.full((b, n), t[0]), jnp.full((b, n), t[1])
        pv, pa, _ = apply_fn(params, jnp.stack([clean_video, x[0]], 1), jnp.stack([clean_actions, x[1]], 1),
                             jnp.stack([zeros, tv], 1), jnp.stack([zeros, ta], 1), guidance, ego)
        return pv[:, 1], pa[:, 1]

    for _, grid_v, grid_a in stages:
        x = fm.integrate_steps(velocity, x, (jnp.asarray(grid_v), jnp.asarray(grid_a)), solver)
    return x
