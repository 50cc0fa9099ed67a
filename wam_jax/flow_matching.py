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


def sampling_schedule(steps: int, shift: float = 1.0) -> jax.Array:
    """Decreasing times [steps + 1] from 1 to 0 (uniform grid, then Wan's shift)."""
    return shift_time(jnp.linspace(1.0, 0.0, steps + 1), shift)


SOLVERS = ("euler", "heun")


def integrate(velocity_fn: Callable[[jax.Array, jax.Array], jax.Array], x1: jax.Array, times: jax.Array,
              solver: str = "euler") -> jax.Array:
    """Integrates dx/dt = v(x, t) from times[0] (noise) to times[-1] (clean).

    velocity_fn(x, t_scalar) → v; `heun` is the second-order (predictor-corrector) option: twice the
    evaluations per step; the last step (to t = 0) keeps the Euler result, as in EDM."""
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r} unknown; choose one of {SOLVERS}")

    def step(x, ts):
        t, s = ts
        v = velocity_fn(x, t)
        x_euler = x + (s - t) * v
        if solver == "euler":
            return x_euler, None
        v2 = velocity_fn(x_euler, s)
        x_heun = x + (s - t) * 0.5 * (v + v2)
        return jnp.where(s > 0, x_heun, x_euler), None

    x, _ = jax.lax.scan(step, x1, (times[:-1], times[1:]))
    return x
