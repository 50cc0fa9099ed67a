"""DriveWAM as the paper specifies it: inverse-dynamics mask (brute force), what each prediction may depend on,
ego-state branch (an imported Wan computes what it did), action increments."""

import dataclasses
import itertools
import os

import jax
import numpy as np
import pytest

from wam_jax.config import load_config
from wam_jax.models import wam as wam_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "experiments", "drivewam_tiny.py")


def _brute_force_mask(streams, chunks, lv, k, layout):
    """The issue's rule written out token pair by token pair (sequence: stream, chunk, [video | actions])."""
    tokens = [(s, n, m) for s in range(streams) for n in range(chunks) for m in ["v"] * lv + ["a"] * k]
    mask = np.zeros((len(tokens), len(tokens)), bool)
    for i, (qs, qn, qm) in enumerate(tokens):
        for j, (ks, kn, km) in enumerate(tokens):
            if ks == 0 and kn < qn:
                ok = True                                      # clean history of earlier chunks
            elif kn != qn:
                ok = False
            elif layout == "joint":
                ok = ks == qs
            elif layout == "history_only":                     # own stream, own modality: actions never see video n
                ok = ks == qs and km == qm
            elif qs == 0:                                      # clean (or the single rollout stream)
                ok = ks == 0 and (km == "v" or qm == "a")      # video ≤ k; actions ≤ k only for actions
            elif qm == "v":                                    # noisy video: its own noisy video only
                ok = ks == 1 and km == "v"
            else:                                              # noisy actions: own clean video, own noisy actions
                ok = (ks == 0 and km == "v") or (ks == 1 and km == "a")
            mask[i, j] = ok
    return mask


@pytest.mark.parametrize("layout", ["inverse_dynamics", "joint", "history_only"])
@pytest.mark.parametrize("streams,chunks,lv,k", [(2, 1, 3, 2), (2, 3, 2, 1), (2, 4, 4, 3), (1, 3, 2, 2),
                                                 (1, 1, 1, 1), (2, 2, 1, 5)])
def test_layout_mask_equals_brute_force_rule(layout, streams, chunks, lv, k):
    layout_ = wam_lib.TokenLayout(streams, chunks, lv, k, layout)
    np.testing.assert_array_equal(layout_.self_mask(), _brute_force_mask(streams, chunks, lv, k, layout))


def test_layouts_differ_and_bad_layout_is_an_error():
    a = wam_lib.TokenLayout(2, 2, 2, 2, "inverse_dynamics").self_mask()
    b = wam_lib.TokenLayout(2, 2, 2, 2, "joint").self_mask()
    c = wam_lib.TokenLayout(2, 2, 2, 2, "history_only").self_mask()
    assert (a != b).any() and (a != c).any() and (b != c).any()
    with pytest.raises(ValueError, match="layout"):
        wam_lib.TokenLayout(2, 2, 2, 2, "sideways")
    with pytest.raises(Exception, match="flow.layout"):
        wam_lib.build_configs(load_config(TINY, ["flow.layout=sideways"]))


def _perturbed(params, seed=1):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(kk, x.shape) for x, kk in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tiny():
    config = load_config(TINY)
    wan, wam = wam_lib.build_configs(config)
    assert wam.layout == "inverse_dynamics"
    params = _perturbed(wam_lib.init_params(wan, wam, jax.random.key(0)))
    return wan, wam, params


def _random_inputs(seed, b=1, n=3):
    """(rng, video [B, 2, N, F, h, w, z], actions [B, 2, N, K, 3], t [B, 2, N]) for the tiny model: stream 0
    clean (t = 0), stream 1 at random times."""
    rng = np.random.default_rng(seed)
    video = rng.standard_normal((b, 2, n, 2, 4, 4, 8)).astype(np.float32)
    actions = rng.standard_normal((b, 2, n, 8, 3)).astype(np.float32)
    t = np.stack([np.zeros((b, n)), rng.uniform(size=(b, n))], 1).astype(np.float32)
    return rng, video, actions, t


@pytest.mark.parametrize("layout", ["inverse_dynamics", "joint", "history_only"])
@pytest.mark.parametrize("streams,chunks,loss_from", [(2, 2, 1), (2, 3, 0), (2, 3, 2), (1, 3, 1), (2, 1, 0)])
def test_needed_blocks_are_what_the_scored_tokens_reach(layout, streams, chunks, loss_from):
    """Brute force: the transitive closure of the brute-force mask from the scored (last-stream) tokens."""
    lv, k = 2, 1
    mask = _brute_force_mask(streams, chunks, lv, k, layout)
    tokens = [(s, n) for s in range(streams) for n in range(chunks) for _ in range(lv + k)]
    reach = np.array([s == streams - 1 and n >= loss_from for s, n in tokens])
    for _ in range(len(tokens)):
        reach = reach | mask[reach].any(axis=0)
    expected = tuple(sorted({tokens[i] for i in np.nonzero(reach)[0]}))
    assert wam_lib.needed_blocks(streams, chunks, range(loss_from, chunks), layout) == expected


