"""Wan 2.1 / 2.2 video diffusion transformer in Flax Linen, numerically equal to diffusers'
`WanTransformer3DModel` (checked in tests/test_wan_dit.py).

Layout: latents are channels-last [B, T, H, W, C]. Tokens are the (1, 2, 2) patches in (frame, row, column)
raster order, the order diffusers flattens them in, so per-token timesteps [B, L] mean the same thing in both.

The building blocks (`ConditionEmbedder`, `WanBlock`, `WanBlocks`, `OutputHead`) are reused by DriveWAM, whose
token sequence interleaves video and action tokens; they therefore take explicit RoPE positions and attention
masks instead of assuming one video grid.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from wam_jax.config import ConfigError, dataclass_from_config
from wam_jax.models.attention import dot_product_attention
from wam_jax.models.layers import (AffineLayerNorm, RMSNorm, apply_rope, dense, layer_norm_f32, patchify,
                                   rope_angles, timestep_features, unpatchify, video_positions)

# q, k, v inside attention: batch, full length, heads split over tensor (× sequence under sequence parallelism).
ATTENTION_AXES = ("activation_batch", "activation_attn_length", "activation_attn_heads", None)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep the attention output and the projections feeding it; recompute FFN activations.
    "attn_out": jax.checkpoint_policies.save_only_these_names("attn_out", "qkv"),
    # As `full`, but each block's input (the one thing `full` keeps per layer) waits in host memory for the
    # backward pass: saved activations no longer grow with depth (14.3 GiB per example at the 14B shape).
    "offload": jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=(), names_which_can_be_offloaded=("block_input",), offload_src="device",
        offload_dst="pinned_host"),
}


@dataclasses.dataclass(frozen=True)
class WanConfig:
    """Architecture of a Wan video DiT (field names follow diffusers' config.json) plus numerics."""
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    ffn_dim: int
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024
    rope_theta: float = 10000.0
    # Numerics and performance; not part of the checkpoint.
    dtype: str = "float32"          # activations / matmul inputs
    param_dtype: str = "float32"
    attention: str = "auto"         # auto | xla | cudnn | splash | dense (see models/attention.py)
    remat: str = "none"             # key of REMAT_POLICIES
    scan_layers: bool = True

    def __post_init__(self):
        if self.qk_norm != "rms_norm_across_heads":
            raise ConfigError(f"qk_norm={self.qk_norm!r} is not supported (Wan uses 'rms_norm_across_heads')")
        if len(self.patch_size) != 3:
            raise ConfigError(f"patch_size must have 3 entries (t, h, w), got {self.patch_size}")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r} unknown; choose one of {sorted(REMAT_POLICIES)}")
        if self.attention_head_dim % 2:
            raise ConfigError("attention_head_dim must be even for rotary embeddings")

    @property
    def dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    @property
    def weights_dtype(self):
        return jnp.dtype(self.param_dtype)

    @classmethod
    def from_config(cls, values: Mapping[str, Any], where: str = "model config") -> "WanConfig":
        return dataclass_from_config(cls, values, where)

    # diffusers keys that only describe variants we do not implement (image conditioning of Wan-I2V).
    _DIFFUSERS_UNSUPPORTED = {"image_dim": None, "added_kv_proj_dim": None, "pos_embed_seq_len": None}

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any], **numerics) -> "WanConfig":
        """Builds the config from a diffusers `WanTransformer3DModel` config.json dict."""
        # Keys starting with "_" are diffusers bookkeeping (_class_name, _diffusers_version, ...).
        cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
        for key, expected in cls._DIFFUSERS_UNSUPPORTED.items():
            if cfg.pop(key, expected) != expected:
                raise ConfigError(f"diffusers config sets {key}={cfg.get(key)!r}: image-conditioned Wan (I2V) is not "
                                  "supported; use a T2V or TI2V transformer")
        if cfg.get("out_channels") is None:
            cfg["out_channels"] = cfg.get("in_channels", 16)
        return cls.from_config({**cfg, **numerics}, where="diffusers config.json")

    def to_diffusers(self) -> dict[str, Any]:
        """The diffusers config.json dict of this architecture."""
        return {
            "_class_name": "WanTransformer3DModel", "patch_size": list(self.patch_size),
            "num_attention_heads": self.num_attention_heads, "attention_head_dim": self.attention_head_dim,
            "in_channels": self.in_channels, "out_channels": self.out_channels, "text_dim": self.text_dim,
            "freq_dim": self.freq_dim, "ffn_dim": self.ffn_dim, "num_layers": self.num_layers,
            "cross_attn_norm": self.cross_attn_norm, "qk_norm": self.qk_norm, "eps": self.eps,
            "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": self.rope_max_seq_len,
            "pos_embed_seq_len": None,
        }


