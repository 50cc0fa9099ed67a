"""PDMS / EPDMS on a synthetic road with hand-computed expectations.

Map (global frame, metres): a straight road along +x. Ego-direction roadblocks `rb_a` (x -60..100) and `rb_b`
(x 130..260) span y -5.25..5.25 with three 3.5 m lanes centred at y = -3.5, 0, 3.5; an oncoming roadblock spans
y 5.25..12.25 (lanes at y = 7 and 10.5, not on the route); an intersection covers x 100..130, y -20..20, with one
lane connector per lane. The centerline is y = 0. Ego: rear axle at (0, 0), heading 0, 10 m/s, Pacifica.
"""

import math

import numpy as np
import pytest
import shapely

from wam_jax.metrics import navsim, navsim_comfort, navsim_sim
from wam_jax.metrics.navsim import epdms, pdms, score_states
from wam_jax.metrics.navsim_scene import (
    EgoState, HumanPast, MapLayer, MapPolygon, NavsimScene, ObjectBox, PreviousFrame, Reference,
)

LANE_W = 3.5
N_STEPS = 51  # 0 ... 5 s at 0.1 s (v1 TTC looks up to 0.9 s past the 4 s horizon)
K = np.arange(1, 9)


def _band(x0, x1, yc):
    return shapely.box(x0, yc - LANE_W / 2, x1, yc + LANE_W / 2)


def road_map():
    polys = []
    for seg, (x0, x1) in {"a": (-60.0, 100.0), "b": (130.0, 260.0)}.items():
        polys.append(MapPolygon(f"rb_{seg}", MapLayer.ROADBLOCK, shapely.box(x0, -5.25, x1, 5.25)))
        polys.append(MapPolygon(f"rb_on_{seg}", MapLayer.ROADBLOCK, shapely.box(x0, 5.25, x1, 12.25)))
        for name, yc in (("r", -3.5), ("0", 0.0), ("l", 3.5)):
            polys.append(MapPolygon(f"lane_{name}_{seg}", MapLayer.LANE, _band(x0, x1, yc)))
        polys.append(MapPolygon(f"lane_on_{seg}", MapLayer.LANE, _band(x0, x1, 7.0)))
        polys.append(MapPolygon(f"lane_on2_{seg}", MapLayer.LANE, _band(x0, x1, 10.5)))
    polys.append(MapPolygon("int_0", MapLayer.INTERSECTION, shapely.box(100.0, -20.0, 130.0, 20.0)))
    for name, yc in (("r", -3.5), ("0", 0.0), ("l", 3.5), ("on", 7.0)):
        polys.append(MapPolygon(f"lc_{name}", MapLayer.LANE_CONNECTOR, _band(100.0, 130.0, yc)))
    route = [f"lane_{n}_{s}" for n in "r0l" for s in "ab"] + [f"lc_{n}" for n in "r0l"]
    return polys, route


def track(track_id, category, x, y, length=4.5, width=2.0, vx=0.0, n=N_STEPS):
    """Constant-velocity box along +x, one entry per 0.1 s step."""
    return [ObjectBox(track_id, category, x + vx * 0.1 * t, y, 0.0, length, width, vx, 0.0) for t in range(n)]


def make_scene(ego=None, tracks=(), reference=None, red=(), n=N_STEPS, route_lane_ids=None, **kw):
    polys, route = road_map()
    return NavsimScene(
        ego=ego or EgoState(0.0, 0.0, 0.0, vx=10.0),
        objects=[[tr[t] for tr in tracks] for t in range(n)],
        map_polygons=polys, route_lane_ids=route if route_lane_ids is None else route_lane_ids,
        centerline=np.array([[-60.0, 0.0], [260.0, 0.0]]),
        reference=reference or Reference(progress_m=30.0), red_light_lane_connectors=red, **kw)


def straight(v, y=0.0):
    return np.stack([v * 0.5 * K, np.full(8, y), np.zeros(8)], -1)


