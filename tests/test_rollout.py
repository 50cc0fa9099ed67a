"""Rollout: KV cache == recomputation, KV memory (bounded with room == full bitwise, constant over 75 chunks,
full raises past its slots, the commit donates the cache),
temporally localized guidance, CLI end to end."""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wam_jax.rollout import kv_memory
from wam_jax.config import ConfigError, load_config
from wam_jax.models import wam as wam_lib
from wam_jax.rollout.engine import RolloutEngine, SamplerConfig, chain_waypoints, multirate_grid, run_rollout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")


@pytest.fixture(scope="module")
def model():
    config = load_config(TINY)
    wan, wam = wam_lib.build_configs(config)
    params = wam_lib.init_params(wan, wam, jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return wan, wam, params


def _context(wan, wam, batch=2, chunks=1, seed=0):
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((batch, chunks, wam.latent_frames_per_chunk, wam.latent_height, wam.latent_width,
                                 wan.in_channels)).astype(np.float32)
    actions = rng.standard_normal((batch, chunks, wam.waypoints_per_chunk, 3)).astype(np.float32)
    return video, actions


def test_multirate_grid_steps_each_modality_its_own_count():
    v, a = multirate_grid(3, 6, 1.0)
    assert v.shape == a.shape == (6, 2)
    assert np.sum(v[:, 0] != v[:, 1]) == 3 and np.sum(a[:, 0] != a[:, 1]) == 6
    assert v[0, 0] == a[0, 0] == 1.0 and v[-1, 1] == a[-1, 1] == 0.0


@pytest.mark.parametrize("schedule,solver", [("joint", "euler"), ("video_then_action", "heun"),
                                             ("video_then_action", "euler")])
def test_cached_rollout_equals_uncached_recomputation(model, schedule, solver):
    wan, wam, params = model
    # video_then_action + euler: the paper's sampler (video 3 steps 1 → 0.6, actions 10 steps 1 → 0).
    sampler = (SamplerConfig() if solver == "euler" and schedule == "video_then_action" else
               SamplerConfig(video_steps=2, action_steps=3, solver=solver, schedule=schedule))
    engine = RolloutEngine(wan, wam, sampler, kv_memory.MemoryConfig(mode="full", max_chunks=6))
    video, actions = _context(wan, wam)
    g_all = jnp.asarray(np.random.default_rng(3).standard_normal((2, 4, 1, wan.text_dim)), jnp.float32)
    ego_all = jnp.asarray(np.random.default_rng(4).standard_normal((2, 4, 3)), jnp.float32)
    result = run_rollout(engine, params, video, actions, 3, jax.random.key(5),
                         guidance_fn=lambda c, _: g_all[:, c:c + 1], ego_fn=lambda c, _: ego_all[:, c:c + 1])
    assert result.video_time.tolist() == [0.0] + [engine.generated_video_time] * 3
    rng = jax.random.key(5)
    for c in range(1, 4):
        rng, key = jax.random.split(rng)
        ref_v, ref_a = engine.denoise_uncached(params, jnp.asarray(result.video[:, :c]),
                                               jnp.asarray(result.actions[:, :c]), g_all[:, :c + 1], key,
                                               past_video_t=np.tile(result.video_time[:c], (2, 1)),
                                               ego=ego_all[:, :c + 1])
        np.testing.assert_allclose(result.video[:, c], ref_v, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(result.actions[:, c], ref_a, rtol=1e-4, atol=1e-4)


def test_action_noise_scales_the_actions_starting_noise_only(model):
    """action_noise scales the actions' starting noise (0: the noise mean; the actions then depend on the rng
    only through the sampled video they are decoded from), never the video's; outside [0, 1] is refused."""
    wan, wam, params = model
    mem = kv_memory.MemoryConfig(mode="full", max_chunks=4)
    x_v, x_a = RolloutEngine(wan, wam, SamplerConfig(), mem).initial_noise(jax.random.key(3), 2)
    half_v, half_a = RolloutEngine(wan, wam, SamplerConfig(action_noise=0.5), mem).initial_noise(jax.random.key(3), 2)
    np.testing.assert_array_equal(half_v, x_v)
    np.testing.assert_allclose(half_a, 0.5 * x_a, rtol=1e-6)
    _, cold_a = RolloutEngine(wan, wam, SamplerConfig(action_noise=0.0), mem).initial_noise(jax.random.key(3), 2)
    assert not np.any(np.asarray(cold_a))
    with pytest.raises(ConfigError, match="action_noise"):
        SamplerConfig(action_noise=1.5)


@pytest.mark.parametrize("mode", ["selective", "fifo"])
def test_bounded_memory_with_room_for_everything_equals_full_cache(model, mode):
    """Budgets covering the whole rollout: the same cache rows in the same slots, so the same samples bitwise."""
    wan, wam, params = model
    video, actions = _context(wan, wam)
    sampler = SamplerConfig(video_steps=2, action_steps=2)
    lv, k = wam.video_tokens(wan), wam.waypoints_per_chunk
    full = RolloutEngine(wan, wam, sampler, kv_memory.MemoryConfig(mode="full", max_chunks=6))
    bounded = RolloutEngine(wan, wam, sampler, kv_memory.MemoryConfig(mode=mode, video_budget=6 * lv,
                                                                      action_budget=6 * k))
    a = run_rollout(full, params, video, actions, 5, jax.random.key(2))
    b = run_rollout(bounded, params, video, actions, 5, jax.random.key(2))
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.video, b.video)
    assert [m["tokens"] for m in a.memory] == [m["tokens"] for m in b.memory]


@pytest.mark.parametrize("mode", ["selective", "fifo"])
def test_budget_bounds_memory_over_75_chunks(model, mode):
    wan, wam, params = model
    video, actions = _context(wan, wam, batch=1)
    lv, k = wam.video_tokens(wan), wam.waypoints_per_chunk
    mem = kv_memory.MemoryConfig(mode=mode, video_budget=3 * lv, action_budget=3 * k)
    engine = RolloutEngine(wan, wam, SamplerConfig(video_steps=1, action_steps=1), mem)
    result = run_rollout(engine, params, video, actions, 74, jax.random.key(0))
    tokens = [m["tokens"] for m in result.memory]
    assert len(tokens) == 75
    assert tokens[:3] == [(lv + k) * (c + 1) for c in range(3)]    # the pools fill up ...
    assert all(t == 3 * (lv + k) for t in tokens[3:])             # ... and stay constant
    assert len({m["allocated_bytes"] for m in result.memory}) == 1
    assert 75 * (lv + k) / tokens[-1] == 25.0                     # reduction vs a full cache at 75 chunks
    assert np.all(np.isfinite(result.actions)) and np.all(np.isfinite(result.video))


def test_full_cache_sized_to_the_rollout_gives_the_same_rollout():
    """Experiment.engine(chunks): a full cache of just the rollout's chunks samples what the 80-chunk cache does
    (the empty slots are masked), with a fraction of the memory; bounded modes are left as configured."""
    from wam_jax.experiment import Experiment
    config = load_config(TINY, ["memory.mode=full", "memory.max_chunks=80", "sampler.video_steps=2",
                                "sampler.action_steps=2"])
    exp = Experiment(config)
    wan, wam = exp.wan, exp.wam
    params = wam_lib.init_params(wan, wam, jax.random.key(0))
    video, actions = _context(wan, wam)
    big, small = exp.engine(), exp.engine(chunks=2)
    assert big.memory.max_chunks == 80 and small.memory.max_chunks == 2
    a = run_rollout(big, params, video, actions, 1, jax.random.key(2))
    b = run_rollout(small, params, video, actions, 1, jax.random.key(2))
    np.testing.assert_allclose(a.actions, b.actions, atol=1e-5, rtol=0)
    np.testing.assert_allclose(a.video, b.video, atol=1e-5, rtol=0)
    assert b.memory[-1]["allocated_bytes"] * 40 == a.memory[-1]["allocated_bytes"]
    assert exp.engine(chunks=200).memory.max_chunks == 80              # the config's bound still raises past it
    selective = Experiment(load_config(TINY, ["memory.mode=selective"]))
    assert selective.engine(chunks=2).memory == selective.memory


def test_full_cache_raises_once_the_rollout_outgrows_it(model):
    wan, wam, params = model
    video, actions = _context(wan, wam, batch=1)
    engine = RolloutEngine(wan, wam, SamplerConfig(video_steps=1, action_steps=1),
                           kv_memory.MemoryConfig(mode="full", max_chunks=3))
    run_rollout(engine, params, video, actions, 2, jax.random.key(0))           # 3 chunks: fits
    with pytest.raises(ConfigError, match=r"committing chunk 3 .* memory.max_chunks=3"):
        run_rollout(engine, params, video, actions, 3, jax.random.key(0))


def test_commit_consumes_the_old_cache(model):
    """The commit donates the cache: its buffers are reused for the new one, not copied next to it."""
    wan, wam, params = model
    video, actions = _context(wan, wam, batch=1)
    for mode in ("full", "selective"):
        engine = RolloutEngine(wan, wam, SamplerConfig(video_steps=1, action_steps=1),
                               kv_memory.MemoryConfig(mode=mode, max_chunks=4, video_budget=16, action_budget=16))
        cache = engine.init_cache(1)
        new = engine.commit(params, cache, 0, jnp.asarray(video[:, 0]), jnp.asarray(actions[:, 0]), None)
        assert cache["k"].is_deleted() and cache["v"].is_deleted() and not new["k"].is_deleted()


def test_intent_change_only_reaches_later_chunks_through_the_past(model):
    wan, wam, params = model
    video, actions = _context(wan, wam)
    engine = RolloutEngine(wan, wam, SamplerConfig(video_steps=2, action_steps=2),
                           kv_memory.MemoryConfig(mode="full", max_chunks=6))
    g = np.random.default_rng(4).standard_normal((2, 5, 1, wan.text_dim)).astype(np.float32)
    g2 = g.copy()
    g2[:, 2] += 2.0                     # a different intent for chunk 2 only
    a = run_rollout(engine, params, video, actions, 4, jax.random.key(9), lambda c, _: jnp.asarray(g[:, c:c + 1]))
    b = run_rollout(engine, params, video, actions, 4, jax.random.key(9), lambda c, _: jnp.asarray(g2[:, c:c + 1]))
    np.testing.assert_array_equal(a.actions[:, :2], b.actions[:, :2])
    np.testing.assert_array_equal(a.video[:, :2], b.video[:, :2])
    assert np.max(np.abs(a.actions[:, 2] - b.actions[:, 2])) > 1e-4
    # Chunk 3 with chunk 2's content restored to the first run's sees identical inputs → identical output:
    # the changed intent of chunk 2 has no direct path into chunk 3.
    rng = jax.random.key(9)
    for _ in range(3):
        rng, key = jax.random.split(rng)
    past_v, past_a = jnp.asarray(a.video[:, :3]), jnp.asarray(a.actions[:, :3])
    out_a = engine.denoise_uncached(params, past_v, past_a, jnp.asarray(g[:, :4]), key)
    g_mixed = g.copy()
    g_mixed[:, 3] = g[:, 3]
    out_same = engine.denoise_uncached(params, past_v, past_a, jnp.asarray(g_mixed[:, :4]), key)
    np.testing.assert_array_equal(np.asarray(out_a[1]), np.asarray(out_same[1]))


def test_chain_waypoints_composes_chunk_frames():
    straight = np.stack([np.arange(1, 5) * 1.0, np.zeros(4), np.zeros(4)], -1)
    turn = straight.copy()
    turn[-1, 2] = np.pi / 2
    path = chain_waypoints(np.stack([turn, straight]))
    np.testing.assert_allclose(path[3], [4, 0, np.pi / 2])
    np.testing.assert_allclose(path[-1], [4, 4, np.pi / 2], atol=1e-12)


def test_rollout_cli_end_to_end(tmp_path):
    workdir = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "wam_jax", "train", "--config", TINY + ":steps=2",
                            "--workdir", str(workdir)], capture_output=True, text=True, cwd=REPO)
    assert train.returncode == 0, train.stderr[-2000:]
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "wam_jax", "rollout", "--config", TINY + ":memory=selective",
                             "--checkpoint", str(workdir), "--chunks", "3", "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    for stage in ("guidance", "video denoising", "action denoising", "cache update", "reduction"):
        assert stage in result.stdout
    for name in ("trajectory.png", "trajectory.json", "rollout.npz"):
        assert (out / name).exists()
    missing = subprocess.run([sys.executable, "-m", "wam_jax", "rollout", "--config", TINY, "--checkpoint",
                              str(tmp_path / "nope")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 2 and "no checkpoint at" in missing.stderr and missing.stderr.count("\n") == 1
