"""Autoregressive DriveWAM rollout: chunk after chunk, denoise the chunk's video and action tokens with a
flow-matching sampler, then commit the clean chunk's keys/values to the KV memory so later chunks attend to
it without recomputing the past.

    python -m wam_jax rollout --config experiments/FILE.py[:args] --checkpoint WORKDIR [--chunks N] [--out DIR]

Samplers (config.sampler): `joint` denoises video and actions together, each on its own step grid (a
modality whose grid has no point between two evaluations keeps its value); `video_then_action` first
denoises the video (actions held at pure noise), then the actions given the clean imagined video. Solvers:
euler, heun (second order).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from wam_jax import flow_matching as fm
from wam_jax.rollout import kv_memory
from wam_jax.config import ConfigError, dataclass_from_config, load_config
from wam_jax.models import wam as wam_lib

SCHEDULES = ("joint", "video_then_action")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    video_steps: int = 10
    action_steps: int = 10
    solver: str = "euler"
    shift: float = 1.0
    schedule: str = "joint"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"sampler.schedule={self.schedule!r} unknown; choose one of {SCHEDULES}")
        if self.solver not in fm.SOLVERS:
            raise ConfigError(f"sampler.solver={self.solver!r} unknown; choose one of {fm.SOLVERS}")
        if min(self.video_steps, self.action_steps) < 1:
            raise ConfigError("sampler step counts must be ≥ 1")

    @classmethod
    def from_config(cls, values) -> "SamplerConfig":
        return dataclass_from_config(cls, values, "config.sampler")


def multirate_grid(video_steps: int, action_steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Joint schedule: max(Sv, Sa) model evaluations; per evaluation the (from, to) time of each modality.
    Returns video [n, 2] and action [n, 2] arrays; a modality with from == to does not move that iteration."""
    n = max(video_steps, action_steps)
    grids = []
    for steps in (video_steps, action_steps):
        times = np.asarray(fm.sampling_schedule(steps, shift), np.float32)
        idx = np.floor(np.arange(n + 1) * steps / n).astype(int)
        grids.append(np.stack([times[idx[:-1]], times[idx[1:]]], axis=1))
    return grids[0], grids[1]


def stage_grids(sampler: SamplerConfig):
    """[(stage name, video grid, action grid)] for the configured schedule."""
    if sampler.schedule == "joint":
        v, a = multirate_grid(sampler.video_steps, sampler.action_steps, sampler.shift)
        return [("video+action denoising", v, a)]
    tv = np.asarray(fm.sampling_schedule(sampler.video_steps, sampler.shift), np.float32)
    ta = np.asarray(fm.sampling_schedule(sampler.action_steps, sampler.shift), np.float32)
    video = (np.stack([tv[:-1], tv[1:]], 1), np.ones((sampler.video_steps, 2), np.float32))
    action = (np.zeros((sampler.action_steps, 2), np.float32), np.stack([ta[:-1], ta[1:]], 1))
    return [("video denoising", *video), ("action denoising", *action)]