def path_plan(xs, ys):
    """8x3 plan through (xs, ys) with headings along the path."""
    pts = np.concatenate([[[0.0, 0.0]], np.stack([xs, ys], -1)], 0)
    d = np.gradient(pts, axis=0)
    return np.stack([xs, ys, np.arctan2(d[1:, 1], d[1:, 0])], -1)


def v1_formula(nc, dac, ttc, ep, c):
    return nc * dac * (5 * ttc + 5 * ep + 2 * c) / 12


# --- NAVSIM v1 (PDMS) ------------------------------------------------------------------------------------------


def test_constant_velocity_on_lane_scores_one():
    scene = make_scene()
    r1 = pdms(scene, straight(10.0))
    assert (r1.nc, r1.dac, r1.ddc, r1.ttc, r1.ep, r1.c, r1.score) == (1, 1, 1, 1, 1, 1, 1)
    assert r1.progress_m == pytest.approx(40.0, abs=1e-6)  # the tracker follows a consistent plan exactly
    assert r1.states.shape == (41, 11)
    r2 = epdms(scene, straight(10.0))
    assert (r2.nc, r2.dac, r2.ddc, r2.tlc, r2.ep, r2.ttc, r2.lk, r2.hc, r2.score) == (1,) * 9
    assert math.isnan(r2.ec)


def test_leaving_the_road_gives_dac_zero():
    plan = path_plan(5.0 * K, -np.array([0.5, 1.5, 3.0, 5.0, 7.0, 9.0, 10.0, 10.0]))
    r = pdms(make_scene(), plan)
    assert r.dac == 0.0 and r.nc == 1.0
    assert r.ep == 0.0  # progress is multiplied by NC * DAC = 0 before normalisation
    assert r.score == 0.0
    # a 3 m shift to the right keeps all corners on the road (the tracker overshoots to -3.75); 1 m further puts
    # the right corners, not the whole car, over the edge at y = -5.25
    assert pdms(make_scene(), path_plan(5.0 * K, -np.array([0.5, 1.5, 2.5, 3, 3, 3, 3, 3.0]))).dac == 1.0
    r_edge = pdms(make_scene(), path_plan(5.0 * K, -np.array([0.5, 1.5, 2.5, 3.5, 4, 4, 4, 4.0])))
    assert r_edge.dac == 0.0
    coords = navsim.ego_coords(r_edge.states, make_scene().vehicle)
    assert coords[:, 4, 1].min() > -5.25  # the center never leaves the road


def test_rear_ending_a_stopped_car_gives_nc_zero():
    r = pdms(make_scene(tracks=[track("car", "vehicle", 30.0, 0.0)]), straight(10.0))
    assert r.nc == 0.0 and r.dac == 1.0
    assert r.score == 0.0


def test_hitting_a_cone_gives_nc_half_and_hand_computed_pdms():
    scene = make_scene(tracks=[track("cone", "traffic_cone", 30.0, 0.0, length=0.5, width=0.5)])
    r = pdms(scene, straight(10.0))
    assert r.nc == 0.5  # static object: half penalty
    assert r.ttc == 0.0  # the cone is ahead within 1 s before contact
    assert r.c == 1.0 and r.dac == 1.0
    # EP: raw = 40 m * 0.5 = 20 m, normaliser = max(20, reference 30) = 30
    assert r.ep == pytest.approx(20.0 / 30.0, abs=1e-9)
    expected = 0.5 * 1.0 * (5 * 0.0 + 5 * (2.0 / 3.0) + 2 * 1.0) / 12  # = 2/9
    assert r.score == pytest.approx(expected, abs=1e-9)
    assert r.score == pytest.approx(2.0 / 9.0, abs=1e-9)


