"""The flow-matching objective over video and action tokens (DriveWAM training loss).

    L = ‖v̂_video − v_video‖² + β_a ‖v̂_action − v_action‖²        (flow.video_weight = 1, flow.action_weight = β_a)

Timesteps: the video's and the actions' are drawn separately (`independent_action_time`), each with its own
shift (`time_shift` for video, `action_time_shift` for actions; the paper's code base uses 5 and 1).
Noisy-history augmentation (teacher forcing): with probability `history_noise_prob`, independently per chunk,
the clean copy of a chunk's video is replaced by a noised one at τ ~ U(`history_noise_range`) and the model is
told that τ. The clean copy is both the history of later chunks and the video the chunk's own actions are
decoded from, so the range must cover the level the sampler stops the video at (`sampler.video_stop`): at
inference actions read a partially denoised latent and, in open-loop imagination, later chunks read it as
history. Actions are never noised as history.
`action_free` pretrains on video alone (zero actions and ego state, video loss only); the paper's "no video
supervision" ablation is the other way round: `video_weight=0` with `layout="history_only"`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax import flow_matching as fm
from wam_jax.models.wam import needed_blocks

CONTEXT_MODES = ("teacher_forcing", "diffusion_forcing")


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """teacher_forcing: a clean copy of every chunk is the context and a noised copy the target, one pass, the
    sequence twice as long. diffusion_forcing: one copy, each chunk noised independently, chunk n conditioned
    on the (noisy) earlier chunks. per_chunk_noise draws a time per chunk instead of per example."""
    time_sampler: str = "logit_normal"
    time_mean: float = 0.0
    time_std: float = 1.0
    time_shift: float = 5.0                 # video timesteps' shift (the paper's code base: 5)
    action_time_shift: float | None = 1.0   # action timesteps' shift (code base: 1; None: time_shift)
    video_weight: float = 1.0
    action_weight: float = 1.0              # β_a (paper: 1)
    context: str = "teacher_forcing"
    per_chunk_noise: bool = True
    independent_action_time: bool = True    # draw the action tokens' t separately from the video's
    loss_from_chunk: int = 0                # chunks before it are context only (no loss)
    layout: str = "inverse_dynamics"        # attention layout (models.wam.attention_rule): or "joint"
    history_noise_prob: float = 0.5         # p: a chunk's clean video copy is noised with this probability ...
    history_noise_range: tuple[float, float] = (0.5, 0.7)   # ... at τ ~ U(range), which covers sampler.video_stop
    # Pretraining on action-free video (the video prior, like Wan's): the action stream and the ego state carry
    # zeros and the loss is the video's alone. The Wan part of such a run initialises a DriveWAM (`init=wan`).
    action_free: bool = False

    def __post_init__(self):
        if self.context not in CONTEXT_MODES:
            raise ConfigError(f"flow.context={self.context!r} unknown; choose one of {CONTEXT_MODES}")
        if not 0.0 <= self.history_noise_prob <= 1.0:
            raise ConfigError(f"flow.history_noise_prob={self.history_noise_prob} must lie in [0, 1]")
        lo, hi = self.history_noise_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"flow.history_noise_range={tuple(self.history_noise_range)} must be (lo, hi) with "
                              "0 ≤ lo ≤ hi ≤ 1")
        if self.loss_from_chunk < 0:
            raise ConfigError(f"flow.loss_from_chunk={self.loss_from_chunk} must be ≥ 0")

    @property
    def time(self) -> fm.TimeSampling:
        return fm.TimeSampling(self.time_sampler, self.time_mean, self.time_std, self.time_shift)

    @property
    def action_time(self) -> fm.TimeSampling:
        shift = self.time_shift if self.action_time_shift is None else self.action_time_shift
        return fm.TimeSampling(self.time_sampler, self.time_mean, self.time_std, shift)

    def check_chunks(self, chunks: int):
        if self.loss_from_chunk >= chunks:
            raise ConfigError(f"flow.loss_from_chunk={self.loss_from_chunk} but examples hold {chunks} chunk(s): "
                              "no chunk would be trained on (the loss would be zero); lower it below the chunk count")

    @classmethod
    def from_config(cls, values: Mapping[str, Any]) -> "FlowConfig":
        values = dict(values)
        if "history_noise_range" in values:
            values["history_noise_range"] = tuple(values["history_noise_range"])
        return dataclass_from_config(cls, values, "config.flow")


def _expand(t, rank):
    return t.reshape(t.shape + (1,) * (rank - t.ndim))


def history_times(rng: jax.Array, shape, flow: FlowConfig) -> jax.Array:
    """τ of each chunk's clean video copy [shape]: 0, or with probability p a draw from the range."""
    k_p, k_t = jax.random.split(rng)
    lo, hi = flow.history_noise_range
    noised = jax.random.bernoulli(k_p, flow.history_noise_prob, shape)
    return jnp.where(noised, jax.random.uniform(k_t, shape, minval=lo, maxval=hi), 0.0)


