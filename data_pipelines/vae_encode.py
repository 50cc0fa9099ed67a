"""Optional pre-encoding pass: clip frames → Wan VAE latents stored in the record (`--vae-checkpoint DIR`).

The checkpoint is a params directory (`wam_jax.checkpoint`: DIR/params + DIR/meta.json) whose meta holds the
VAE architecture under "config" (diffusers `AutoencoderKLWan` config.json keys, as `WanVAEConfig` uses).

Layout. Frames [T, H, W, 3] uint8 → video in [-1, 1] → causal Wan encoding of the first 1 + st·k frames
(k = (T - 1) // st, st = temporal stride 4): latents [1 + k, H/ss, W/ss, z], posterior mean, normalised with
the VAE's latent statistics. Latent 0 encodes frame 0, latent j ≥ 1 frames st(j-1)+1 … st·j, so the latent
holding frame f is ceil(f / st): `latent_chunk_start[n] = ceil(chunk_start[n] / st)`. Frames stay in the
record unless `drop_frames`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from data_pipelines import schema


def available() -> bool:
    """Whether the Flax Wan VAE module is importable in this checkout."""
    try:
        import wam_jax.models.vae  # noqa: F401
    except ImportError:
        return False
    return True


def load_vae(checkpoint_dir: str):
    """(params, WanVAEConfig) from a params checkpoint directory written by `python -m wam_jax import-vae`."""
    try:
        from wam_jax.interop.vae_import import load_vae as _load
    except ImportError:  # older checkout: read the same layout directly
        _load = None
    if _load is not None:
        config, params = _load(checkpoint_dir)
        return params, config
    from wam_jax import checkpoint
    from wam_jax.models import vae

    meta = checkpoint.load_meta(checkpoint_dir)
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{checkpoint_dir}/meta.json has no VAE 'config' (diffusers AutoencoderKLWan keys); "
                         "write it with `python -m wam_jax import-vae`")
    params, _ = checkpoint.load_params_checkpoint(checkpoint_dir)
    return params, vae.WanVAEConfig.from_diffusers(meta["config"])


def make_encoder(checkpoint_dir: str, chunk_frames: int = 16, drop_frames: bool = False
                 ) -> Callable[[schema.ClipRecord], schema.ClipRecord]:
    """A clip transform for `builders.build(..., clip_transform=...)` that adds `latents` to each clip."""
    params, config = load_vae(checkpoint_dir)
    return lambda clip: encode_clip(clip, params, config, chunk_frames, drop_frames)


def encode_clip(clip: schema.ClipRecord, params, config, chunk_frames: int = 16,
                drop_frames: bool = False) -> schema.ClipRecord:
    import jax.numpy as jnp

    from wam_jax.models import vae

    if clip.frames is None:
        raise ValueError(f"clip {clip.clip_id} has no frames to encode")
    st, ss = config.temporal_stride, config.spatial_stride
    t, h, w, _ = clip.frames.shape
    if h % ss or w % ss:
        raise ValueError(f"frames {h}x{w} of clip {clip.clip_id} are not divisible by the VAE's spatial stride {ss}; "
                         "build with an image_size that is")
    used = 1 + ((t - 1) // st) * st
    video = jnp.asarray(clip.frames[None, :used], jnp.float32) / 127.5 - 1.0
    step = max(st, (chunk_frames // st) * st)
    latents = np.concatenate([np.asarray(x[0]) for x in vae.iter_encode(params, video, config, step)], axis=0)
    lcs = -(-clip.chunk_start // st)
    return dataclasses.replace(clip, latents=latents.astype(np.float32), latent_chunk_start=lcs.astype(np.int32),
                               frames=None if drop_frames else clip.frames,
                               meta={**clip.meta, "vae": {"temporal_stride": st, "spatial_stride": ss,
                                                          "frames_encoded": int(used), "normalized": True}})