def test_skipping_unread_blocks_changes_no_scored_output_or_gradient(tiny):
    """The demo's teacher forcing (2 chunks, loss from chunk 1) skips the noised context chunk: the kept blocks'
    outputs and the loss gradients equal the full sequence's; the skipped block reads zeros."""
    wan, wam, params = tiny
    model = wam_lib.DriveWAM(wan, wam)
    _, video, actions, t = _random_inputs(2, b=2, n=2)
    blocks = wam_lib.needed_blocks(2, 2, [1])
    assert blocks == ((0, 0), (0, 1), (1, 1))

    def scored(p, blocks):
        v, a, _ = model.apply({"params": p}, video, actions, t, t, None, blocks=blocks)
        return v[:, 1, 1], a[:, 1, 1], v, a

    full_v, full_a, _, _ = scored(params, None)
    v, a, all_v, all_a = scored(params, blocks)
    np.testing.assert_allclose(v, full_v, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, full_a, rtol=1e-5, atol=1e-6)
    assert float(np.abs(all_v[:, 1, 0]).max()) == 0.0 and float(np.abs(all_a[:, 1, 0]).max()) == 0.0
    loss = lambda p, blocks: sum((x ** 2).mean() for x in scored(p, blocks)[:2])
    g_full, g_kept = jax.grad(loss)(params, None), jax.grad(loss)(params, blocks)
    for x, y in zip(jax.tree.leaves(g_full), jax.tree.leaves(g_kept)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="distinct"):
        model.apply({"params": params}, video, actions, t, t, None, blocks=((0, 0), (0, 0)))


@pytest.mark.parametrize("layout", ["inverse_dynamics", "history_only"])
def test_action_prediction_depends_on_own_clean_video_not_noisy_video(tiny, layout):
    """inverse_dynamics: chunk k's actions read chunk k's clean video; history_only (no video supervision): they
    read only chunks < k. Neither reads any noisy video."""
    wan, wam, params = tiny
    wam = dataclasses.replace(wam, layout=layout)
    model = wam_lib.DriveWAM(wan, wam)
    _, video, actions, t = _random_inputs(0)
    n = video.shape[2]
    apply = jax.jit(lambda v: model.apply({"params": params}, v, actions, t, t, None)[:2])
    _, base_a = apply(video)
    ref = np.asarray(base_a)
    for k in range(n):
        clean = video.copy()
        clean[:, 0, k] += 1.0
        out_a = np.asarray(apply(clean)[1])
        own_change = np.max(np.abs(out_a[:, 1, k] - ref[:, 1, k]))               # chunk k's action prediction
        if layout == "inverse_dynamics":
            assert own_change > 1e-4
        else:
            assert own_change == 0.0
        if k + 1 < n:
            assert np.max(np.abs(out_a[:, 1, k + 1] - ref[:, 1, k + 1])) > 1e-4  # later chunks read it as history
        np.testing.assert_array_equal(out_a[:, :, :k], ref[:, :, :k])       # nothing of chunks < k
        noisy = video.copy()
        noisy[:, 1, k] += 1.0
        np.testing.assert_array_equal(np.asarray(apply(noisy)[1]), ref)     # no action prediction at all