def test_half_the_reference_progress_gives_ep_half():
    scene = make_scene(ego=EgoState(0.0, 0.0, 0.0, vx=5.0), reference=Reference(progress_m=40.0))
    r = pdms(scene, straight(5.0))
    assert r.progress_m == pytest.approx(20.0, abs=1e-6)
    assert r.ep == pytest.approx(0.5, abs=1e-6)
    assert r.score == pytest.approx(v1_formula(1, 1, 1, 0.5, 1), abs=1e-6)  # 19/24
    assert r.score == pytest.approx(19.0 / 24.0, abs=1e-6)


def test_short_progress_below_5m_gives_ep_one():
    scene = make_scene(ego=EgoState(0.0, 0.0, 0.0, vx=0.0), reference=Reference(progress_m=3.0))
    r = pdms(scene, np.zeros((8, 3)))  # standing still, reference only 3 m: no one progresses > 5 m
    assert r.progress_m == pytest.approx(0.0, abs=1e-9)
    assert r.ep == 1.0 and r.score == 1.0
    # the same still-standing plan against a 20 m reference has no progress at all
    r20 = pdms(make_scene(ego=EgoState(0.0, 0.0, 0.0, vx=0.0), reference=Reference(progress_m=20.0)),
               np.zeros((8, 3)))
    assert r20.ep == 0.0
    assert r20.score == pytest.approx(v1_formula(1, 1, 1, 0.0, 1))


def test_zigzag_is_uncomfortable_and_hand_computed_pdms():
    scene = make_scene(ego=EgoState(0.0, 0.0, 0.0, vx=5.0), reference=Reference(progress_m=15.0))
    plan = path_plan(2.5 * K, 1.0 + 2.0 * np.array([1, -1, 1, -1, 1, -1, 1, -1.0]))  # slalom around y = 1
    r = pdms(scene, plan)
    assert r.c == 0.0
    assert (r.nc, r.dac, r.ttc, r.ep) == (1.0, 1.0, 1.0, 1.0)
    assert r.score == pytest.approx(10.0 / 12.0)
    checks = navsim_comfort.comfort_checks(r.states[None], np.arange(41) * 0.1)[0]
    failed = {n for n, ok in zip(navsim_comfort.COMFORT_NAMES, checks) if not ok}
    assert {"yaw_rate", "yaw_accel"} <= failed


def test_ttc_for_a_stopped_car_just_beyond_reach_v1_versus_v2():
    # car rear at x = 47: ego front reaches 44.05 m at 4 s (no collision); 0.9 s at 10 m/s later it would
    # overlap. v1 checks all 41 steps (TTC 0); v2 only steps 0..31 (front 35.05 + 9 < 47: TTC 1).
    scene = make_scene(tracks=[track("car", "vehicle", 49.25, 0.0)])
    r1 = pdms(scene, straight(10.0))
    assert r1.nc == 1.0 and r1.ttc == 0.0
    assert r1.score == pytest.approx(7.0 / 12.0)
    r2 = epdms(scene, straight(10.0))
    assert r2.nc == 1.0 and r2.ttc == 1.0 and r2.score == 1.0


def test_being_rear_ended_is_not_at_fault():
    # a slightly faster car from behind touches the ego's rear bumper at ~3.6 s: ACTIVE_REAR, not at fault
    scene = make_scene(tracks=[track("tailgater", "vehicle", -7.0, 0.0, vx=11.0)])
    r = pdms(scene, straight(10.0))
    assert r.nc == 1.0
    # TTC still fires: navsim compares the *current* ego rear axle with the track's centroid 0.9 s later, and
    # the faster car is ahead of it by then (v1 looks up to 4.9 s)
    assert r.ttc == 0.0 and r.score == pytest.approx(7.0 / 12.0)
    # straddling two lanes does not make a rear hit the ego's fault (ACTIVE_REAR, not ACTIVE_LATERAL)
    straddle = make_scene(ego=EgoState(0.0, 1.7, 0.0, vx=10.0),
                          tracks=[track("tailgater", "vehicle", -7.0, 1.7, vx=11.0)])
    assert pdms(straddle, straight(10.0)).nc == 1.0
    # the same car standing still ahead of the ego is hit by the ego: STOPPED_TRACK, at fault
    assert pdms(make_scene(tracks=[track("stopped", "vehicle", 30.0, 0.0)]), straight(10.0)).nc == 0.0
    # the same car standing still behind the ego path is never touched
    assert pdms(make_scene(tracks=[track("parked", "vehicle", -20.0, 0.0)]), straight(10.0)).nc == 1.0


