"""Wan VAE: parity with diffusers' AutoencoderKLWan (Wan 2.1 and 2.2 layouts), chunked == one pass, import
errors, full-size layout check, decoded clip to mp4."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from wam_jax.tools import video_io  # noqa: E402
from wam_jax.config import ConfigError  # noqa: E402
from wam_jax.interop import vae_import  # noqa: E402
from wam_jax.models import vae as V  # noqa: E402

TINY = {
    # Wan 2.1 layout: flat down-block list, channel-halving upsamplers, stride 4x8x8.
    "wan21": dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True],
                  latents_mean=[0.1, -0.2, 0.3, 0.05], latents_std=[1.5, 0.7, 2.0, 1.1]),
    # Wan 2.2 layout: 2x2 patchify, residual down/up blocks with avg/dup shortcuts, own decoder width, 4x16x16.
    "wan22": dict(base_dim=8, decoder_base_dim=12, z_dim=8, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                  temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                  patch_size=2, scale_factor_spatial=16, latents_mean=np.linspace(-0.3, 0.3, 8).tolist(),
                  latents_std=np.linspace(0.5, 2.0, 8).tolist()),
}
VIDEO_SHAPE = (1, 9, 32, 48, 3)  # [B, T = 1 + 4*2, H, W, C], non-square


def rel_err(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _to_torch(x):  # [B, T, H, W, C] -> [B, C, T, H, W]
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x))).permute(0, 4, 1, 2, 3)


def _from_torch(x):
    return x.permute(0, 2, 3, 4, 1).numpy()


@pytest.fixture(scope="module", params=sorted(TINY))
def vae(request, tmp_path_factory):
    """A tiny random diffusers VAE saved with save_pretrained, imported through the CLI and loaded back."""
    kind = request.param
    torch.manual_seed(20240611)
    model = diffusers.AutoencoderKLWan(**TINY[kind]).eval()
    with torch.no_grad():  # non-trivial norm scales, so a gamma layout mistake would show
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
    src = str(tmp_path_factory.mktemp(f"{kind}_diffusers"))
    # Wan 2.2 is saved sharded to exercise the *.safetensors.index.json path.
    model.save_pretrained(src, **({"max_shard_size": "40KB"} if kind == "wan22" else {}))
    out = str(tmp_path_factory.mktemp(f"{kind}_flax") / "ckpt")
    assert vae_import.cli(["--src", src, "--out", out]) == 0
    config, params = vae_import.load_vae(out)

    video = np.random.default_rng(7).uniform(-1, 1, VIDEO_SHAPE).astype(np.float32)
    with torch.no_grad():
        posterior = model.encode(_to_torch(video)).latent_dist
        mean_t = posterior.mean
        decoded_t = model.decode(mean_t).sample  # diffusers decodes one latent frame at a time
    m = torch.tensor(config.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(config.latents_std).view(1, -1, 1, 1, 1)
    ref = {"mean": _from_torch(mean_t), "normalized": _from_torch((mean_t - m) / s),
           "logvar": _from_torch(posterior.logvar), "decoded": _from_torch(decoded_t)}
    return dict(kind=kind, src=src, model=model, config=config, params=params, video=jnp.asarray(video), ref=ref)


def test_encode_decode_match_diffusers(vae):
    cfg, params, video, ref = vae["config"], vae["params"], vae["video"], vae["ref"]
    mean, logvar, _ = V.encode_moments(params, video, cfg)
    assert mean.shape == cfg.latent_shape(VIDEO_SHAPE) == ref["mean"].shape
    assert rel_err(mean, ref["mean"]) <= 1e-4
    assert rel_err(logvar, ref["logvar"]) <= 1e-4
    latents = V.encode(params, video, cfg)  # normalised: (mean - latents_mean) / latents_std
    assert rel_err(latents, ref["normalized"]) <= 1e-4
    decoded = V.decode(params, latents, cfg)
    assert decoded.shape == VIDEO_SHAPE
    assert rel_err(decoded, ref["decoded"]) <= 1e-4
    print(f"{vae['kind']}: rel err mean {rel_err(mean, ref['mean']):.1e} normalized "
          f"{rel_err(latents, ref['normalized']):.1e} decoded {rel_err(decoded, ref['decoded']):.1e}")


def test_chunked_encode_and_decode_equal_one_pass(vae):
    cfg, params, video, ref = vae["config"], vae["params"], vae["video"], vae["ref"]
    # Encoder chunks of 5 + 4 frames (diffusers runs 1 + 4 + 4), the second call carrying the first's cache.
    z1, cache = V.encode_chunk(params, video[:, :5], cfg)
    z2, enc_cache = V.encode_chunk(params, video[:, 5:], cfg, cache)
    assert (z1.shape[1], z2.shape[1]) == (2, 1)
    one_pass = V.encode(params, video, cfg)
    np.testing.assert_allclose(np.concatenate([z1, z2], axis=1), one_pass, rtol=0, atol=1e-5)
    # The cache is a pytree of at most 2 frames per causal layer: its size does not grow with the clip.
    assert max(x.shape[1] for x in jax.tree.leaves(enc_cache)) <= 2
    # Decoder chunks of 2 + 1 latent frames (diffusers runs 1 + 1 + 1).
    latents = jnp.asarray(ref["normalized"])
    v1, cache = V.decode_chunk(params, latents[:, :2], cfg)
    v2, _ = V.decode_chunk(params, latents[:, 2:], cfg, cache)
    assert (v1.shape[1], v2.shape[1]) == (5, 4)
    np.testing.assert_allclose(np.concatenate([v1, v2], axis=1), V.decode(params, latents, cfg), rtol=0, atol=1e-5)
    # The long-clip helpers run the same schedules (already compiled above).
    np.testing.assert_allclose(np.concatenate(list(V.iter_encode(params, video, cfg, chunk_frames=4)), axis=1),
                               one_pass, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(list(V.iter_decode(params, latents, cfg, chunk_frames=2)), axis=1),
                               np.concatenate([v1, v2], axis=1), rtol=0, atol=0)

    # A chunk that breaks the schedule, or a cache of the wrong kind, is refused with a reason.
    with pytest.raises(V.ChunkError, match="positive multiple of 4 frames, got 3"):
        V.encode_chunk(params, video[:, 5:8], cfg, enc_cache)
    with pytest.raises(V.ChunkError, match="first chunk of a clip needs 1 \\+ 4k frames, got 4"):
        V.encode_chunk(params, video[:, :4], cfg)
    with pytest.raises(V.ChunkError, match="not a decoder cache"):
        V.decode_chunk(params, latents[:, :1], cfg, enc_cache)


def test_decoded_clip_writes_readable_mp4(vae, tmp_path):
    decoded = V.decode(vae["params"], jnp.asarray(vae["ref"]["normalized"]), vae["config"])
    path = str(tmp_path / f"{vae['kind']}.mp4")
    video_io.write_video(path, video_io.to_uint8(decoded[0]), fps=10)
    back = video_io.read_video(path)
    assert back.shape == (VIDEO_SHAPE[1], VIDEO_SHAPE[2], VIDEO_SHAPE[3], 3)


def test_mismatched_checkpoint_names_tensors_and_shapes(tmp_path, capsys):
    cfg = V.WanVAEConfig.from_diffusers({**TINY["wan21"], "_class_name": "AutoencoderKLWan"})
    model = diffusers.AutoencoderKLWan(**TINY["wan21"])
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["decoder.mid_block.attentions.0.proj.bias"]
    state["encoder.conv_in.weight"] = state["encoder.conv_in.weight"][:4]
    state["encoder.extra.weight"] = np.zeros((2, 3), np.float32)
    with pytest.raises(vae_import.VAEWeightMismatchError) as info:
        vae_import.convert_vae_state_dict(state, cfg)
    msg = str(info.value)
    assert "decoder.mid_block.attentions.0.proj.bias (32,)" in msg
    assert "encoder.conv_in.weight: checkpoint (4, 3, 3, 3, 3) vs model (8, 3, 3, 3, 3)" in msg
    assert "encoder.extra.weight (2, 3)" in msg

    # The same through the command line, from files on disk.
    src = tmp_path / "vae"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan", **TINY["wan21"]}))
    save_file(state, str(src / "diffusion_pytorch_model.safetensors"))
    # The command reports it in one line (rc 2) and writes nothing.
    assert vae_import.cli(["--src", str(src), "--out", str(tmp_path / "out")]) == 2
    assert "encoder.conv_in.weight: checkpoint" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "params")


@pytest.mark.parametrize("kind", ["wan21", "wan22"])
def test_full_size_layout_matches_diffusers(kind):
    """Every tensor name and shape of the released Wan 2.1 / 2.2 VAE architectures (built on the meta device,
    no weights) is what our model expects."""
    cfg_dict = {} if kind == "wan21" else dict(
        base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12,
        patch_size=2, scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    with torch.device("meta"):
        model = diffusers.AutoencoderKLWan(**cfg_dict)
    cfg = V.WanVAEConfig.from_diffusers(dict(model.config))
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ours = {vae_import.torch_key(path): vae_import.torch_shape(path, leaf.shape)
            for path, leaf in vae_import.traverse_util.flatten_dict(V.abstract_params(cfg)).items()}
    assert ours == theirs
    assert (cfg.temporal_stride, cfg.spatial_stride) == ((4, 8) if kind == "wan21" else (4, 16))


def test_random_init_matches_abstract_tree():
    cfg = V.WanVAEConfig.from_diffusers(TINY["wan22"])
    params = V.init_params(cfg, jax.random.key(3))
    assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, V.abstract_params(cfg))
    assert float(jnp.std(params["encoder"]["conv_in"]["kernel"])) > 0


def test_config_errors_are_specific():
    with pytest.raises(ConfigError, match="unknown key"):
        V.WanVAEConfig.from_diffusers({"base_dim": 8, "z_dimm": 4})
    with pytest.raises(ConfigError, match="latents_mean/latents_std have 16/16 entries; z_dim=4"):
        V.WanVAEConfig.from_diffusers({"z_dim": 4})
    with pytest.raises(ConfigError, match="scale_factor_spatial=8 but"):
        V.WanVAEConfig(dim_mult=(1, 2), temperal_downsample=(True,))
    with pytest.raises(ConfigError, match="attn_scales"):
        V.WanVAEConfig(attn_scales=(0.5,))
    with pytest.raises(ConfigError, match="temperal_downsample has 2 entries"):
        V.WanVAEConfig(temperal_downsample=(True, True))
    # diffusers bookkeeping and keys diffusers itself ignores are accepted.
    cfg = V.WanVAEConfig.from_diffusers({"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1",
                                         "clip_output": False})
    assert cfg == V.WanVAEConfig()
    assert V.WanVAEConfig.from_diffusers(cfg.to_diffusers()) == cfg
