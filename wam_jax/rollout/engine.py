"""Autoregressive DriveWAM rollout: chunk after chunk, denoise the chunk's video and action tokens with a
flow-matching sampler, then commit the clean chunk's keys/values to the KV memory so later chunks attend to
it without recomputing the past.

    python -m wam_jax rollout --config experiments/FILE.py[:args] --checkpoint WORKDIR [--chunks N] [--out DIR]

Samplers (config.sampler): `video_then_action` (the paper's) first denoises the video from τ = 1 to
`video_stop` (0.6: partial denoising), then the actions from 1 to 0 given that latent; `joint` denoises both
together, each on its own step grid (a modality whose grid has no point between two evaluations keeps its
value). Solvers: euler, heun (second order); both run through `flow_matching.integrate_steps`.
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
from wam_jax import cli as wam_cli
from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax.models import wam as wam_lib
from wam_jax.tools import tables

SCHEDULES = ("joint", "video_then_action")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """Per chunk: `video_then_action` (the paper's) denoises the video `video_steps` steps from τ = 1 to
    `video_stop` (partial denoising: 0.6, clean pixels are not needed to act), then the actions `action_steps`
    steps from 1 to 0 given that latent; `joint` denoises both together, each on its own grid. The generated
    chunk enters the memory at τ = video_stop (open-loop imagination); observed chunks enter clean."""
    video_steps: int = 3
    action_steps: int = 10
    solver: str = "euler"
    shift: float = 1.0
    schedule: str = "video_then_action"
    video_stop: float = 0.6
    # Scale of the actions' starting noise: 1 samples the learned plan distribution; < 1 lowers the
    # temperature (0: the ODE from the noise mean, one deterministic plan per context) so that a policy
    # replanning every second does not jump between the modes (lane change or not) of its samples.
    action_noise: float = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"sampler.schedule={self.schedule!r} unknown; choose one of {SCHEDULES}")
        if self.solver not in fm.SOLVERS:
            raise ConfigError(f"sampler.solver={self.solver!r} unknown; choose one of {fm.SOLVERS}")
        if min(self.video_steps, self.action_steps) < 1:
            raise ConfigError("sampler step counts must be ≥ 1")
        if not 0.0 <= self.video_stop < 1.0:
            raise ConfigError(f"sampler.video_stop={self.video_stop} must lie in [0, 1)")
        if not 0.0 <= self.action_noise <= 1.0:
            raise ConfigError(f"sampler.action_noise={self.action_noise} must lie in [0, 1]")

    @classmethod
    def from_config(cls, values) -> "SamplerConfig":
        return dataclass_from_config(cls, values, "config.sampler")


def multirate_grid(video_steps: int, action_steps: int, shift: float,
                   video_stop: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Joint schedule: max(Sv, Sa) model evaluations; per evaluation the (from, to) time of each modality.
    Returns video [n, 2] and action [n, 2] arrays; a modality with from == to does not move that iteration."""
    n = max(video_steps, action_steps)
    grids = []
    for steps, stop in ((video_steps, video_stop), (action_steps, 0.0)):
        times = np.asarray(fm.sampling_schedule(steps, shift, stop), np.float32)
        idx = np.floor(np.arange(n + 1) * steps / n).astype(int)
        grids.append(np.stack([times[idx[:-1]], times[idx[1:]]], axis=1))
    return grids[0], grids[1]


def stage_grids(sampler: SamplerConfig):
    """[(stage name, video grid [S, 2], action grid [S, 2])] for the configured schedule."""
    if sampler.schedule == "joint":
        v, a = multirate_grid(sampler.video_steps, sampler.action_steps, sampler.shift, sampler.video_stop)
        return [("video+action denoising", v, a)]
    tv = np.asarray(fm.sampling_schedule(sampler.video_steps, sampler.shift, sampler.video_stop), np.float32)
    ta = np.asarray(fm.sampling_schedule(sampler.action_steps, sampler.shift), np.float32)
    video = (np.stack([tv[:-1], tv[1:]], 1), np.ones((sampler.video_steps, 2), np.float32))
    action = (np.full((sampler.action_steps, 2), tv[-1], np.float32), np.stack([ta[:-1], ta[1:]], 1))
    return [("video denoising", *video), ("action denoising", *action)]


def sampler_queries(sampler: SamplerConfig) -> list[tuple[str, float, float]]:
    """Every (stage, t_video, t_action) of the current chunk at which the sampler evaluates the model (Heun's
    corrector included, which never evaluates a leaf at t = 0)."""
    out = []
    for name, gv, ga in stage_grids(sampler):
        for (tv, sv), (ta, sa) in zip(gv, ga):
            out.append((name, float(tv), float(ta)))
            if sampler.solver == "heun":
                out.append((name, float(sv if sv > 0 else tv), float(sa if sa > 0 else ta)))
    return out


def uncovered_queries(flow, sampler: SamplerConfig, layout: str) -> list[str]:
    """The sampler's model queries that the training distribution of `flow` (a FlowConfig) never produces;
    empty when every query is covered. What a query needs depends on the layout:
    inverse_dynamics: the action tokens read their chunk's video as the *clean* copy, so the video τ they see
      must be 0 or inside the noisy-history range; the video prediction does not read its chunk's actions.
    joint: both modalities are one noisy chunk, so t_action = t_video unless action times are drawn
      independently; the video's own prediction needs nothing of the actions then."""
    lo, hi = flow.history_noise_range
    p = flow.history_noise_prob
    bad = []
    for name, tv, ta in sampler_queries(sampler):
        action_stage = name != "video denoising"
        if layout == "inverse_dynamics":
            if action_stage and not (tv == 0.0 and p < 1.0) and not (p > 0.0 and lo <= tv <= hi):
                bad.append(f"{name}: actions read their chunk's video at τ={tv:.3f}, training shows them clean "
                           f"video{'' if p == 0 else f' or τ in [{lo}, {hi}]'} (flow.history_noise_*)")
        elif not flow.independent_action_time and abs(tv - ta) > 1e-6 and (action_stage or tv != 1.0):
            bad.append(f"{name}: (t_video, t_action) = ({tv:.3f}, {ta:.3f}) but training draws t_action = t_video "
                       "(set flow.independent_action_time=True)")
    return bad


def check_sampler_covered(flow, sampler: SamplerConfig, layout: str):
    bad = uncovered_queries(flow, sampler, layout)
    if bad:
        raise ConfigError("the sampler queries the model where training never looked:\n  " + "\n  ".join(bad[:5])
                          + (f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""))


class RolloutEngine:
    """Jitted per-chunk denoising and memory commits for one model, batch size and memory configuration."""

    def __init__(self, wan, wam, sampler: SamplerConfig, memory: kv_memory.MemoryConfig):
        self.wan, self.wam, self.sampler, self.memory = wan, wam, sampler, memory
        self.model = wam_lib.DriveWAM(wan, wam, return_kv=True)
        self.sizes = kv_memory.pool_sizes(memory, wam.video_tokens(wan), wam.waypoints_per_chunk)
        self.stages = stage_grids(sampler)
        self._integrate = jax.jit(self._integrate_impl)
        # The old cache is donated: the commit writes the new chunk into its buffers in place, so the old and
        # the new cache never coexist (the caller must not read a cache after committing into it).
        self._commit = jax.jit(self._commit_impl, donate_argnums=(1,))
        self._integrate_uncached = jax.jit(self._integrate_uncached_impl)

    def check_positions(self, chunk_index: int):
        """Chunk `chunk_index` must lie within Wan's RoPE table (`rope_max_seq_len` positions per axis)."""
        wam_lib.check_rope_range(self.wan, self.wam, chunk_index + 1)

    @property
    def generated_video_time(self) -> float:
        """τ at which a generated chunk's video leaves the sampler (and enters the memory)."""
        return float(self.stages[0][1][-1, 1])

    # --- model calls ---------------------------------------------------------------------------------------
    def _velocity(self, params, past, x_v, x_a, t_v, t_a, guidance, ego, chunk_index):
        b = x_v.shape[0]
        full = lambda t: jnp.full((b, 1, 1), t)
        v, a, _ = self.model.apply({"params": params}, x_v[:, None, None], x_a[:, None, None], full(t_v), full(t_a),
                                   guidance, chunk_offset=chunk_index, past=past, ego=ego)
        return v[:, 0, 0], a[:, 0, 0]

    def _integrate_with(self, velocity, x_v, x_a, grid_v, grid_a):
        """One stage with the integrator of flow_matching (each modality on its own grid)."""
        return fm.integrate_steps(lambda x, t: velocity(x[0], x[1], t[0], t[1]), (x_v, x_a),
                                  (jnp.asarray(grid_v), jnp.asarray(grid_a)), self.sampler.solver)

    def _integrate_impl(self, params, cache, chunk_index, guidance, ego, x_v, x_a, grid_v, grid_a):
        past = kv_memory.past_view(cache)
        vel = lambda xv, xa, tv, ta: self._velocity(params, past, xv, xa, tv, ta, guidance, ego, chunk_index)
        return self._integrate_with(vel, x_v, x_a, grid_v, grid_a)

    def _integrate_uncached_impl(self, params, past_video, past_video_t, past_actions, guidance, ego, x_v, x_a,
                                 grid_v, grid_a):
        """Reference without a cache: the whole prefix (past chunks, video at its τ, + the noisy current one)
        in one block-causal pass per evaluation."""
        b, c = past_actions.shape[:2]

        def vel(xv, xa, tv, ta):
            video = jnp.concatenate([past_video, xv[:, None]], axis=1)[:, None]
            actions = jnp.concatenate([past_actions, xa[:, None]], axis=1)[:, None]
            t_video = jnp.concatenate([past_video_t, jnp.full((b, 1), tv)], axis=1)[:, None]
            t_action = jnp.concatenate([jnp.zeros((b, c)), jnp.full((b, 1), ta)], axis=1)[:, None]
            v, a, _ = self.model.apply({"params": params}, video, actions, t_video, t_action, guidance, ego=ego)
            return v[:, 0, -1], a[:, 0, -1]

        return self._integrate_with(vel, x_v, x_a, grid_v, grid_a)

    def _commit_impl(self, params, cache, chunk_index, video, video_t, actions, guidance, ego):
        b = video.shape[0]
        _, _, qkv = self.model.apply({"params": params}, video[:, None, None], actions[:, None, None],
                                     jnp.full((b, 1, 1), video_t), jnp.zeros((b, 1, 1)), guidance,
                                     chunk_offset=chunk_index, past=kv_memory.past_view(cache), ego=ego)
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
                self.sampler.action_noise * jax.random.normal(k_a, (batch, w.waypoints_per_chunk, w.action_dim)))

    def denoise(self, params, cache, chunk_index: int, guidance, rng, timings: dict | None = None, ego=None):
        """Samples chunk `chunk_index` from noise given the memory. guidance: [B, 1, Lg, text_dim] or None;
        ego: [B, 1, 3] ego state at the chunk's start or None. Returns (video at τ = generated_video_time,
        actions at τ = 0)."""
        self.check_positions(chunk_index)
        batch = cache["k"].shape[1]
        x_v, x_a = self.initial_noise(rng, batch)
        for name, grid_v, grid_a in self.stages:
            start = time.perf_counter()
            x_v, x_a = self._integrate(params, cache, jnp.int32(chunk_index), guidance, ego, x_v, x_a, grid_v,
                                       grid_a)
            jax.block_until_ready((x_v, x_a))
            if timings is not None:
                timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return x_v, x_a

    def denoise_uncached(self, params, past_video, past_actions, guidance, rng, past_video_t=None, ego=None):
        """Same sampling as `denoise`, recomputing the past from the given chunks (for testing).
        past_video_t: [B, C] τ of each past chunk's video (default 0: clean); ego: [B, C + 1, 3] or None."""
        b, c = past_actions.shape[:2]
        past_video_t = jnp.zeros((b, c)) if past_video_t is None else jnp.asarray(past_video_t, jnp.float32)
        x_v, x_a = self.initial_noise(rng, b)
        for _, grid_v, grid_a in self.stages:
            x_v, x_a = self._integrate_uncached(params, past_video, past_video_t, past_actions, guidance, ego, x_v,
                                                x_a, grid_v, grid_a)
        return x_v, x_a

    def commit(self, params, cache, chunk_index: int, video, actions, guidance, timings: dict | None = None,
               video_t: float = 0.0, ego=None):
        """Commits chunk `chunk_index` into `cache`, which is consumed (donated); returns the new cache. The
        chunk's video enters at τ = video_t (0 observed, `generated_video_time` imagined), its actions clean.
        A full cache raises once the chunk does not fit its slots."""
        kv_memory.check_capacity(self.sizes, self.memory, int(chunk_index))
        self.check_positions(chunk_index)
        start = time.perf_counter()
        cache = self._commit(params, cache, jnp.int32(chunk_index), video, jnp.float32(video_t), actions, guidance,
                             ego)
        jax.block_until_ready(cache)
        if timings is not None:
            timings["cache update"] = timings.get("cache update", 0.0) + time.perf_counter() - start
        return cache