def _embed_init():
    return nn.initializers.normal(0.02)


class ConditionEmbedder(nn.Module):
    """Timestep MLP (+ 6-way modulation projection) and text projection, as diffusers'
    WanTimeTextImageEmbedding (parameter names follow it)."""
    cfg: WanConfig

    def setup(self):
        c = self.cfg
        kw = dict(param_dtype=c.weights_dtype, dtype=jnp.float32, kernel_init=_embed_init())
        self.time_linear_1 = dense(c.dim, (None, "embed"), "time_embedder_linear_1", **kw)
        self.time_linear_2 = dense(c.dim, ("embed", "embed_out"), "time_embedder_linear_2", **kw)
        self.time_proj = dense(6 * c.dim, ("embed", "embed_out"), "time_proj", **kw)
        self.text_linear_1 = dense(c.dim, ("text_embed", "embed"), "text_embedder_linear_1",
                                   param_dtype=c.weights_dtype, dtype=c.compute_dtype, kernel_init=_embed_init())
        self.text_linear_2 = dense(c.dim, ("embed", "embed_out"), "text_embedder_linear_2",
                                   param_dtype=c.weights_dtype, dtype=c.compute_dtype, kernel_init=_embed_init())

    def time(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """t: [B, N] timesteps (Wan's 0..1000 scale). Returns temb [B, N, D] and modulation [B, N, 6, D],
        both float32 (diffusers keeps the time embedder and adaLN in float32)."""
        feats = timestep_features(t, self.cfg.freq_dim)
        temb = self.time_linear_2(nn.silu(self.time_linear_1(feats)))
        mod = self.time_proj(nn.silu(temb))
        return temb, mod.reshape(*mod.shape[:-1], 6, self.cfg.dim)

    def text(self, context: jax.Array) -> jax.Array:
        """context: [B, Lc, text_dim] → [B, Lc, D]."""
        return self.text_linear_2(nn.gelu(self.text_linear_1(context), approximate=True))

    def __call__(self, t, context):
        return self.time(t), self.text(context)


class Attention(nn.Module):
    """Wan attention: q/k/v projections, RMSNorm over all heads on q and k, optional RoPE, output projection.
    zero_out: the output projection starts at zero (a branch added to a pretrained model changes nothing)."""
    cfg: WanConfig
    zero_out: bool = False

    @nn.compact
    def __call__(self, x, context=None, rope=None, mask=None, past=None):
        """x: [B, L, D]; context: [B, Lc, D] (cross-attention) or None (self-attention); rope: (cos, sin)
        [B|1, L, Dh/2]; mask: `MaskSpec` over (x's tokens, keys) or None (all visible); past (self-attention
        only): cached {"k", "v": [B, P, H, Dh], "valid": bool [B, P]} of earlier tokens, every valid one visible.
        Returns (out [B, L, D], {"q", "k", "v"} of x's own tokens after norm and RoPE)."""
        c = self.cfg
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weights_dtype)
        src = x if context is None else context
        q = dense(c.dim, ("embed", "heads"), "to_q", **kw)(x)
        k = dense(c.dim, ("embed", "heads"), "to_k", **kw)(src)
        v = dense(c.dim, ("embed", "heads"), "to_v", **kw)(src)
        q = RMSNorm(c.eps, c.weights_dtype, name="norm_q")(q)
        k = RMSNorm(c.eps, c.weights_dtype, name="norm_k")(k)
        split = lambda a: a.reshape(*a.shape[:-1], c.num_attention_heads, c.attention_head_dim)
        q, k, v = split(q), split(k), split(v)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (checkpoint_name(a, "qkv") for a in (q, k, v))
        own = {"q": q, "k": k, "v": v}
        # Sequence parallelism (rules table): whole sequences, a slice of the heads per chip inside attention.
        q, k, v = (nn.with_logical_constraint(a, ATTENTION_AXES) for a in (q, k, v))
        out = dot_product_attention(q, k, v, mask=mask, past=past, implementation=c.attention)
        out = nn.with_logical_constraint(out, ATTENTION_AXES)
        out = checkpoint_name(out.reshape(*out.shape[:2], c.dim), "attn_out")
        out_init = nn.initializers.zeros_init() if self.zero_out else nn.initializers.xavier_uniform()
        return dense(c.dim, ("heads", "embed"), "to_out", kernel_init=out_init, **kw)(out), own