def test_fresh_ego_branch_keeps_imported_wan_video_output(tmp_path):
    """DriveWAM (one chunk, imported Wan + fresh ego branch) predicts the imported Wan's video velocity."""
    import jax.numpy as jnp
    from tests.wan_reference import make_tiny_wan, torch_forward
    from wam_jax.interop.wan_import import import_wan
    from wam_jax.models.wan_dit import WanTransformer
    reference = make_tiny_wan(seed=1, num_attention_heads=2, attention_head_dim=24, in_channels=8, out_channels=8,
                              text_dim=32, freq_dim=64, ffn_dim=128, num_layers=2)
    reference.save_pretrained(tmp_path / "wan")
    wan_cfg, wan_params = import_wan(str(tmp_path / "wan"), str(tmp_path / "ckpt"))
    _, wam = wam_lib.build_configs(load_config(TINY))
    params = wam_lib.merge_pretrained_wan(wam_lib.init_params(wan_cfg, wam, jax.random.key(3)), wan_params)
    rng = np.random.default_rng(0)
    video = rng.standard_normal((2, 1, 1, 2, 4, 4, 8)).astype(np.float32)
    actions = rng.standard_normal((2, 1, 1, 8, 3)).astype(np.float32)
    t = np.array([0.9, 0.3], np.float32).reshape(2, 1, 1)
    guidance = rng.standard_normal((2, 1, 1, 32)).astype(np.float32)
    ego = rng.standard_normal((2, 1, 3)).astype(np.float32) * [10.0, 2.0, 0.05]
    model = wam_lib.DriveWAM(wan_cfg, wam)
    ours = np.asarray(model.apply({"params": params}, video, actions, t, t, guidance, ego=ego)[0])[:, 0, 0]
    latents = video[:, 0, 0]
    wan_out = np.asarray(WanTransformer(wan_cfg).apply({"params": wan_params}, latents, t[:, 0, 0] * 1000.0,
                                                       guidance[:, 0]))
    torch_out = torch_forward(reference, latents.transpose(0, 4, 1, 2, 3), t[:, 0, 0] * 1000.0, guidance[:, 0])
    np.testing.assert_allclose(ours, wan_out, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours, torch_out.transpose(0, 2, 3, 4, 1), atol=1e-5, rtol=0)
    # Once trained (non-zero output projection) the ego state does reach the prediction: the test can fail.
    moved = dict(params, blocks=_perturbed(params["blocks"]))
    other = np.asarray(model.apply({"params": moved}, video, actions, t, t, guidance, ego=ego)[0])[:, 0, 0]
    other_ego = np.asarray(model.apply({"params": moved}, video, actions, t, t, guidance, ego=ego * 2)[0])[:, 0, 0]
    assert np.max(np.abs(other - other_ego)) > 1e-4


def test_ego_state_of_chunk_k_reaches_chunk_k_only(tiny):
    wan, wam, params = tiny
    model = wam_lib.DriveWAM(wan, wam)
    rng, video, actions, t = _random_inputs(1)
    ego = rng.standard_normal((1, video.shape[2], 3)).astype(np.float32)
    apply = jax.jit(lambda e: model.apply({"params": params}, video, actions, t, t, None, ego=e)[:2])
    base_v, base_a = apply(ego)
    e2 = ego.copy()
    e2[:, 1] += 1.0
    out_v, out_a = apply(e2)
    np.testing.assert_array_equal(np.asarray(out_a[:, :, 0]), np.asarray(base_a[:, :, 0]))
    assert np.max(np.abs(np.asarray(out_a[:, 1, 1] - base_a[:, 1, 1]))) > 1e-4
    assert np.max(np.abs(np.asarray(out_v[:, 1, 1] - base_v[:, 1, 1]))) > 1e-4


def test_increments_round_trip_recorded_expert_trajectories():
    """Waypoints → increments → waypoints on highway-env expert chunks (the highway source's recordings)."""
    from data_pipelines.sources import highway as source
    from wam_jax.actions import ActionNorm, increments_to_waypoints, waypoints_to_increments
    from wam_jax.sim.highway import HighwaySimConfig
    sim = HighwaySimConfig(vehicles=10, image_size=(16, 16), supersample=1, perturb_steering=0.1,
                           perturb_rate_hz=0.5)
    clip = source.make_clip(source.HighwayConfig(name="t", num_chunks=3, sim=sim), seed=3)
    assert clip is not None
    assert clip.ego_state.shape == (3, 3) and np.all(clip.ego_state[:, 0] > 1.0)      # simulator speed, m/s
    wp = clip.waypoints.astype(np.float64)                               # [N, K, 3]
    assert np.ptp(wp[..., 2]) > 1e-3                                    # the trajectories do turn
    inc = waypoints_to_increments(wp)
    np.testing.assert_allclose(increments_to_waypoints(inc), wp, atol=1e-6, rtol=0)
    # Hand-checked increments: a quarter circle of radius 1 in 2 steps; straight driving after a 90° turn.
    arc = np.array([[np.sin(np.pi / 4), 1 - np.cos(np.pi / 4), np.pi / 4], [1.0, 1.0, np.pi / 2],
                    [1.0, 2.0, np.pi / 2]])
    np.testing.assert_allclose(waypoints_to_increments(arc),
                               [[np.sin(np.pi / 4), 1 - np.cos(np.pi / 4), np.pi / 4]] * 2 + [[1.0, 0.0, 0.0]],
                               atol=1e-12)
    norm = ActionNorm.fit(wp, representation="increments")
    np.testing.assert_allclose(norm.denormalize(norm.normalize(wp)), wp, atol=1e-4)
    with pytest.raises(ValueError, match="representation"):
        ActionNorm([0.0], [1.0], "polar")


