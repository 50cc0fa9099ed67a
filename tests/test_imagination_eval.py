"""Imagination scoring: PSNR and the chunk pairs it is computed on, against hand computation."""

import types

import numpy as np
import pytest

from wam_jax.evaluation import imagination


def test_psnr_matches_the_definition_in_float64():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255                           # one wrong pixel channel in image 0
    mse0 = 255.0 ** 2 / (4 * 4 * 3)
    np.testing.assert_allclose(imagination.psnr(a, b, axis=(1, 2, 3)),
                               [10 * np.log10(255.0 ** 2 / mse0), 10 * np.log10(255.0 ** 2 / 1e-12)])
    assert imagination.psnr(a, a) == pytest.approx(10 * np.log10(255.0 ** 2 / 1e-12))   # identical: finite


def test_chunk_pairs_are_every_consecutive_pair_with_the_later_chunks_intent():
    def clip(n, seed):
        rng = np.random.default_rng(seed)
        return types.SimpleNamespace(frames=rng.integers(0, 255, (n * 4, 2, 2, 3), np.uint8),
                                     waypoints=rng.standard_normal((n, 8, 3)), ego_state=rng.standard_normal((n, 3)),
                                     intent=[f"i{seed}{c}" for c in range(n)])
    clips = [clip(3, 0), clip(2, 1)]
    frames, waypoints, ego, intents = imagination.chunk_pairs(clips, 4)
    assert frames.shape == (3, 2, 4, 2, 2, 3) and waypoints.shape == (3, 2, 8, 3) and ego.shape == (3, 2, 3)
    np.testing.assert_array_equal(frames[1, 0], clips[0].frames[4:8])      # clip 0, pair 1 → 2
    np.testing.assert_array_equal(frames[2, 1], clips[1].frames[4:8])
    np.testing.assert_allclose(ego[2], clips[1].ego_state[0:2], rtol=1e-6)   # float32
    assert intents == ["i01", "i02", "i11"]
    with pytest.raises(ValueError, match="at least 2 chunks"):
        imagination.chunk_pairs([clip(1, 2)], 4)


def test_table_rows_and_plan_line():
    result = {"offsets_s": [1.0, 2.0, 3.0, 4.0], "pairs": 2,
              "latent_mse": {k: [0.1, 0.2, 0.3, 0.4] for k in ("model", "model_mean", "copy_last")},
              "psnr_db": {k: [30.0, 29.0, 28.0, 27.0] for k in ("model", "model_mean", "copy_last", "codec")},
              "plan_horizon_s": 4.0, "plan_ade_m": {"model": 1.0, "model_fde": 2.0, "constant_velocity": 3.0,
                                                    "constant_velocity_fde": 4.0}}
    lines = imagination.format_table(result).splitlines()
    assert "latent MSE @1s" in lines[0] and "PSNR dB @4s" in lines[0] and "@2s" not in lines[0]
    assert lines[2].split() == ["model", "0.1000", "0.4000", "30.00", "27.00"]
    assert lines[-1].split() == ["codec", "-", "-", "30.00", "27.00"]
    assert "ADE 1.00 m" in imagination.plan_line(result) and "constant velocity ADE 3.00 m" in imagination.plan_line(result)


def test_cli_needs_a_checkpoint():
    with pytest.raises(SystemExit, match="--checkpoint is required"):
        imagination.cli(["--data", "/nonexistent"])