class FeedForward(nn.Module):
    cfg: WanConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weights_dtype)
        h = nn.gelu(dense(c.ffn_dim, ("embed", "mlp"), "fc_in", **kw)(x), approximate=True)
        return dense(c.dim, ("mlp", "embed"), "fc_out", **kw)(h)


def modulation_row(table: jax.Array, mod, i: int) -> jax.Array:
    """Row i of the block's adaLN modulation, table [6, D] + mod, float32 [B, 1|L, D].

    mod: [B, 1|L, 6, D], or per run (DriveWAM) a pair (per_run [B, G, 2, 6, D], second [P] bool) for L = G·P
    tokens where token g·P + p takes per_run[:, g, 1] if second[p] else per_run[:, g, 0] (a chunk's video and
    action tokens). The per-run form keeps the [B, L, 6, D] float32 tensor (4.3 GiB per example at the 14B shape)
    and its gradient, summed over all layers, out of the program; only the rows a block is using are expanded."""
    row = table[i].astype(jnp.float32)
    if not isinstance(mod, tuple):
        return row + mod[:, :, i].astype(jnp.float32)
    per_run, second = mod
    b, g = per_run.shape[:2]
    m = row + per_run[:, :, :, i].astype(jnp.float32)                   # [B, G, 2, D]
    pick = jnp.asarray(second)[None, None, :, None]
    return jnp.where(pick, m[:, :, 1:2], m[:, :, 0:1]).reshape(b, g * second.shape[0], -1)


class WanBlock(nn.Module):
    """adaLN block: modulated self-attention, cross-attention to the text, (DriveWAM only) cross-attention to
    the ego-state tokens, modulated FFN (all gated). The ego branch's output projection starts at zero, so an
    imported Wan checkpoint computes exactly what it did until training moves it."""
    cfg: WanConfig

    @nn.compact
    def __call__(self, x, context, mod, rope, self_mask=None, cross_mask=None, past=None, ego=None,
                 ego_mask=None):
        """x: [B, L, D]; context: [B, Lc, D]; mod: [B, 1|L, 6, D] float32 or per run (see `modulation_row`);
        rope: (cos, sin);
        masks: `MaskSpec` or None (see Attention); past: this layer's KV cache (see Attention); ego: [B, Le, D]
        ego-state tokens or None (no ego branch, plain Wan), ego_mask: `MaskSpec` over (tokens, ego tokens).
        Returns (x, {"q", "k", "v"} of this block's self-attention for x's tokens)."""
        c = self.cfg
        x = checkpoint_name(x, "block_input")      # what remat="offload" moves to host memory
        table = self.param("scale_shift_table",
                           nn.with_logical_partitioning(lambda k, s, d: jax.random.normal(k, s, d) / c.dim ** 0.5,
                                                        (None, "embed")), (6, c.dim), c.weights_dtype)
        shift, scale, gate, c_shift, c_scale, c_gate = (modulation_row(table, mod, i) for i in range(6))
        dt = x.dtype

        h = (layer_norm_f32(x, c.eps) * (1 + scale) + shift).astype(c.compute_dtype)
        attn, kv = Attention(c, name="attn1")(h, rope=rope, mask=self_mask, past=past)
        x = (x.astype(jnp.float32) + attn.astype(jnp.float32) * gate).astype(dt)

        h = AffineLayerNorm(c.eps, c.weights_dtype, name="norm2")(x) if c.cross_attn_norm else x.astype(jnp.float32)
        cross, _ = Attention(c, name="attn2")(h.astype(c.compute_dtype), context=context, mask=cross_mask)
        x = x + cross.astype(dt)

        if ego is not None:
            h = AffineLayerNorm(c.eps, c.weights_dtype, name="norm_ego")(x)
            ego_out, _ = Attention(c, zero_out=True, name="attn_ego")(h.astype(c.compute_dtype), context=ego,
                                                                     mask=ego_mask)
            x = x + ego_out.astype(dt)

        h = (layer_norm_f32(x, c.eps) * (1 + c_scale) + c_shift).astype(c.compute_dtype)
        ff = FeedForward(c, name="ffn")(h)
        x = (x.astype(jnp.float32) + ff.astype(jnp.float32) * c_gate).astype(dt)
        x = nn.with_logical_constraint(x, ("activation_batch", "activation_length", "activation_embed"))
        return x, kv