def test_lateral_contact_is_at_fault_only_when_straddling_lanes():
    # a car driving alongside in the left lane, overlapping the ego's left side (ACTIVE_LATERAL collision)
    def alongside(y):
        return [ObjectBox("car", "vehicle", 1.5 + 1.0 * t, y, 0.0, 4.5, 2.0, 10.0, 0.0) for t in range(N_STEPS)]

    straddling = pdms(make_scene(ego=EgoState(0.0, 1.7, 0.0, vx=10.0), tracks=[alongside(3.5)]), straight(10.0))
    assert straddling.nc == 0.0 and straddling.ttc == 0.0 and straddling.score == 0.0
    in_lane = pdms(make_scene(ego=EgoState(0.0, 0.5, 0.0, vx=10.0), tracks=[alongside(2.5)]), straight(10.0))
    assert (in_lane.nc, in_lane.ttc, in_lane.score) == (1.0, 1.0, 1.0)


def test_objects_beside_the_ego_do_not_count_for_ttc():
    # a pedestrian beside the front door (41 deg off the heading) stepping away at 3 m/s: the boxes touch at t = 0
    # (lateral contact, ego within its lane: not at fault), and TTC ignores it because it is not ahead
    ped = [ObjectBox("ped", "pedestrian", 1.5, -1.3 - 0.3 * t, 0.0, 0.5, 0.5, 0.0, -3.0) for t in range(N_STEPS)]
    r = pdms(make_scene(tracks=[ped]), straight(10.0))
    assert (r.nc, r.ttc, r.score) == (1.0, 1.0, 1.0)
    # the same pedestrian 3 m further ahead is in the projected path: TTC 0 (and it is hit: NC 0)
    ped_ahead = [ObjectBox("ped", "pedestrian", 8.0, -0.5, 0.0, 0.5, 0.5) for _ in range(N_STEPS)]
    r_ahead = pdms(make_scene(tracks=[ped_ahead]), straight(10.0))
    assert r_ahead.ttc == 0.0 and r_ahead.nc == 0.0


def test_reference_given_as_poses_is_simulated_and_its_multipliers_apply():
    scene_same = make_scene(reference=Reference(poses=navsim_sim.plan_to_reference_poses(
        EgoState(0.0, 0.0, 0.0, vx=10.0), straight(10.0))))
    r = pdms(scene_same, straight(10.0))
    assert r.ep == pytest.approx(1.0) and r.normaliser_m == pytest.approx(r.progress_m)
    ego = EgoState(0.0, 0.0, 0.0, vx=10.0)
    far = navsim_sim.plan_to_reference_poses(ego, path_plan(7.5 * K, np.zeros(8)))  # 15 m/s -> 60 m
    r_far = pdms(make_scene(reference=Reference(poses=far)), straight(10.0))
    assert 40.0 < r_far.normaliser_m < 60.0 and r_far.ep == pytest.approx(r_far.progress_m / r_far.normaliser_m)
    offroad = navsim_sim.plan_to_reference_poses(ego, path_plan(7.5 * K, -np.array([1, 3, 6, 9, 12, 12, 12, 12.0])))
    r_off = pdms(make_scene(reference=Reference(poses=offroad)), straight(10.0))
    assert r_off.ep == 1.0  # the reference leaves the road: its progress counts as 0


