"""highway-env wrapper: determinism, frames, frames of reference, intents, expert and waypoint tracker."""

import dataclasses
import math

import numpy as np
import pytest

from highway_env.vehicle.behavior import IDMVehicle

from wam_jax.sim import highway as hw

CFG = hw.HighwaySimConfig(vehicles=12, duration_s=10.0)
EMPTY = hw.HighwaySimConfig(vehicles=0, duration_s=10.0)


def _drive_expert(cfg, seed, steps):
    env = hw.make_env(cfg, seed)
    states, frames, actions = [hw.ego_state(env)], [hw.render_frame(env, cfg)], []
    for _ in range(steps):
        a = hw.expert_action(env, cfg)
        env.step(a)
        actions.append(a)
        states.append(hw.ego_state(env))
        frames.append(hw.render_frame(env, cfg))
    return states, np.stack(frames), np.stack(actions), hw.other_vehicles(env)


def test_same_seed_same_states_and_frames():
    s1, f1, a1, o1 = _drive_expert(CFG, 7, 12)
    s2, f2, a2, o2 = _drive_expert(CFG, 7, 12)
    assert s1 == s2
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(o1, o2)
    # A different seed gives a different scene.
    a, b = hw.other_vehicles(hw.make_env(CFG, 7)), hw.other_vehicles(hw.make_env(CFG, 8))
    assert a.shape == b.shape and not np.allclose(a, b)


def test_frames_are_not_blank_and_show_the_ego():
    env = hw.make_env(CFG, 0)
    frame = hw.render_frame(env, CFG)
    assert frame.dtype == np.uint8 and frame.shape == (*CFG.image_size, 3)
    assert frame.std() > 5.0
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) >= 4
    col, row = np.round(hw.world_to_pixel(hw.ego_pose(env)[:2], hw.ego_pose(env)[:2], CFG)).astype(int)
    r, g, b = (int(c) for c in frame[row, col])
    assert g > r + 60 and g > b + 60, f"ego pixel should be green, got {(r, g, b)}"
    # A different image size is honoured.
    cfg = hw.HighwaySimConfig(vehicles=4, image_size=(32, 48), supersample=2)
    assert hw.render_frame(hw.make_env(cfg, 0), cfg).shape == (32, 48, 3)


def test_ego_frame_waypoints_on_hand_made_poses():
    cur = np.array([10.0, 5.0, 0.0])
    # Straight ahead along +x; a point 4 m to the world's +y is 4 m to the ego's RIGHT (y_ego = -4).
    out = hw.ego_frame_waypoints(np.array([[20.0, 5.0, 0.0], [20.0, 9.0, 0.1]]), cur)
    np.testing.assert_allclose(out, [[10.0, 0.0, 0.0], [10.0, -4.0, -0.1]], atol=1e-12)
    # Heading +90 deg in highway-env (y down) faces world +y; the ego's left is then world +x.
    cur = np.array([10.0, 5.0, math.pi / 2])
    out = hw.ego_frame_waypoints(np.array([[10.0, 15.0, math.pi / 2], [20.0, 5.0, 0.0]]), cur)
    np.testing.assert_allclose(out, [[10.0, 0.0, 0.0], [0.0, 10.0, math.pi / 2]], atol=1e-12)
    # Round trip through world_from_ego.
    rng = np.random.default_rng(0)
    poses = np.concatenate([rng.normal(size=(5, 2)) * 20, rng.uniform(-3, 3, size=(5, 1))], axis=1)
    back = hw.world_from_ego(hw.ego_frame_waypoints(poses, cur), cur)
    np.testing.assert_allclose(back[:, :2], poses[:, :2], atol=1e-9)
    np.testing.assert_allclose(np.cos(back[:, 2] - poses[:, 2]), 1.0, atol=1e-9)


def _track(waypoints, seed=0):
    env = hw.make_env(EMPTY, seed)
    p0, v0 = hw.ego_pose(env), hw.ego_state(env).speed
    tracker = hw.WaypointTracker(EMPTY)
    tracker.set_plan(waypoints, EMPTY.waypoint_times, p0, v0)
    poses = []
    for i in range(EMPTY.steps_per_chunk):
        a = tracker(hw.ego_pose(env), hw.ego_state(env).speed, i * EMPTY.dt)
        assert np.all(np.abs(a) <= 1.0)
        env.step(a)
        poses.append(hw.ego_pose(env))
    driven = hw.ego_frame_waypoints(np.array(poses), p0)
    k = EMPTY.steps_per_waypoint
    return driven[k - 1 :: k], driven