class WanBlocks(nn.Module):
    """All blocks; with `scan_layers` they run under nn.scan (compile time independent of depth), their
    parameters stacked on a leading "layers" axis. Optional rematerialisation per block.

    past: per-layer KV cache {"k", "v": [layers, B, P, H, Dh], "valid": [layers, B, P]} or None. Returns
    (x, qkv) where qkv = {"q", "k", "v"}: [layers, B, L, H, Dh] of x's tokens when `return_kv`, else None."""
    cfg: WanConfig
    return_kv: bool = False

    @nn.compact
    def __call__(self, x, context, mod, rope, self_mask=None, cross_mask=None, past=None, ego=None,
                 ego_mask=None):
        c = self.cfg
        block_cls = WanBlock
        if c.remat != "none":
            block_cls = nn.remat(WanBlock, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)
        keep = self.return_kv

        if c.scan_layers:
            def body(block, carry, layer_past):
                y, qkv = block(carry, context, mod, rope, self_mask, cross_mask, layer_past, ego, ego_mask)
                return y, (qkv if keep else None)

            scanned = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                              in_axes=0, length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            return scanned(block_cls(c, name="blocks"), x, past)
        outs = []
        for i in range(c.num_layers):
            layer_past = None if past is None else jax.tree.map(lambda a: a[i], past)
            x, qkv = block_cls(c, name=f"blocks_{i}")(x, context, mod, rope, self_mask, cross_mask, layer_past,
                                                       ego, ego_mask)
            outs.append(qkv)
        return x, (jax.tree.map(lambda *a: jnp.stack(a), *outs) if keep else None)


class OutputHead(nn.Module):
    """Final adaLN (shift/scale from the time embedding) and linear projection to patch values."""
    cfg: WanConfig
    features: int
    table_name: str = "scale_shift_table"
    proj_name: str = "proj_out"

    @nn.compact
    def __call__(self, x, temb):
        """x: [B, L, D]; temb: [B, 1|L, D] float32 → [B, L, features]."""
        c = self.cfg
        table = self.param(self.table_name,
                           nn.with_logical_partitioning(lambda k, s, d: jax.random.normal(k, s, d) / c.dim ** 0.5,
                                                        (None, "embed")), (2, c.dim), c.weights_dtype)
        shift = table[0].astype(jnp.float32) + temb
        scale = table[1].astype(jnp.float32) + temb
        h = (layer_norm_f32(x, c.eps) * (1 + scale) + shift).astype(c.compute_dtype)
        return dense(self.features, ("embed", None), self.proj_name, dtype=c.compute_dtype,
                     param_dtype=c.weights_dtype, kernel_init=nn.initializers.zeros_init())(h)


