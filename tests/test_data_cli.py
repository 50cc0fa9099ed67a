"""`python -m data_pipelines build|inspect`, the read benchmark, and the VAE pre-encoding hook."""

import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import fixtures, pipeline
from data_pipelines.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_navsim_from_the_command_line(tmp_path, capsys):
    src = str(tmp_path / "src")
    fixtures.write_navsim_fixture(src, frames_per_log=16)
    out = str(tmp_path / "out")
    assert main(["build", "--source", "navsim", "--src", src, "--out", out, "--clips", "2",
                 "--set", "image_size=(12,20)", "--set", "frame_codec=png"]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path == os.path.join(out, "wam_navsim", "default", "1.0.0")
    clips = list(pipeline.iter_clips(out))
    assert len(clips) == 2 and clips[0].frames.shape == (4, 12, 20, 3)
    assert main(["inspect", "--data", out]) == 0
    assert "records:  2" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown field 'image_sise'"):
        main(["build", "--source", "navsim", "--src", src, "--out", out, "--clips", "1", "--set", "image_sise=(1,2)"])
    with pytest.raises(SystemExit, match="--src"):
        main(["build", "--source", "physicalai", "--out", out])


def test_bench_read_prints_a_table(tmp_path):
    data = fixtures.build_synthetic(str(tmp_path), num_clips=6)
    result = subprocess.run([sys.executable, "-m", "data_pipelines.bench_read", "--data", data, "--seconds", "0.2",
                             "--workers", "0", "--batch-size", "2"], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()]
    header = next(r for r in rows if r and r[0] == "stage")
    assert header[-2:] == ["clips/s", "MB/s"]
    rates = {" ".join(r[:-5]): float(r[-2]) for r in rows if r and r[0] in ("read", "pipeline")}
    assert set(rates) == {"read (raw bytes)", "read + decode", "pipeline (batched)"}
    assert all(rate > 0 for rate in rates.values())


def test_vae_pre_encoding_hook(tmp_path, capsys):
    vae = pytest.importorskip("wam_jax.models.vae")
    import jax

    from wam_jax import checkpoint

    cfg = vae.WanVAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 1, 1, 1), num_res_blocks=1,
                           latents_mean=(0.1, 0.0, -0.1, 0.2), latents_std=(1.0, 2.0, 0.5, 1.0))
    params = vae.init_params(cfg, jax.random.key(0))
    ckpt = str(tmp_path / "vae")
    checkpoint.save_params(ckpt, params, {"kind": "wan_vae", "config": cfg.to_diffusers()})
    out = str(tmp_path / "out")
    assert main(["build", "--source", "synthetic", "--out", out, "--clips", "2", "--vae-checkpoint", ckpt,
                 "--set", "image_hw=(16,16)", "--set", "num_chunks=3", "--set", "frames_per_chunk=4",
                 "--set", "head_frames=0"]) == 0
    capsys.readouterr()
    clips = list(pipeline.iter_clips(out))
    clip = clips[0]
    assert clip.frames.shape == (12, 16, 16, 3)  # 3 chunks x 4 frames; the VAE encodes the first 1 + 4k = 9
    expected = vae.encode(params, clip.frames[None, :9].astype(np.float32) / 127.5 - 1.0, cfg)[0]
    assert clip.latents.shape == (3, 2, 2, 4)
    np.testing.assert_allclose(clip.latents, np.asarray(expected), atol=1e-5)
    np.testing.assert_array_equal(clip.latent_chunk_start, [0, 1, 2])  # frames 0, 4, 8 -> latents ceil(f / 4)
    with pipeline.make_pipeline(dict(data_dir=out, batch_size=2, shard_index=0, shard_count=1,
                                     chunks_per_example=1)).iterator() as it:
        batch = next(it)
    assert sorted(batch) == ["command", "ego_state", "latents", "waypoints"] and batch["latents"].shape == (2, 1, 2, 2, 4)