def test_v1_ignores_driving_direction_but_v2_multiplies_it():
    plan = path_plan(5.0 * K, np.array([1, 3, 5, 7, 7, 7, 7, 7.0]))  # into the oncoming lane at 10 m/s
    r1 = pdms(make_scene(), plan)
    assert r1.ddc == 0.0 and r1.dac == 1.0 and r1.score == pytest.approx(v1_formula(1, 1, r1.ttc, r1.ep, r1.c))
    r2 = epdms(make_scene(), plan)
    assert r2.ddc == 0.0 and r2.score == 0.0
    slow = path_plan(2.0 * K, np.array([1, 3, 5, 7, 7, 7, 7, 7.0]))  # 4 m/s: ~4.4 m per 1 s window
    r_slow = epdms(make_scene(ego=EgoState(0.0, 0.0, 0.0, vx=4.0)), slow)
    assert r_slow.ddc == 0.5


# --- NAVSIM v2 (EPDMS) -----------------------------------------------------------------------------------------


RED_ON_EGO_LANE = [["lc_0"]] * N_STEPS


def test_red_light_crossing_gives_tlc_zero():
    scene = make_scene(ego=EgoState(70.0, 0.0, 0.0, vx=10.0), red=RED_ON_EGO_LANE)
    r2 = epdms(scene, straight(10.0))
    assert r2.tlc == 0.0 and r2.score == 0.0 and r2.nc == 1.0
    assert pdms(scene, straight(10.0)).score == 1.0  # red lights are not objects for NC / TTC
    # a red light on the neighbour lane's connector is not crossed
    other = make_scene(ego=EgoState(70.0, 0.0, 0.0, vx=10.0), red=[["lc_l"]] * N_STEPS)
    assert epdms(other, straight(10.0)).tlc == 1.0
    # red lights off the route are dropped (navsim keeps on-route lane connectors only)
    off_route = make_scene(ego=EgoState(70.0, 7.0, 0.0, vx=10.0), red=[["lc_on"]] * N_STEPS)
    assert epdms(off_route, straight(10.0)).tlc == 1.0
    on_route = make_scene(ego=EgoState(70.0, 7.0, 0.0, vx=10.0), red=[["lc_on"]] * N_STEPS,
                          route_lane_ids=road_map()[1] + ["lc_on"])
    assert epdms(on_route, straight(10.0)).tlc == 0.0


def test_human_penalty_filter_forgives_what_the_human_also_did():
    scene = make_scene(ego=EgoState(70.0, 0.0, 0.0, vx=10.0), red=RED_ON_EGO_LANE, human_future=straight(10.0))
    r = epdms(scene, straight(10.0))
    assert r.human["tlc"] == 0.0 and r.unfiltered["tlc"] == 0.0
    assert r.tlc == 1.0 and r.ep == 1.0 and r.score == 1.0
    assert epdms(scene, straight(10.0), human_penalty_filter=False).score == 0.0
    # the filter compares with the human scored alone: a human standing still has EP 1 (no progress > 5 m), so a
    # slow agent keeps its EP against the reference
    still_human = make_scene(ego=EgoState(0.0, 0.0, 0.0, vx=5.0), reference=Reference(progress_m=40.0),
                             human_future=np.zeros((8, 3)))
    r_slow = epdms(still_human, straight(5.0))
    assert r_slow.human["ep"] == 1.0 and r_slow.ep == pytest.approx(0.5, abs=1e-6)
    stopping = make_scene(ego=EgoState(70.0, 0.0, 0.0, vx=10.0), red=RED_ON_EGO_LANE,
                          human_future=path_plan(np.array([4.5, 8, 10.5, 12, 12.5, 12.5, 12.5, 12.5]), np.zeros(8)))
    assert epdms(stopping, straight(10.0)).tlc == 0.0  # the human stopped: no forgiveness


