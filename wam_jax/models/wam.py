"""DriveWAM: the Wan video DiT as an autoregressive video-action policy.

Token sequence. An example holds N chunks (a chunk ≈ 4 s of driving); chunk n contributes its video latent
tokens (F latent frames × h × w patches) followed by its K action tokens (normalised ego-frame increments, see
`wam_jax.actions`). For teacher forcing the sequence holds S=2 *streams* of all chunks: stream 0 clean (the
context: actions at t = 0, video at t = 0 or, with noisy-history augmentation, at a small τ) and stream 1
noised (the prediction targets), trained in one pass. Attention is `attention_rule` over per-token ids
(stream, chunk, modality); the paper's inverse-dynamics layout (default):

    every token                → the clean stream of chunks < n
    clean video n              → clean video n;         clean actions n → clean video n, clean actions n
    noisy video n              → noisy video n;         noisy actions n → clean video n, noisy actions n

so actions are decoded from their chunk's (clean in training, generated at inference) video and never see the
noisy video; `flow.layout=joint` keeps the older rule (a token sees its whole chunk of its own stream), and
`flow.layout=history_only` decodes actions from the history alone (the no-video-supervision ablation). With
S=1 (rollout: past chunks come from the KV cache; diffusion forcing) stream 0 follows the clean rows.

RoPE: video token (chunk n, frame f, row i, col j) sits at (n·F + f, i, j); action token k of chunk n at time
n·F + (k+1)·F/K − 1 (the waypoint's time on the latent-frame axis, the last waypoint on the chunk's last
frame) and a fixed spatial position (`action_rope_hw`, default the grid centre, where the ego car is in an
ego-centred view).

Guidance (scene-evolving, temporally localized): per-chunk intent embeddings [B, N, Lg, text_dim] go through
Wan's text projection; chunk n's tokens cross-attend only to chunk n's embedding. Without guidance every token
attends to one shared all-zero context.

Parameters: `patch_embed`, `condition_embedder`, `blocks`, `head` are exactly the Wan DiT's (an imported Wan
checkpoint drops in) apart from each block's ego-state branch (`norm_ego`, `attn_ego`, zero-initialised output);
`action_embed`, `action_time`, `action_head` (MLP encoder / MLP decoder of the action increments) and
`ego_embed` are new. docs/MODEL.md describes the layout, ego branch, objective and sampler.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax.models.attention import MaskSpec
from wam_jax.models.layers import dense, layer_norm_f32, timestep_features, unpatchify, video_positions
from wam_jax.models.wan_dit import (ConditionEmbedder, OutputHead, PatchEmbed, WanBlocks, WanConfig,
                                    rope_from_positions)

WAN_PARAM_GROUPS = ("patch_embed", "condition_embedder", "blocks", "head")
ACTION_PARAM_GROUPS = ("action_embed", "action_time", "action_head")
EGO_PARAM_GROUPS = ("ego_embed",)          # plus each block's `norm_ego` and `attn_ego` (inside "blocks")
EGO_BLOCK_PARTS = ("norm_ego", "attn_ego")
EGO_FEATURES = ("speed m/s", "acceleration m/s^2", "curvature 1/m")


@dataclasses.dataclass(frozen=True)
class WamConfig:
    """Token layout of DriveWAM (sizes in latent units)."""
    latent_frames_per_chunk: int          # F
    latent_height: int                    # h (before the 2x2 patching)
    latent_width: int
    waypoints_per_chunk: int              # K
    action_dim: int = 3                   # x, y, heading
    guidance_tokens: int = 1              # Lg: intent embedding length per chunk
    action_rope_hw: tuple[float, float] | None = None
    layout: str = "inverse_dynamics"      # attention layout (`attention_rule`); set through config.flow.layout
    ego_scale: tuple[float, float, float] = (0.1, 0.5, 10.0)   # ego state × this before its MLP (~unit scale)

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ConfigError(f"flow.layout={self.layout!r} unknown; choose one of {LAYOUTS}")

    @classmethod
    def from_config(cls, values: Mapping[str, Any], where: str = "wam config") -> "WamConfig":
        return dataclass_from_config(cls, values, where)

    def check(self, wan: WanConfig):
        pt, ph, pw = wan.patch_size
        if self.latent_frames_per_chunk % pt or self.latent_height % ph or self.latent_width % pw:
            raise ConfigError(f"latent chunk ({self.latent_frames_per_chunk}, {self.latent_height}, "
                              f"{self.latent_width}) is not divisible by the patch size {wan.patch_size}")

    def grid(self, wan: WanConfig) -> tuple[int, int, int]:
        pt, ph, pw = wan.patch_size
        return self.latent_frames_per_chunk // pt, self.latent_height // ph, self.latent_width // pw

    def video_tokens(self, wan: WanConfig) -> int:
        f, h, w = self.grid(wan)
        return f * h * w


VIDEO, ACTION = 0, 1       # modality ids
CLEAN, NOISY = 0, 1        # stream ids (teacher forcing: stream 0 clean context, stream 1 noised targets)
INVERSE_DYNAMICS, JOINT, HISTORY_ONLY = "inverse_dynamics", "joint", "history_only"
LAYOUTS = (INVERSE_DYNAMICS, JOINT, HISTORY_ONLY)


def attention_rule(q: Mapping[str, Any], k: Mapping[str, Any], layout: str = INVERSE_DYNAMICS):
    """The self-attention mask as a rule over token ids: True where query q may attend to key k.

    q, k: {"stream", "chunk", "modality"} integer arrays (numpy or jax) that broadcast against each other.
    Both layouts: every token sees the clean stream of earlier chunks.
    inverse_dynamics (the paper's): within chunk n, clean video sees clean video; clean actions see clean video
      and clean actions; noisy video sees only noisy video; noisy actions see noisy actions and the *clean*
      video of chunk n (actions are decoded from the chunk's future video), never the noisy video.
    joint: within chunk n a token sees its whole chunk of its own stream (video and actions denoised together).
    history_only: within chunk n a token sees only its own modality of its own stream, so a chunk's actions come
      from the earlier chunks alone (a policy without a world model: with flow.video_weight=0 the paper's "no
      video supervision" ablation, where no chunk video is generated to decode actions from).
    With one stream (rollout, diffusion forcing) stream 0 follows the clean rows.
    This is the one definition of the mask; `TokenLayout.self_mask` evaluates it densely (reference and tests),
    attention kernels evaluate it per block from the ids."""
    earlier_clean = (k["stream"] == CLEAN) & (k["chunk"] < q["chunk"])
    same_chunk = k["chunk"] == q["chunk"]
    if layout == JOINT:
        return earlier_clean | (same_chunk & (k["stream"] == q["stream"]))
    if layout == HISTORY_ONLY:
        return earlier_clean | (same_chunk & (k["stream"] == q["stream"]) & (k["modality"] == q["modality"]))
    if layout != INVERSE_DYNAMICS:
        raise ValueError(f"layout {layout!r} unknown; choose one of {LAYOUTS}")
    q_clean, k_clean = q["stream"] == CLEAN, k["stream"] == CLEAN
    k_video, q_action = k["modality"] == VIDEO, q["modality"] == ACTION
    clean_own = q_clean & k_clean & (k_video | q_action)
    noisy_own = ~q_clean & ~k_clean & (k["modality"] == q["modality"])
    actions_from_clean_video = ~q_clean & q_action & k_clean & k_video
    return earlier_clean | (same_chunk & (clean_own | noisy_own | actions_from_clean_video))


@dataclasses.dataclass(frozen=True)
class TokenLayout:
    """Static description of a token sequence: S streams × N chunks × (Lv video + K action tokens), or with
    `blocks` only those (stream, chunk) blocks, in that order (`needed_blocks`: the ones a loss can reach)."""
    streams: int
    chunks: int
    video_tokens: int
    action_tokens: int
    layout: str = INVERSE_DYNAMICS
    blocks: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} unknown; choose one of {LAYOUTS}")
        if self.blocks is not None:
            if not self.blocks or len(set(self.blocks)) != len(self.blocks) or any(
                    not (0 <= s < self.streams and 0 <= n < self.chunks) for s, n in self.blocks):
                raise ValueError(f"blocks {self.blocks} must be distinct (stream, chunk) pairs of a "
                                 f"{self.streams} x {self.chunks} grid")

    @property
    def block_list(self) -> tuple[tuple[int, int], ...]:
        """(stream, chunk) of every block in sequence order: stream-major over the grid unless `blocks`."""
        if self.blocks is not None:
            return tuple(self.blocks)
        return tuple((s, n) for s in range(self.streams) for n in range(self.chunks))

    @property
    def per_chunk(self) -> int:
        return self.video_tokens + self.action_tokens

    @property
    def length(self) -> int:
        return len(self.block_list) * self.per_chunk

    @functools.cached_property
    def token_ids(self) -> dict[str, np.ndarray]:
        """int32 [L] per id: stream, chunk and modality of every token, in sequence order."""
        s, n = np.asarray(self.block_list, np.int32).T
        rep = lambda a: np.repeat(a, self.per_chunk).astype(np.int32)
        modality = np.tile(np.r_[np.full(self.video_tokens, VIDEO), np.full(self.action_tokens, ACTION)],
                           len(self.block_list)).astype(np.int32)
        return {"stream": rep(s), "chunk": rep(n), "modality": modality}

    @property
    def stream_ids(self) -> np.ndarray:
        return self.token_ids["stream"]

    @property
    def chunk_ids(self) -> np.ndarray:
        return self.token_ids["chunk"]

    def rule(self, q: Mapping[str, Any], k: Mapping[str, Any]):
        """`attention_rule` of this layout."""
        return attention_rule(q, k, self.layout)

    def self_mask(self) -> np.ndarray:
        """bool [L, L]: `attention_rule` evaluated for every (query row, key column) pair."""
        ids = self.token_ids
        return self.rule({n: a[:, None] for n, a in ids.items()}, {n: a[None, :] for n, a in ids.items()})

    def cross_mask(self, guidance_tokens: int) -> np.ndarray:
        """bool [L, N*Lg]: chunk n's tokens see only chunk n's guidance tokens."""
        key_chunk = np.repeat(np.arange(self.chunks), guidance_tokens)
        return self.chunk_ids[:, None] == key_chunk[None, :]

    def cross_structure(self, guidance_tokens: int) -> MaskSpec:
        """`cross_mask` as structure (chunk ids of the tokens and of the guidance tokens)."""
        return MaskSpec({"chunk": self.chunk_ids}, {"chunk": np.repeat(np.arange(self.chunks), guidance_tokens)},
                        same_chunk)


def needed_blocks(streams: int, chunks: int, loss_chunks, layout: str = INVERSE_DYNAMICS):
    """The (stream, chunk) blocks that the outputs of the last stream's `loss_chunks` depend on, in grid order.

    A block is needed if its output is scored, or if a needed block's tokens attend to any of its tokens under
    `attention_rule` (closed transitively). Teacher forcing with context chunks (flow.loss_from_chunk > 0) skips
    the noised copies of the context chunks, and the joint / history-only layouts skip the last clean chunk:
    nothing reads them."""
    full = TokenLayout(streams, chunks, 1, 1, layout)
    ids = full.token_ids
    sees = full.self_mask()                                            # [L, L] over 2 tokens per block
    block_of = ids["stream"] * chunks + ids["chunk"]
    needed = {(streams - 1) * chunks + n for n in loss_chunks}
    while True:
        rows = np.isin(block_of, sorted(needed))
        more = set(np.unique(block_of[sees[rows].any(axis=0)]).tolist()) | needed
        if more == needed:
            break
        needed = more
    return tuple((s, n) for s, n in full.block_list if s * chunks + n in needed)


def same_chunk(q: Mapping[str, Any], k: Mapping[str, Any]):
    """Cross-attention rule: a token sees its own chunk's guidance tokens."""
    return q["chunk"] == k["chunk"]


def action_time_positions(frames: int, waypoints: int) -> np.ndarray:
    """Latent-frame-axis position of each waypoint within a chunk: (k+1)·F/K − 1."""
    return (np.arange(1, waypoints + 1) * frames / waypoints - 1.0).astype(np.float32)


def check_rope_range(wan: WanConfig, wam: WamConfig, chunks: int):
    """Positions of `chunks` chunks must lie inside Wan's RoPE table: diffusers precomputes `rope_max_seq_len`
    positions per axis, so an exported model could not run a longer sequence."""
    f, h, w = wam.grid(wan)
    need = max(chunks * f, h, w)
    if need > wan.rope_max_seq_len:
        raise ValueError(f"{chunks} chunk(s) of {f} latent frames (grid {h}×{w}) need {need} RoPE positions per axis, "
                         f"model.rope_max_seq_len={wan.rope_max_seq_len}; raise it or roll out fewer chunks")


def chunk_positions(wam: WamConfig, wan: WanConfig) -> np.ndarray:
    """RoPE positions [Lv + K, 3] of one chunk starting at frame 0."""
    f, h, w = wam.grid(wan)
    hw = wam.action_rope_hw if wam.action_rope_hw is not None else ((h - 1) / 2.0, (w - 1) / 2.0)
    act = np.zeros((wam.waypoints_per_chunk, 3), np.float32)
    act[:, 0] = action_time_positions(f, wam.waypoints_per_chunk)
    act[:, 1], act[:, 2] = hw
    return np.concatenate([video_positions(f, h, w), act], axis=0)


class ActionEmbed(nn.Module):
    """Waypoints (normalised) → tokens: a two-layer MLP of its own."""
    wan: WanConfig

    @nn.compact
    def __call__(self, actions):
        c = self.wan
        h = nn.silu(dense(c.dim, (None, "embed"), "linear_1", dtype=c.compute_dtype, param_dtype=c.weights_dtype)(
            actions.astype(c.compute_dtype)))
        return dense(c.dim, ("embed", "embed_out"), "linear_2", dtype=c.compute_dtype, param_dtype=c.weights_dtype)(h)


class ActionDecoder(nn.Module):
    """Action tokens → velocity of the (normalised) action increments: the final adaLN (shift/scale from the
    action time embedding, as Wan's head) and a two-layer MLP of width D, its last layer zero-initialised."""
    wan: WanConfig
    action_dim: int

    @nn.compact
    def __call__(self, x, temb):
        """x: [B, L, D]; temb: [B, L, D] float32 → [B, L, action_dim]."""
        c = self.wan
        table = self.param("scale_shift_table",
                           nn.with_logical_partitioning(lambda k, s, d: jax.random.normal(k, s, d) / c.dim ** 0.5,
                                                        (None, "embed")), (2, c.dim), c.weights_dtype)
        h = layer_norm_f32(x, c.eps) * (1 + table[1].astype(jnp.float32) + temb) + table[0].astype(jnp.float32) + temb
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weights_dtype)
        h = nn.silu(dense(c.dim, ("embed", "mlp"), "linear_1", **kw)(h.astype(c.compute_dtype)))
        return dense(self.action_dim, ("mlp", None), "proj_out", kernel_init=nn.initializers.zeros_init(), **kw)(h)


class EgoEmbed(nn.Module):
    """Ego state (speed, acceleration, curvature) [B, N, 3] → one token per chunk [B, N, 1, D]: a two-layer MLP
    on the scaled state (read by every block's ego-state cross-attention)."""
    wan: WanConfig
    scale: tuple[float, ...]

    @nn.compact
    def __call__(self, ego):
        c = self.wan
        x = ego.astype(jnp.float32) * jnp.asarray(self.scale, jnp.float32)
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weights_dtype)
        h = nn.silu(dense(c.dim, (None, "embed"), "linear_1", **kw)(x.astype(c.compute_dtype)))
        return dense(c.dim, ("embed", "embed_out"), "linear_2", **kw)(h)[:, :, None]


class ActionTimeEmbed(nn.Module):
    """The action tokens' own timestep embedding + adaLN modulation (same structure as the video's, so it can be
    initialised from the pretrained video time embedder)."""
    wan: WanConfig

    @nn.compact
    def __call__(self, t):
        c = self.wan
        kw = dict(param_dtype=c.weights_dtype, dtype=jnp.float32, kernel_init=nn.initializers.normal(0.02))
        temb = dense(c.dim, ("embed", "embed_out"), "time_embedder_linear_2", **kw)(
            nn.silu(dense(c.dim, (None, "embed"), "time_embedder_linear_1", **kw)(timestep_features(t, c.freq_dim))))
        mod = dense(6 * c.dim, ("embed", "embed_out"), "time_proj", **kw)(nn.silu(temb))
        return temb, mod.reshape(*mod.shape[:-1], 6, c.dim)


class DriveWAM(nn.Module):
    wan: WanConfig
    wam: WamConfig
    return_kv: bool = False

    @nn.compact
    def __call__(self, video, actions, t_video, t_action, guidance=None, chunk_offset=0, past=None, ego=None,
                 blocks=None):
        """Predicts flow-matching velocities for every token.

        video: [B, S, N, F, H, W, z] latents; actions: [B, S, N, K, A] normalised waypoints;
        t_video, t_action: [B, S, N] flow times in [0, 1] (0 = clean); guidance: [B, N, Lg, text_dim] or None;
        chunk_offset: index of the first chunk (scalar, may be traced) for RoPE time positions;
        past: KV cache of earlier chunks {"k", "v": [layers, B, P, H, Dh], "valid": bool [layers, B, P]}; every
        valid cached token is visible to every token of this call (they all belong to earlier chunks);
        ego: [B, N, 3] ego state (speed m/s, acceleration m/s², curvature 1/m) at the last observed frame before
        each chunk, read by chunk n's tokens only; None = zeros.
        Returns (video_velocity [B, S, N, F, H, W, z] f32, action_velocity [B, S, N, K, A] f32, qkv) where qkv
        holds this call's per-layer {"q", "k", "v"} [layers, B, L, H, Dh] when `return_kv`, else None.
        blocks: static tuple of the (stream, chunk) blocks to compute (`needed_blocks`), or None for all; the
        outputs of the others are zeros (nothing may read them: they must not be needed by the kept ones).
        """
        c, w = self.wan, self.wam
        w.check(c)
        chex.assert_rank([video, actions, t_video, t_action], [7, 5, 3, 3])
        b, s, n = video.shape[:3]
        k = actions.shape[3]
        if video.shape[3:6] != (w.latent_frames_per_chunk, w.latent_height, w.latent_width):
            raise ValueError(f"video chunk shape {video.shape[3:6]} != configured "
                             f"{(w.latent_frames_per_chunk, w.latent_height, w.latent_width)}")
        if k != w.waypoints_per_chunk or actions.shape[4] != w.action_dim:
            raise ValueError(f"actions {actions.shape[3:]} != configured ({w.waypoints_per_chunk}, {w.action_dim})")
        layout = TokenLayout(s, n, w.video_tokens(c), k, w.layout, None if blocks is None else tuple(blocks))
        if isinstance(chunk_offset, int):       # a traced offset is checked by the caller (RolloutEngine)
            check_rope_range(c, w, chunk_offset + n)
        sel_s, sel_n = (np.asarray(a) for a in zip(*layout.block_list))
        nb = len(sel_s)
        pick = (lambda x: x[:, sel_s, sel_n]) if blocks is not None else (lambda x: x.reshape(b, s * n, *x.shape[3:]))

        vid_tok, grid = PatchEmbed(c, name="patch_embed")(pick(video).reshape(b * nb, *video.shape[3:]))
        vid_tok = vid_tok.reshape(b, nb, layout.video_tokens, c.dim)
        act_tok = ActionEmbed(c, name="action_embed")(pick(actions))
        tokens = jnp.concatenate([vid_tok, act_tok.astype(vid_tok.dtype)], axis=2).reshape(b, layout.length, c.dim)

        embedder = ConditionEmbedder(c, name="condition_embedder")
        temb_v, mod_v = embedder.time(pick(t_video) * 1000.0)            # [B,nb,D], [B,nb,6,D]
        temb_a, mod_a = ActionTimeEmbed(c, name="action_time")(pick(t_action) * 1000.0)
        # Per run, not per token: each chunk's video tokens share one modulation, its action tokens another.
        mod = (jnp.stack([mod_v, mod_a], axis=2), np.arange(layout.per_chunk) >= layout.video_tokens)

        base = np.tile(chunk_positions(w, c), (nb, 1))
        frame_shift = np.zeros_like(base)
        frame_shift[:, 0] = layout.chunk_ids * grid[0]
        positions = jnp.asarray(base + frame_shift) + jnp.asarray([grid[0], 0, 0], jnp.float32) * chunk_offset
        rope = rope_from_positions(positions[None], c)

        # The masks go in as structure (ids + rule); the attention kernels evaluate them per run / block.
        self_mask = MaskSpec(layout.token_ids, layout.token_ids, layout.rule)
        if guidance is None:
            context = embedder.text(jnp.zeros((b, 1, c.text_dim), c.compute_dtype))
            cross_mask = None
        else:
            chex.assert_shape(guidance, (b, n, w.guidance_tokens, c.text_dim))
            context = embedder.text(guidance.reshape(b, n * w.guidance_tokens, c.text_dim).astype(c.compute_dtype))
            cross_mask = layout.cross_structure(w.guidance_tokens)

        if ego is None:
            ego = jnp.zeros((b, n, len(EGO_FEATURES)), jnp.float32)
        chex.assert_shape(ego, (b, n, len(EGO_FEATURES)))
        ego_tokens = EgoEmbed(c, w.ego_scale, name="ego_embed")(ego).reshape(b, n, c.dim)
        ego_mask = layout.cross_structure(1)

        x, kv = WanBlocks(c, return_kv=self.return_kv, name="blocks")(tokens, context, mod, rope, self_mask,
                                                                        cross_mask, past, ego_tokens, ego_mask)
        x = x.reshape(b, nb, layout.per_chunk, c.dim)
        x_v, x_a = x[:, :, :layout.video_tokens], x[:, :, layout.video_tokens:]
        pt, ph, pw = c.patch_size
        v_out = OutputHead(c, pt * ph * pw * c.out_channels, name="head")(
            x_v.reshape(b, -1, c.dim),
            jnp.broadcast_to(temb_v[:, :, None], (b, nb, layout.video_tokens, c.dim)).reshape(b, -1, c.dim))
        a_out = ActionDecoder(c, w.action_dim, name="action_head")(
            x_a.reshape(b, -1, c.dim),
            jnp.broadcast_to(temb_a[:, :, None], (b, nb, k, c.dim)).reshape(b, -1, c.dim))
        v_out = unpatchify(v_out.reshape(b * nb, *grid, -1).astype(jnp.float32), c.patch_size, c.out_channels)
        v_out = v_out.reshape(b, nb, *v_out.shape[1:])
        a_out = a_out.reshape(b, nb, k, w.action_dim).astype(jnp.float32)
        if blocks is None:
            return v_out.reshape(b, s, n, *v_out.shape[2:]), a_out.reshape(b, s, n, k, w.action_dim), kv
        # Skipped blocks read as zeros: the caller scores none of them.
        full_v = jnp.zeros((b, s, n, *v_out.shape[2:]), v_out.dtype).at[:, sel_s, sel_n].set(v_out)
        full_a = jnp.zeros((b, s, n, k, w.action_dim), a_out.dtype).at[:, sel_s, sel_n].set(a_out)
        return full_v, full_a, kv


def dummy_inputs(wan: WanConfig, wam: WamConfig, batch=1, streams=1, chunks=1, guidance=True):
    f, h, wd = wam.latent_frames_per_chunk, wam.latent_height, wam.latent_width
    video = jnp.zeros((batch, streams, chunks, f, h, wd, wan.in_channels))
    actions = jnp.zeros((batch, streams, chunks, wam.waypoints_per_chunk, wam.action_dim))
    t = jnp.zeros((batch, streams, chunks))
    g = jnp.zeros((batch, chunks, wam.guidance_tokens, wan.text_dim)) if guidance else None
    return video, actions, t, t, g


def init_params(wan: WanConfig, wam: WamConfig, rng: jax.Array):
    model = DriveWAM(wan, wam)
    return nn.unbox(model.init(rng, *dummy_inputs(wan, wam))["params"])


def abstract_params(wan: WanConfig, wam: WamConfig):
    """Boxed (logically annotated) parameter shapes without allocating anything."""
    model = DriveWAM(wan, wam)
    return jax.eval_shape(lambda r: model.init(r, *dummy_inputs(wan, wam))["params"], jax.random.key(0))


def without_ego(tree):
    """A params subtree minus the blocks' ego-state branch (what a plain Wan checkpoint holds)."""
    if not isinstance(tree, Mapping):
        return tree
    return {k: without_ego(v) for k, v in tree.items() if k not in EGO_BLOCK_PARTS}


def ego_only(tree):
    """The blocks' ego-state branch parts of a params subtree (the same nesting, nothing else)."""
    if not isinstance(tree, Mapping):
        return None
    out = {}
    for k, v in tree.items():
        sub = v if k in EGO_BLOCK_PARTS else ego_only(v)
        if sub:
            out[k] = sub
    return out


def with_ego(wan_tree, drivewam_tree):
    """wan_tree with the ego-state branch parts of drivewam_tree put back in (kept freshly initialised)."""
    if not isinstance(wan_tree, Mapping):
        return wan_tree
    out = {k: with_ego(v, drivewam_tree.get(k, {})) for k, v in wan_tree.items()}
    out.update({k: v for k, v in drivewam_tree.items() if k in EGO_BLOCK_PARTS})
    return out


def merge_pretrained_wan(params: dict, wan_params: dict) -> dict:
    """Puts imported Wan DiT params into a DriveWAM tree; the action time embedder starts as a copy of the
    pretrained video time embedder (same timestep semantics), the other action parts and the ego-state branch
    stay freshly initialised (its zero output projection keeps the video prediction the imported Wan's)."""
    merged = dict(params)
    for group in WAN_PARAM_GROUPS:
        want = jax.tree.map(lambda x: x.shape, without_ego(params[group]))
        got = jax.tree.map(lambda x: x.shape, wan_params[group])
        if want != got:
            raise ValueError(f"pretrained Wan params group {group!r} does not fit the DriveWAM config: "
                             f"{got} vs {want}")
        merged[group] = with_ego(wan_params[group], params[group])
    ce = wan_params["condition_embedder"]
    merged["action_time"] = {name: ce[name] for name in ("time_embedder_linear_1", "time_embedder_linear_2",
                                                         "time_proj")}
    return merged


def build_configs(config) -> tuple[WanConfig, WamConfig]:
    """(WanConfig, WamConfig) from an experiment config's `model` and `wam` sections (strict keys)."""
    wam = dict(config.wam)
    if "layout" in wam:
        raise ConfigError("config.wam.layout is not a key: the attention layout is config.flow.layout")
    flow = config.get("flow") or {}
    wam["layout"] = flow.get("layout", "inverse_dynamics")
    return WanConfig.from_config(config.model, "config.model"), WamConfig.from_config(wam, "config.wam")