# ----- sampler ----------------------------------------------------------------------------------------------
def _gaussian_oracle(mu, sigma):
    """Exact marginal velocity of x_t = (1 − t)·x0 + t·ε for x0 ~ N(mu, sigma²), and the exact ODE solution
    x_t = m_t + s_t·z from noise z. The oracle is NaN at t = 0 (a model is not trained there)."""
    def velocity(x, t):
        m, s2 = (1 - t) * mu, (1 - t) ** 2 * sigma ** 2 + t ** 2
        v = (t - (1 - t) * sigma ** 2) * (x - m) / s2 - mu
        return jnp.where(t > 0, v, jnp.nan)

    def exact(z, t):
        return (1 - t) * mu + np.sqrt((1 - t) ** 2 * sigma ** 2 + t ** 2) * z
    return velocity, exact


def _engine(**sampler):
    from wam_jax.rollout import kv_memory
    from wam_jax.rollout.engine import RolloutEngine, SamplerConfig
    wan, wam = wam_lib.build_configs(load_config(TINY))
    return RolloutEngine(wan, wam, SamplerConfig(**sampler), kv_memory.MemoryConfig())


def _oracle_error(engine, seed=0):
    import jax.numpy as jnp  # noqa: F811
    vel_v, exact_v = _gaussian_oracle(1.5, 0.3)
    vel_a, exact_a = _gaussian_oracle(-0.7, 0.5)
    z = np.random.default_rng(seed).standard_normal((2, 64))
    x_v, x_a = jnp.asarray(z[0]), jnp.asarray(z[1])
    for _, gv, ga in engine.stages:
        x_v, x_a = engine._integrate_with(lambda xv, xa, tv, ta: (vel_v(xv, tv), vel_a(xa, ta)), x_v, x_a, gv, ga)
    stop = engine.generated_video_time
    return (float(np.max(np.abs(np.asarray(x_v) - exact_v(z[0], stop)))),
            float(np.max(np.abs(np.asarray(x_a) - exact_a(z[1], 0.0)))))


import jax.numpy as jnp  # noqa: E402


@pytest.mark.parametrize("schedule", ["video_then_action", "joint"])
@pytest.mark.parametrize("video_stop", [0.6, 0.0])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_converges_on_oracle_velocity(schedule, video_stop, solver):
    """Both solvers converge to the exact flow for every schedule, at their order, and never evaluate t = 0
    (the NaN oracle there: before the fix the Heun video stage of video_then_action averaged in t = 0)."""
    errors = []
    for scale in (1, 4, 16):
        e = _oracle_error(_engine(video_steps=3 * scale, action_steps=10 * scale, solver=solver, schedule=schedule,
                                  video_stop=video_stop))
        assert np.all(np.isfinite(e)), (scale, e)
        errors.append(max(e))
    rate = 3.0 if solver == "euler" else 6.0           # ×4 steps: first order ≈ ÷4, second order ≈ ÷16
    assert errors[1] < errors[0] / rate and errors[2] < errors[1] / rate, errors
    assert errors[2] < (5e-2 if solver == "euler" else 2e-3), errors


def test_paper_sampler_grids():
    engine = _engine()
    (name_v, gv_v, ga_v), (name_a, gv_a, ga_a) = engine.stages
    np.testing.assert_allclose(gv_v[:, 0], [1.0, 1 - 0.4 / 3, 1 - 0.8 / 3], atol=1e-6)
    assert gv_v[-1, 1] == pytest.approx(0.6) and np.all(ga_v == 1.0)          # actions wait at pure noise
    assert len(ga_a) == 10 and ga_a[0, 0] == 1.0 and ga_a[-1, 1] == 0.0
    assert np.allclose(gv_a, 0.6)                                            # ... then read the 0.6 latent


def test_sampler_queries_are_covered_by_training():
    from wam_jax.rollout.engine import SamplerConfig, check_sampler_covered, uncovered_queries
    from wam_jax.training.objective import FlowConfig, history_times
    config = load_config(TINY)
    flow = FlowConfig.from_config(config.flow)
    sampler = SamplerConfig.from_config(config.sampler)
    assert uncovered_queries(flow, sampler, "inverse_dynamics") == []
    check_sampler_covered(flow, sampler, "inverse_dynamics")
    # The objective really draws history levels around the stop level (and clean ones).
    tau = np.asarray(history_times(jax.random.key(0), (20000,), flow))
    assert 0.3 < np.mean(tau == 0) < 0.7 and np.mean(np.abs(tau - sampler.video_stop) < 0.05) > 0.05
    # Without noisy history the actions would read a 0.6 latent training never showed them.
    no_history = FlowConfig.from_config(dict(config.flow, history_noise_prob=0.0))
    assert len(uncovered_queries(no_history, sampler, "inverse_dynamics")) == 10
    # The old demo: joint layout, joint 4/8-step grid, t_action = t_video in training.
    old = FlowConfig.from_config(dict(config.flow, independent_action_time=False, layout="joint"))
    old_sampler = SamplerConfig(video_steps=4, action_steps=8, schedule="joint", video_stop=0.0)
    assert uncovered_queries(old, old_sampler, "joint")
    with pytest.raises(Exception, match="never looked"):
        check_sampler_covered(old, old_sampler, "joint")


