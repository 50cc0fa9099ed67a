"""The joint flow-matching objective over video and action tokens (DriveWAM training loss)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax import flow_matching as fm

CONTEXT_MODES = ("teacher_forcing", "diffusion_forcing")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """teacher_forcing: a clean copy of every chunk is the context (t = 0) and a noised copy the target, one
    pass, the sequence twice as long. diffusion_forcing: one copy, each chunk noised independently, chunk n
    conditioned on the (noisy) earlier chunks. per_chunk_noise draws a time per chunk instead of per example."""
    time_sampler: str = "logit_normal"
    time_mean: float = 0.0
    time_std: float = 1.0
    time_shift: float = 1.0
    video_weight: float = 1.0
    action_weight: float = 1.0
    context: str = "teacher_forcing"
    per_chunk_noise: bool = False
    independent_action_time: bool = False   # draw the action tokens' t separately from the video's
    loss_from_chunk: int = 0                # chunks before it are context only (no loss)
    layout: str = "inverse_dynamics"        # attention layout (models.wam.attention_rule): or "joint"

    def __post_init__(self):
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"flow.context={self.context!r} unknown; choose one of {CONTEXT_MODES}")

    @property
    def time(self) -> fm.TimeSampling:
        return fm.TimeSampling(self.time_sampler, self.time_mean, self.time_std, self.time_shift)

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> "FlowConfig":
        return dataclass_from_config(cls, values, "config.flow")


def _expand(t, rank):
    return t.reshape(t.shape + (1,) * (rank - t.ndim))


def flow_matching_loss(apply_fn, params, batch: Mapping[str, jax.Array], rng: jax.Array, flow: FlowConfig,
                       frames_per_chunk: int):
    """Joint loss. batch: latents [B, N·F, h, w, z], actions [B, N, K, A] (normalised), optional guidance
    [B, N, Lg, text_dim]. apply_fn(params, video, actions, t_video, t_action, guidance) → (v_video, v_action, _).
    Returns (loss, metrics) with per-modality losses (mean squared velocity error over target tokens)."""
    latents, actions = batch["latents"], batch["actions"]
    b, n = actions.shape[:2]
    x0_v = latents.reshape(b, n, frames_per_chunk, *latents.shape[2:]).astype(jnp.float32)
    x0_a = actions.astype(jnp.float32)
    k_t, k_ta, k_v, k_a = jax.random.split(rng, 4)
    per_chunk = flow.per_chunk_noise or flow.context == "diffusion_forcing"
    t_shape = (b, n) if per_chunk else (b, 1)
    t_v = jnp.broadcast_to(fm.sample_time(k_t, t_shape, flow.time), (b, n))
    t_a = jnp.broadcast_to(fm.sample_time(k_ta, t_shape, flow.time), (b, n)) if flow.independent_action_time else t_v
    eps_v = jax.random.normal(k_v, x0_v.shape)
    eps_a = jax.random.normal(k_a, x0_a.shape)
    xt_v = fm.interpolate(x0_v, eps_v, _expand(t_v, x0_v.ndim))
    xt_a = fm.interpolate(x0_a, eps_a, _expand(t_a, x0_a.ndim))

    if flow.context == "teacher_forcing":
        video = jnp.stack([x0_v, xt_v], axis=1)
        acts = jnp.stack([x0_a, xt_a], axis=1)
        zeros = jnp.zeros_like(t_v)
        tv, ta = jnp.stack([zeros, t_v], 1), jnp.stack([zeros, t_a], 1)
    else:
        video, acts, tv, ta = xt_v[:, None], xt_a[:, None], t_v[:, None], t_a[:, None]
    pred_v, pred_a, _ = apply_fn(params, video, acts, tv, ta, batch.get("guidance"))
    pred_v, pred_a = pred_v[:, -1], pred_a[:, -1]            # the target stream

    weight = (jnp.arange(n) >= flow.loss_from_chunk).astype(jnp.float32)        # [N]
    err_v = jnp.mean(jnp.square(pred_v - fm.velocity_target(x0_v, eps_v)), axis=tuple(range(2, x0_v.ndim)))
    err_a = jnp.mean(jnp.square(pred_a - fm.velocity_target(x0_a, eps_a)), axis=tuple(range(2, x0_a.ndim)))
    denom = b * jnp.maximum(weight.sum(), 1.0)
    loss_v = jnp.sum(err_v * weight) / denom
    loss_a = jnp.sum(err_a * weight) / denom
    loss = flow.video_weight * loss_v + flow.action_weight * loss_a
    return loss, {"loss": loss, "loss_video": loss_v, "loss_action": loss_a}
