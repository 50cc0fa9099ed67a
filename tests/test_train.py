"""DriveWAM model and trainer: block causality, overfitting + sampling, exact resume, NaN handling, freezing."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from wam_jax.config import load_config
from wam_jax.data import ActionNorm, SyntheticIterator
from wam_jax.models import wam as wam_lib
from wam_jax.rollout.engine import RolloutEngine, SamplerConfig
from wam_jax.rollout.kv_memory import MemoryConfig
from wam_jax.training.trainer import NonFiniteLossError, Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")


def _perturbed_params(wan, wam, seed=0):
    """Random init has zero output heads; perturb every leaf so each input can reach each output."""
    params = wam_lib.init_params(wan, wam, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("streams", [1, 2])
def test_block_causality(streams):
    config = load_config(TINY)
    wan, wam = wam_lib.build_configs(config)
    params = _perturbed_params(wan, wam)
    model = wam_lib.DriveWAM(wan, wam)
    rng = np.random.default_rng(0)
    b, n = 2, 4
    video = rng.standard_normal((b, streams, n, 2, 4, 4, 8)).astype(np.float32)
    actions = rng.standard_normal((b, streams, n, 8, 3)).astype(np.float32)
    t = rng.uniform(size=(b, streams, n)).astype(np.float32)
    guidance = rng.standard_normal((b, n, 1, 32)).astype(np.float32)
    apply = jax.jit(lambda v, a, g: model.apply({"params": params}, v, a, t, t, g)[:2])
    base_v, base_a = apply(video, actions, guidance)
    for k in range(n):
        v2, a2, g2 = video.copy(), actions.copy(), guidance.copy()
        v2[:, :, k] += 1.0
        a2[:, :, k] -= 1.0
        g2[:, k] += 1.0     # chunk k's intent
        out_v, out_a = apply(v2, a2, g2)
        np.testing.assert_array_equal(np.asarray(out_v[:, :, :k]), np.asarray(base_v[:, :, :k]))
        np.testing.assert_array_equal(np.asarray(out_a[:, :, :k]), np.asarray(base_a[:, :, :k]))
        # The change is visible in chunk k itself (so the test can fail).
        assert np.max(np.abs(np.asarray(out_a[:, :, k] - base_a[:, :, k]))) > 1e-4
        if k + 1 < n and streams == 2:
            # Later chunks see chunk k through the clean context stream.
            assert np.max(np.abs(np.asarray(out_a[:, 1, k + 1] - base_a[:, 1, k + 1]))) > 1e-5


def test_layout_mask_rule():
    layout = wam_lib.TokenLayout(streams=2, chunks=3, video_tokens=2, action_tokens=1)
    mask = layout.self_mask()
    per = layout.per_chunk
    tok = lambda s, c: s * 3 * per + c * per
    assert mask[tok(1, 2), tok(0, 0)] and mask[tok(1, 2), tok(0, 1)]       # noisy chunk 2 sees clean 0, 1
    assert not mask[tok(1, 2), tok(0, 2)]                                  # ... not its own clean copy
    assert mask[tok(1, 2), tok(1, 2)] and not mask[tok(1, 2), tok(1, 1)]   # own noisy chunk, no other noisy
    assert mask[tok(0, 2), tok(0, 2)] and not mask[tok(0, 1), tok(0, 2)]   # clean stream block-causal


def _fixed_batch_config(tmp_path, steps, extra=()):
    return load_config(TINY, [f"train.steps={steps}", "train.batch_size=2", "data.num_clips=2", "data.shuffle=False",
                              *extra])


def test_overfit_fixed_batch_and_sample_trajectories(tmp_path):
    config = _fixed_batch_config(tmp_path, 500, ["flow.loss_from_chunk=1", "model.attention_head_dim=48",
                                                 "train.lr=3e-3", "train.checkpoint_every=100000",
                                                 "train.log_every=1000"])
    raw = next(SyntheticIterator(num_clips=2, batch_size=2, chunks=config.chunks, waypoints=8, chunk_seconds=4.0,
                                 latent_shape=(2, 4, 4, 8), seed=0, shuffle=False))
    with config.unlocked():   # per-waypoint statistics of the training data, as a real run computes them
        config.action_norm = ml_collections.ConfigDict(
            ActionNorm.fit(raw["waypoints"], representation="increments").to_config())
    trainer = Trainer(config, str(tmp_path / "run"))
    history = []
    step_fn = trainer._step_fn

    def recording_step(state, batch):
        state, metrics = step_fn(state, batch)
        history.append(metrics)
        return state, metrics

    trainer._step_fn = recording_step
    state = trainer.run()
    hist = jax.device_get(history)
    for key in ("loss_video", "loss_action"):
        values = np.array([h[key] for h in hist])
        drop = values[:20].mean() / values[-50:].mean()
        assert drop >= 10.0, f"{key} dropped only {drop:.1f}x"

    batch = trainer.device_batch(raw)
    b, n = 2, config.chunks
    clean_video = batch["latents"].reshape(b, n, 2, 4, 4, 8)
    # The paper's sampler (video 3 Euler steps 1 → 0.6, then actions 10 steps 1 → 0) on each chunk after the
    # first, given the clean earlier chunks (closed loop: observed history).
    sampler = SamplerConfig.from_config(config.sampler)
    assert (sampler.schedule, sampler.video_steps, sampler.video_stop, sampler.action_steps) == (
        "video_then_action", 3, 0.6, 10)
    engine = RolloutEngine(trainer.wan, trainer.wam, sampler, MemoryConfig())
    actions = [batch["actions"][:, 0]]
    for c in range(1, n):
        _, a = engine.denoise_uncached(state.params, clean_video[:, :c], batch["actions"][:, :c], None,
                                       jax.random.key(7 + c), ego=batch["ego"][:, :c + 1])
        actions.append(a)
    waypoints = trainer.action_norm.denormalize(np.stack([np.asarray(a) for a in actions], 1))
    err = np.linalg.norm(waypoints[:, 1:, :, :2] - raw["waypoints"][:, 1:, :, :2], axis=-1).mean()
    assert err < 0.5, f"sampled trajectories are {err:.2f} m from the training ones"


def _params_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_kill_and_resume_is_exact(tmp_path):
    overrides = ["train.steps=12", "train.checkpoint_every=6", "train.log_every=4", "data.num_clips=6"]
    straight = Trainer(load_config(TINY, overrides), str(tmp_path / "a")).run()
    first = Trainer(load_config(TINY, overrides), str(tmp_path / "b"))
    half = first.run(stop_after=6)
    assert int(half.step) == 6
    del first
    resumed_trainer = Trainer(load_config(TINY, overrides), str(tmp_path / "b"))
    resumed = resumed_trainer.run()
    assert int(resumed.step) == int(straight.step) == 12
    assert resumed_trainer.data.get_state() == {"position": 12}
    assert _params_equal(straight.params, resumed.params)
    assert _params_equal(straight.ema_params, resumed.ema_params)
    assert _params_equal(straight.opt_state, resumed.opt_state)
    # ... and the half-way state really differs from the end state (the comparison can fail).
    assert not _params_equal(half.params, resumed.params)


class _PoisonedIterator(SyntheticIterator):
    """Corrupt data: batch `bad` carries a NaN latent."""

    def __init__(self, bad, **kw):
        super().__init__(**kw)
        self.bad = bad

    def __next__(self):
        position = self._position
        batch = super().__next__()
        if position == self.bad:
            batch["latents"] = batch["latents"].copy()
            batch["latents"][0, 0, 0, 0, 0] = np.nan
        return batch


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = load_config(TINY, ["train.steps=20", "train.checkpoint_every=5", "train.log_every=100"])
    data = _PoisonedIterator(7, num_clips=4, batch_size=4, chunks=3, waypoints=8, chunk_seconds=4.0,
                             latent_shape=(2, 4, 4, 8))
    trainer = Trainer(config, str(tmp_path / "run"), data=data)
    with pytest.raises(NonFiniteLossError, match=r"step 8.*last good checkpoint is step 5"):
        trainer.run()
    assert trainer.checkpoints.all_steps() == [5]
    restored = Trainer(config, str(tmp_path / "run")).restore_or_init()
    assert int(restored.step) == 5
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored.params))


def test_freeze_video_trains_action_parts_only(tmp_path):
    config = load_config(TINY + ":train=actions", ["train.steps=3", "train.log_every=100"])
    trainer = Trainer(config, str(tmp_path / "run"))
    before = jax.device_get(trainer.initial_state().params)
    after = jax.device_get(trainer.run().params)
    for group in wam_lib.WAN_PARAM_GROUPS:
        assert _params_equal(before[group], after[group]), group
    for group in wam_lib.ACTION_PARAM_GROUPS:
        assert not _params_equal(before[group], after[group]), group


def test_init_from_imported_wan(tmp_path):
    from tests.wan_reference import make_tiny_wan
    from wam_jax.interop.wan_import import import_wan
    src = tmp_path / "wan"
    make_tiny_wan(seed=1, num_attention_heads=2, attention_head_dim=24, in_channels=8, out_channels=8, text_dim=32,
                  freq_dim=64, ffn_dim=128, num_layers=2).save_pretrained(src)
    _, wan_params = import_wan(str(src), str(tmp_path / "ckpt"))
    config = load_config(TINY + ":init=wan", [f"init_checkpoint={tmp_path / 'ckpt'}"])
    params = jax.device_get(Trainer(config, str(tmp_path / "run")).initial_state().params)
    for group in wam_lib.WAN_PARAM_GROUPS:
        assert _params_equal(wam_lib.without_ego(params[group]), wan_params[group]), group
    assert _params_equal(params["action_time"]["time_proj"], wan_params["condition_embedder"]["time_proj"])
    missing = load_config(TINY + ":init=wan", [f"init_checkpoint={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match="init_checkpoint"):
        Trainer(missing, str(tmp_path / "run2")).initial_state()


def test_train_cli_writes_checkpoint_and_tensorboard(tmp_path):
    workdir = tmp_path / "cli"
    result = subprocess.run([sys.executable, "-m", "wam_jax", "train", "--config", TINY + ":steps=4",
                             "--workdir", str(workdir), "--set", "train.log_every=2"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 4/4" in result.stdout
    assert (workdir / "checkpoints" / "4").exists()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir / "tensorboard"))
    bad = subprocess.run([sys.executable, "-m", "wam_jax", "train", "--config", TINY, "--workdir", str(workdir),
                          "--set", "train.stepz=3"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "stepz" in bad.stderr


@pytest.mark.parametrize("spec", ["drivewam_tiny.py:guidance=on,memory=selective,train=actions",
                                  "drivewam_highway.py:guidance=off,memory=selective",
                                  "drivewam_wan21_1_3b.py:clips=4k,guidance=off,init=scratch",
                                  "drivewam_wan22_5b.py:clips=10k,memory=full,train=actions",
                                  "drivewam_paper.py:bench=navsim,guidance=fixed,video_supervision=off,init=scratch,"
                                  "clips=4k,memory=full", "drivewam_paper.py"])
def test_every_experiment_file_builds_all_sections(spec):
    from wam_jax.rollout.kv_memory import MemoryConfig
    from wam_jax.training.objective import FlowConfig
    from wam_jax.rollout.engine import SamplerConfig, check_sampler_covered
    from wam_jax.training.trainer import TrainConfig
    config = load_config(os.path.join(REPO, "experiments", spec))
    wan, wam = wam_lib.build_configs(config)
    FlowConfig.from_config(config.flow), TrainConfig.from_config(config.train)
    SamplerConfig.from_config(config.sampler), MemoryConfig.from_config(config.memory)
    check_sampler_covered(FlowConfig.from_config(config.flow), SamplerConfig.from_config(config.sampler), wam.layout)
    assert wam.video_tokens(wan) > 0
    with pytest.raises(Exception, match="clipz"):
        load_config(os.path.join(REPO, "experiments", spec.split(":")[0] + ":clipz=1"))