@dataclasses.dataclass
class RolloutResult:
    video: np.ndarray                 # [B, N, F, h, w, z] latents of every chunk (context chunks as given,
                                      # generated ones at τ = video_time)
    actions: np.ndarray               # [B, N, K, A] normalised actions of every chunk
    generated_from: int               # index of the first generated chunk
    timings: list[dict[str, float]]   # per generated chunk, seconds per stage
    memory: list[dict[str, float]]    # per chunk, after its commit
    video_time: np.ndarray | None = None   # [N] τ of each chunk's video (0 context, video_stop generated)


GuidanceFn = Callable[[int, Mapping[str, Any]], Any]


def run_rollout(engine: RolloutEngine, params, context_video, context_actions, chunks: int, rng,
                guidance_fn: GuidanceFn | None = None, on_chunk: Callable | None = None,
                ego_fn: GuidanceFn | None = None) -> RolloutResult:
    """Commits the observed context chunks (clean), then generates `chunks` new ones (each enters the memory
    at the τ its video was denoised to: open-loop imagination).

    context_video: [B, C, F, h, w, z]; context_actions: [B, C, K, A] (normalised); guidance_fn(chunk_index,
    state) → [B, 1, Lg, text_dim] or None, where state holds the latents/actions so far (a VLM or scene-rule
    intent source reads them); ego_fn(chunk_index, state) → [B, 1, 3] ego state at the chunk's start or None;
    on_chunk(index, video, actions) is called after each generated chunk."""
    b, n_ctx = context_actions.shape[:2]
    cache = engine.init_cache(b)
    videos, actions, timings, memory = [], [], [], []
    state: dict[str, Any] = {"video": videos, "actions": actions}
    for c in range(n_ctx):
        video_c, actions_c = jnp.asarray(context_video[:, c]), jnp.asarray(context_actions[:, c])
        videos.append(np.asarray(video_c))
        actions.append(np.asarray(actions_c))
        g = guidance_fn(c, state) if guidance_fn else None
        e = ego_fn(c, state) if ego_fn else None
        cache = engine.commit(params, cache, c, video_c, actions_c, g, ego=e)
        memory.append(kv_memory.memory_report(cache))
    for c in range(n_ctx, n_ctx + chunks):
        t: dict[str, float] = {}
        start = time.perf_counter()
        g = guidance_fn(c, state) if guidance_fn else None
        if g is not None:
            jax.block_until_ready(g)
        t["guidance"] = time.perf_counter() - start
        e = ego_fn(c, state) if ego_fn else None
        rng, key = jax.random.split(rng)
        video_c, actions_c = engine.denoise(params, cache, c, g, key, t, ego=e)
        cache = engine.commit(params, cache, c, video_c, actions_c, g, t, video_t=engine.generated_video_time, ego=e)
        videos.append(np.asarray(video_c))
        actions.append(np.asarray(actions_c))
        timings.append(t)
        memory.append(kv_memory.memory_report(cache))
        if on_chunk is not None:
            on_chunk(c, videos[-1], actions[-1])
    video_time = np.r_[np.zeros(n_ctx), np.full(chunks, engine.generated_video_time)].astype(np.float32)
    return RolloutResult(np.stack(videos, 1), np.stack(actions, 1), n_ctx, timings, memory, video_time)


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
    rows = [[s, f"{np.mean([t.get(s, 0.0) for t in timings]):.4f}", f"{np.max([t.get(s, 0.0) for t in timings]):.4f}"]
            for s in stages]
    total = [sum(t.values()) for t in timings]
    rows.append(["total", f"{np.mean(total):.4f}", f"{np.max(total):.4f}"])
    return tables.format_table(["stage", "mean s/chunk", "max"], rows)


