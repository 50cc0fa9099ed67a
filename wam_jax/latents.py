"""Video ↔ latent codecs (config.latent).

  pixels   the embedded default, needs no pretrained weights: frames are subsampled in time (`frame_stride`)
           and folded space-to-depth (`space_to_depth` × `space_to_depth` pixel blocks become channels),
           scaled to [-1, 1]. Exactly invertible up to the dropped frames and uint8 rounding.
  none     latents with no pixel space (the synthetic test source): nothing to encode or decode.
  wan_vae  the Wan causal 3D VAE (wam_jax/models/vae.py) from a checkpoint made by
           `python -m wam_jax import-vae`; clips are pre-encoded by `python -m data_pipelines build
           --vae-checkpoint`, and decoding runs here (rollout videos).
"""

from __future__ import annotations

import numpy as np

KINDS = ("pixels", "wan_vae", "none")


def _check(latent_cfg):
    if latent_cfg.kind not in KINDS:
        raise ValueError(f"config.latent.kind={latent_cfg.kind!r} unknown; choose one of {KINDS}")


def latent_channels(latent_cfg) -> int:
    _check(latent_cfg)
    if latent_cfg.kind == "pixels":
        return 3 * latent_cfg.space_to_depth ** 2
    raise ValueError("wan_vae latent width comes from the VAE config (z_dim)")


def encode_frames(frames: np.ndarray, config) -> np.ndarray:
    """uint8 frames [B, T, H, W, 3] → latents [B, T / frame_stride, H / s, W / s, 3·s²] float32."""
    lc = config.latent
    _check(lc)
    if lc.kind == "none":
        raise ValueError("config.latent.kind='none' has no frame encoder: this data source must provide latents")
    if lc.kind != "pixels":
        raise ValueError("wan_vae latents are computed when the dataset is built: run `python -m data_pipelines "
                         "build ... --vae-checkpoint DIR` so batches carry 'latents'")
    s, stride = lc.space_to_depth, lc.frame_stride
    b, t, h, w, c = frames.shape
    if t % stride or h % s or w % s:
        raise ValueError(f"frames [T={t}, H={h}, W={w}] are not divisible by frame_stride={stride} / "
                         f"space_to_depth={s}")
    x = frames[:, stride - 1::stride].astype(np.float32) / 127.5 - 1.0          # last frame of each group
    x = x.reshape(b, t // stride, h // s, s, w // s, s, c).transpose(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t // stride, h // s, w // s, s * s * c)


def can_decode(config) -> bool:
    return config.latent.kind != "none"


def decode_latents(latents: np.ndarray, config, vae=None) -> np.ndarray:
    """Latents [B, T', h, w, z] → uint8 frames [B, T, H, W, 3] (one frame per latent frame for `pixels`)."""
    lc = config.latent
    _check(lc)
    if lc.kind == "none":
        raise ValueError("config.latent.kind='none': these latents have no pixel decoder")
    if lc.kind == "pixels":
        s = lc.space_to_depth
        b, t, h, w, z = latents.shape
        x = np.asarray(latents, np.float32).reshape(b, t, h, w, s, s, z // (s * s)).transpose(0, 1, 2, 4, 3, 5, 6)
        x = x.reshape(b, t, h * s, w * s, z // (s * s))
    else:
        if vae is None:
            raise ValueError("decoding wan_vae latents needs the VAE: set config.latent.vae_checkpoint")
        from wam_jax.models import vae as vae_lib
        vae_cfg, params = vae
        x = np.asarray(vae_lib.decode(params, latents, vae_cfg))
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def load_vae(config):
    """(vae_config, params) for config.latent.kind == 'wan_vae', else None."""
    if config.latent.kind != "wan_vae":
        return None
    from wam_jax.interop.vae_import import load_vae as load
    return load(config.latent.vae_checkpoint)