def test_one_metre_lateral_offset_for_2s_gives_lk_zero_and_hand_computed_epdms():
    plan = path_plan(5.0 * K, np.array([0.25, 0.5, 0.75, 1, 1, 1, 1, 1.0]))
    r = epdms(make_scene(), plan)
    assert r.lk == 0.0
    assert (r.nc, r.dac, r.ddc, r.tlc, r.ep, r.ttc, r.hc) == (1.0,) * 7
    assert r.score == pytest.approx((5 * 1 + 5 * 1 + 2 * 0 + 2 * 1) / 14)  # EC absent: weights sum to 14
    assert pdms(make_scene(), plan).score == 1.0
    # the same offset inside the intersection is not counted
    r_int = epdms(make_scene(ego=EgoState(100.0, 0.0, 0.0, vx=5.0), reference=Reference(progress_m=10.0)),
                  path_plan(2.5 * K, np.array([0.25, 0.5, 0.75, 1, 1, 1, 1, 1.0])))
    assert r_int.lk == 1.0


def test_history_comfort_uses_the_human_past():
    t = np.array([-1.5, -1.0, -0.5, 0.0])
    poses = np.stack([10.0 * t, np.zeros(4), np.zeros(4)], -1)
    calm = HumanPast.from_poses(t, poses, velocity=[10.0, 0.0])
    braking = HumanPast.from_poses(t, poses, velocity=[10.0, 0.0], acceleration=[-6.0, 0.0])
    assert epdms(make_scene(human_past=calm), straight(10.0)).hc == 1.0
    r = epdms(make_scene(human_past=braking), straight(10.0))
    assert r.hc == 0.0
    assert r.score == pytest.approx((5 + 5 + 2 + 0) / 14)
    assert pdms(make_scene(human_past=braking), straight(10.0)).c == 1.0  # v1 comfort ignores the past


def test_extended_comfort_compares_with_the_previous_frame():
    consistent = PreviousFrame(EgoState(-5.0, 0.0, 0.0, vx=10.0), straight(10.0))
    r = epdms(make_scene(previous_frame=consistent), straight(10.0))
    assert r.ec == 1.0 and r.score == 1.0
    braking = path_plan(np.array([4.25, 7.75, 10.5, 12.5, 13.75, 14.25, 14.25, 14.25]), np.zeros(8))
    r_bad = epdms(make_scene(previous_frame=PreviousFrame(EgoState(-5.0, 0.0, 0.0, vx=10.0), braking)),
                  straight(10.0))
    assert r_bad.ec == 0.0
    assert r_bad.score == pytest.approx((5 + 5 + 2 + 2 + 2 * 0) / 16)  # = 0.875
    assert r_bad.score_without_ec == 1.0


def test_extended_comfort_aligns_the_overlapping_0p5s():
    # one smooth global speed profile v(t) = 10 + sin(1.5 t), planned at t = -0.5 s and again at t = 0: the
    # overlap (previous states 5..40 vs current 0..35) agrees; comparing misaligned steps would not
    def x(t):
        return 10.0 * t - np.cos(1.5 * t) / 1.5

    def v(t):
        return 10.0 + np.sin(1.5 * t)

    def a(t):
        return 1.5 * np.cos(1.5 * t)

    cur_plan = np.stack([x(0.5 * K) - x(0.0), np.zeros(8), np.zeros(8)], -1)
    prev_plan = np.stack([x(-0.5 + 0.5 * K) - x(-0.5), np.zeros(8), np.zeros(8)], -1)
    prev = PreviousFrame(EgoState(x(-0.5) - x(0.0), 0.0, 0.0, vx=v(-0.5), ax=a(-0.5)), prev_plan)
    ego = EgoState(0.0, 0.0, 0.0, vx=v(0.0), ax=a(0.0))
    r = epdms(make_scene(ego=ego, previous_frame=prev), cur_plan)
    assert r.ec == 1.0
    prev_states = navsim_sim.simulate_plan(prev.ego, prev_plan)
    misaligned = navsim_comfort.two_frame_extended_comfort(prev_states[None, :-5], r.states[None, :-5],
                                                           np.arange(36) * 0.1)
    assert not misaligned[0]


