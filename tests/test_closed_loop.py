"""Closed-loop harness: highway episode metrics, runner, planner table and the `eval` CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wam_jax import planners
from wam_jax.evaluation import closed_loop as cl
from wam_jax.metrics import highway as scores
from wam_jax.metrics import navsim
from wam_jax.sim import highway as hw

SIM = hw.HighwaySimConfig(vehicles=15)
FAST = cl.ClosedLoopConfig(episode_s=3.0, warmup_s=1.0, video=False, plots=False, expert_ade=False,
                           intent_source="scene")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ttc_check_on_constructed_scenes():
    ego = np.array([0.0, 0.0, 0.0, 25.0])
    offsets = navsim.TTC_OFFSETS_S
    slow_ahead = np.array([[10.0, 0.0, 0.0, 10.0, 5.0, 2.0]])
    assert scores.ttc_violation(ego, slow_ahead, offsets)
    next_lane = slow_ahead + np.array([0, 4.0, 0, 0, 0, 0])
    assert not scores.ttc_violation(ego, next_lane, offsets)
    fast_behind = np.array([[-8.0, 0.0, 0.0, 40.0, 5.0, 2.0]])  # would hit us, but it is behind: not our TTC
    assert not scores.ttc_violation(ego, fast_behind, offsets)
    same_speed_ahead = np.array([[20.0, 0.0, 0.0, 25.0, 5.0, 2.0]])
    assert not scores.ttc_violation(ego, same_speed_ahead, offsets)
    assert not scores.ttc_violation(ego, np.zeros((0, 6)), offsets)


def test_comfort_and_score_arithmetic():
    dt, n = 0.1, 60
    t = np.arange(n) * dt
    straight = np.stack([25 * t, 0 * t, 0 * t], 1)
    ok = scores.comfort_ok(scores.comfort_signals(straight, np.full(n, 25.0), dt))
    assert all(ok.values()), ok
    speeds = np.maximum(25 - 6.0 * t, 0)  # -6 m/s^2 braking
    assert not scores.comfort_ok(scores.comfort_signals(straight, speeds, dt))["lon_accel"]
    weave = straight.copy()
    weave[:, 2] = 0.3 * np.sin(2 * np.pi * t / 1.5)  # heading oscillation -> yaw rate ~1.3 rad/s
    bad = scores.comfort_ok(scores.comfort_signals(weave, np.full(n, 25.0), dt))
    assert not bad["yaw_rate"] and not bad["lat_accel"]
    assert navsim.pdms_aggregate(1, 1, 1, 1, 1) == 1.0
    assert navsim.pdms_aggregate(0, 1, 1, 1, 1) == 0.0
    assert navsim.pdms_aggregate(1, 1, 0, 0.5, 1) == pytest.approx((2.5 + 2) / 12)
    assert scores.ego_progress(50.0, 100.0) == 0.5
    assert scores.ego_progress(150.0, 100.0) == 1.0
    assert scores.ego_progress(1.0, 2.0) == 1.0  # neither moved 5 m: NAVSIM's rule
    assert scores.ego_progress(-3.0, 100.0) == 0.0
    assert scores.ego_progress(7.0, None) == 1.0
    s = scores.episode_scores(False, False, True, 50.0, 100.0, {"lon_accel": True, "yaw_rate": False})
    assert s == {"nc": 1.0, "dac": 1.0, "ttc": 0.0, "ep": 0.5, "comfort": 0.0, "pdms": pytest.approx(2.5 / 12)}
    assert scores.episode_scores(True, False, False, 50.0, 100.0, {})["pdms"] == 0.0
    assert scores.plan_ade(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]]), np.zeros((2, 3))) == 2.5


class _Recorder:
    name = "recorder"

    def __init__(self):
        self.observations = []

    def reset(self, seed):
        self.observations.clear()

    def plan(self, obs):
        self.observations.append(obs)
        return planners.ConstantVelocityPlanner().plan(obs)


def test_runner_is_deterministic_and_feeds_planners_observations():
    rec = _Recorder()
    a = cl.run_episode(rec, 5, SIM, FAST)
    obs = list(rec.observations)
    b = cl.run_episode(rec, 5, SIM, FAST)
    np.testing.assert_array_equal(a.poses, b.poses)
    assert (a.pdms, a.progress_m, a.crashed) == (b.pdms, b.progress_m, b.crashed)
    assert len(obs) == 3  # 3 s episode, replan every 1 s
    o = obs[1]
    assert o.frames.shape == (FAST.history_frames, *SIM.image_size, 3) and o.frames.dtype == np.uint8
    assert o.pose_history.shape == (FAST.history_poses, 3) and o.speed_history.shape == (FAST.history_poses,)
    assert np.all(o.pose_history[:, 0] < 0)  # the past lies behind the ego
    assert o.intent.command in hw.INTENTS
    np.testing.assert_allclose(o.waypoint_times, SIM.waypoint_times)
    assert a.progress_m > 40 and a.steps == 30


def test_expert_planner_drives_exactly_like_the_recorded_expert():
    result = cl.run_episode(planners.ExpertPlanner(SIM), 2, SIM, FAST)
    warmup = int(FAST.warmup_s * SIM.control_hz)
    record = hw.record_expert_episode(SIM, 2, steps=warmup + result.steps, render=False)
    np.testing.assert_allclose(result.poses, record.poses[warmup:], atol=1e-9)
    for _, plan in result.plans[:-1]:  # its plans are its own future (the last one runs past the episode)
        assert np.min(np.linalg.norm(result.poses[:, None, :2] - plan[None, : 2, :2], axis=-1), axis=0).max() < 1e-6


def test_expert_plans_read_from_its_own_drive_equal_its_simulated_futures(tmp_path):
    # Shown but not scored, the expert's plans are read from the episode itself (driven one chunk past its end);
    # with the ADE check on, each is simulated on a copy of the env. Same waypoints, same episode.
    import dataclasses
    shown = cl.run_episode(planners.ExpertPlanner(SIM), 2, SIM, dataclasses.replace(FAST, plots=True),
                           out_dir=str(tmp_path))
    simulated = cl.run_episode(planners.ExpertPlanner(SIM), 2, SIM, dataclasses.replace(FAST, expert_ade=True))
    assert os.path.exists(shown.plot) and len(shown.plans) == len(simulated.plans) == 3
    np.testing.assert_array_equal(shown.poses, simulated.poses)
    for (t_a, a), (t_b, b) in zip(shown.plans, simulated.plans):
        assert t_a == t_b
        np.testing.assert_allclose(a, b, atol=1e-9)


def test_bad_plan_and_unknown_planner_are_reported():
    class Broken(_Recorder):
        def plan(self, obs):
            return np.zeros((3, 2))

    with pytest.raises(ValueError, match="expected finite"):
        cl.run_episode(Broken(), 0, SIM, FAST)
    with pytest.raises(KeyError, match="unknown planner 'nope'"):
        planners.build_planner("nope", SIM)
    # The learned planner needs the experiment config it was trained with, and says so.
    with pytest.raises(ValueError, match="needs --config"):
        planners.build_planner(planners.LEARNED_PLANNER, SIM, "ckpt", None)


def test_planner_table_entries_run_in_the_closed_loop(monkeypatch):
    seen = {}

    def factory(sim_cfg, checkpoint, config):
        seen["checkpoint"] = checkpoint
        planner = planners.ConstantVelocityPlanner()
        planner.name = "custom"
        return planner

    monkeypatch.setitem(planners.PLANNERS, "custom", factory)
    results = cl.evaluate(["custom"], 1, 0, SIM, FAST, checkpoint="ckpt")
    assert seen["checkpoint"] == "ckpt"
    assert list(results) == ["custom"] and results["custom"][0].expert_progress_m > 0


def test_expert_collides_no_more_than_constant_velocity():
    # Dense traffic, so that driving blindly straight ahead meets slower cars within 10 s.
    cfg = cl.ClosedLoopConfig(episode_s=10.0, warmup_s=1.0, video=False, plots=False, expert_ade=False,
                              intent_source="scene")
    results = cl.evaluate(["expert", "constant_velocity"], 4, 100, hw.HighwaySimConfig(vehicles=20, density=2.0), cfg)
    expert, cv = cl.aggregate(results["expert"]), cl.aggregate(results["constant_velocity"])
    assert expert["collision_rate"] <= cv["collision_rate"]
    assert expert["pdms"] >= cv["pdms"]
    assert expert["off_road_rate"] == 0.0


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "wam_jax", "eval", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def test_cli_evaluates_baselines_and_writes_outputs(tmp_path):
    out = tmp_path / "eval"
    proc = _run_cli("--planners", "expert,constant_velocity", "--episodes", "2", "--seed", "1", "--episode-s", "2",
                    "--vehicles", "10", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = [line for line in proc.stdout.splitlines() if line.startswith("planner")]
    assert header and "PDMS" in header[0] and "ADE m" in header[0]
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ("expert", "constant_velocity") and len(line.split()) == 11}
    assert set(rows) == {"expert", "constant_velocity"}, proc.stdout
    assert rows["expert"][1] == "2" and rows["expert"][-1] == "0.00"  # expert plan == expert future
    assert (out / "results.txt").read_text().strip() in proc.stdout
    data = json.loads((out / "results.json").read_text())
    assert len(data["planners"]["constant_velocity"]["episodes"]) == 2
    for name in ("expert", "constant_velocity"):
        for seed in (1, 2):
            assert (out / f"{name}_seed{seed}.png").stat().st_size > 1000
            video = out / f"{name}_seed{seed}.mp4"
            import imageio.v3 as iio

            frames = iio.imread(video, plugin="pyav")
            assert frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0 and len(frames) >= 20


def test_cli_checkpoint_without_config_or_planner_fails_clearly(tmp_path):
    proc = _run_cli("--checkpoint", str(tmp_path), "--episodes", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "needs --config" in proc.stderr and "Traceback" not in proc.stderr
    proc = _run_cli("--planners", "nope", "--episodes", "1", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "unknown planner 'nope'" in proc.stderr


def test_cli_reads_sim_and_closed_loop_sections_from_an_experiment_config(tmp_path, capsys):
    from wam_jax.evaluation import cli as evaluation

    config = tmp_path / "exp.py"
    config.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.sim = dict(vehicles=5, image_size=[32, 32])\n"
        "    c.closed_loop = dict(episode_s=1.0, warmup_s=0.5, video=False)\n"
        "    return c\n")
    out = tmp_path / "o"
    assert evaluation.cli(["--config", str(config), "--set", "sim.vehicles=6", "--episodes", "1", "--out", str(out),
                           "--planners", "constant_velocity"]) == 0
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["sim"]["vehicles"] == 6 and meta["sim"]["image_size"] == [32, 32]
    assert meta["closed_loop"]["episode_s"] == 1.0 and not meta["closed_loop"]["video"]
    assert not list(out.glob("*.mp4")) and list(out.glob("*.png"))
    config.write_text(config.read_text().replace("episode_s=1.0", "episode_seconds=1.0"))
    assert evaluation.cli(["--config", str(config), "--episodes", "1", "--out", str(out)]) == 2
    assert "episode_seconds" in capsys.readouterr().err


def test_frames_are_rendered_only_for_planners_that_read_them_and_videos_only_for_the_first_seeds(tmp_path):
    """A baseline that declares `reads_frames = False` gets F = 0 frames and drives exactly as when it is
    rendered for; `video_episodes` limits the mp4/png outputs to the first seeds."""
    class Blind(_Recorder):
        reads_frames = False

    blind, seeing = Blind(), _Recorder()
    a, b = cl.run_episode(blind, 5, SIM, FAST), cl.run_episode(seeing, 5, SIM, FAST)
    np.testing.assert_array_equal(a.poses, b.poses)
    assert blind.observations[0].frames.shape == (0, *SIM.image_size, 3)
    assert seeing.observations[0].frames.shape[0] == FAST.history_frames
    cfg = cl.ClosedLoopConfig(episode_s=2.0, warmup_s=1.0, video=True, plots=True, expert_ade=False,
                              intent_source="scene", video_episodes=1)
    cl.evaluate(["expert", "constant_velocity"], 2, 7, SIM, cfg, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == sorted(f"{p}_seed7.{ext}" for p in ("expert", "constant_velocity")
                                                  for ext in ("mp4", "png"))
    with pytest.raises(ValueError, match="video_episodes"):
        cl.ClosedLoopConfig(video_episodes=-1)


def test_seeds_shared_over_worker_processes_give_the_serial_results_in_seed_order(tmp_path):
    import dataclasses
    serial = cl.evaluate(["expert", "constant_velocity"], 3, 40, SIM, FAST)
    parallel = cl.evaluate(["expert", "constant_velocity"], 3, 40, SIM, dataclasses.replace(FAST, workers=2))
    for name in serial:
        assert [r.seed for r in parallel[name]] == [40, 41, 42]
        for a, b in zip(serial[name], parallel[name]):
            np.testing.assert_array_equal(a.poses, b.poses)
            assert a.summary() == b.summary()
    with pytest.raises(ValueError, match="workers"):
        cl.ClosedLoopConfig(workers=-1)