def memory_table(memory: list[dict[str, float]], full_tokens_per_chunk: int, bytes_per_token: float) -> str:
    """Memory per chunk next to what a full cache would hold, and the reduction factor."""
    rows = []
    for i, m in enumerate(memory):
        full = (i + 1) * full_tokens_per_chunk * bytes_per_token / 2 ** 20
        kept = m["used_bytes"] / 2 ** 20
        rows.append([i, m["tokens"], f"{kept:.3f}", f"{full:.3f}", f"{full / max(kept, 1e-12):.1f}x"])
    return tables.format_table(["chunk", "tokens kept", "MiB kept", "full-cache MiB", "reduction"], rows)


# ----- CLI --------------------------------------------------------------------------------------------------
def load_trained_params(workdir: str, config, use_ema: bool = True, step: int | None = None):
    """Params (EMA by default) of the newest intact training step of a run (or of a params checkpoint), placed on
    the config's mesh; (params, step). No Trainer: the shapes come from the model config alone."""
    from wam_jax import checkpoint, sharding
    wan, wam = wam_lib.build_configs(config)
    abstract = sharding.abstract_params(wam_lib.abstract_params(wan, wam), sharding.make_mesh(dict(config.mesh)))
    return checkpoint.load_params(workdir, abstract, "ema_params" if use_ema else "params", step)