def test_tracker_follows_straight_lane_change_and_braking():
    t = EMPTY.waypoint_times
    v = 25.0  # highway-env's initial ego speed
    straight = np.stack([v * t, 0 * t, 0 * t], 1)
    got, _ = _track(straight)
    assert np.abs(got - straight)[:, :2].max() < 0.3
    y = 4.0 * (0.5 - 0.5 * np.cos(np.pi * np.clip(t / 3.0, 0, 1)))  # one lane to the left in 3 s
    change = np.stack([v * t, y, 0 * t], 1)
    got, driven = _track(change)
    assert np.abs(got[:, 1] - change[:, 1]).max() < 0.5, got
    assert np.abs(got[:, 0] - change[:, 0]).max() < 0.5
    assert driven[:, 1].max() > 3.5  # really left (ego y > 0)
    brake = np.stack([v * t - 1.5 * t**2, 0 * t, 0 * t], 1)  # -3 m/s^2
    got, _ = _track(brake)
    assert np.abs(got[:, 0] - brake[:, 0]).max() < 1.0, got[:, 0] - brake[:, 0]


def test_intent_from_constructed_futures():
    t = EMPTY.waypoint_times
    v = 25.0
    keep = np.stack([v * t, 0.3 * np.sin(t), 0 * t], 1)
    assert hw.intent_from_future(keep, v, EMPTY).command == "keep lane"
    left = np.stack([v * t, np.minimum(t, 1.0) * 4.0, 0 * t], 1)
    assert hw.intent_from_future(left, v, EMPTY).command == "change lane left"
    right = left * np.array([1.0, -1.0, 1.0])
    assert hw.intent_from_future(right, v, EMPTY).command == "change lane right"
    slow = np.stack([v * t - 2.0 * t**2, 0 * t, 0 * t], 1)
    assert hw.intent_from_future(slow, v, EMPTY) == hw.Intent("slow down", "slow down")
    assert hw.intent_from_future(keep, v, EMPTY, lead_gap=20.0).text == "keep lane, follow the car ahead"
    # Through scene_intent with world poses: world -y is the ego's left.
    env = hw.make_env(EMPTY, 0)
    p = hw.ego_pose(env)
    world_left = np.stack([p[0] + v * t, p[1] - np.minimum(t, 1.0) * 4.0, 0 * t + p[2]], 1)
    assert hw.scene_intent(env, EMPTY, world_left).command == "change lane left"
    assert hw.Intent("slow down", "").index == hw.INTENTS.index("slow down")


def _add_lead(env, gap, speed):
    u = env.unwrapped
    ego = u.vehicle
    lane = u.road.network.get_lane(ego.lane_index)
    s, _ = lane.local_coordinates(ego.position)
    lead = IDMVehicle(u.road, lane.position(s + gap + ego.LENGTH, 0), lane.heading_at(s), speed)
    u.road.vehicles.append(lead)
    return lead


def test_intent_from_scene_rules():
    one_lane = hw.HighwaySimConfig(vehicles=0, lanes=1)
    env = hw.make_env(one_lane, 0)
    assert hw.intent_from_scene(env).command == "keep lane"
    _add_lead(env, gap=15.0, speed=10.0)
    assert hw.intent_from_scene(env).command == "slow down"
    env = hw.make_env(hw.HighwaySimConfig(vehicles=0, lanes=3), 0)
    ego_lane = hw.ego_state(env).lane
    _add_lead(env, gap=15.0, speed=10.0)
    command = hw.intent_from_scene(env).command
    assert command.startswith("change lane"), command
    assert command == ("change lane left" if ego_lane > 0 else "change lane right")
    env = hw.make_env(one_lane, 0)
    _add_lead(env, gap=45.0, speed=25.0)
    assert hw.intent_from_scene(env) == hw.Intent("keep lane", "keep lane, follow the car ahead")


