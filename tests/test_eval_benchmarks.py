"""Benchmark eval commands (`eval-navsim`, `eval-physicalai`) on fixtures written in the real on-disk formats,
with expected scores computed by hand (arithmetic in the comments) and float64 closed-form references."""

import csv
import dataclasses
import json
import math
import os
import pickle
import sqlite3
import struct

import numpy as np
import pytest
import shapely
from shapely import affinity

from data_pipelines import fixtures
from wam_jax.__main__ import main
from wam_jax.evaluation import benchmarks, navsim_eval, physicalai_eval


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return {row["planner"]: row for row in json.load(f)["summary"]}


# ---------------------------------------------------------------------------------------------------------------
# PhysicalAI-AV
#
# The fixture (data_pipelines.fixtures.write_physicalai_fixture) holds two 20 s clips driving circular arcs at
# v = 10 m/s with yaw rates w = +0.05 and -0.05 rad/s, egomotion at 100 Hz. At t0 = 5.1 s the logged future in
# the t0 rig frame is exactly the arc: x(t) = R sin(w t), y(t) = R (1 - cos(w t)), R = v / w = 200 m (0.1 s
# multiples fall on 100 Hz samples, so the interpolation adds no error).
#
# constant_velocity drives straight at the speed the loader measures: the central difference over +-50 ms,
# i.e. the chord of the arc over 0.1 s: v_c = 2 R sin(w 0.05) / 0.1 = 10 sin(0.0025) / 0.0025 = 9.9999896 m/s,
# along the tangent (the symmetric chord is parallel to it). Its error at t is
#   e(t) = sqrt((v_c t - R sin(w t))^2 + (R (1 - cos(w t)))^2):
#   t = 3 s: x_gt = 200 sin(0.15) = 29.88765, y_gt = 200 (1 - cos 0.15) = 2.24579, v_c t = 29.99997
#            -> FDE@3s = sqrt(0.11232^2 + 2.24579^2) = 2.2486 m
#   t = 4 s: x_gt = 200 sin(0.2) = 39.73387, y_gt = 200 (1 - cos 0.2) = 3.98669, v_c t = 39.99996
#            -> FDE@4s = sqrt(0.26609^2 + 3.98669^2) = 3.9956 m
#   ADE@3s = mean of e(0.1 k), k = 1..30 ~ mean of 0.25 (0.1 k)^2 = 0.0025 * 31 * 61 / 6 = 0.788 m (y dominates)
# The mirrored clip (w = -0.05) has the same errors, so the summary means equal the per-clip values.

V, W = 10.0, 0.05
R = V / W
V_C = 2 * R * math.sin(W * 0.05) / 0.1


def cv_error(t):
    t = np.asarray(t, np.float64)
    return np.hypot(V_C * t - R * np.sin(W * t), R * (1 - np.cos(W * t)))


@pytest.fixture(scope="module")
def pai_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pai"))
    fixtures.write_physicalai_fixture(root)
    return root


def test_physicalai_eval_cli_scores_match_hand_computation(pai_root, tmp_path, capsys):
    out = str(tmp_path / "pai")
    assert main(["eval-physicalai", "--src", pai_root, "--planners", "expert,constant_velocity", "--out", out]) == 0
    assert "ade_3s" in capsys.readouterr().out
    rows = read_csv(os.path.join(out, "scenes.csv"))
    assert [(r["planner"], r["clip_id"], r["t0_us"]) for r in rows] == [
        (p, c, "5100000") for p in ("expert", "constant_velocity")
        for c in ("0a1b2c3d-0000-4000-8000-000000000001", "0a1b2c3d-0000-4000-8000-000000000002")]
    t = np.arange(1, 65) * 0.1
    err = cv_error(t)
    expect_cv = {"ade_3s": err[:30].mean(), "fde_3s": err[29], "ade_4s": err[:40].mean(), "fde_4s": err[39],
                 "min_ade": err.mean(), "min_ade_3s": err[:30].mean()}
    # the hand values from the comment above
    assert expect_cv["fde_3s"] == pytest.approx(2.2486, abs=1e-4)
    assert expect_cv["fde_4s"] == pytest.approx(3.9956, abs=1e-4)
    assert expect_cv["ade_3s"] == pytest.approx(0.788, abs=0.01)
    for r in rows:
        for key, value in expect_cv.items():
            want = 0.0 if r["planner"] == "expert" else value
            assert float(r[key]) == pytest.approx(want, abs=2e-6), (r["planner"], key)
    s = summary(out)
    assert s["constant_velocity"]["scenes"] == 2
    assert s["constant_velocity"]["ade_4s"] == pytest.approx(expect_cv["ade_4s"], abs=2e-6)
    assert s["expert"]["fde_4s"] == pytest.approx(0.0, abs=1e-6)
    table = open(os.path.join(out, "summary.txt")).read()
    assert table.splitlines()[0].split() == list(physicalai_eval.SUMMARY_COLUMNS)