@wam_cli.user_errors
def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m wam_jax rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    wam_cli.add_config_args(parser, checkpoint_arg=True)
    parser.add_argument("--chunks", type=int, default=None, help="chunks to generate (default rollout.chunks)")
    parser.add_argument("--out", default="out/rollout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-params", action="store_true", help="use raw params instead of EMA")
    args = parser.parse_args(argv)
    if not args.checkpoint:
        raise ConfigError("--checkpoint WORKDIR (a `train` run) is required")
    config = wam_cli.config_from_args(args, run_dir=args.checkpoint)
    from wam_jax.data import make_iterator, prepare_batch
    from wam_jax.experiment import Experiment
    from wam_jax.models import latents as latent_codecs

    exp = Experiment(config)
    wam = exp.wam
    check_sampler_covered(exp.flow, exp.sampler, wam.layout)
    params, step = load_trained_params(args.checkpoint, config, use_ema=not args.raw_params)
    norm = exp.action_norm
    guidance_table = exp.intent_table
    raw = next(make_iterator(config))
    raw = {k: v[:1] for k, v in raw.items()}
    batch = prepare_batch(raw, config, norm, guidance_table)
    n = config.chunks
    ctx = config.rollout.context_chunks
    f = wam.latent_frames_per_chunk
    lat = batch["latents"].reshape(1, n, f, *batch["latents"].shape[2:])
    guid = batch.get("guidance")
    chunks = args.chunks or config.rollout.chunks
    engine = exp.engine(chunks=ctx + chunks)
    gfn = (lambda c, _: jnp.asarray(guid[:, min(c, n - 1)][:, None])) if guid is not None else None
    ego = batch.get("ego")     # the clip's recorded ego state (the last recorded one past the clip's end)
    efn = (lambda c, _: jnp.asarray(ego[:, min(c, n - 1)][:, None])) if ego is not None else None
    result = run_rollout(engine, params, lat[:, :ctx], batch["actions"][:, :ctx], chunks, jax.random.key(args.seed),
                         gfn, ego_fn=efn)
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
    plot_paths(os.path.join(args.out, "trajectory.png"), path, ref_path, ctx * wam.waypoints_per_chunk,
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


def plot_paths(path_png, planned, reference, context_points, reference_points):
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