class RolloutEngine:
    """Jitted per-chunk denoising and memory commits for one model, batch size and memory configuration."""

    def __init__(self, wan, wam, sampler: SamplerConfig, memory: kv_memory.MemoryConfig):
        self.wan, self.wam, self.sampler, self.memory = wan, wam, sampler, memory
        self.model = wam_lib.DriveWAM(wan, wam, return_kv=True)
        self.sizes = kv_memory.pool_sizes(memory, wam.video_tokens(wan), wam.waypoints_per_chunk)
        self.stages = stage_grids(sampler)
        self._integrate = jax.jit(self._integrate_impl)
        self._commit = jax.jit(self._commit_impl)
        self._integrate_uncached = jax.jit(self._integrate_uncached_impl)

    # --- model calls ---------------------------------------------------------------------------------------
    def _velocity(self, params, past, x_v, x_a, t_v, t_a, guidance, chunk_index):
        b = x_v.shape[0]
        full = lambda t: jnp.full((b, 1, 1), t)
        v, a, _ = self.model.apply({"params": params}, x_v[:, None, None], x_a[:, None, None], full(t_v), full(t_a),
                                   guidance, chunk_offset=chunk_index, past=past)
        return v[:, 0, 0], a[:, 0, 0]

    def _integrate_with(self, velocity, x_v, x_a, grid_v, grid_a):
        heun = self.sampler.solver == "heun"

        def step(carry, grids):
            xv, xa = carry
            (tv, sv), (ta, sa) = grids
            vv, va = velocity(xv, xa, tv, ta)
            ev, ea = xv + (sv - tv) * vv, xa + (sa - ta) * va
            if heun:
                vv2, va2 = velocity(ev, ea, sv, sa)
                last = (sv == 0) & (sa == 0)
                ev = jnp.where(last | (sv == tv), ev, xv + (sv - tv) * 0.5 * (vv + vv2))
                ea = jnp.where(last | (sa == ta), ea, xa + (sa - ta) * 0.5 * (va + va2))
            return (ev, ea), None

        (x_v, x_a), _ = jax.lax.scan(step, (x_v, x_a), (jnp.asarray(grid_v), jnp.asarray(grid_a)))
        return x_v, x_a

    def _integrate_impl(self, params, cache, chunk_index, guidance, x_v, x_a, grid_v, grid_a):
        past = kv_memory.past_view(cache)
        vel = lambda xv, xa, tv, ta: self._velocity(params, past, xv, xa, tv, ta, guidance, chunk_index)
        return self._integrate_with(vel, x_v, x_a, grid_v, grid_a)

    def _integrate_uncached_impl(self, params, past_video, past_actions, guidance, x_v, x_a, grid_v, grid_a):
        """Reference without a cache: the whole prefix (clean past chunks + the noisy current one) in one
        block-causal pass per evaluation."""
        b, c = past_actions.shape[:2]

        def vel(xv, xa, tv, ta):
            video = jnp.concatenate([past_video, xv[:, None]], axis=1)[:, None]
            actions = jnp.concatenate([past_actions, xa[:, None]], axis=1)[:, None]
            times = lambda t: jnp.concatenate([jnp.zeros((b, 1, c)), jnp.full((b, 1, 1), t)], axis=2)
            v, a, _ = self.model.apply({"params": params}, video, actions, times(tv), times(ta), guidance)
            return v[:, 0, -1], a[:, 0, -1]

        return self._integrate_with(vel, x_v, x_a, grid_v, grid_a)

    def _commit_impl(self, params, cache, chunk_index, video, actions, guidance):
        b = video.shape[0]
        zeros = jnp.zeros((b, 1, 1))
        _, _, qkv = self.model.apply({"params": params}, video[:, None, None], actions[:, None, None], zeros, zeros,
                                     guidance, chunk_offset=chunk_index, past=kv_memory.past_view(cache))
        return kv_memory.commit(cache, qkv, self.sizes, self.memory, chunk_index)

    # --- public --------------------------------------------------------------------------------------------
    def init_cache(self, batch: int):
        c = self.wan
        return kv_memory.init_cache(self.sizes, c.num_layers, batch, c.num_attention_heads, c.attention_head_dim,
                                    c.compute_dtype)

    def initial_noise(self, rng, batch: int):
        w = self.wam
        k_v, k_a = jax.random.split(rng)
        return (jax.random.normal(k_v, (batch, w.latent_frames_per_chunk, w.latent_height, w.latent_width,
                                        self.wan.in_channels)),
                jax.random.normal(k_a, (batch, w.waypoints_per_chunk, w.action_dim)))

    def denoise(self, params, cache, chunk_index: int, guidance, rng, timings: dict | None = None):
        """Samples chunk `chunk_index` from noise given the memory. guidance: [B, 1, Lg, text_dim] or None."""
        batch = cache["k"].shape[1]
        x_v, x_a = self.initial_noise(rng, batch)
        for name, grid_v, grid_a in self.stages:
            start = time.perf_counter()
            x_v, x_a = self._integrate(params, cache, jnp.int32(chunk_index), guidance, x_v, x_a, grid_v, grid_a)
            jax.block_until_ready((x_v, x_a))
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return x_v, x_a

    def denoise_uncached(self, params, past_video, past_actions, guidance, rng):
        """Same sampling as `denoise`, recomputing the past from the given clean chunks (for testing)."""
        x_v, x_a = self.initial_noise(rng, past_actions.shape[0])
        for _, grid_v, grid_a in self.stages:
            x_v, x_a = self._integrate_uncached(params, past_video, past_actions, guidance, x_v, x_a, grid_v, grid_a)
        return x_v, x_a

    def commit(self, params, cache, chunk_index: int, video, actions, guidance, timings: dict | None = None):
        start = time.perf_counter()
        cache = self._commit(params, cache, jnp.int32(chunk_index), video, actions, guidance)
        jax.block_until_ready(cache)
        if timings is not None:
            timings["cache update"] = timings.get("cache update", 0.0) + time.perf_counter() - start
        return cache