def test_physicalai_min_ade_picks_best_sample_and_ade_uses_first():
    # Two samples over 40 steps: sample 0 is off by 2 m everywhere, sample 1 by 1 m. Single-trajectory ADE/FDE
    # score sample 0 (2.0), min_ade the better sample 1 (1.0).
    gt = np.zeros((40, 3))
    pred = np.zeros((2, 40, 3))
    pred[0, :, 1] = 2.0
    pred[1, :, 1] = 1.0
    row = physicalai_eval.score_clip(pred, gt)
    assert row["ade_3s"] == row["fde_3s"] == row["ade_4s"] == row["fde_4s"] == 2.0
    assert row["min_ade"] == row["min_ade_3s"] == 1.0


def test_physicalai_eval_horizon_and_errors(pai_root, tmp_path, capsys):
    # 3 s horizon: the 4 s columns are empty ("-" / NaN), the 3 s ones unchanged.
    out = str(tmp_path / "h3")
    assert main(["eval-physicalai", "--src", pai_root, "--planners", "constant_velocity", "--horizon", "3",
                 "--out", out]) == 0
    row = read_csv(os.path.join(out, "scenes.csv"))[0]
    assert math.isnan(float(row["ade_4s"]))
    assert float(row["fde_3s"]) == pytest.approx(cv_error(3.0), abs=2e-6)
    capsys.readouterr()
    assert main(["eval-physicalai", "--src", str(tmp_path / "missing"), "--out", out]) == 2
    assert "features.csv" in capsys.readouterr().err
    assert main(["eval-physicalai", "--src", pai_root, "--planners", "nope", "--out", out]) == 2
    assert "unknown benchmark planner" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# NAVSIM