class PatchEmbed(nn.Module):
    """diffusers' Conv3d patch embedding written as a dense layer on patch vectors (same math)."""
    cfg: WanConfig

    @nn.compact
    def __call__(self, latents):
        """latents: [B, T, H, W, C] → tokens [B, t*h*w, D] and the token grid (t, h, w)."""
        c = self.cfg
        patches = patchify(latents, c.patch_size)
        grid = patches.shape[1:4]
        tokens = dense(c.dim, ("patch", "embed"), "patch_embedding", dtype=c.compute_dtype,
                       param_dtype=c.weights_dtype)(patches.astype(c.compute_dtype))
        return tokens.reshape(tokens.shape[0], -1, c.dim), grid


def rope_from_positions(positions: jax.Array, cfg: WanConfig) -> tuple[jax.Array, jax.Array]:
    """positions: [B|1, L, 3] → (cos, sin) each [B|1, L, head_dim/2]."""
    angles = rope_angles(positions, cfg.attention_head_dim, cfg.rope_theta)
    return jnp.cos(angles), jnp.sin(angles)


class WanTransformer(nn.Module):
    """The video-only Wan DiT, diffusers `WanTransformer3DModel.forward` in JAX."""
    cfg: WanConfig

    @nn.compact
    def __call__(self, latents, timesteps, context):
        """latents: [B, T, H, W, C]; timesteps: [B] or per-token [B, L] (L = t*h*w patch tokens);
        context: [B, Lc, text_dim]. Returns the predicted flow [B, T, H, W, out_channels] in float32."""
        c = self.cfg
        chex.assert_rank(latents, 5)
        chex.assert_rank(context, 3)
        if latents.shape[-1] != c.in_channels:
            raise ValueError(f"latents have {latents.shape[-1]} channels, the model expects {c.in_channels}")
        if context.shape[-1] != c.text_dim:
            raise ValueError(f"text context has width {context.shape[-1]}, the model expects {c.text_dim}")
        b = latents.shape[0]
        tokens, grid = PatchEmbed(c, name="patch_embed")(latents)
        if max(grid) > c.rope_max_seq_len:
            raise ValueError(f"token grid {tuple(grid)} exceeds model.rope_max_seq_len={c.rope_max_seq_len} positions "
                             "per axis (diffusers' RoPE table)")
        length = tokens.shape[1]
        if timesteps.ndim == 1:
            timesteps = timesteps[:, None]
        elif timesteps.shape != (b, length):
            raise ValueError(f"per-token timesteps must be [B, L] = {(b, length)}, got {timesteps.shape}")
        embedder = ConditionEmbedder(c, name="condition_embedder")
        temb, mod = embedder.time(timesteps)
        ctx = embedder.text(context.astype(c.compute_dtype))
        rope = rope_from_positions(jnp.asarray(video_positions(*grid))[None], c)
        x, _ = WanBlocks(c, name="blocks")(tokens, ctx, mod, rope)
        out = OutputHead(c, math.prod(c.patch_size) * c.out_channels, name="head")(x, temb)
        out = out.reshape(b, *grid, -1).astype(jnp.float32)
        return unpatchify(out, c.patch_size, c.out_channels)


def init_params(cfg: WanConfig, rng: jax.Array, latent_shape=(1, 1, 2, 2), text_len: int = 1):
    """Initialises unboxed parameters for a model of `cfg` (latent_shape = (T, H, W) of a dummy input + batch)."""
    model = WanTransformer(cfg)
    t, h, w = latent_shape[-3:]
    dummy = jnp.zeros((1, t * cfg.patch_size[0], h * cfg.patch_size[1], w * cfg.patch_size[2], cfg.in_channels))
    variables = model.init(rng, dummy, jnp.zeros((1,)), jnp.zeros((1, text_len, cfg.text_dim)))
    return nn.unbox(variables["params"])


def abstract_params(cfg: WanConfig):
    """Parameter shapes/dtypes (boxed with logical axes) without allocating: jax.eval_shape of init."""
    model = WanTransformer(cfg)
    p = cfg.patch_size
    dummy = jax.ShapeDtypeStruct((1, p[0], p[1], p[2], cfg.in_channels), jnp.float32)
    return jax.eval_shape(lambda d: model.init(jax.random.key(0), d, jnp.zeros((1,)),
                                               jnp.zeros((1, 1, cfg.text_dim)))["params"], dummy)


def count_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(tree)))