def test_expert_future_matches_expert_rollout_and_record():
    env = hw.make_env(CFG, 3)
    future = hw.expert_future(env, CFG, steps=15)
    driven = []
    for _ in range(15):
        env.step(hw.expert_action(env, CFG))
        driven.append(hw.ego_pose(env))
    np.testing.assert_allclose(future, np.array(driven), atol=1e-9)
    rec = hw.record_expert_episode(CFG, 3, steps=20)
    np.testing.assert_allclose(rec.poses[1:16], future, atol=1e-9)
    assert rec.frames.shape == (20 // CFG.steps_per_frame + 1, *CFG.image_size, 3)
    np.testing.assert_array_equal(rec.frame_steps, np.arange(0, 21, CFG.steps_per_frame))
    assert rec.actions.shape == (20, 2) and np.all(np.abs(rec.actions) <= 1)
    with pytest.raises(IndexError):
        rec.chunk_waypoints(0, CFG)  # 20 steps < one 40-step chunk
    wp = hw.record_expert_episode(CFG, 3, steps=45, render=False).chunk_waypoints(2, CFG)
    assert wp.shape == (CFG.waypoints_per_chunk, 3) and wp[-1, 0] > 40.0  # moving forward


def test_config_validation_speaks_up():
    with pytest.raises(ValueError, match="frame_hz"):
        hw.HighwaySimConfig(frame_hz=4.0)
    with pytest.raises(ValueError, match="waypoints_per_chunk"):
        hw.HighwaySimConfig(waypoints_per_chunk=6)


def test_noise_injection_perturbs_demonstrations_deterministically():
    base = hw.HighwaySimConfig(duration_s=12.0)
    noisy = dataclasses.replace(base, perturb_steering=0.05, perturb_rate_hz=1.0, perturb_s=0.6)
    clean = hw.record_expert_episode(base, 3, steps=60, render=False)
    a = hw.record_expert_episode(noisy, 3, steps=60, render=False)
    b = hw.record_expert_episode(noisy, 3, steps=60, render=False)
    np.testing.assert_array_equal(a.poses, b.poses)                      # seeded
    assert np.max(np.abs(a.actions[:, 1] - clean.actions[:, 1])) > 0.01   # bursts reach the steering
    assert np.max(np.abs(a.poses[:, 1] - clean.poses[:, 1])) > 0.05      # ... and move the car sideways


def test_heading_up_frames_keep_the_ego_pointing_right():
    cfg = hw.HighwaySimConfig(heading_up=True)
    env = hw.make_env(cfg, 3)

    def ego_rows(frame):
        green = (frame[..., 1] > 150) & (frame[..., 0] < 120) & (frame[..., 2] < 120)
        rows = np.nonzero(green.any(axis=1))[0]
        return rows.max() - rows.min() + 1

    env.unwrapped.vehicle.heading = 0.0
    straight = ego_rows(hw.render_frame(env, cfg))
    env.unwrapped.vehicle.heading = 0.3
    world = dataclasses.replace(cfg, heading_up=False)      # renders no rotation pad: its own env
    env_world = hw.make_env(world, 3)
    env_world.unwrapped.vehicle.heading = 0.3
    turned_world = ego_rows(hw.render_frame(env_world, world))
    turned_up = ego_rows(hw.render_frame(env, cfg))
    env.close(), env_world.close()
    assert turned_world > straight + 1          # the world-aligned view shows the car rotated ...
    assert abs(turned_up - straight) <= 1       # ... the heading-up view keeps it horizontal


def test_heading_up_wide_frames_rotate_a_padded_render_with_no_border_pulled_in():
    # A wide, short frame tilted by 10 degrees reaches far past its own rows at the far end; the render pad
    # covers it, so the rotated frame is the crop of rotating a much larger render about the same ego pixel.
    cfg = hw.HighwaySimConfig(heading_up=True, image_size=(32, 128), centering=(0.15, 0.5), supersample=2)
    big = dataclasses.replace(cfg, image_size=(160, 256), centering=((0.15 * 128 + 64) / 256, 0.5))
    assert cfg.render_pad[0] >= 30 and hw.HighwaySimConfig(heading_up=False).render_pad == (0, 0)
    env, env_big = hw.make_env(cfg, 3), hw.make_env(big, 3)
    for e in (env, env_big):
        e.unwrapped.vehicle.heading = math.radians(10.0)
    frame, frame_big = hw.render_frame(env, cfg), hw.render_frame(env_big, big)
    env.close(), env_big.close()
    assert frame.shape == (32, 128, 3)
    crop = frame_big[64:96, 64:192].astype(int)
    # Same pixels (without the pad, 3% of them differ: the border rows smeared into the far corners)
    assert np.mean(np.abs(frame.astype(int) - crop) > 8) < 0.005
    ego_px = hw.world_to_pixel(env.unwrapped.vehicle.position[None], env.unwrapped.vehicle.position, cfg)[0]
    np.testing.assert_allclose(ego_px, [0.15 * 128, 16.0])


def test_noise_injection_window_starts_bursts_only_near_each_chunk_end():
    base = hw.HighwaySimConfig(duration_s=30.0)
    windowed = dataclasses.replace(base, perturb_steering=0.1, perturb_rate_hz=3.0, perturb_s=0.3,
                                   perturb_window_s=1.0)
    with pytest.raises(ValueError, match="perturb_window_s"):
        dataclasses.replace(base, perturb_window_s=5.0)
    clean = hw.record_expert_episode(base, 3, steps=100, render=False)
    noisy = hw.record_expert_episode(windowed, 3, steps=100, render=False)
    first = int(np.argmax(np.abs(noisy.actions[:, 1] - clean.actions[:, 1]) > 1e-6))
    assert first > 0 and first % base.steps_per_chunk >= base.steps_per_chunk - 10   # the last second of a chunk


def test_recovery_burst_pushes_only_the_end_of_the_first_chunk():
    base = hw.HighwaySimConfig(duration_s=12.0)
    pushed = dataclasses.replace(base, recovery_steering=0.15, perturb_s=0.6, recovery_lead_s=0.4)
    with pytest.raises(ValueError, match="recovery_lead_s"):
        dataclasses.replace(base, recovery_lead_s=3.8)
    clean = hw.record_expert_episode(base, 3, steps=80, render=False)
    noisy = hw.record_expert_episode(pushed, 3, steps=80, render=False)
    changed = np.flatnonzero(np.abs(noisy.actions[:, 1] - clean.actions[:, 1]) > 1e-6)
    spc = base.steps_per_chunk                                  # 40 steps: the burst covers steps 30 ... 35
    assert changed[0] == spc - 10 and np.array_equal(noisy.poses[:spc - 9], clean.poses[:spc - 9])
    offset = noisy.actions[spc - 10, 1] - clean.actions[spc - 10, 1]
    assert 0.075 - 1e-6 <= abs(offset) <= 0.15 + 1e-6           # magnitude in [max / 2, max]
    heading = np.degrees(np.abs(noisy.poses[spc - 4:spc + 1, 2] - clean.poses[spc - 4:spc + 1, 2]))
    assert heading.max() > 2.0                                  # the first chunk ends tilted ...
    assert abs(noisy.poses[-1, 2]) < math.radians(2.0)          # ... and the expert recovers in the next


def test_fast_road_drives_every_vehicle_exactly_as_highway_env_does():
    # The per-step lane cache and the collision pre-filter (sim/fast_road.py) against highway-env's own loops:
    # every vehicle's position, speed and crash flag, bit for bit, on expert driving and on a full-throttle ego
    # that rear-ends the traffic (the collision path).
    from highway_env.road.road import Road

    from wam_jax.sim import fast_road

    if not fast_road.reproducible():
        pytest.skip("this highway-env's Road differs from the 1.12.1 methods fast_road reproduces: not installed")
    assert Road.step is fast_road.step and Road.neighbour_vehicles is fast_road.neighbour_vehicles
    cfg = hw.HighwaySimConfig(duration_s=30.0, vehicles=30)

    def drive(seed, throttle):
        env = hw.make_env(cfg, seed)
        states = []
        for _ in range(150):
            action = np.array([1.0, 0.0], np.float32) if throttle else hw.expert_action(env, cfg)
            env.step(action)
            road = env.unwrapped.road
            states.append([(*v.position, v.heading, v.speed, v.crashed) for v in road.vehicles])
            if env.unwrapped.vehicle.crashed:
                break
        env.close()
        return np.array(states)

    runs = [(1, False), (2, False), (0, True)]
    fast = [drive(*r) for r in runs]
    fast_road.uninstall()
    try:
        slow = [drive(*r) for r in runs]
    finally:
        assert fast_road.install()
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(a, b)
    assert fast[2][-1, 0, 4] == 1.0 and len(fast[2]) < 150       # the throttle run did crash