#
# Fixture in NAVSIM's layout: navsim_logs/test/<log>.pkl (pickled lists of 2 Hz OpenScene frame dicts) and
# maps/us-nv-las-vegas-strip/9.15.1915/map.gpkg (a nuPlan GeoPackage: lanes_polygons, lane_groups_polygons,
# baseline_paths, lane_connectors, meta, gpkg_* tables; geometries as GeoPackage binary, an undefined Cartesian
# srs, i.e. already metric). The road is straight in a local (u, w) frame — u along the road, w to the left —
# placed in the global frame by rotating by THETA and shifting by ORIGIN (so every frame transform is exercised):
#   roadblock "1": u in [-100, 300], w in [-5.25, 5.25]; lanes 11, 12, 13 (lane group 1) centred at
#   w = -3.5, 0, 3.5, 3.5 m wide, each with a baseline path along its centre. Every frame's route is ["1"].
#
# log_a (13 frames): the ego drives lane 12 (w = 0) at a constant 10 m/s (5 m per frame); no objects.
#   Scenes: current frame i in {3, 4} (4 history frames, 8 future frames needed: i + 8 <= 12).
# log_b (12 frames, one scene at i = 3): history at 10 m/s, then the human brakes at 2 m/s^2 from "now":
#   u(tau) = 10 tau - tau^2 for tau = 0.5 ... 4 s (24 m at 4 s, 2 m/s left); ego_dynamic_state ax = -2 from now.
#   A stopped vehicle (4.5 x 2 m) stands in lane 12 with its rear 30 m ahead of the ego front bumper at "now"
#   (front bumper = rear axle + 4.049 m, so rear at u = 34.049, centre at u = 36.299).
#
# Expected v1 sub-scores (PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12):
#   expert (replays the logged future, which is also the EP reference):
#     log_a: on-lane, no objects -> NC = DAC = TTC = 1; constant speed -> C = 1; agent progress = reference
#            progress -> EP = 1; PDMS = 12/12 = 1.
#     log_b: gap to the stopped car 30 - u(tau) >= 6 m, and minus the 0.9 s TTC look-ahead 0.9 v(tau):
#            30 - 10 tau + tau^2 - 0.9 (10 - 2 tau) = 21 - 8.2 tau + tau^2 >= 4.2 m on [0, 4] -> NC = TTC = 1;
#            steady -2 m/s^2 from an ego already braking at -2 -> C = 1; EP = 1 (it is the reference); PDMS = 1.
#   constant_velocity (10 m/s straight ahead, 5 ... 40 m):
#     log_a: identical to the expert -> all 1, PDMS 1.
#     log_b: its front reaches the car after 30 m (t = 3 s < 4 s): a stopped track hit by the ego front -> at
#            fault, a vehicle -> NC = 0; the car is within 0.9 s x 10 m/s = 9 m ahead from t = 2.1 s -> TTC = 0;
#            raw progress x multipliers = 0 -> EP = 0; PDMS = 0. (Its C is not asserted: the tracker leaves
#            the ego's -2 m/s^2 for 0 m/s^2 in ~0.2 s, a jerk near nuPlan's bound.)
#   Means over the 3 scenes: expert all 1; constant_velocity NC = TTC = EP = PDMS = 2/3, DAC = 1.
#   offroad (a test planner 12 m to the right of the lane, outside roadblock 1): DAC = 0 -> PDMS = 0 on log_a.

THETA = 0.3
ORIGIN = np.array([600.0, -200.0])
LOCATION = "us-nv-las-vegas-strip"
FRONT = 4.049  # Pacifica rear axle -> front bumper


def to_global(u, w):
    c, s = math.cos(THETA), math.sin(THETA)
    return ORIGIN[0] + c * u - s * w, ORIGIN[1] + s * u + c * w


def place(geom):
    return affinity.translate(affinity.rotate(geom, THETA, origin=(0, 0), use_radians=True), *ORIGIN)


def gpkg_blob(geom, srs_id=0):
    # GeoPackage binary: 'GP', version 0, flags (little endian, no envelope), srs id, then WKB
    return b"GP" + bytes([0, 1]) + struct.pack("<i", srs_id) + shapely.to_wkb(geom)


def write_nuplan_map(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT, srs_id INTEGER PRIMARY KEY, organization TEXT, "
                "organization_coordsys_id INTEGER, definition TEXT, description TEXT)")
    con.execute("INSERT INTO gpkg_spatial_ref_sys VALUES ('Undefined Cartesian', 0, 'NONE', 0, 'undefined', '')")
    con.execute("CREATE TABLE gpkg_geometry_columns (table_name TEXT, column_name TEXT, geometry_type_name TEXT, "
                "srs_id INTEGER, z TINYINT, m TINYINT)")
    con.execute("CREATE TABLE meta (id INTEGER PRIMARY KEY, key TEXT, value TEXT)")
    con.execute("INSERT INTO meta (key, value) VALUES ('projectedCoordSystem', 'EPSG:32611')")
    con.execute('CREATE TABLE "lane_groups_polygons" (fid INTEGER PRIMARY KEY, geom POLYGON)')
    con.execute('CREATE TABLE "lanes_polygons" (fid INTEGER PRIMARY KEY, geom POLYGON, lane_group_fid INTEGER, '
                'lane_fid INTEGER, lane_index MEDIUMINT)')
    con.execute('CREATE TABLE "baseline_paths" (fid INTEGER PRIMARY KEY, geom LINESTRING, lane_fid INTEGER, '
                'lane_connector_fid INTEGER)')
    con.execute('CREATE TABLE "lane_connectors" (fid INTEGER PRIMARY KEY, geom LINESTRING, exit_lane_fid INTEGER, '
                'entry_lane_fid INTEGER, lane_group_connector_fid INTEGER)')
    con.execute('CREATE TABLE "intersections" (fid INTEGER PRIMARY KEY, geom POLYGON)')
    for table in ("lane_groups_polygons", "lanes_polygons", "baseline_paths", "lane_connectors", "intersections"):
        con.execute("INSERT INTO gpkg_geometry_columns VALUES (?, 'geom', 'GEOMETRY', 0, 0, 0)", (table,))
    con.execute("INSERT INTO lane_groups_polygons VALUES (1, ?)", (gpkg_blob(place(shapely.box(-100, -5.25, 300, 5.25))),))
    for k, (fid, wc) in enumerate(((11, -3.5), (12, 0.0), (13, 3.5))):
        band = place(shapely.box(-100, wc - 1.75, 300, wc + 1.75))
        con.execute("INSERT INTO lanes_polygons VALUES (?, ?, 1, ?, ?)", (fid, gpkg_blob(band), fid, k))
        line = place(shapely.LineString([(-100, wc), (100, wc), (300, wc)]))
        con.execute("INSERT INTO baseline_paths VALUES (?, ?, ?, NULL)", (100 + fid, gpkg_blob(line), fid))
    con.commit()
    con.close()