# ----- defects found while checking the code (each test failed before its fix) -------------------------------
def test_full_cache_overflow_is_an_error_naming_the_counts():
    from wam_jax.rollout import kv_memory
    from wam_jax.rollout.engine import RolloutEngine, SamplerConfig
    wan, wam = wam_lib.build_configs(load_config(TINY))
    engine = RolloutEngine(wan, wam, SamplerConfig(), kv_memory.MemoryConfig(mode="full", max_chunks=3))
    with pytest.raises(ValueError, match=r"chunk 3 .*max_chunks=3"):
        engine.commit(None, engine.init_cache(1), 3, None, None, None)


def test_loss_from_chunk_beyond_the_chunks_is_an_error():
    from wam_jax.training.objective import FlowConfig, flow_matching_loss
    batch = {"latents": jnp.zeros((1, 4, 4, 4, 8)), "actions": jnp.zeros((1, 2, 8, 3))}
    never = lambda *a: pytest.fail("the model must not run")
    with pytest.raises(Exception, match=r"loss_from_chunk=2 .*2 chunk"):
        flow_matching_loss(never, None, batch, jax.random.key(0), FlowConfig(loss_from_chunk=2), 2)


@pytest.mark.parametrize("field,value", [("tradeoff", 1.5), ("tradeoff", -0.1),
                                         ("max_chunks", 0), ("video_budget", -1)])
def test_memory_config_rejects_out_of_range_values(field, value):
    from wam_jax.rollout.kv_memory import MemoryConfig
    with pytest.raises(Exception, match=f"memory.{field}|budgets"):
        MemoryConfig(**{field: value})


def test_rope_max_seq_len_bounds_the_positions():
    config = load_config(TINY, ["model.rope_max_seq_len=5"])
    wan, wam = wam_lib.build_configs(config)
    wam_lib.init_params(wan, wam, jax.random.key(0))                      # 1 chunk of 2 frames: fits
    with pytest.raises(ValueError, match="rope_max_seq_len=5"):
        wam_lib.DriveWAM(wan, wam).init(jax.random.key(0), *wam_lib.dummy_inputs(wan, wam, chunks=3))
    from wam_jax.rollout import kv_memory
    from wam_jax.rollout.engine import RolloutEngine, SamplerConfig
    engine = RolloutEngine(wan, wam, SamplerConfig(), kv_memory.MemoryConfig())
    engine.check_positions(1)
    with pytest.raises(ValueError, match="rope_max_seq_len=5"):
        engine.check_positions(2)


def test_paper_experiment_file_and_lr_halvings():
    from wam_jax.experiment import Experiment
    from wam_jax.training.trainer import TrainConfig, learning_rate_schedule
    exp = Experiment(load_config(os.path.join(REPO, "experiments", "drivewam_paper.py")))
    assert (exp.wan.dim, exp.wan.num_layers, exp.wam.video_tokens(exp.wan), exp.wam.waypoints_per_chunk) == (
        3072, 30, 112, 40)
    assert (exp.memory.video_budget, exp.memory.action_budget, exp.memory.tradeoff) == (448, 160, 0.07)
    assert (exp.train.lr, exp.train.b2, exp.train.weight_decay, exp.train.steps) == (1e-5, 0.95, 0.1, 50_000)
    navsim = Experiment(load_config(os.path.join(REPO, "experiments", "drivewam_paper.py:bench=navsim")))
    assert navsim.train.lr_halve_at == (50_000, 70_000, 90_000) and navsim.wam.waypoints_per_chunk == 8
    schedule = learning_rate_schedule(TrainConfig(steps=100, batch_size=1, lr=1.0, warmup_steps=10,
                                                  lr_halve_at=(50, 70)))
    np.testing.assert_allclose([float(schedule(s)) for s in (5, 20, 49, 51, 71, 99)],
                               [0.5, 1.0, 1.0, 0.5, 0.25, 0.25])
