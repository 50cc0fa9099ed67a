"""Wan causal 3D video VAE (Wan 2.1 and Wan 2.2) in Flax Linen, numerically equal to diffusers'
`AutoencoderKLWan` (0.42; checked in tests/test_vae.py).

Layouts (channels-last throughout, unlike diffusers' [B, C, T, H, W]):
    video    [B, T, H, W, C]    float in [-1, 1], C = 3 (RGB); T = 1 + st*k frames
    latents  [B, T', H', W', z] T' = 1 + (T - 1) / st, H' = H / ss, W' = W / ss
where st = `config.temporal_stride` (4) and ss = `config.spatial_stride` (8 for Wan 2.1, 16 for Wan 2.2).

Causality and chunking. Every temporal convolution is causal, so a clip can be processed in chunks that carry a
cache: the last frames each causal layer saw. The cache is explicit functional state, a pytree passed in and
returned (`encode_chunk`, `decode_chunk`); it holds at most 2 frames per layer, so clips of any length run in
constant memory, and any valid chunk schedule gives the same result as one pass:
  - encoder: first chunk 1 + st*k frames (k >= 0), later chunks st*m frames (m >= 1);
  - decoder: any number of latent frames per chunk.
The first chunk is special (its first frame skips the temporal down/up-sampling convolution, as in Wan), which
is why `cache=None` means "start of a clip". diffusers runs the schedule (1, 4, 4, ...) for the encoder and one
latent frame at a time for the decoder; `encode` / `decode` run the whole clip as one first chunk.

Parameter tree: module names follow diffusers' state-dict names with "." before an index written "_"
(`encoder.down_blocks.3.conv1.weight` -> params["encoder"]["down_blocks_3"]["conv1"]["kernel"]); see
wam_jax/interop/vae_import.py for the exact correspondence.

Precision: convolutions use the default matmul precision of the backend; on GPU/TPU wrap calls in
`jax.default_matmul_precision("highest")` when float32 parity with PyTorch matters.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from wam_jax.config import ConfigError, dataclass_from_config

# fmt: off
WAN21_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# fmt: on

# diffusers config.json keys that diffusers 0.42 itself ignores (it always clamps decoded video to [-1, 1]).
_IGNORED_DIFFUSERS_KEYS = ("clip_output",)


class ChunkError(ValueError):
    """A chunk does not fit the causal chunk schedule or does not match the cache it was given."""


@dataclasses.dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of `AutoencoderKLWan`; field names (typos included) are diffusers' config.json keys.

    Defaults are the Wan 2.1 VAE. Wan 2.2 (TI2V-5B) is `base_dim=160, decoder_base_dim=256, z_dim=48,
    is_residual=True, in_channels=out_channels=12, patch_size=2, scale_factor_spatial=16` plus its latent
    statistics. `in_channels`/`out_channels` count channels after 2x2 patchify (12 = 3 * 2 * 2 for Wan 2.2);
    the video itself always has `video_channels` channels.
    """
    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0  # training only; the VAE here is inference-only, as diffusers in eval mode
    latents_mean: tuple[float, ...] = WAN21_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN21_LATENTS_STD
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self):
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            value = getattr(self, name)
            if not isinstance(value, (tuple, list)):
                raise ConfigError(f"WanVAEConfig.{name} must be a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        problems = []
        for name in ("base_dim", "z_dim", "num_res_blocks", "in_channels", "out_channels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.decoder_base_dim is not None and self.decoder_base_dim < 1:
            problems.append(f"decoder_base_dim={self.decoder_base_dim!r} must be a positive integer or null")
        if not self.dim_mult or any(not isinstance(m, int) or m < 1 for m in self.dim_mult):
            problems.append(f"dim_mult={list(self.dim_mult)} must be a non-empty list of positive integers")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            problems.append(f"temperal_downsample has {len(self.temperal_downsample)} entries but dim_mult "
                            f"{list(self.dim_mult)} has {len(self.dim_mult) - 1} downsampling stages; they must agree")
        if self.attn_scales:
            # diffusers' encoder calls its down-block attention with cache arguments it does not accept, so no
            # diffusers checkpoint can use it; every released Wan VAE has attn_scales=[].
            problems.append(f"attn_scales={list(self.attn_scales)} is not supported (Wan VAEs use [])")
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            problems.append(f"latents_mean/latents_std have {len(self.latents_mean)}/{len(self.latents_std)} "
                            f"entries; z_dim={self.z_dim} needs that many each")
        if any(s <= 0 for s in self.latents_std):
            problems.append("latents_std entries must be positive")
        p = self.patch_size
        if p is not None and (not isinstance(p, int) or p < 1):
            problems.append(f"patch_size={p!r} must be a positive integer or null")
        elif p is not None and (self.in_channels % (p * p) or self.out_channels % (p * p)):
            problems.append(f"in_channels={self.in_channels}/out_channels={self.out_channels} are channel counts "
                            f"after {p}x{p} patchify and must be divisible by {p * p}")
        if problems:
            raise ConfigError("invalid Wan VAE config:\n  " + "\n  ".join(problems))
        # Wan 2.2 shortcuts average / duplicate channel groups; the group sizes must divide evenly.
        if self.is_residual:
            for i, (a, b) in enumerate(zip(self.encoder_dims[:-1], self.encoder_dims[1:])):
                last = i == len(self.dim_mult) - 1
                factor = (1 if last else 4) * (2 if not last and self.temperal_downsample[i] else 1)
                if a * factor % b:
                    problems.append(f"encoder level {i}: {a} channels x {factor} not divisible by {b}")
            for i, (a, b) in enumerate(zip(self.decoder_dims[:-1], self.decoder_dims[1:])):
                if i == len(self.dim_mult) - 1:
                    continue
                factor = 4 * (2 if self.temperal_upsample[i] else 1)
                if b * factor % a:
                    problems.append(f"decoder level {i}: {b} channels x {factor} not divisible by {a}")
        for name, computed in (("scale_factor_temporal", self.temporal_stride),
                               ("scale_factor_spatial", self.spatial_stride)):
            given = getattr(self, name)
            if given is None:
                object.__setattr__(self, name, computed)
            elif given != computed:
                problems.append(f"{name}={given} but the architecture (patch_size={p}, dim_mult={list(self.dim_mult)}, "
                                f"temperal_downsample={list(self.temperal_downsample)}) gives {computed}")
        if problems:
            raise ConfigError("invalid Wan VAE config:\n  " + "\n  ".join(problems))

    # Derived geometry.
    @property
    def patch(self) -> int:
        return self.patch_size or 1

    @property
    def video_channels(self) -> int:
        return self.in_channels // (self.patch * self.patch)

    @property
    def output_video_channels(self) -> int:
        return self.out_channels // (self.patch * self.patch)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def spatial_stride(self) -> int:
        return self.patch * 2 ** (len(self.dim_mult) - 1)

    @property
    def temperal_upsample(self) -> tuple[bool, ...]:
        return self.temperal_downsample[::-1]

    @property
    def encoder_dims(self) -> tuple[int, ...]:
        return tuple(self.base_dim * m for m in (1,) + self.dim_mult)

    @property
    def decoder_dims(self) -> tuple[int, ...]:
        dim = self.decoder_base_dim or self.base_dim
        return tuple(dim * m for m in (self.dim_mult[-1],) + self.dim_mult[::-1])

    def latent_shape(self, video_shape: Sequence[int]) -> tuple[int, int, int, int, int]:
        """[B, T, H, W, C] video shape -> [B, T', H', W', z] latent shape."""
        b, t, h, w, _ = video_shape
        return (b, 1 + (t - 1) // self.temporal_stride, h // self.spatial_stride, w // self.spatial_stride,
                self.z_dim)

    def video_frames(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.temporal_stride

    @classmethod
    def from_diffusers(cls, cfg: Mapping[str, Any]) -> "WanVAEConfig":
        """From an `AutoencoderKLWan` config.json dict; unknown keys are an error (keys starting "_" are
        diffusers bookkeeping and skipped)."""
        data = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in _IGNORED_DIFFUSERS_KEYS}
        return dataclass_from_config(cls, data, where="diffusers AutoencoderKLWan config.json")

    def to_diffusers(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
        return {"_class_name": "AutoencoderKLWan", **out}


# ----------------------------------------------------------------------------------------------------------
# Layers. All take channels-last activations; caches live in the "cache" variable collection.

# PyTorch's default conv init (kaiming_uniform with a=sqrt(5)); imported weights replace it anyway.
_torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: Sequence[int], padding: Sequence[int]):
    """N-d convolution of channels-last `x` with a [*window, I, O] kernel, symmetric zero padding."""
    nd = kernel.ndim - 2
    spec = "N" + "DHW"[3 - nd:] + "C"
    dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, (spec, spec[1:-1] + "IO", spec))
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), tuple(stride), [(p, p) for p in padding],
                                     dimension_numbers=dn)
    return y + bias.astype(x.dtype)