def frame(log, i, u, speed, ax, boxes=()):
    """One OpenScene frame dict; `boxes` = [(token, u, w)] stopped vehicles, written in this frame's ego frame."""
    x, y = to_global(u, 0.0)
    anns = {"gt_boxes": np.array([[bu - u, bw, 0.8, 4.5, 2.0, 1.6, 0.0] for _, bu, bw in boxes]).reshape(-1, 7),
            "gt_names": ["vehicle"] * len(boxes), "gt_velocity_3d": np.zeros((len(boxes), 3)),
            "instance_tokens": [t for t, _, _ in boxes], "track_tokens": [t for t, _, _ in boxes]}
    return {"token": f"{log}-{i:03d}", "frame_idx": i, "timestamp": 1_600_000_000_000_000 + 500_000 * i,
            "log_name": log, "map_location": LOCATION, "roadblock_ids": ["1"],
            "ego2global_translation": [x, y, 0.0],
            "ego2global_rotation": [math.cos(THETA / 2), 0.0, 0.0, math.sin(THETA / 2)],
            "ego_dynamic_state": [speed, 0.0, ax, 0.0], "driving_command": [0, 1, 0, 0], "anns": anns, "cams": {}}


CAR = ("car0", FRONT + 30.0 + 2.25, 0.0)  # log_b's stopped car: rear 30 m ahead of the front bumper


@pytest.fixture(scope="module")
def navsim_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("navsim")
    logs = root / "navsim_logs" / "test"
    logs.mkdir(parents=True)
    log_a = [frame("log_a", i, 5.0 * i, 10.0, 0.0) for i in range(13)]
    log_b = []
    for i in range(12):
        tau = 0.5 * (i - 3)  # seconds since "now" (frame 3)
        u, v, a = (10.0 * tau, 10.0, 0.0) if tau < 0 else (10.0 * tau - tau ** 2, 10.0 - 2.0 * tau, -2.0)
        log_b.append(frame("log_b", i, u, v, a, boxes=[CAR]))
    for name, frames in (("log_a", log_a), ("log_b", log_b)):
        with open(logs / f"{name}.pkl", "wb") as f:
            pickle.dump(frames, f)
    write_nuplan_map(str(root / "maps" / LOCATION / "9.15.1915" / "map.gpkg"))
    return str(root)