@dataclasses.dataclass
class RolloutResult:
    video: np.ndarray                 # [B, N, F, h, w, z] latents of every chunk (context chunks as given)
    actions: np.ndarray               # [B, N, K, A] normalised actions of every chunk
    generated_from: int               # index of the first generated chunk
    timings: list[dict[str, float]]   # per generated chunk, seconds per stage
    memory: list[dict[str, float]]    # per chunk, after its commit


GuidanceFn = Callable[[int, Mapping[str, Any]], Any]


def run_rollout(engine: RolloutEngine, params, context_video, context_actions, chunks: int, rng,
                guidance_fn: GuidanceFn | None = None, on_chunk: Callable | None = None) -> RolloutResult:
    """Commits the observed context chunks, then generates `chunks` new ones.

    context_video: [B, C, F, h, w, z]; context_actions: [B, C, K, A] (normalised); guidance_fn(chunk_index,
    state) → [B, 1, Lg, text_dim] or None, where state holds the latents/actions so far (a VLM or scene-rule
    intent source reads them); on_chunk(index, video, actions) is called after each generated chunk."""
    b, n_ctx = context_actions.shape[:2]
    cache = engine.init_cache(b)
    videos, actions, timings, memory = [], [], [], []
    state: dict[str, Any] = {"video": videos, "actions": actions}
    for c in range(n_ctx):
        video_c, actions_c = jnp.asarray(context_video[:, c]), jnp.asarray(context_actions[:, c])
        videos.append(np.asarray(video_c))
        actions.append(np.asarray(actions_c))
        g = guidance_fn(c, state) if guidance_fn else None
        cache = engine.commit(params, cache, c, video_c, actions_c, g)
        memory.append(kv_memory.memory_report(cache))
    for c in range(n_ctx, n_ctx + chunks):
        t: dict[str, float] = {}
        start = time.perf_counter()
        g = guidance_fn(c, state) if guidance_fn else None
        if g is not None:
            jax.block_until_ready(g)
        t["guidance"] = time.perf_counter() - start
        rng, key = jax.random.split(rng)
        video_c, actions_c = engine.denoise(params, cache, c, g, key, t)
        cache = engine.commit(params, cache, c, video_c, actions_c, g, t)
        videos.append(np.asarray(video_c))
        actions.append(np.asarray(actions_c))
        timings.append(t)
        memory.append(kv_memory.memory_report(cache))
        if on_chunk is not None:
            on_chunk(c, videos[-1], actions[-1])
    return RolloutResult(np.stack(videos, 1), np.stack(actions, 1), n_ctx, timings, memory)


def chain_waypoints(chunk_waypoints: np.ndarray) -> np.ndarray:
    """Per-chunk ego-frame waypoints [N, K, 3] (each chunk in the frame of its own start; the last waypoint
    is the next chunk's start) → one path [N·K, 3] in the frame of the first chunk's start."""
    pose = np.zeros(3)
    out = []
    for wps in chunk_waypoints:
        c, s = np.cos(pose[2]), np.sin(pose[2])
        xy = pose[:2] + wps[:, :2] @ np.array([[c, s], [-s, c]])
        path = np.concatenate([xy, (pose[2] + wps[:, 2:3])], axis=1)
        out.append(path)
        pose = path[-1]
    return np.concatenate(out, 0)


def latency_table(timings: list[dict[str, float]]) -> str:
    stages = list(dict.fromkeys(k for t in timings for k in t))
    rows = [f"{'stage':<26}{'mean s/chunk':>14}{'max':>10}"]
    for s in stages:
        vals = [t.get(s, 0.0) for t in timings]
        rows.append(f"{s:<26}{np.mean(vals):>14.4f}{np.max(vals):>10.4f}")
    total = [sum(t.values()) for t in timings]
    rows.append(f"{'total':<26}{np.mean(total):>14.4f}{np.max(total):>10.4f}")
    return "\n".join(rows)


def memory_table(memory: list[dict[str, float]], full_tokens_per_chunk: int, bytes_per_token: float) -> str:
    """Memory per chunk next to what a full cache would hold, and the reduction factor."""
    rows = [f"{'chunk':>6}{'tokens kept':>13}{'MiB kept':>10}{'full-cache MiB':>16}{'reduction':>11}"]
    for i, m in enumerate(memory):
        full = (i + 1) * full_tokens_per_chunk * bytes_per_token / 2 ** 20
        kept = m["used_bytes"] / 2 ** 20
        rows.append(f"{i:>6}{m['tokens']:>13}{kept:>10.3f}{full:>16.3f}{full / max(kept, 1e-12):>10.1f}x")
    return "\n".join(rows)