class CausalConv3d(nn.Module):
    """diffusers' WanCausalConv3d: a 3D conv whose time axis is padded with 2*padding[0] frames in front only.

    Those front frames come from the cache (zeros at the start of a clip), so chunked calls equal one pass.
    x: [B, T, H, W, Cin] -> [B, T_out, H_out, W_out, features]."""
    features: int
    kernel_size: tuple[int, int, int]
    stride: tuple[int, int, int] = (1, 1, 1)
    padding: tuple[int, int, int] = (0, 0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _torch_default_init, (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        front = 2 * self.padding[0]
        if front:
            b, _, h, w, c = x.shape
            cache = self.variable("cache", "frames", jnp.zeros, (b, front, h, w, c), x.dtype)
            if cache.value.shape != (b, front, h, w, c):
                raise ChunkError(f"{self.path_str()}: cache holds frames of shape {cache.value.shape[2:]} for batch "
                                 f"{cache.value.shape[0]}, the chunk has {(h, w, c)} for batch {b}")
            x = jnp.concatenate([cache.value, x], axis=1)
            cache.value = x[:, -front:]
        if x.shape[1] < self.kernel_size[0]:  # e.g. the first chunk of a strided temporal conv: nothing to emit
            b, _, h, w, _ = x.shape
            return jnp.zeros((b, 0, (h + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1,
                              (w + 2 * self.padding[2] - self.kernel_size[2]) // self.stride[2] + 1,
                              self.features), x.dtype)
        return _conv(x, kernel, bias, self.stride, (0, self.padding[1], self.padding[2]))

    def path_str(self) -> str:
        return "/".join(self.scope.path) if self.scope is not None else "?"


class Conv2d(nn.Module):
    """Per-frame 2D conv; x: [N, H, W, Cin] -> [N, H', W', features]."""
    features: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", _torch_default_init, (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return _conv(x, kernel, bias, self.stride, (self.padding, self.padding))


class RMSNorm(nn.Module):
    """diffusers' WanRMS_norm: x / max(||x||_2, 1e-12) * sqrt(C) * gamma over the channel axis."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (c,))
        xf = x.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(jnp.square(xf), axis=-1, keepdims=True))
        return (xf / jnp.maximum(norm, 1e-12)).astype(x.dtype) * (c ** 0.5) * gamma.astype(x.dtype)


def _frames(fn: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
    """Applies a per-image function to every frame of x: [B, T, H, W, C]."""
    b, t = x.shape[:2]
    y = fn(x.reshape(b * t, *x.shape[2:]))
    return y.reshape(b, t, *y.shape[1:])


class ResidualBlock(nn.Module):
    """RMSNorm-SiLU-CausalConv x2 plus a (1x1x1 conv) shortcut. [B, T, H, W, Cin] -> [B, T, H, W, out_dim]."""
    out_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = x if x.shape[-1] == self.out_dim else CausalConv3d(self.out_dim, (1, 1, 1), name="conv_shortcut")(x)
        x = nn.silu(RMSNorm(name="norm1")(x))
        x = CausalConv3d(self.out_dim, (3, 3, 3), padding=(1, 1, 1), name="conv1")(x)
        x = nn.silu(RMSNorm(name="norm2")(x))
        x = CausalConv3d(self.out_dim, (3, 3, 3), padding=(1, 1, 1), name="conv2")(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame (no mixing across time)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, h, w, c = x.shape
        y = RMSNorm(name="norm")(x).reshape(b * t, h, w, c)
        qkv = Conv2d(3 * c, (1, 1), name="to_qkv")(y).reshape(b * t, h * w, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        logits = jnp.einsum("nqc,nkc->nqk", q, k).astype(jnp.float32) / np.sqrt(c)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("nqk,nkc->nqc", weights, v).reshape(b * t, h, w, c)
        y = Conv2d(c, (1, 1), name="proj")(y)
        return x + y.reshape(b, t, h, w, c)


class MidBlock(nn.Module):
    """Residual block, attention, residual block at the lowest resolution."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ResidualBlock(c, name="resnets_0")(x)
        x = AttentionBlock(name="attentions_0")(x)
        return ResidualBlock(c, name="resnets_1")(x)


class Resample(nn.Module):
    """diffusers' WanResample: 2x spatial down/up-sampling, optionally 2x temporal too.

    downsample3d: a stride-2 causal temporal conv over [previous chunk's last frame, chunk]; the first frame
      of a clip passes through, so T -> 1 + (T - 1) / 2 on the first chunk and T -> T / 2 later.
    upsample3d: a causal temporal conv to 2C channels read as two frames each; the first frame of a clip
      passes through, so T -> 1 + 2 (T - 1) on the first chunk and T -> 2 T later.
    """
    mode: str  # downsample2d | downsample3d | upsample2d | upsample3d
    out_dim: int | None = None  # upsampling output channels (diffusers: C // 2 for Wan 2.1, C for Wan 2.2)

    @nn.compact
    def __call__(self, x: jax.Array, first: bool) -> jax.Array:
        b, t, h, w, c = x.shape
        if self.mode == "upsample3d":
            head, rest = (x[:, :1], x[:, 1:]) if first else (x[:, :0], x)
            y = CausalConv3d(2 * c, (3, 1, 1), padding=(1, 0, 0), name="time_conv")(rest)
            n = y.shape[1]
            # Channel block k in {0, 1} becomes frame 2i + k, as diffusers' reshape(b, 2, c, t, h, w) + stack.
            y = y.reshape(b, n, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * n, h, w, c)
            x = jnp.concatenate([head, y], axis=1)
        if self.mode.startswith("upsample"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest-exact at an integer scale
            return _frames(Conv2d(self.out_dim or c // 2, (3, 3), padding=1, name="resample"), x)
        if self.mode not in ("downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {self.mode!r}")
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))  # ZeroPad2d((0, 1, 0, 1)): right and bottom
        x = _frames(Conv2d(c, (3, 3), stride=(2, 2), name="resample"), x)
        if self.mode == "downsample3d":
            cache = self.variable("cache", "last", jnp.zeros, (b, 1, *x.shape[2:]), x.dtype)
            head, prev, rest = (x[:, :1], x[:, :1], x[:, 1:]) if first else (x[:, :0], cache.value, x)
            if rest.shape[1] % 2:
                raise ChunkError(f"temporal downsampling got {rest.shape[1]} frames after the clip's first frame in "
                                 "this chunk; chunks must keep frames in pairs (see the encoder chunk schedule)")
            frames = jnp.concatenate([prev, rest], axis=1)
            cache.value = frames[:, -1:]
            y = CausalConv3d(c, (3, 1, 1), stride=(2, 1, 1), name="time_conv")(frames)
            x = jnp.concatenate([head, y], axis=1)
        return x


def avg_down_3d(x: jax.Array, out_dim: int, factor_t: int, factor_s: int) -> jax.Array:
    """Wan 2.2 parameter-free down shortcut: space/time-to-channel then mean over channel groups.

    x: [B, T, H, W, C] -> [B, ceil(T / ft), H / fs, W / fs, out_dim]; time is zero-padded in front."""
    pad_t = (-x.shape[1]) % factor_t
    x = jnp.pad(x, ((0, 0), (pad_t, 0), (0, 0), (0, 0), (0, 0)))
    b, t, h, w, c = x.shape
    x = x.reshape(b, t // factor_t, factor_t, h // factor_s, factor_s, w // factor_s, factor_s, c)
    # Channel order c * F + (dt, dh, dw), as diffusers' permute(0, 1, 3, 5, 7, 2, 4, 6).
    x = x.transpose(0, 1, 3, 5, 7, 2, 4, 6).reshape(b, t // factor_t, h // factor_s, w // factor_s, -1)
    return x.reshape(*x.shape[:-1], out_dim, -1).mean(axis=-1)


def dup_up_3d(x: jax.Array, out_dim: int, factor_t: int, factor_s: int, first: bool) -> jax.Array:
    """Wan 2.2 parameter-free up shortcut: repeat channels then channel-to-space/time.

    x: [B, T, H, W, C] -> [B, T * ft, H * fs, W * fs, out_dim]; the clip's first chunk drops its first ft - 1
    frames (the first frame is not temporally upsampled)."""
    b, t, h, w, c = x.shape
    x = jnp.repeat(x, out_dim * factor_t * factor_s * factor_s // c, axis=-1)
    x = x.reshape(b, t, h, w, out_dim, factor_t, factor_s, factor_s)
    x = x.transpose(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, t * factor_t, h * factor_s, w * factor_s, out_dim)
    return x[:, factor_t - 1:] if first else x


class ResidualDownBlock(nn.Module):
    """Wan 2.2 encoder stage: residual blocks + downsampling, plus an averaging shortcut around both."""
    out_dim: int
    num_res_blocks: int
    temporal: bool
    down: bool

    @nn.compact
    def __call__(self, x: jax.Array, first: bool) -> jax.Array:
        shortcut = avg_down_3d(x, self.out_dim, 2 if self.temporal else 1, 2 if self.down else 1)
        for j in range(self.num_res_blocks):
            x = ResidualBlock(self.out_dim, name=f"resnets_{j}")(x)
        if self.down:
            x = Resample("downsample3d" if self.temporal else "downsample2d", name="downsampler")(x, first)
        return x + shortcut


class UpBlock(nn.Module):
    """Decoder stage: num_res_blocks + 1 residual blocks, then optional upsampling.

    Wan 2.1 (residual=False): no shortcut, upsampling halves the channels (module name `upsamplers_0`).
    Wan 2.2 (residual=True): a duplicating shortcut around the stage, channels kept (name `upsampler`)."""
    out_dim: int
    num_res_blocks: int
    mode: str | None
    residual: bool

    @nn.compact
    def __call__(self, x: jax.Array, first: bool) -> jax.Array:
        shortcut = x
        for j in range(self.num_res_blocks + 1):
            x = ResidualBlock(self.out_dim, name=f"resnets_{j}")(x)
        if self.mode is None:
            return x
        if not self.residual:
            return Resample(self.mode, name="upsamplers_0")(x, first)
        x = Resample(self.mode, out_dim=self.out_dim, name="upsampler")(x, first)
        return x + dup_up_3d(shortcut, self.out_dim, 2 if self.mode == "upsample3d" else 1, 2, first)


class Encoder3d(nn.Module):
    """[B, T, H, W, in_channels] (patchified) -> [B, T', H', W', 2 z] (posterior mean and log-variance)."""
    config: WanVAEConfig

    @nn.compact
    def __call__(self, x: jax.Array, first: bool) -> jax.Array:
        cfg = self.config
        dims = cfg.encoder_dims
        levels = len(cfg.dim_mult)
        x = CausalConv3d(dims[0], (3, 3, 3), padding=(1, 1, 1), name="conv_in")(x)
        index = 0  # Wan 2.1 numbers its down blocks in one flat list, as diffusers does
        for i in range(levels):
            last = i == levels - 1
            temporal = not last and bool(cfg.temperal_downsample[i])
            if cfg.is_residual:
                x = ResidualDownBlock(dims[i + 1], cfg.num_res_blocks, temporal, not last,
                                      name=f"down_blocks_{i}")(x, first)
                continue
            for _ in range(cfg.num_res_blocks):
                x = ResidualBlock(dims[i + 1], name=f"down_blocks_{index}")(x)
                index += 1
            if not last:
                x = Resample("downsample3d" if temporal else "downsample2d", name=f"down_blocks_{index}")(x, first)
                index += 1
        x = MidBlock(name="mid_block")(x)
        x = nn.silu(RMSNorm(name="norm_out")(x))
        return CausalConv3d(2 * cfg.z_dim, (3, 3, 3), padding=(1, 1, 1), name="conv_out")(x)


class Decoder3d(nn.Module):
    """[B, T', H', W', z] -> [B, 1 + st (T' - 1), H' ss/p, W' ss/p, out_channels] (still patchified)."""
    config: WanVAEConfig

    @nn.compact
    def __call__(self, z: jax.Array, first: bool) -> jax.Array:
        cfg = self.config
        dims = cfg.decoder_dims
        levels = len(cfg.dim_mult)
        x = CausalConv3d(dims[0], (3, 3, 3), padding=(1, 1, 1), name="conv_in")(z)
        x = MidBlock(name="mid_block")(x)
        for i in range(levels):
            mode = None
            if i != levels - 1:
                mode = "upsample3d" if cfg.temperal_upsample[i] else "upsample2d"
            x = UpBlock(dims[i + 1], cfg.num_res_blocks, mode, cfg.is_residual, name=f"up_blocks_{i}")(x, first)
        x = nn.silu(RMSNorm(name="norm_out")(x))
        return CausalConv3d(cfg.out_channels, (3, 3, 3), padding=(1, 1, 1), name="conv_out")(x)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, T, H, W, C] -> [B, T, H/p, W/p, C p p], channel index c p^2 + dw p + dh as diffusers' patchify."""
    if p == 1:
        return x
    b, t, h, w, c = x.shape
    x = x.reshape(b, t, h // p, p, w // p, p, c).transpose(0, 1, 2, 4, 6, 5, 3)
    return x.reshape(b, t, h // p, w // p, c * p * p)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """Inverse of `patchify`: [B, T, h, w, C p p] -> [B, T, h p, w p, C]."""
    if p == 1:
        return x
    b, t, h, w, cpp = x.shape
    x = x.reshape(b, t, h, w, cpp // (p * p), p, p).transpose(0, 1, 2, 6, 3, 5, 4)
    return x.reshape(b, t, h * p, w * p, cpp // (p * p))


class WanVAE(nn.Module):
    """The whole autoencoder; see the module docstring for layouts and the chunk schedule.

    Methods take `first` (static): True for the first chunk of a clip. The "cache" collection must be mutable."""
    config: WanVAEConfig

    def setup(self):
        z = self.config.z_dim
        self.encoder = Encoder3d(self.config)
        self.quant_conv = CausalConv3d(2 * z, (1, 1, 1))
        self.post_quant_conv = CausalConv3d(z, (1, 1, 1))
        self.decoder = Decoder3d(self.config)

    def encode_moments(self, video: jax.Array, first: bool) -> tuple[jax.Array, jax.Array]:
        """video [B, T, H, W, C] in [-1, 1] -> posterior (mean, logvar), each [B, T', H', W', z]."""
        h = self.quant_conv(self.encoder(patchify(video, self.config.patch), first))
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode_latents(self, z: jax.Array, first: bool) -> jax.Array:
        """raw latents [B, T', H', W', z] -> video [B, T, H, W, C] clamped to [-1, 1]."""
        x = self.decoder(self.post_quant_conv(z), first)
        return jnp.clip(unpatchify(x, self.config.patch), -1.0, 1.0)

    def __call__(self, video: jax.Array) -> jax.Array:
        mean, _ = self.encode_moments(video, True)
        return self.decode_latents(mean, True)


# ----------------------------------------------------------------------------------------------------------
# Pure functions over (params, inputs, cache). The network runs jit-compiled (one compilation per config and
# chunk shape, shared by all entry points); op-by-op execution of this many small convolutions is far slower.

Params = Any
Cache = Any


@functools.partial(jax.jit, static_argnames=("config",))
def init_params(config: WanVAEConfig, key: jax.Array) -> Params:
    """Random parameters with PyTorch's default conv init (uniform +-1/sqrt(fan_in)), e.g. for tests and demos;
    real weights come from wam_jax.interop.vae_import.

    Draws all values with one RNG call: per-leaf initializers (Linen `init`) compile a random-bits kernel per
    parameter shape, which takes minutes on CPU for this many small convolutions."""
    shapes = traverse_util.flatten_dict(abstract_params(config))
    sizes = [int(np.prod(s.shape)) for s in shapes.values()]
    u = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    flat, offset = {}, 0
    for (path, leaf), size in zip(shapes.items(), sizes):
        if path[-1] == "gamma":
            flat[path] = jnp.ones(leaf.shape, leaf.dtype)
        elif path[-1] == "bias":
            flat[path] = jnp.zeros(leaf.shape, leaf.dtype)
        else:  # kernel [*window, I, O]
            fan_in = int(np.prod(leaf.shape[:-1]))
            flat[path] = (u[offset:offset + size].reshape(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)
        offset += size
    return traverse_util.unflatten_dict(flat)


def abstract_params(config: WanVAEConfig) -> Params:
    """Parameter shapes/dtypes (jax.ShapeDtypeStruct tree) without computing anything."""
    s = config.spatial_stride
    video = jax.ShapeDtypeStruct((1, 1, s, s, config.video_channels), jnp.float32)
    return jax.eval_shape(lambda v: WanVAE(config).init(jax.random.key(0), v), video)["params"]


def _latent_stats(config: WanVAEConfig, dtype) -> tuple[jax.Array, jax.Array]:
    return jnp.asarray(config.latents_mean, dtype), jnp.asarray(config.latents_std, dtype)


def normalize_latents(mean: jax.Array, config: WanVAEConfig) -> jax.Array:
    """Raw posterior latents -> the unit-scale latents the diffusion model sees: (z - mean) / std."""
    m, s = _latent_stats(config, mean.dtype)
    return (mean - m) / s


def denormalize_latents(latents: jax.Array, config: WanVAEConfig) -> jax.Array:
    """Inverse of `normalize_latents`."""
    m, s = _latent_stats(config, latents.dtype)
    return latents * s + m


def sample_posterior(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """A draw from N(mean, exp(logvar)) (raw, un-normalised latents)."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)


def _check_cache(cache: Cache, part: str, fn: str) -> None:
    if cache is None:
        return
    if not isinstance(cache, Mapping) or set(cache) != {part}:
        keys = sorted(cache) if isinstance(cache, Mapping) else type(cache).__name__
        raise ChunkError(f"{fn}: the cache is not a {part} cache (it holds {keys}); pass the cache returned by the "
                         f"previous {fn} call, or None to start a clip")


@functools.partial(jax.jit, static_argnames=("config",))
def _encode_moments(params: Params, video: jax.Array, config: WanVAEConfig, cache: Cache):
    variables = {"params": params, **({} if cache is None else {"cache": cache})}
    (mean, logvar), state = WanVAE(config).apply(variables, video, cache is None, method=WanVAE.encode_moments,
                                                 mutable=["cache"])
    return mean, logvar, state["cache"]


@functools.partial(jax.jit, static_argnames=("config",))
def _decode(params: Params, z: jax.Array, config: WanVAEConfig, cache: Cache):
    variables = {"params": params, **({} if cache is None else {"cache": cache})}
    video, state = WanVAE(config).apply(variables, z, cache is None, method=WanVAE.decode_latents, mutable=["cache"])
    return video, state["cache"]


def encode_moments(params: Params, video: jax.Array, config: WanVAEConfig,
                   cache: Cache = None) -> tuple[jax.Array, jax.Array, Cache]:
    """One encoder chunk. video [B, T, H, W, C] in [-1, 1] -> posterior (mean, logvar), raw (un-normalised)
    [B, T', H', W', z], and the cache for the next chunk. cache=None starts a clip (T = 1 + st k frames);
    later chunks have T = st m frames."""
    chex.assert_rank(video, 5)
    _, t, h, w, c = video.shape
    st, ss = config.temporal_stride, config.spatial_stride
    if c != config.video_channels:
        raise ChunkError(f"encode: video has {c} channels, this VAE takes {config.video_channels} "
                         "(layout [B, T, H, W, C], channels last)")
    if h % ss or w % ss:
        raise ChunkError(f"encode: frame size {h}x{w} must be divisible by the spatial stride {ss}")
    if cache is None and t % st != 1 % st:
        raise ChunkError(f"encode: the first chunk of a clip needs 1 + {st}k frames, got {t}")
    if cache is not None and (t == 0 or t % st):
        raise ChunkError(f"encode: chunks after the first need a positive multiple of {st} frames, got {t}")
    _check_cache(cache, "encoder", "encode")
    return _encode_moments(params, video, config, cache)


def encode_chunk(params: Params, video: jax.Array, config: WanVAEConfig, cache: Cache = None, *,
                 normalize: bool = True) -> tuple[jax.Array, Cache]:
    """Posterior-mean latents of one chunk (normalised unless normalize=False) and the next cache."""
    mean, _, cache = encode_moments(params, video, config, cache)
    return (normalize_latents(mean, config) if normalize else mean), cache


def encode(params: Params, video: jax.Array, config: WanVAEConfig, *, normalize: bool = True) -> jax.Array:
    """video [B, 1 + st k, H, W, C] in [-1, 1] -> posterior-mean latents [B, 1 + k, H/ss, W/ss, z], one pass."""
    return encode_chunk(params, video, config, None, normalize=normalize)[0]


def decode_chunk(params: Params, latents: jax.Array, config: WanVAEConfig, cache: Cache = None, *,
                 normalized: bool = True) -> tuple[jax.Array, Cache]:
    """One decoder chunk: latents [B, n, H', W', z] -> video [B, n_out, H, W, C] in [-1, 1] and the next cache.
    The first chunk of a clip (cache=None) yields 1 + st (n - 1) frames, later chunks st n frames."""
    chex.assert_rank(latents, 5)
    if latents.shape[-1] != config.z_dim or latents.shape[1] < 1:
        raise ChunkError(f"decode: latents {latents.shape} must be [B, T' >= 1, H', W', {config.z_dim}]")
    _check_cache(cache, "decoder", "decode")
    z = denormalize_latents(latents, config) if normalized else latents
    return _decode(params, z, config, cache)


def decode(params: Params, latents: jax.Array, config: WanVAEConfig, *, normalized: bool = True) -> jax.Array:
    """latents [B, T', H', W', z] (normalised unless normalized=False) -> video [B, 1 + st (T'-1), H, W, C]."""
    return decode_chunk(params, latents, config, None, normalized=normalized)[0]


def iter_encode(params: Params, video: jax.Array, config: WanVAEConfig, chunk_frames: int = 16, *,
                normalize: bool = True) -> Iterator[jax.Array]:
    """Encodes a long clip chunk by chunk in constant memory, yielding latent chunks [B, n, H', W', z].

    The first chunk has 1 + chunk_frames frames, the others chunk_frames (a multiple of the temporal stride)."""
    if chunk_frames < 1 or chunk_frames % config.temporal_stride:
        raise ChunkError(f"chunk_frames={chunk_frames} must be a positive multiple of {config.temporal_stride}")
    cache, start = None, 0
    while start < video.shape[1]:
        stop = start + chunk_frames + (1 if cache is None else 0)
        latents, cache = encode_chunk(params, video[:, start:stop], config, cache, normalize=normalize)
        start = stop
        yield latents


def iter_decode(params: Params, latents: jax.Array, config: WanVAEConfig, chunk_frames: int = 4, *,
                normalized: bool = True) -> Iterator[jax.Array]:
    """Decodes latents chunk by chunk (chunk_frames latent frames at a time), yielding video chunks."""
    if chunk_frames < 1:
        raise ChunkError(f"chunk_frames={chunk_frames} must be positive")
    cache = None
    for start in range(0, latents.shape[1], chunk_frames):
        chunk = latents[:, start:start + chunk_frames]
        video, cache = decode_chunk(params, chunk, config, cache, normalized=normalized)
        yield video
