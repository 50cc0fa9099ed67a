"""Wan DiT: Flax forward == diffusers forward after import; config and checkpoint errors are clear."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import WanTransformer3DModel

from wam_jax.config import ConfigError, load_config
from wam_jax.interop import safetensors_io
from wam_jax.interop.wan_import import WeightMismatchError, import_wan, load_wan
from wam_jax.models.wan_dit import WanConfig, WanTransformer, abstract_params, count_params
from tests.wan_reference import make_tiny_wan, rel_err, torch_forward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = make_tiny_wan(seed=3)
    src = tmp_path_factory.mktemp("wan_src")
    # A small shard size forces diffusers' sharded layout (index json + several files).
    model.save_pretrained(src, safe_serialization=True, max_shard_size="20KB")
    return model, str(src)


def _inputs(rng, batch=2, frames=3, height=4, width=6, channels=4, text_len=5, text_dim=16):
    latents = rng.standard_normal((batch, channels, frames, height, width)).astype(np.float32)
    context = rng.standard_normal((batch, text_len, text_dim)).astype(np.float32)
    return latents, context


def _flax_forward(cfg, params, latents_cthw, timesteps, context):
    model = WanTransformer(cfg)
    out = jax.jit(model.apply)({"params": params}, jnp.asarray(latents_cthw.transpose(0, 2, 3, 4, 1)),
                               jnp.asarray(timesteps), jnp.asarray(context))
    return np.asarray(out).transpose(0, 4, 1, 2, 3)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_import_matches_diffusers_scalar_timesteps(tiny, tmp_path, scan_layers):
    model, src = tiny
    assert os.path.exists(os.path.join(src, "diffusion_pytorch_model.safetensors.index.json"))
    import_wan(src, str(tmp_path / "ckpt"), scan_layers=scan_layers)
    cfg, params = load_wan(str(tmp_path / "ckpt"))
    assert cfg.scan_layers == scan_layers
    latents, context = _inputs(np.random.default_rng(0))
    timesteps = np.array([999.0, 17.5], np.float32)
    ref = torch_forward(model, latents, timesteps, context)
    ours = _flax_forward(cfg, params, latents, timesteps, context)
    assert ours.shape == ref.shape == (2, 6, 3, 4, 6)
    assert rel_err(ours, ref) <= 1e-4


def test_import_matches_diffusers_per_token_timesteps(tiny):
    model, src = tiny
    cfg, params = import_wan(src)
    latents, context = _inputs(np.random.default_rng(1), frames=2, height=6, width=4)
    tokens = 2 * 3 * 2
    timesteps = np.random.default_rng(2).uniform(0, 1000, (2, tokens)).astype(np.float32)
    ref = torch_forward(model, latents, timesteps, context)
    ours = _flax_forward(cfg, params, latents, timesteps, context)
    assert rel_err(ours, ref) <= 1e-4
    # Per-token timesteps that are all equal reduce to the scalar case.
    same = np.full((2, tokens), 321.0, np.float32)
    np.testing.assert_allclose(_flax_forward(cfg, params, latents, same, context),
                               _flax_forward(cfg, params, latents, np.full((2,), 321.0, np.float32), context),
                               rtol=1e-5, atol=1e-5)


def test_bf16_compute_with_f32_params_runs_close(tiny):
    model, src = tiny
    cfg32, params = import_wan(src)
    cfg16 = WanConfig.from_diffusers(json.load(open(os.path.join(src, "config.json"))), dtype="bfloat16")
    latents, context = _inputs(np.random.default_rng(4))
    t = np.array([500.0, 250.0], np.float32)
    out32 = _flax_forward(cfg32, params, latents, t, context)
    out16 = _flax_forward(cfg16, params, latents, t, context)
    assert out16.dtype == np.float32 and np.all(np.isfinite(out16))
    assert rel_err(out16, out32) < 5e-2


@pytest.mark.parametrize("preset_file", ["wan21_t2v_1_3b", "wan22_ti2v_5b"])
def test_param_count_matches_diffusers(preset_file):
    config = load_config(os.path.join(REPO, "experiments", f"{preset_file}.py"))
    cfg = WanConfig.from_config(config.model)
    ours = count_params(abstract_params(cfg))  # eval_shape: nothing allocated
    diffusers_cfg = {k: v for k, v in cfg.to_diffusers().items() if k != "_class_name"}
    with torch.device("meta"):
        reference = WanTransformer3DModel(**diffusers_cfg)
    assert ours == sum(p.numel() for p in reference.parameters())
    expected_billions = {"wan21_t2v_1_3b": 1.3, "wan22_ti2v_5b": 5.0}[preset_file]
    assert abs(ours / 1e9 - expected_billions) / expected_billions < 0.1


def test_mismatched_checkpoint_names_tensors(tiny, tmp_path):
    model, _ = tiny
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    state.pop("blocks.1.ffn.net.2.weight")
    state["blocks.0.attn1.to_q.bias"] = np.zeros((7,), np.float32)
    state["extra.weight"] = np.zeros((2, 2), np.float32)
    src = tmp_path / "bad"
    src.mkdir()
    safetensors_io.write_file(str(src / "diffusion_pytorch_model.safetensors"), state)
    with open(src / "config.json", "w") as f:
        json.dump(dict(model.config), f)
    with pytest.raises(WeightMismatchError) as err:
        import_wan(str(src))
    msg = str(err.value)
    assert "blocks.1.ffn.net.2.weight (24, 40)" in msg
    assert "blocks.0.attn1.to_q.bias: checkpoint (7,) vs model (24,)" in msg
    assert "extra.weight (2, 2)" in msg


def test_truncated_safetensors_is_reported(tiny, tmp_path):
    model, _ = tiny
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    safetensors_io.write_file(str(path), {k: v.detach().numpy() for k, v in model.state_dict().items()})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with open(tmp_path / "config.json", "w") as f:
        json.dump(dict(model.config), f)
    with pytest.raises(safetensors_io.SafetensorsError, match="truncated"):
        import_wan(str(tmp_path))


def test_unknown_config_keys_fail_with_their_name(tmp_path):
    exp = os.path.join(REPO, "experiments", "wan_tiny.py")
    with pytest.raises(ConfigError, match="nope"):
        load_config(exp + ":nope=1")
    with pytest.raises(ConfigError, match="num_layer"):
        load_config(exp, ["model.num_layer=3"])
    with pytest.raises(ConfigError, match="bogus"):
        WanConfig.from_config(dict(load_config(exp).model.to_dict(), bogus=1))
    cfg = WanConfig.from_config(load_config(exp, ["model.num_layers=3"]).model)
    assert cfg.num_layers == 3


def test_import_cli_and_missing_checkpoint(tiny, tmp_path):
    _, src = tiny
    out = tmp_path / "cli_ckpt"
    result = subprocess.run([sys.executable, "-m", "wam_jax", "import-wan", "--src", src, "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "imported Wan transformer" in result.stdout
    assert (out / "meta.json").exists()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_wan(str(tmp_path / "does_not_exist"))


def test_remat_and_scan_do_not_change_gradients(tiny):
    _, src = tiny
    cfg, params = import_wan(src)
    latents, context = _inputs(np.random.default_rng(5))
    x = jnp.asarray(latents.transpose(0, 2, 3, 4, 1))

    def loss(p, c):
        out = WanTransformer(c).apply({"params": p}, x, jnp.array([10.0, 900.0]), jnp.asarray(context))
        return jnp.mean(out ** 2)

    base = jax.grad(loss)(params, cfg)
    import dataclasses
    remat = jax.grad(loss)(params, dataclasses.replace(cfg, remat="full"))
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
