"""Latent codecs: pixels is exactly invertible; pca is the least-squares projection on the fitted basis."""

import ml_collections
import numpy as np
import pytest

from wam_jax.models import latents


def _config(kind, channels=0, path=""):
    return ml_collections.ConfigDict({"latent": dict(kind=kind, frame_stride=2, space_to_depth=4, channels=channels,
                                                     pca_path=path, vae_checkpoint="")})


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    # Smooth images (low-rank structure) plus a little noise, so a few components explain most variance.
    base = rng.uniform(0, 255, (2, 4, 1, 1, 3)) * np.linspace(0.5, 1.0, 16)[None, None, :, None, None]
    return np.clip(base + rng.normal(0, 2, (2, 4, 16, 16, 3)), 0, 255).astype(np.uint8)


def test_pixels_round_trip_is_exact():
    frames = _frames()
    lat = latents.encode_frames(frames, _config("pixels"))
    assert lat.shape == (2, 2, 4, 4, 48)
    np.testing.assert_array_equal(latents.decode_latents(lat, _config("pixels")), frames[:, 1::2])


def test_pca_codec_projects_on_the_fitted_basis(tmp_path):
    frames = _frames()
    errors = []
    for channels in (2, 8, 48):
        cfg = _config("pca", channels, str(tmp_path / f"pca{channels}.npz"))
        explained = latents.fit_pca(frames, cfg, cfg.latent.pca_path)
        lat = latents.encode_frames(frames, cfg)
        assert lat.shape == (2, 2, 4, 4, channels)
        recon = latents.decode_latents(lat, cfg).astype(np.float64)
        errors.append(np.abs(recon - frames[:, 1::2]).mean())
        assert 0.0 < explained <= 1.0 + 1e-9
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] <= 0.5          # all components: lossless up to uint8 rounding
    with pytest.raises(FileNotFoundError, match="pca_path"):
        latents.encode_frames(frames, _config("pca", 2, str(tmp_path / "missing.npz")))


def test_pca_latents_have_unit_variance_per_channel_on_average(tmp_path):
    """Flow matching adds unit-variance noise: the codec scales its projections to mean channel variance 1
    (computed here in float64 from the pixel blocks), and refuses a basis stored without its scale."""
    frames = _frames(1)
    cfg = _config("pca", 4, str(tmp_path / "pca.npz"))
    latents.fit_pca(frames, cfg, cfg.latent.pca_path)
    lat = latents.encode_frames(frames, cfg).reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(lat.var(axis=0).mean(), 1.0, rtol=1e-4)
    blocks = latents.encode_frames(frames, _config("pixels")).reshape(-1, 48).astype(np.float64)
    centred = blocks - blocks.mean(0)
    top = np.linalg.eigvalsh(centred.T @ centred / len(blocks))[::-1][:4]
    np.testing.assert_allclose(lat.var(axis=0), np.sort(top)[::-1] / top.mean(), rtol=1e-3)
    stored = dict(np.load(cfg.latent.pca_path))
    stale = str(tmp_path / "stale.npz")
    np.savez(stale, mean=stored["mean"], components=stored["components"])
    with pytest.raises(ValueError, match="no 'scale'"):
        latents.encode_frames(frames, _config("pca", 4, stale))
