"""Small numeric building blocks shared by the Wan DiT and DriveWAM: norms, RoPE, timestep features, dense
layers that carry logical axis names (sharding rules map those names to mesh axes, see wam_jax/sharding.py)."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = jnp.dtype


def dense(features: int, axes: tuple[str | None, str | None], name: str, dtype=jnp.float32,
          param_dtype=jnp.float32, kernel_init=nn.initializers.xavier_uniform(), use_bias: bool = True,
          bias_init=nn.initializers.zeros_init()) -> nn.Dense:
    """nn.Dense whose kernel is tagged with logical axes (in, out) and bias with (out,)."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
        kernel_init=nn.with_logical_partitioning(kernel_init, axes),
        bias_init=nn.with_logical_partitioning(bias_init, (axes[1],)))


def layer_norm_f32(x: jax.Array, eps: float) -> jax.Array:
    """LayerNorm without affine parameters, computed in float32 (as diffusers' FP32LayerNorm)."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nn.Module):
    """float32 LayerNorm with a learned scale and bias (Wan's cross-attention norm)."""
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                           (d,), self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axis_name,)),
                          (d,), self.param_dtype)
        return layer_norm_f32(x, self.eps) * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis in float32, then scaled by a learned weight (torch.nn.RMSNorm semantics)."""
    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32
    axis_name: str = "heads"

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(x.dtype)


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """Sinusoidal timestep features [..., dim] as cos then sin (diffusers Timesteps(flip_sin_to_cos=True, shift=0))."""
    half = dim // 2
    freqs = jnp.asarray(np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half), jnp.float32)
    args = t.astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan splits each head's dims into (time, height, width) rotary groups."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_angles(positions: jax.Array, head_dim: int, theta: float = 10000.0) -> jax.Array:
    """Rotation angles for 3D RoPE.

    positions: [..., L, 3] float (frame, row, column) — fractional positions are allowed (action tokens sit
    between frames). Returns [..., L, head_dim // 2]: one angle per rotated pair, groups ordered t | h | w.
    """
    inv = []
    for d in rope_axis_dims(head_dim):
        inv.append(np.asarray(1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64)[: d // 2] / d), np.float32))
    pos = positions.astype(jnp.float32)
    return jnp.concatenate([pos[..., i:i + 1] * jnp.asarray(f) for i, f in enumerate(inv)], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates interleaved pairs (x[2j], x[2j+1]). x: [B, L, H, Dh]; cos, sin: [B or 1, L, Dh // 2]."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = jnp.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)


def video_positions(frames: int, height: int, width: int, frame_offset: float = 0.0) -> np.ndarray:
    """RoPE positions [frames*height*width, 3] of a latent token grid in (f, h, w) raster order."""
    f, h, w = np.meshgrid(np.arange(frames) + frame_offset, np.arange(height), np.arange(width), indexing="ij")
    return np.stack([f, h, w], axis=-1).reshape(-1, 3).astype(np.float32)


def patchify(x: jax.Array, patch: Sequence[int]) -> jax.Array:
    """[B, T, H, W, C] → [B, T/pt, H/ph, W/pw, pt*ph*pw*C] with patch-internal order (pt, ph, pw, C)."""
    b, t, h, w, c = x.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent size (T={t}, H={h}, W={w}) is not divisible by the patch size {tuple(patch)}")
    x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw * c)


def unpatchify(x: jax.Array, patch: Sequence[int], channels: int) -> jax.Array:
    """Inverse of `patchify`: [B, t, h, w, pt*ph*pw*C] → [B, t*pt, h*ph, w*pw, C]."""
    b, t, h, w, _ = x.shape
    pt, ph, pw = patch
    x = x.reshape(b, t, h, w, pt, ph, pw, channels)
    x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
    return x.reshape(b, t * pt, h * ph, w * pw, channels)