def test_navsim_eval_cli_scores_match_hand_computation(navsim_root, tmp_path, capsys):
    out = str(tmp_path / "navsim")
    assert main(["eval-navsim", "--src", navsim_root, "--split", "test", "--planners", "expert,constant_velocity",
                 "--out", out]) == 0
    assert "pdms" in capsys.readouterr().out
    rows = {(r["planner"], r["token"]): r for r in read_csv(os.path.join(out, "scenes.csv"))}
    assert sorted(rows) == sorted((p, t) for p in ("expert", "constant_velocity")
                                  for t in ("log_a-003", "log_a-004", "log_b-003"))
    keys = ("nc", "dac", "ttc", "c", "ep", "pdms")
    for planner in ("expert", "constant_velocity"):
        for token in ("log_a-003", "log_a-004"):
            # (constant velocity's plan equals the logged future up to float rounding of the frame transform)
            got = {k: float(rows[planner, token][k]) for k in keys}
            assert got == pytest.approx(dict.fromkeys(keys, 1.0), abs=1e-9), (planner, token)
    assert {k: float(rows["expert", "log_b-003"][k]) for k in keys} == dict.fromkeys(keys, 1.0)
    cv_b = rows["constant_velocity", "log_b-003"]
    assert (float(cv_b["nc"]), float(cv_b["dac"]), float(cv_b["ttc"]), float(cv_b["ep"]), float(cv_b["pdms"])) == \
        (0.0, 1.0, 0.0, 0.0, 0.0)
    # the expert's progress is the simulated 24 m of braking (box centre), constant velocity's 40 m on log_a
    assert float(rows["expert", "log_b-003"]["progress_m"]) == pytest.approx(24.0, abs=1.0)
    assert float(rows["constant_velocity", "log_a-003"]["progress_m"]) == pytest.approx(40.0, abs=1.0)
    s = summary(out)
    assert s["expert"]["scenes"] == 3 and s["expert"]["pdms"] == 1.0
    for k in ("nc", "ttc", "ep", "pdms"):
        assert s["constant_velocity"][k] == pytest.approx(2 / 3, abs=1e-9), k
    assert s["constant_velocity"]["dac"] == 1.0


class OffRoad:
    name = "offroad"
    needs_frames = False

    def plan(self, inp):
        t = inp.times_s
        return np.stack([10.0 * t, np.full_like(t, -12.0), np.zeros_like(t)], -1)


def test_navsim_offroad_plan_scores_zero_and_scene_geometry(navsim_root):
    scenes = list(navsim_eval.iter_scenes(navsim_root, "test", max_scenes=2))
    assert [s.token for s in scenes] == ["log_a-003", "log_a-004"]
    rows, summ = navsim_eval.evaluate({"offroad": OffRoad()}, scenes)
    assert [(r["dac"], r["pdms"]) for r in rows] == [(0.0, 0.0), (0.0, 0.0)]
    assert summ[0]["pdms"] == 0.0
    # the scene the scorer sees: ego at the rear axle of frame 3 (u = 15), route lanes 11-13, the centerline on
    # lane 12's baseline (w = 0), the logged future 5 ... 40 m straight ahead in the ego frame
    scene = scenes[0].scene
    np.testing.assert_allclose([scene.ego.x, scene.ego.y], to_global(15.0, 0.0), atol=1e-9)
    assert scene.ego.heading == pytest.approx(THETA) and scene.ego.vx == 10.0
    assert sorted(scene.route_lane_ids) == ["11", "12", "13"]
    np.testing.assert_allclose(scene.centerline[[0, -1]], [to_global(-100, 0), to_global(300, 0)], atol=1e-9)
    np.testing.assert_allclose(scenes[0].bench_input.logged_future[:, 0], 5.0 * np.arange(1, 9), atol=1e-9)
    np.testing.assert_allclose(scenes[0].bench_input.logged_future[:, 1:], 0.0, atol=1e-9)
    assert len(scene.objects) == 5 * 9 + 1  # frames 3 ... 12 (9 intervals of 0.1 s x 5) on log_a


def test_navsim_objects_are_global_and_interpolated(navsim_root):
    scene = [s for s in navsim_eval.iter_scenes(navsim_root, "test") if s.token == "log_b-003"][0].scene
    # log_b has frames 3 ... 11 after "now": 8 intervals -> 41 steps; the stopped car stays at its global spot
    assert len(scene.objects) == 41
    want = to_global(CAR[1], 0.0)
    for step in (0, 1, 7, 40):
        (box,) = scene.objects[step]
        assert box.track_id == "car0" and box.category == "vehicle" and box.speed == 0.0
        np.testing.assert_allclose([box.x, box.y, box.heading], [*want, THETA], atol=1e-9)


