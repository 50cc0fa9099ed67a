"""Export to PyTorch: diffusers and PyTorch DriveWAM forwards equal the Flax ones, JAX→PyTorch→JAX is bit exact,
the CLI exports a real training run, and bad checkpoints give clear errors."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch

from wam_jax import checkpoint
from wam_jax.config import ConfigError, load_config
from wam_jax.interop import drivewam_format as fmt
from wam_jax.interop import safetensors_io
from wam_jax.interop.drivewam_import import import_exported
from wam_jax.interop.export import ExportError, cli, export_checkpoint, export_params
from wam_jax.interop.wan_import import convert_wan_state
from wam_jax.models import wam as wam_lib
from wam_jax.models.wan_dit import WanTransformer
from wam_jax.interop.torch_drivewam import DriveWAMTorch, load_wan_transformer
from tests.wan_reference import rel_err

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")


def _random_params(wan, wam, seed=0):
    """Every leaf random and non-zero (the output heads initialise to zero, which would hide a mis-mapped head).
    Drawn in numpy from the abstract shapes: no init compile."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = path[-1].key
        if name == "kernel":
            value = rng.standard_normal(s.shape) / np.sqrt(s.shape[-2])
        elif name == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(s.shape)
        elif name == "scale_shift_table":
            value = rng.standard_normal(s.shape) / np.sqrt(s.shape[-1])
        else:
            value = 0.1 * rng.standard_normal(s.shape)
        return value.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, nn.unbox(wam_lib.abstract_params(wan, wam)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = load_config(TINY)
    wan, wam = wam_lib.build_configs(config)
    params = _random_params(wan, wam)
    root = tmp_path_factory.mktemp("export")
    # A small shard size forces diffusers' sharded layout (index json + several files).
    s32 = export_params(params, config, str(root / "f32"), "float32", max_shard_bytes=60_000)
    s16 = export_params(params, config, str(root / "bf16"), "bfloat16")
    assert s32.action_tensors == s16.action_tensors == len(fmt.action_tensor_names(wan.num_layers))
    return dict(config=config, wan=wan, wam=wam, params=params, f32=str(root / "f32"), bf16=str(root / "bf16"))


def _drivewam_inputs(seed, b=2, s=2, n=2, guidance=True):
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((b, s, n, 2, 4, 4, 8)).astype(np.float32)
    actions = rng.standard_normal((b, s, n, 8, 3)).astype(np.float32)
    t_video = rng.uniform(size=(b, s, n)).astype(np.float32)
    t_action = rng.uniform(size=(b, s, n)).astype(np.float32)
    t_video[:, 0] = t_action[:, 0] = 0.0           # teacher forcing: stream 0 is the clean context
    g = rng.standard_normal((b, n, 1, 32)).astype(np.float32) if guidance else None
    return video, actions, t_video, t_action, g


def _flax_drivewam(exported, inputs):
    model = wam_lib.DriveWAM(exported["wan"], exported["wam"])
    v, a, _ = jax.jit(lambda p, *x: model.apply({"params": p}, *x))(exported["params"], *inputs)
    return np.asarray(v), np.asarray(a)


def _torch_drivewam(model, inputs):
    with torch.no_grad():
        v, a = model(*(None if x is None else torch.from_numpy(x) for x in inputs))
    return v.numpy(), a.numpy()


def test_diffusers_transformer_matches_flax_video_dit(exported):
    tdir = os.path.join(exported["f32"], fmt.TRANSFORMER_DIR)
    index = json.load(open(os.path.join(tdir, f"{fmt.WEIGHTS_STEM}.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    # diffusers' from_pretrained when `accelerate` is installed (it needs it for Wan), else the same tensors
    # copied into WanTransformer3DModel.from_config(config.json).
    model = load_wan_transformer(tdir).eval()
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((2, 8, 3, 4, 6)).astype(np.float32)          # [B, C, T, H, W]
    context = rng.standard_normal((2, 5, 32)).astype(np.float32)
    timesteps = np.array([999.0, 17.5], np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(latents), torch.from_numpy(timesteps), torch.from_numpy(context),
                    return_dict=False)[0].numpy()
    wan_params = {g: wam_lib.without_ego(exported["params"][g]) for g in wam_lib.WAN_PARAM_GROUPS}
    ours = jax.jit(WanTransformer(exported["wan"]).apply)({"params": wan_params},
                                                          jnp.asarray(latents.transpose(0, 2, 3, 4, 1)),
                                                          jnp.asarray(timesteps), jnp.asarray(context))
    ours = np.asarray(ours).transpose(0, 4, 1, 2, 3)
    assert ref.shape == ours.shape == (2, 8, 3, 4, 6)
    assert np.abs(ref).max() > 0.1
    assert rel_err(ours, ref) <= 1e-4


@pytest.mark.parametrize("guidance", [True, False], ids=["guidance", "no_guidance"])
def test_torch_drivewam_matches_flax(exported, guidance):
    inputs = _drivewam_inputs(2, guidance=guidance)
    flax_v, flax_a = _flax_drivewam(exported, inputs)
    torch_v, torch_a = _torch_drivewam(DriveWAMTorch.from_pretrained(exported["f32"]), inputs)
    assert torch_v.shape == flax_v.shape == (2, 2, 2, 2, 4, 4, 8)
    assert torch_a.shape == flax_a.shape == (2, 2, 2, 8, 3)
    assert np.abs(flax_a).max() > 0.1 and np.abs(flax_v).max() > 0.1
    assert rel_err(torch_v, flax_v) <= 1e-4
    assert rel_err(torch_a, flax_a) <= 1e-4


def _bits(x):
    x = np.asarray(x)
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


def test_round_trip_is_bit_exact(exported, tmp_path):
    params = exported["params"]
    wan, wam, back, doc = import_exported(exported["f32"])
    assert (wan, wam) == (exported["wan"], exported["wam"])
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for path, a, b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(params),
                          jax.tree.leaves(back)):
        assert b.dtype == np.float32 and np.array_equal(_bits(a), _bits(b)), jax.tree_util.keystr(path[0])
    assert doc["action_norm"] == exported["config"].action_norm.to_dict()

    _, _, back16, doc16 = import_exported(exported["bf16"])
    assert doc16["dtype"] == "bfloat16"
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back16)):
        assert b.dtype == ml_dtypes.bfloat16
        assert np.array_equal(_bits(np.asarray(jnp.asarray(a).astype(jnp.bfloat16))), _bits(b))
    _, _, up, _ = import_exported(exported["bf16"], dtype="float32")
    assert all(np.array_equal(np.asarray(a, np.float32), b) for a, b in zip(jax.tree.leaves(back16),
                                                                           jax.tree.leaves(up)))

    # Per-layer (unscanned) layout holds the same tensors, and re-exporting the imported tree gives the same bytes.
    wan_flat, _, flat, _ = import_exported(exported["f32"], scan_layers=False)
    assert not wan_flat.scan_layers
    np.testing.assert_array_equal(flat["blocks"]["blocks_1"]["ffn"]["fc_in"]["kernel"],
                                  params["blocks"]["blocks"]["ffn"]["fc_in"]["kernel"][1])
    export_params(flat, exported["config"], str(tmp_path / "again"), "bfloat16")
    for sub, name in [(fmt.TRANSFORMER_DIR, f"{fmt.WEIGHTS_STEM}.safetensors"), (fmt.DRIVEWAM_DIR, fmt.ACTIONS_FILE)]:
        first = dict(safetensors_io.iter_file(os.path.join(exported["bf16"], sub, name)))
        second = dict(safetensors_io.iter_file(str(tmp_path / "again" / sub / name)))
        assert set(first) == set(second) and all(np.array_equal(_bits(first[k]), _bits(second[k])) for k in first)


def test_imported_checkpoint_exports_again(exported, tmp_path):
    from wam_jax.interop import drivewam_import
    ckpt = tmp_path / "ckpt"
    assert drivewam_import.cli(["--src", exported["bf16"], "--out", str(ckpt), "--dtype", "float32"]) == 0
    assert checkpoint.load_meta(str(ckpt))["kind"] == "drivewam"
    export_checkpoint(str(ckpt), str(tmp_path / "again"), dtype="bfloat16")   # config from meta.json
    for sub, name in [(fmt.TRANSFORMER_DIR, f"{fmt.WEIGHTS_STEM}.safetensors"), (fmt.DRIVEWAM_DIR, fmt.ACTIONS_FILE)]:
        first = open(os.path.join(exported["bf16"], sub, name), "rb").read()
        assert first == open(tmp_path / "again" / sub / name, "rb").read()
    with pytest.raises(ConfigError, match="--params ema"):
        export_checkpoint(str(ckpt), str(tmp_path / "x"), params="ema")


def test_torch_module_runs_without_jax(exported, tmp_path):
    inputs = _drivewam_inputs(3)
    np.savez(tmp_path / "inputs.npz", *inputs)
    script = f"""
import sys, numpy as np, torch
from wam_jax.interop.torch_drivewam import DriveWAMTorch
x = [torch.from_numpy(a) for a in np.load({str(tmp_path / 'inputs.npz')!r}).values()]
with torch.no_grad():
    v, a = DriveWAMTorch.from_pretrained({exported['f32']!r})(*x)
    v16, a16 = DriveWAMTorch.from_pretrained({exported['bf16']!r}, torch_dtype=torch.bfloat16)(*x)
np.savez({str(tmp_path / 'out.npz')!r}, v=v.numpy(), a=a.numpy(), v16=v16.numpy(), a16=a16.numpy())
loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'orbax', 'chex', 'optax'))
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    ref_v, ref_a = _torch_drivewam(DriveWAMTorch.from_pretrained(exported["f32"]), inputs)
    np.testing.assert_allclose(out["v"], ref_v, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["a"], ref_a, rtol=1e-6, atol=1e-6)
    # bfloat16 weights and compute: close to float32, not equal.
    assert 0 < rel_err(out["v16"], ref_v) < 5e-2 and 0 < rel_err(out["a16"], ref_a) < 5e-2


def test_export_from_training_run_cli(tmp_path):
    from wam_jax.training.trainer import Trainer
    config = load_config(TINY, ["train.steps=2", "train.batch_size=2", "data.num_clips=2", "chunks=2",
                                "train.log_every=1", "train.async_checkpoints=False"])
    workdir = tmp_path / "run"
    state = jax.device_get(Trainer(config, str(workdir)).run())

    with open(workdir / "config.json") as f:                # written by the run once it has validated
        assert json.load(f) == json.loads(json.dumps(config.to_dict(), default=str))
    os.rename(workdir / "config.json", workdir / "saved.json")
    with pytest.raises(ConfigError, match="--config"):      # without it, export asks for the config
        export_checkpoint(str(workdir), str(tmp_path / "x"))
    os.rename(workdir / "saved.json", workdir / "config.json")

    out = tmp_path / "ema"
    result = subprocess.run([sys.executable, "-m", "wam_jax", "export", "--checkpoint", str(workdir), "--out", str(out),
                             "--params", "ema"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported DriveWAM" in result.stdout
    _, _, ema, doc = import_exported(str(out))
    assert doc["source"]["step"] == 2 and doc["source"]["params"] == "ema"
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema)))

    export_checkpoint(str(workdir / "checkpoints"), str(tmp_path / "raw"), step=2)
    _, _, raw, _ = import_exported(str(tmp_path / "raw"))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(raw)))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(raw)))

    with pytest.raises(checkpoint.CheckpointError, match=r"available steps: \[2\]"):
        export_checkpoint(str(workdir), str(tmp_path / "y"), step=5)
    with pytest.raises(ExportError, match="already exist"):
        export_checkpoint(str(workdir), str(out))
    with pytest.raises(ExportError, match="do not fit"):
        export_checkpoint(str(workdir), str(tmp_path / "z"), overrides=["model.num_layers=3"])


def test_wan_params_checkpoint_exports_transformer_only(exported, tmp_path):
    wan = exported["wan"]
    wan_params = {g: wam_lib.without_ego(exported["params"][g]) for g in wam_lib.WAN_PARAM_GROUPS}
    checkpoint.save_params(str(tmp_path / "wan"), wan_params,
                           {"kind": "wan_transformer", "config": wan.to_diffusers(), "scan_layers": True})
    summary = export_checkpoint(str(tmp_path / "wan"), str(tmp_path / "out"))
    assert summary.action_tensors == 0
    assert sorted(os.listdir(tmp_path / "out")) == [fmt.TRANSFORMER_DIR]
    back = convert_wan_state(safetensors_io.iter_directory(str(tmp_path / "out" / fmt.TRANSFORMER_DIR)), wan)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(wan_params), jax.tree.leaves(back)))
    with pytest.raises(checkpoint.CheckpointError, match="Wan-only export"):
        import_exported(str(tmp_path / "out"))


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "does not exist" in err and "training workdir" in err
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert cli(["--checkpoint", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "no finished training steps" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