# --- building blocks -------------------------------------------------------------------------------------------


def test_interpolation_is_angle_aware():
    times = np.array([0.0, 1.0])
    poses = np.array([[0.0, 0.0, math.pi - 0.1], [1.0, 2.0, -math.pi + 0.1]])
    mid = navsim_sim.interpolate_poses(times, poses, np.array([0.5]))[0]
    assert mid[:2] == pytest.approx([0.5, 1.0])
    assert abs(abs(mid[2]) - math.pi) < 1e-9  # through pi, not through 0


def test_plan_to_global_and_tracking_in_a_rotated_frame():
    ego = EgoState(10.0, -5.0, math.pi / 3, vx=10.0)
    ref = navsim_sim.plan_to_reference_poses(ego, straight(10.0))
    assert ref.shape == (41, 3)
    assert ref[0] == pytest.approx([10.0, -5.0, math.pi / 3])
    assert ref[5] == pytest.approx([10.0 + 5 * math.cos(math.pi / 3), -5.0 + 5 * math.sin(math.pi / 3), math.pi / 3])
    assert ref[3, :2] == pytest.approx([10.0 + 3 * math.cos(math.pi / 3), -5.0 + 3 * math.sin(math.pi / 3)])
    states = navsim_sim.simulate(ref[None], ego)[0]
    assert states[-1, :3] == pytest.approx(ref[-1], abs=1e-6)
    assert states[:, 3] == pytest.approx(np.full(41, 10.0), abs=1e-6)


def test_tracker_brakes_to_a_stop():
    ego = EgoState(0.0, 0.0, 0.0, vx=10.0)
    plan = path_plan(np.array([4.5, 8.0, 10.5, 12.0, 12.5, 12.5, 12.5, 12.5]), np.zeros(8))
    states = navsim_sim.simulate_plan(ego, plan)
    assert states[-1, 3] < 1.0 and 10.0 < states[-1, 0] < 16.0
    assert np.all(np.diff(states[:, 0]) >= -1e-9)  # never reverses


def test_comfort_uses_the_center_acceleration():
    # rear-axle acceleration 1.5 m/s^2 while turning at 0.9 rad/s: the centre (1.461 m ahead) sees
    # 1.5 + 1.461 * 0.9^2 = 2.68 > 2.4 with nuPlan's rigid-body shift; yaw rate itself is within bounds
    t = np.arange(41) * 0.1
    states = np.zeros((1, 41, 11))
    states[0, :, 2] = 0.9 * t
    states[0, :, 5] = 1.5
    states[0, :, 9] = 0.9
    checks = dict(zip(navsim_comfort.COMFORT_NAMES, navsim_comfort.comfort_checks(states, t)[0]))
    assert not checks["lon_accel"]
    assert checks["yaw_rate"] and checks["yaw_accel"] and checks["lat_accel"]
    states[0, :, 9] = 0.0  # the same without the yaw-rate term passes
    assert dict(zip(navsim_comfort.COMFORT_NAMES, navsim_comfort.comfort_checks(states, t)[0]))["lon_accel"]


def test_stopping_controller_creeps_towards_a_slow_reference():
    # from rest, a 0.4 m plan has reference speeds below 0.2 m/s: the P controller (gain 0.5) moves the car
    states = navsim_sim.simulate_plan(EgoState(0.0, 0.0, 0.0), np.stack([0.05 * K, np.zeros(8), np.zeros(8)], -1))
    assert 0.1 < states[-1, 0] < 0.4 and 0.0 < states[-1, 3] < 0.2