# ----- CLI --------------------------------------------------------------------------------------------------
def load_trained_params(workdir: str, config, use_ema: bool = True):
    """Params (EMA by default) of the latest training checkpoint in WORKDIR/checkpoints."""
    import orbax.checkpoint as ocp
    from wam_jax.training.trainer import Trainer
    path = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no training checkpoints at {path!r}: pass the --workdir of a `train` run")
    manager = ocp.CheckpointManager(path)
    step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{path!r} holds no checkpoint steps")
    # Only the trainer's abstract (sharded) state is needed; no data is read and no intent table is built.
    trainer = Trainer(config, workdir, data=_NoData(), guidance_table=np.zeros((1,)))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state)))
    state = restored["state"]
    return (state.ema_params if use_ema else state.params), step


class _NoData:
    def get_state(self):
        return {}

    def set_state(self, state):
        pass


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True, help="workdir of a `train` run")
    parser.add_argument("--chunks", type=int, default=None, help="chunks to generate (default rollout.chunks)")
    parser.add_argument("--out", default="out/rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-params", action="store_true", help="use raw params instead of EMA")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)
    from wam_jax.models import latents as latent_codecs
    from wam_jax.data import ActionNorm, make_iterator
    from wam_jax.data import prepare_batch

    wan, wam = wam_lib.build_configs(config)
    params, step = load_trained_params(args.checkpoint, config, use_ema=not args.raw_params)
    engine = RolloutEngine(wan, wam, SamplerConfig.from_config(config.sampler),
                           kv_memory.MemoryConfig.from_config(config.memory))
    norm = ActionNorm.from_config(config.action_norm)
    guidance_table = None
    if config.guidance.enabled:
        from wam_jax import guidance
        guidance_table = guidance.intent_table(config)
    raw = next(make_iterator(config))
    raw = {k: v[:1] for k, v in raw.items()}
    batch = prepare_batch(raw, config, norm, guidance_table)
    n = config.chunks
    ctx = config.rollout.context_chunks
    f = wam.latent_frames_per_chunk
    lat = batch["latents"].reshape(1, n, f, *batch["latents"].shape[2:])
    guid = batch.get("guidance")
    chunks = args.chunks or config.rollout.chunks
    gfn = (lambda c, _: jnp.asarray(guid[:, min(c, n - 1)][:, None])) if guid is not None else None
    result = run_rollout(engine, params, lat[:, :ctx], batch["actions"][:, :ctx], chunks, jax.random.key(args.seed),
                         gfn)
    os.makedirs(args.out, exist_ok=True)
    planned = norm.denormalize(result.actions[0])
    reference = raw["waypoints"][0]
    path = chain_waypoints(planned)
    ref_path = chain_waypoints(reference)
    np.savez(os.path.join(args.out, "rollout.npz"), planned_waypoints=planned, reference_waypoints=reference,
             planned_path=path, reference_path=ref_path, latents=result.video[0])
    with open(os.path.join(args.out, "trajectory.json"), "w") as fp:
        json.dump({"checkpoint_step": step, "context_chunks": ctx, "planned_chunks": planned.tolist(),
                   "planned_path": path.tolist()}, fp)
    _plot_paths(os.path.join(args.out, "trajectory.png"), path, ref_path, ctx * wam.waypoints_per_chunk,
                len(reference) * wam.waypoints_per_chunk)
    written = ["trajectory.png", "trajectory.json", "rollout.npz"]
    if latent_codecs.can_decode(config):
        frames = latent_codecs.decode_latents(result.video[0].reshape(-1, *result.video.shape[3:])[None], config,
                                              latent_codecs.load_vae(config))[0]
        from wam_jax.tools import video_io
        video_io.write_video(os.path.join(args.out, "imagined.mp4"), frames, fps=config.rollout.video_fps)
        written.append("imagined.mp4")
    print(f"rollout of {chunks} chunks after {ctx} context chunk(s), checkpoint step {step}")
    print(latency_table(result.timings))
    per_token = result.memory[-1]["allocated_bytes"] / max(engine.sizes.slots, 1)
    print(memory_table(result.memory, engine.sizes.video_tokens + engine.sizes.action_tokens, per_token))
    print(f"wrote {', '.join(os.path.join(args.out, w) for w in written)}")
    return 0


def _plot_paths(path_png, planned, reference, context_points, reference_points):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(reference[:, 0], reference[:, 1], "k--", label="reference")
    ax.plot(planned[:context_points, 0], planned[:context_points, 1], "b-", lw=2, label="context")
    ax.plot(planned[context_points:, 0], planned[context_points:, 1], "r.-", label="planned")
    ax.set_xlabel("x forward [m]")
    ax.set_ylabel("y left [m]")
    ax.axis("equal")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_png, dpi=100)
    plt.close(fig)
