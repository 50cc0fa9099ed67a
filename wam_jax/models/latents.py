"""Video ↔ latent codecs (config.latent).

  pixels   the embedded default, needs no pretrained weights: frames are subsampled in time (`frame_stride`)
           and folded space-to-depth (`space_to_depth` × `space_to_depth` pixel blocks become channels),
           scaled to [-1, 1]. Exactly invertible up to the dropped frames and uint8 rounding.
  pca      `pixels` followed by a linear autoencoder: each space-to-depth block is projected on the top
           `channels` principal components of the training frames' blocks (`fit_pca`, stored at `pca_path`),
           then scaled so that the latent has unit variance per channel on average (as Wan's VAE latents are
           normalised by their mean and std: flow matching's noise has unit variance, and a latent of variance
           0.1 would be drowned at every τ the sampler visits).
           Needs no pretrained weights either, and keeps the latent narrower than the model width, as Wan's
           VAE latents are (a 192-wide pixel block cannot pass through a 64-wide tiny model).
  none     latents with no pixel space (the synthetic test source): nothing to encode or decode.
  wan_vae  the Wan causal 3D VAE (wam_jax/models/vae.py) from a checkpoint made by
           `python -m wam_jax import-vae`; clips are pre-encoded by `python -m data_pipelines build
           --vae-checkpoint`, and decoding runs here (rollout videos).
"""

from __future__ import annotations

import numpy as np

KINDS = ("pixels", "pca", "wan_vae", "none")


def _check(latent_cfg):
    if latent_cfg.kind not in KINDS:
        raise ValueError(f"config.latent.kind={latent_cfg.kind!r} unknown; choose one of {KINDS}")


def latent_channels(latent_cfg) -> int:
    _check(latent_cfg)
    if latent_cfg.kind == "pixels":
        return 3 * latent_cfg.space_to_depth ** 2
    raise ValueError("wan_vae latent width comes from the VAE config (z_dim)")


def encode_frames(frames: np.ndarray, config, kept_every: int = 1) -> np.ndarray:
    """uint8 frames [B, T, H, W, 3] → latents [B, T / frame_stride, H / s, W / s, 3·s²] float32.
    kept_every: the frames are already every n-th of the video (a pipeline with `data.frame_stride=n`), so the
    codec takes every (frame_stride / n)-th of them."""
    lc = config.latent
    _check(lc)
    if kept_every < 1 or lc.frame_stride % kept_every:
        raise ValueError(f"data.frame_stride={kept_every} does not divide latent.frame_stride={lc.frame_stride}")
    if lc.kind == "none":
        raise ValueError("config.latent.kind='none' has no frame encoder: this data source must provide latents")
    if lc.kind not in ("pixels", "pca"):
        raise ValueError("wan_vae latents are computed when the dataset is built: run `python -m data_pipelines "
                         "build ... --vae-checkpoint DIR` so batches carry 'latents'")
    s, stride = lc.space_to_depth, lc.frame_stride // kept_every
    b, t, h, w, c = frames.shape
    if t % stride or h % s or w % s:
        raise ValueError(f"frames [T={t}, H={h}, W={w}] are not divisible by frame_stride={stride} / "
                         f"space_to_depth={s}")
    x = frames[:, stride - 1::stride].astype(np.float32) / 127.5 - 1.0          # last frame of each group
    x = x.reshape(b, t // stride, h // s, s, w // s, s, c).transpose(0, 1, 2, 4, 3, 5, 6)
    x = x.reshape(b, t // stride, h // s, w // s, s * s * c)
    if lc.kind == "pca":
        mean, components, scale = _pca_basis(lc.pca_path)
        x = ((x - mean) @ components.T) * scale
    return x.astype(np.float32)


_PCA_CACHE: dict[str, tuple[np.ndarray, np.ndarray, np.float32]] = {}


def _pca_basis(path: str) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(mean [D], components [z, D], scale): latent = ((block − mean) @ componentsᵀ) · scale."""
    if path not in _PCA_CACHE:
        try:
            data = np.load(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"config.latent.pca_path={path!r} does not exist: fit it with "
                                    "wam_jax.models.latents.fit_pca on training frames") from None
        if "scale" not in data:
            raise ValueError(f"config.latent.pca_path={path!r} has no 'scale' (a basis fitted before latents were "
                             "normalised): refit it with `python -m data_pipelines prepare` (or delete it)")
        _PCA_CACHE[path] = (data["mean"].astype(np.float32), data["components"].astype(np.float32),
                            np.float32(data["scale"]))
    return _PCA_CACHE[path]


def fit_pca(frames: np.ndarray, config, path: str) -> float:
    """Fits the `pca` codec's basis on uint8 frames [B, T, H, W, 3] and saves it to `path` (npz).
    Returns the fraction of the blocks' variance the kept components explain."""
    lc = config.latent
    blocks = encode_frames(frames, _with_kind(config, "pixels"))
    flat = blocks.reshape(-1, blocks.shape[-1]).astype(np.float64)
    mean = flat.mean(0)
    _, sing, vt = np.linalg.svd(flat - mean, full_matrices=False)
    kept_variance = np.mean(sing[:lc.channels] ** 2) / len(flat)          # mean variance of a kept channel
    np.savez(path, mean=mean.astype(np.float32), components=vt[:lc.channels].astype(np.float32),
             scale=np.float32(1.0 / np.sqrt(kept_variance)))
    _PCA_CACHE.pop(path, None)
    return float(np.sum(sing[:lc.channels] ** 2) / np.sum(sing ** 2))


def _with_kind(config, kind: str):
    import ml_collections
    clone = ml_collections.ConfigDict(config.to_dict())
    clone.latent.kind = kind
    return clone


def can_decode(config) -> bool:
    return config.latent.kind != "none"


def decode_latents(latents: np.ndarray, config, vae=None) -> np.ndarray:
    """Latents [B, T', h, w, z] → uint8 frames [B, T, H, W, 3] (one frame per latent frame for `pixels`)."""
    lc = config.latent
    _check(lc)
    if lc.kind == "none":
        raise ValueError("config.latent.kind='none': these latents have no pixel decoder")
    if lc.kind in ("pixels", "pca"):
        s = lc.space_to_depth
        latents = np.asarray(latents, np.float32)
        if lc.kind == "pca":
            mean, components, scale = _pca_basis(lc.pca_path)
            latents = (latents / scale) @ components + mean
        b, t, h, w, z = latents.shape
        x = latents.reshape(b, t, h, w, s, s, z // (s * s)).transpose(0, 1, 2, 4, 3, 5, 6)
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