def test_history_is_resampled_like_navsim():
    # samples at 0.1 s from the first past time, excluding the last time, and the final sample dropped
    t = np.array([-1.5, -1.0, -0.5, 0.0])
    states = np.zeros((4, 11))
    states[:, 0] = 10.0 * t
    states[:, 2] = np.array([3.0, -3.0, 3.0, -3.0])  # headings interpolate across +-pi
    out = navsim._resample_history(t, states)
    assert out.shape == (14, 11)
    np.testing.assert_allclose(out[:, 0], 10.0 * (-1.5 + 0.1 * np.arange(14)), atol=1e-9)
    assert np.all(np.abs(out[:, 2]) >= 3.0 - 1e-9)  # never through 0


def test_batched_scoring_matches_single():
    scene = make_scene(tracks=[track("cone", "traffic_cone", 30.0, 0.0, length=0.5, width=0.5)])
    ego = scene.ego
    plans = [straight(10.0), path_plan(5.0 * K, np.array([0.25, 0.5, 0.75, 1, 1, 1, 1, 1.0])),
             path_plan(5.0 * K, np.array([1.0, 2.5, 3.5, 3.5, 3.5, 3.5, 3.5, 3.5]))]
    states = navsim_sim.simulate(np.stack([navsim_sim.plan_to_reference_poses(ego, p) for p in plans]), ego)
    batched = score_states(scene, states, version=2)
    for i in range(3):
        single = score_states(scene, states[i:i + 1], version=2)
        for field in ("nc", "dac", "ddc", "tlc", "ttc", "lk", "c", "hc", "progress_m"):
            assert getattr(batched, field)[i] == pytest.approx(getattr(single, field)[0]), field
    assert batched.nc.tolist() == [0.5, 0.5, 1.0]  # only the lane change to the left passes the cone


def test_aggregate_formulas():
    assert navsim.pdms_aggregate(nc=1, dac=1, ttc=1, ep=0.5, c=0) == pytest.approx(7.5 / 12)
    assert navsim.epdms_aggregate(1, 1, 0.5, 1, ep=1, ttc=0, lk=1, hc=1, ec=1) == pytest.approx(0.5 * 11 / 16)
    assert navsim.epdms_aggregate(1, 1, 1, 1, ep=1, ttc=0, lk=1, hc=1) == pytest.approx(9 / 14)
    ep, max_raw = navsim.normalized_progress(np.array([10.0, 30.0]), np.array([1.0, 0.0]), 20.0)
    assert ep.tolist() == [0.5, 0.0] and max_raw == 20.0
    ep, _ = navsim.normalized_progress(np.array([3.0, 4.0]), np.array([1.0, 0.0]))
    assert ep.tolist() == [1.0, 0.0]


def test_helpful_errors():
    with pytest.raises(ValueError, match="at least 41"):
        pdms(make_scene(n=30), straight(10.0))
    with pytest.raises(ValueError, match=r"\[T, 3\]"):
        pdms(make_scene(), np.zeros((8, 2)))
    with pytest.raises(ValueError, match="no LANE_CONNECTOR"):
        polys, route = road_map()
        epdms(make_scene(red=[["lc_missing"]] * N_STEPS, route_lane_ids=route + ["lc_missing"]), straight(10.0))
    with pytest.raises(ValueError, match="exactly one"):
        Reference()


def test_v1_with_only_41_observation_steps_skips_lookahead_beyond_the_data():
    # the v1 TTC case above, but the observation ends at 4 s: look-ahead past the data is skipped, so the
    # projected ego front never passes 44.05 m and the car (rear at 47 m) is not seen
    scene = make_scene(tracks=[track("car", "vehicle", 49.25, 0.0, n=41)], n=41)
    assert pdms(scene, straight(10.0)).ttc == 1.0
    closer = make_scene(tracks=[track("car", "vehicle", 45.5, 0.0, n=41)], n=41)  # rear at 43.25 m
    assert pdms(closer, straight(10.0)).ttc == 0.0
