"""Rectified flow matching shared by training and sampling.

Convention (Wan's): x_t = (1 − t)·x0 + t·ε with t ∈ [0, 1], t = 0 clean, t = 1 pure noise; the model predicts
the velocity v = ε − x0, so x0 = x_t − t·v and an Euler step from t to s < t is x_s = x_t + (s − t)·v.
The network sees timesteps t·1000 (Wan's scale).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

TIME_SAMPLERS = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class TimeSampling:
    """How training draws t: `uniform` or `logit_normal` (sigmoid of N(mean, std)), then Wan's shift
    t' = shift·t / (1 + (shift − 1)·t) (shift > 1 spends more steps at high noise)."""
    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self):
        if self.kind not in TIME_SAMPLERS:
            raise ValueError(f"time sampler {self.kind!r} unknown; choose one of {TIME_SAMPLERS}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift}")


def shift_time(t: jax.Array, shift: float) -> jax.Array:
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(rng: jax.Array, shape, spec: TimeSampling) -> jax.Array:
    if spec.kind == "uniform":
        t = jax.random.uniform(rng, shape)
    else:
        t = jax.nn.sigmoid(spec.mean + spec.std * jax.random.normal(rng, shape))
    return shift_time(t, spec.shift)


def interpolate(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    """x_t for t broadcastable to x0 (trailing singleton axes added by the caller)."""
    return (1.0 - t) * x0 + t * noise


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
    return noise - x0


def sampling_schedule(steps: int, shift: float = 1.0, stop: float = 0.0) -> jax.Array:
    """Decreasing times [steps + 1] from 1 to `stop` (uniform grid, Wan's shift, then mapped onto [stop, 1]);
    stop > 0 is partial denoising (the paper stops the video at 0.6)."""
    return stop + (1.0 - stop) * shift_time(jnp.linspace(1.0, 0.0, steps + 1), shift)


SOLVERS = ("euler", "heun")


def integrate_steps(velocity_fn: Callable, x, steps, solver: str = "euler"):
    """The integrator: dx/dt = v(x, t) over explicit steps, for one array or a pytree of them.

    x: array or pytree; steps: matching pytree of [S, 2] (from, to) times per step — each leaf on its own grid,
    a leaf whose from == to stays where it is that step; velocity_fn(x, t) → v with t the matching pytree of
    scalar times. `heun` adds a corrector evaluation at (x_euler, to), applied per leaf except on a step that
    ends at t = 0 (that step keeps the Euler result, as in EDM: the velocity at t = 0 is never evaluated)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} unknown; choose one of {SOLVERS}")
    tmap = jax.tree.map
    froms = tmap(lambda g: jnp.asarray(g)[:, 0], steps)
    tos = tmap(lambda g: jnp.asarray(g)[:, 1], steps)

    def step(x, ts):
        t, s = ts
        v = velocity_fn(x, t)
        x_euler = tmap(lambda xi, vi, ti, si: jnp.where(si != ti, xi + (si - ti) * vi, xi), x, v, t, s)
        if solver == "euler":
            return x_euler, None
        # The corrector evaluates each leaf at its Euler prediction and target time, except a leaf ending at 0:
        # it enters at its current (x, t) (its correction is discarded; the model is never asked about t = 0).
        s_eval = tmap(lambda ti, si: jnp.where(si > 0, si, ti), t, s)
        x_eval = tmap(lambda xi, xe, si: jnp.where(si > 0, xe, xi), x, x_euler, s)
        v2 = velocity_fn(x_eval, s_eval)
        return tmap(lambda xi, xe, vi, v2i, ti, si: jnp.where((si > 0) & (si != ti), xi + (si - ti) * 0.5 * (vi + v2i),
                                                              xe), x, x_euler, v, v2, t, s), None

    x, _ = jax.lax.scan(step, x, (froms, tos))
    return x


def integrate(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], x1: jax.Array, times: jax.Array,
              solver: str = "euler") -> jax.Array:
    """Integrates dx/dt = v(x, t) along the decreasing grid `times` [S + 1] (see `integrate_steps`)."""
    times = jnp.asarray(times)
    return integrate_steps(velocity_fn, x1, jnp.stack([times[:-1], times[1:]], axis=1), solver)