def flow_matching_loss(apply_fn, params, batch: Mapping[str, jax.Array], rng: jax.Array, flow: FlowConfig,
                       frames_per_chunk: int):
    """Joint loss. batch: latents [B, N·F, h, w, z], actions [B, N, K, A] (normalised), optional guidance
    [B, N, Lg, text_dim] and ego [B, N, 3]. apply_fn(params, video, actions, t_video, t_action, guidance, ego)
    → (v_video, v_action, _). Returns (loss, metrics) with per-modality losses (mean squared velocity error over
    target tokens)."""
    latents, actions = batch["latents"], batch["actions"]
    if flow.action_free:
        actions = jnp.zeros_like(actions)
        batch = dict(batch, ego=None if batch.get("ego") is None else jnp.zeros_like(batch["ego"]))
    b, n = actions.shape[:2]
    flow.check_chunks(n)
    x0_v = latents.reshape(b, n, frames_per_chunk, *latents.shape[2:]).astype(jnp.float32)
    x0_a = actions.astype(jnp.float32)
    k_t, k_ta, k_v, k_a, k_h, k_hv = jax.random.split(rng, 6)
    per_chunk = flow.per_chunk_noise or flow.context == "diffusion_forcing"
    t_shape = (b, n) if per_chunk else (b, 1)
    t_v = jnp.broadcast_to(fm.sample_time(k_t, t_shape, flow.time), (b, n))
    t_a = (jnp.broadcast_to(fm.sample_time(k_ta, t_shape, flow.action_time), (b, n))
           if flow.independent_action_time else t_v)
    eps_v = jax.random.normal(k_v, x0_v.shape)
    eps_a = jax.random.normal(k_a, x0_a.shape)
    xt_v = fm.interpolate(x0_v, eps_v, _expand(t_v, x0_v.ndim))
    xt_a = fm.interpolate(x0_a, eps_a, _expand(t_a, x0_a.ndim))

    if flow.context == "teacher_forcing":
        tau = history_times(k_h, (b, n), flow)
        history_v = fm.interpolate(x0_v, jax.random.normal(k_hv, x0_v.shape), _expand(tau, x0_v.ndim))
        video = jnp.stack([history_v, xt_v], axis=1)
        acts = jnp.stack([x0_a, xt_a], axis=1)
        tv, ta = jnp.stack([tau, t_v], 1), jnp.stack([jnp.zeros_like(t_a), t_a], 1)
    else:
        video, acts, tv, ta = xt_v[:, None], xt_a[:, None], t_v[:, None], t_a[:, None]
    # Only the blocks the scored outputs depend on are computed (the same loss): with context chunks, their noised
    # copies are read by nothing (a quarter of the demo's teacher-forcing sequence).
    streams = video.shape[1]
    blocks = needed_blocks(streams, n, range(flow.loss_from_chunk, n), flow.layout)
    skip = {} if len(blocks) == streams * n else {"blocks": blocks}
    pred_v, pred_a, _ = apply_fn(params, video, acts, tv, ta, batch.get("guidance"), batch.get("ego"), **skip)
    pred_v, pred_a = pred_v[:, -1], pred_a[:, -1]            # the target stream

    weight = (jnp.arange(n) >= flow.loss_from_chunk).astype(jnp.float32)        # [N]
    err_v = jnp.mean(jnp.square(pred_v - fm.velocity_target(x0_v, eps_v)), axis=tuple(range(2, x0_v.ndim)))
    err_a = jnp.mean(jnp.square(pred_a - fm.velocity_target(x0_a, eps_a)), axis=tuple(range(2, x0_a.ndim)))
    denom = b * weight.sum()
    loss_v = jnp.sum(err_v * weight) / denom
    loss_a = jnp.sum(err_a * weight) / denom
    loss = flow.video_weight * loss_v + (0.0 if flow.action_free else flow.action_weight) * loss_a
    return loss, {"loss": loss, "loss_video": loss_v, "loss_action": loss_a}