def test_gpkg_geometry_reads_envelopes_and_rejects_garbage():
    poly = shapely.box(0, 0, 2, 1)
    wkb = shapely.to_wkb(poly)
    with_envelope = b"GP" + bytes([0, 1 | (1 << 1)]) + struct.pack("<i", 0) + struct.pack("<4d", 0, 2, 0, 1) + wkb
    assert navsim_eval.gpkg_geometry(with_envelope).equals(poly)
    assert navsim_eval.gpkg_geometry(gpkg_blob(poly)).equals(poly)
    with pytest.raises(ValueError, match="GeoPackage"):
        navsim_eval.gpkg_geometry(b"XX" + wkb)


def test_navsim_eval_errors(navsim_root, tmp_path, capsys):
    assert main(["eval-navsim", "--src", str(tmp_path), "--split", "test", "--out", str(tmp_path / "o")]) == 2
    assert "navsim_logs" in capsys.readouterr().err
    assert main(["eval-navsim", "--src", navsim_root, "--split", "test", "--maps", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no nuPlan map" in capsys.readouterr().err
    assert main(["eval-navsim", "--src", navsim_root, "--split", "test", "--planners", "drivewam",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_interpolate_waypoints_from_origin():
    # model waypoints at 1, 2 s: (10, 0), (20, 2); at 0.5 s halfway from the origin, at 1.5 s halfway between
    out = benchmarks.interpolate_waypoints(np.array([1.0, 2.0]), np.array([[10.0, 0, 0], [20.0, 2, 0.2]]),
                                           np.array([0.5, 1.5, 2.0]))
    np.testing.assert_allclose(out, [[5, 0, 0], [15, 1, 0.1], [20, 2, 0.2]])


def test_drivewam_adapter_resamples_context_to_the_model_chunk():
    # The DriveWAM planner reads one 4 s chunk: 20 frames at 5 Hz before "now" (+ now) and 8 poses at 2 Hz.
    # NAVSIM gives 4 frames / poses at 2 Hz (1.5 s): ego at 10 m/s straight, poses x = -15, -10, -5, 0.
    from wam_jax.sim import highway as hw

    class Stub:
        def reset(self, seed):
            pass

        def plan(self, obs):
            self.obs = obs
            return np.stack([5.0 * np.arange(1, 9), np.zeros(8), np.zeros(8)], -1)

    bench = object.__new__(benchmarks.DriveWAMBench)
    bench.sim_cfg, bench.planner = hw.HighwaySimConfig(), Stub()
    frames = np.stack([np.full((8, 8, 3), 50 * i, np.uint8) for i in range(4)])
    inp = benchmarks.BenchInput("s", navsim_eval.PLAN_TIMES, np.stack([np.arange(-15.0, 1, 5), np.zeros(4),
                                np.zeros(4)], -1), 0.5, np.array([10.0, 0.0]), 0, frames=frames, frame_dt=0.5)
    plan = bench.plan(inp)
    obs = bench.planner.obs
    # poses at -4.0 ... -0.5 s: x = 10 t, inside the history by interpolation, before it by extrapolation
    np.testing.assert_allclose(obs.pose_history[:, 0], 10.0 * (np.arange(8) - 8) / 2.0, atol=1e-12)
    # frame slots at -4.0, -3.8, ..., 0 s take the latest frame at or before them (frame 0 before -1.5 s):
    # slots -4.0 ... -1.2 -> frame 0 (t = -1.5, or before it), -1.0 / -0.8 / -0.6 -> frame 1 (t = -1.0),
    # -0.4 / -0.2 -> frame 2 (t = -0.5), 0 -> frame 3
    got = obs.frames[:, 0, 0, 0].tolist()
    assert obs.frames.shape == (21, 64, 64, 3)
    assert got == [0] * 15 + [50] * 3 + [100] * 2 + [150]
    assert obs.intent.command == "change lane left" and obs.ego.speed == 10.0
    np.testing.assert_allclose(plan, Stub().plan(None))
    with pytest.raises(ValueError, match="plans 4 s ahead"):
        bench.plan(dataclasses.replace(inp, times_s=np.arange(1, 65) * 0.1))
